"""The worker actors of a job on Ray, whatever their work (the build's units, the evaluation's
documents): how many, where they go, and what happens when one dies or cannot be placed.

    with sized_session(rc, size) as (ray, sizes):            # a local cluster sized for the job
        pool = WorkerPool(BuildWorker, args, rc, count, what="build worker")
        slot = pool.free()                                   # a worker with room for an item
        pool.submit(slot, "run", *call_args, item=unit)
        for event in pool.wait():                            # Started, Done or Lost
            ...

A worker class derives from `PoolWorker`: its `placed()` answers as soon as the cluster has
started the actor, with the package the worker runs, and its `ready()` loads what the worker
needs (its models) and returns what the driver checks (`Started.value`). Items are what the
driver hands out; the pool hands back their results (`Done`) or, when a worker goes, the items
it held (`Lost`), and each driver decides what an item's loss means (the build re-runs a unit,
the evaluation writes a failed row after `MAX_ATTEMPTS`). The rules, the same for every job:

- **Count** (`worker_count`): `--workers`, else one per `gpus_per_worker` GPUs when GPUs are asked,
  else one per `cpus_per_worker` CPUs. A local cluster is started with enough logical CPUs for
  the actors a job reserves (`sized_session`), so none waits for a CPU that never frees.
- **Fit**: a worker larger than every node of the cluster (and than every node its autoscaler
  could add) is an error before any is asked for (`check_fits`, `tttnn.distributed.cluster`).
- **Same package**: a worker whose tttnn version or core build (`package_identity`) differs from
  the driver's stops the job with an error naming both, at its start and before any work is
  handed to it: a configuration to fix, not a death to retry.
- **Placement**: a worker that the cluster has not started within `SCHEDULE_TIMEOUT`
  (`tttnn.distributed.cluster`) is given up: killed, its slot retired, its items handed back.
  With no worker left the job stops with an error that names the resources asked and present.
- **Death** (killed, node lost): the worker is replaced in its slot; the item it was running
  comes back as `Lost.died`, those queued behind it as `Lost.queued`. After `MAX_ATTEMPTS`
  replacements per worker the job stops: something kills every worker.
- **Errors of the work itself** (models that do not load, a corpus that changed) stop the job
  with that error, as in one process.
- **Dispatch** (`free`): a worker holds up to `depth` items (queued there, so it never waits for
  the driver between two); a worker that is ready (models loaded) is preferred, then the least
  loaded. Items may go to a worker still starting: it works on them as soon as it is up.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

from tttnn.distributed import cluster
from tttnn.distributed.cluster import (
    check_fits,
    check_same_package,
    local_gpus,
    package_identity,
    require_ray,
    session,
)

if TYPE_CHECKING:
    from tttnn.config import RayConfig

__all__ = [
    "MAX_ATTEMPTS", "POLL", "Done", "Lost", "PoolWorker", "Started", "WorkerPool",
    "sized_session", "worker_count",
]  # fmt: skip

MAX_ATTEMPTS = 3
"""Times an item may lose its worker before the driver gives it up (a build stops, an evaluation
writes the document as failed); and replacements per worker before a pool gives up."""

POLL = 0.5
"""Seconds a pool waits for an answer before it checks placements (and a driver its progress)."""

T = TypeVar("T")


def worker_count(
    cpus: float, gpus: float, *, workers: Optional[int] = None, cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
) -> int:  # fmt: skip
    """Workers on a cluster of `cpus` CPUs and `gpus` GPUs: `workers` when given, else one per
    `gpus_per_worker` GPUs when workers take GPUs, else one per `cpus_per_worker` CPUs; at
    least one."""
    if workers is not None:
        return workers
    if gpus_per_worker > 0:
        return max(1, int(gpus // gpus_per_worker))
    return max(1, int(cpus // cpus_per_worker))


@contextlib.contextmanager
def sized_session(
    rc: RayConfig, size: Callable[[float, float, bool], tuple[T, float]]
) -> Iterator[tuple[Any, T]]:
    """Ray for a job of `rc`, and the job's sizes: `size(cpus, gpus, fit)` returns them and the
    logical CPUs they reserve. A local cluster (no address, Ray not started here yet) is sized
    from this machine (`fit` False) and started with at least the CPUs reserved; a cluster that
    is already there sizes them from its resources (`fit` True: it may not grow to fit them)."""
    ray = require_ray()
    if rc.address is None and not ray.is_initialized():
        cpus = os.cpu_count() or 1
        sizes, reserved = size(cpus, local_gpus(), False)
        with session(None, num_cpus=max(cpus, math.ceil(reserved))) as r:
            yield r, sizes
        return
    with session(rc.address) as r:
        total = r.cluster_resources()
        yield r, size(total.get("CPU", 1.0), total.get("GPU", 0.0), True)[0]


@dataclass
class Started:
    """Worker `slot` is ready: `value` is what its `ready()` returned."""

    slot: int
    value: Any


@dataclass
class Done:
    """`item` is done on worker `slot`: `value` is what the worker returned."""

    slot: int
    item: Any
    value: Any


@dataclass
class Lost:
    """Worker `slot` is gone (dead, or never placed): `died` is the item it was running when it
    died (None when it was not placed), `queued` the items waiting there; `error` says why."""

    slot: int
    died: Any = None
    queued: list[Any] = field(default_factory=list)
    error: Optional[BaseException] = None


Event = Union[Started, Done, Lost]


class PoolWorker:
    """The base of a pool's worker classes (Ray actors): `placed()` and a `ready()` that loads
    nothing; a worker class overrides `ready()` with its loading."""

    def placed(self) -> dict[str, Any]:
        """Answers once the cluster has placed and started this actor (nothing loaded yet): its
        process id, Ray node id and node address, and the tttnn it imported
        (`package_identity`: version, core hash, package directory)."""
        import ray

        context = ray.get_runtime_context()
        return {
            "pid": os.getpid(), "node_id": context.get_node_id(),
            "node": ray.util.get_node_ip_address(), **package_identity(),
        }  # fmt: skip

    def ready(self) -> Any:
        return None


class WorkerPool:
    """`count` actors of `actor_cls(*args)`, each reserving `rc.cpus_per_worker` CPUs and
    `rc.gpus_per_worker` GPUs, in slots numbered from 0 (a replacement takes its predecessor's
    slot); see the module doc. `what` names a worker in errors ("build worker")."""

    def __init__(
        self, actor_cls: type, args: tuple[Any, ...], rc: RayConfig, count: int, *, what: str,
        depth: int = 1, concurrency: int = 1,
    ) -> None:  # fmt: skip
        self.ray = require_ray()
        self.rc, self.args, self.what, self.depth, self.count = rc, args, what, depth, count
        check_fits(
            self.ray, {"CPU": rc.cpus_per_worker, "GPU": rc.gpus_per_worker}, what,
            "lower --cpus-per-worker/--gpus-per-worker, or add a node that large",
        )  # fmt: skip
        self.cls = self.ray.remote(
            num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker, max_restarts=0,
            max_concurrency=concurrency,
        )(actor_cls)  # fmt: skip
        self.actors: list[Any] = []
        self.generation: list[int] = []  # of the actor in each slot (a replacement: one more)
        self.placing: dict[Any, tuple[int, float]] = {}  # placed() ref -> (slot, asked at)
        self.loading: dict[Any, tuple[int, int]] = {}  # ready() ref -> (slot, generation)
        self.running: dict[Any, tuple[int, int, Any]] = {}  # ref -> (slot, generation, item)
        self.load: Counter[int] = Counter()  # items held by each slot
        self.ready: set[int] = set()
        self.retired: set[int] = set()  # slots whose actor the cluster could not place
        self.replaced = 0
        for slot in range(count):
            self._start(slot)

    # -- the driver's side -----------------------------------------------------------------------
    @property
    def live(self) -> list[int]:
        return [s for s in range(len(self.actors)) if s not in self.retired]

    def free(self) -> Optional[int]:
        """A worker with room for another item (ready ones first, then the least loaded), or
        None."""
        room = [s for s in self.live if self.load[s] < self.depth]
        return min(room, key=lambda s: (s not in self.ready, self.load[s], s), default=None)

    def submit(self, slot: int, method: str, *args: Any, item: Any) -> None:
        """Call `method(*args)` on worker `slot`; its answer comes back as `Done(slot, item, ...)`."""
        ref = getattr(self.actors[slot], method).remote(*args)
        self.running[ref] = (slot, self.generation[slot], item)
        self.load[slot] += 1

    def busy(self) -> list[tuple[int, Any]]:
        """`(slot, item)` of every item handed out and not yet answered."""
        return [(slot, item) for slot, _, item in self.running.values()]

    def wait(self, timeout: float = POLL) -> list[Event]:
        """What happened within `timeout` seconds (at most one answer, and the workers given up
        for want of placement); raises the error of a worker's own code."""
        refs = [*self.placing, *self.running, *self.loading]  # a worker's package first
        ready = self.ray.wait(refs, num_returns=1, timeout=timeout)[0] if refs else []
        events = self._expire()
        for ref in ready:
            events += self._answer(ref)
        return events

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)

    # -- workers ---------------------------------------------------------------------------------
    def _start(self, slot: int) -> None:
        actor = self.cls.remote(*self.args)
        if slot == len(self.actors):
            self.actors.append(actor)
            self.generation.append(0)
        else:
            self.actors[slot] = actor
            self.generation[slot] += 1
        self.placing[actor.placed.remote()] = (slot, time.monotonic())
        self.loading[actor.ready.remote()] = (slot, self.generation[slot])

    def _answer(self, ref: Any) -> list[Event]:
        """The event of `ref`, one of the refs the pool waits on."""
        exc = self.ray.exceptions
        if ref in self.placing:  # placed (or dead: its other calls say so)
            del self.placing[ref]
            try:
                check_same_package(self.ray.get(ref), self.what)
            except exc.RayActorError:
                pass
            except exc.RayTaskError as e:
                raise e.as_instanceof_cause() from None
            return []
        of = self.loading.get(ref) or self.running.get(ref)
        if of is not None:  # no answer of a worker counts before its package is checked
            for r in [r for r, (s, _) in self.placing.items() if s == of[0]]:
                self._answer(r)
        if ref in self.loading:
            slot, gen = self.loading.pop(ref)
            item, held = None, False
        elif ref in self.running:
            slot, gen, item = self.running.pop(ref)
            self.load[slot] -= 1
            held = True
        else:  # a ref of a worker given up in this round
            return []
        try:
            value = self.ray.get(ref)
        except exc.RayActorError as e:
            return self._lost(slot, gen, item, e)
        except exc.RayTaskError as e:  # the work's own error, as in one process
            raise e.as_instanceof_cause() from None
        if not held:
            self.ready.add(slot)
            return [Started(slot, value)]
        return [Done(slot, item, value)]

    def _take_items(self, slot: int) -> list[Any]:
        refs = [r for r, (s, _, _) in self.running.items() if s == slot]
        self.load[slot] = 0
        return [self.running.pop(r)[2] for r in refs]

    def _forget(self, slot: int) -> None:
        """Drop the placement and loading calls of the actor in `slot`, and kill it."""
        for calls in (self.placing, self.loading):
            for r in [r for r, (s, _) in calls.items() if s == slot]:
                del calls[r]
        self.ready.discard(slot)
        with contextlib.suppress(Exception):
            self.ray.kill(self.actors[slot])

    def _lost(self, slot: int, gen: int, item: Any, error: BaseException) -> list[Event]:
        """The actor of generation `gen` in `slot` died: replace it, hand back its items."""
        if gen != self.generation[slot] or slot in self.retired:
            return []  # handled already (another of its calls came back first)
        queued = self._take_items(slot)
        self._forget(slot)
        self.replaced += 1
        if self.replaced > MAX_ATTEMPTS * self.count:
            raise RuntimeError(
                f"{self.replaced} {self.what}s died; giving up (see the Ray logs of the workers)"
            )
        self._start(slot)
        return [Lost(slot, item, queued, error)]

    def _expire(self) -> list[Event]:
        """Give up on the workers not placed within SCHEDULE_TIMEOUT (read at each call): their
        slots are retired and their items handed back; with no worker left, an error."""
        now = time.monotonic()
        events: list[Event] = []
        for slot, asked in list(self.placing.values()):
            if now - asked >= cluster.SCHEDULE_TIMEOUT:
                self._forget(slot)
                self.retired.add(slot)
                events.append(Lost(slot, None, self._take_items(slot)))
        if not self.live:
            raise self._unschedulable()
        return events

    def _unschedulable(self) -> RuntimeError:
        have = {k: v for k, v in self.ray.cluster_resources().items() if k in ("CPU", "GPU")}
        return RuntimeError(
            f"no {self.what} could be started within {cluster.SCHEDULE_TIMEOUT:.0f} s: each needs "
            f"{self.rc.cpus_per_worker:g} CPU and {self.rc.gpus_per_worker:g} GPU and the cluster "
            f"has {have} in all (some held by other actors); lower --cpus-per-worker/"
            "--gpus-per-worker or add nodes, then resume (a build with --resume, an evaluation "
            "by the same command): what was done is kept"
        )
