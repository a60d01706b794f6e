"""The evaluation spread over TTT worker actors (`tttnn eval ... --ray --workers N`).

    driver: retrieval in batches (one fan-out over the shard actors per batch)
       │  (document, its neighbors) ──▶ TTT workers: the model loaded once; pack, train, score, reset
       └─ the only writer of RUN/results.jsonl (`tttnn.evaluate.run_eval` writes what this yields)

A worker runs `tttnn.evaluate.score_document`, the code of the single-process path, on the same
retrieved neighbors, so a row is the one a single process writes (on CPU, bitwise: the tests
check it with 2 workers against 1 process). Each worker reserves `cpus_per_worker` CPUs (torch
runs that many threads) and `gpus_per_worker` GPUs (1: one model per GPU; it then runs on CUDA).

Faults: a worker that dies (killed, lost node) has its documents re-dispatched to the others and
is replaced; a document during which workers died `MAX_ATTEMPTS` times gets a failed row instead
of taking the run down (a rerun retries it). A worker the cluster cannot place within
`SCHEDULE_TIMEOUT` is dropped and its documents go to the others; with none left the run stops
with an error, keeping its rows.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Generator, Iterator
from typing import Any, Optional

from tttnn.config import EvalConfig
from tttnn.corpus import Document
from tttnn.distributed.cluster import local_gpus, require_ray, session
from tttnn.evaluate import Retrieved, batches, failed_row, retrieve_or_fail

__all__ = ["MAX_ATTEMPTS", "TTTWorker", "evaluate_on_ray"]

MAX_ATTEMPTS = 3
"""Workers that may die while evaluating one document before it is written as failed."""

IN_FLIGHT = 2
"""Documents queued on each worker, so it never waits for the driver between documents."""

_POLL = 1.0
"""Seconds between checks for workers the cluster could not place."""

SHARD_ACTOR_CPUS = 0.25
"""Logical CPUs each shard actor of an evaluation reserves (they are idle most of the time)."""


class TTTWorker:
    """A Ray actor: one causal LM and its trainer, evaluating documents one after another. The
    model is loaded by the first document, so that `pid` answers as soon as the cluster has placed
    and started the actor (`_WorkerPool` gives up on actors it cannot place)."""

    def __init__(self, config: dict[str, Any], index: Any) -> None:
        self.cfg = EvalConfig.from_dict(config)
        self.index = index
        self.trainer: Any = None

    def _load(self) -> Any:
        if self.trainer is None:
            import torch

            from tttnn.models import load_causal_lm, resolve_model
            from tttnn.ttt import TestTimeTrainer

            ray_cfg = self.cfg.ray
            torch.set_num_threads(max(1, int(ray_cfg.cpus_per_worker)))
            device = self.cfg.run.device or ("cuda" if ray_cfg.gpus_per_worker > 0 else "cpu")
            model, tokenizer = load_causal_lm(resolve_model(self.cfg.model), device=device)
            if self.cfg.retrieval.neighbors > 0:
                self.index.check_tokens_for(tokenizer, retokenize=self.cfg.pack.retokenize)
            self.trainer = TestTimeTrainer(model, tokenizer, self.cfg.ttt)
        return self.trainer

    def evaluate(self, doc: Document, retrieved: Retrieved) -> dict[str, Any]:
        from tttnn.evaluate import score_document

        return score_document(doc, self.cfg, self.index, self._load(), retrieved)

    def pid(self) -> int:
        return os.getpid()


def open_ray_index(cfg: EvalConfig, actors: int) -> Any:
    """The run's index served by `actors` shard actors (`tttnn.distributed.index.RayIndex`), each
    reserving `SHARD_ACTOR_CPUS`: in an evaluation they search once per batch, and serve the
    neighbors' token ids."""
    from tttnn.config import RayConfig
    from tttnn.distributed.index import RayIndex

    serving = RayConfig(ray=True, address=cfg.ray.address, workers=actors,
                        cpus_per_worker=SHARD_ACTOR_CPUS)  # fmt: skip
    index = RayIndex.open(cfg.index, serving, shards=cfg.retrieval.shards)
    try:
        index.check_complete()
    except Exception:
        index.close()
        raise
    return index


def evaluate_on_ray(
    cfg: EvalConfig, resolved_model: str, todo: list[Document], *, index: Any = None
) -> Generator[dict[str, Any], None, None]:
    """Rows of the `todo` documents, evaluated by Ray workers, in the order they finish.
    `index`: an opened index (local or `RayIndex`) instead of the run's served by shard actors."""
    from tttnn.models import load_tokenizer

    local = cfg.ray.address is None
    if local:  # the sizes decide the cluster's logical CPUs
        workers, actors = _sizes(cfg, os.cpu_count() or 1, local_gpus(), fit=False)
        num_cpus: Optional[int] = max(os.cpu_count() or 1, math.ceil(_cpus(cfg, workers, actors)))
    else:
        num_cpus = None
    with session(cfg.ray.address, num_cpus=num_cpus) as ray:
        if not local:  # the cluster decides the sizes
            total = ray.cluster_resources()
            workers, actors = _sizes(cfg, total.get("CPU", 1), total.get("GPU", 0), fit=True)
        own_index = index is None
        if index is None:
            index = open_ray_index(cfg, actors)
        try:
            tokenizer = load_tokenizer(resolved_model)  # the driver splits (--split-text)
            pool = _WorkerPool(cfg, index, workers)
            try:
                yield from _dispatch(cfg, index, tokenizer, todo, pool)
            finally:
                pool.close()
        finally:
            if own_index:
                index.close()


def _cpus(cfg: EvalConfig, workers: int, actors: int) -> float:
    """Logical CPUs reserved by `workers` TTT workers and `actors` shard actors."""
    return workers * cfg.ray.cpus_per_worker + actors * SHARD_ACTOR_CPUS


def _sizes(cfg: EvalConfig, cpus: float, gpus: float, *, fit: bool) -> tuple[int, int]:
    """(TTT workers, shard actors) on a cluster of `cpus` CPUs and `gpus` GPUs: --workers, else
    one per GPU (at --gpus-per-worker), else one per --cpus-per-worker CPUs; --shard-actors,
    else one per worker. With `fit` (a cluster that cannot grow), a default worker count is
    lowered until workers and shard actors fit in `cpus`, so none waits for a CPU forever."""
    rc = cfg.ray
    if rc.workers is not None:
        return rc.workers, rc.shard_actors or rc.workers
    if rc.gpus_per_worker > 0:
        workers = max(1, int(gpus // rc.gpus_per_worker))
    else:
        workers = max(1, int(cpus // rc.cpus_per_worker))
    while fit and workers > 1 and _cpus(cfg, workers, rc.shard_actors or workers) > cpus:
        workers -= 1
    return workers, rc.shard_actors or workers


class _WorkerPool:
    """The TTT actors, with replacements for the ones that die, and without the ones the cluster
    cannot place (`SCHEDULE_TIMEOUT`)."""

    def __init__(self, cfg: EvalConfig, index: Any, n: int) -> None:
        ray = require_ray()
        self.ray = ray
        self.rc = rc = cfg.ray
        self.cls = ray.remote(num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker,
                              max_restarts=0, max_concurrency=1)(TTTWorker)  # fmt: skip
        self.config = ray.put(cfg.to_dict())
        self.index = index
        self.size = n
        self.booting: dict[Any, tuple[Any, float]] = {}  # pid() ref -> (worker, asked at)
        self.workers: list[Any] = [self._new() for _ in range(n)]
        self.replaced = 0

    def _new(self) -> Any:
        worker = self.cls.remote(self.config, self.index)
        self.booting[worker.pid.remote()] = (worker, time.monotonic())
        return worker

    def replace(self, worker: Any) -> Any:
        """A new actor instead of `worker` (dead); refuses after as many replacements as there
        are workers, twice: something kills every worker."""
        self.replaced += 1
        if self.replaced > 2 * self.size:
            raise RuntimeError(
                f"{self.replaced} TTT workers died; giving up (see the Ray logs of the workers)"
            )
        i = self.workers.index(worker)
        self.workers[i] = self._new()
        return self.workers[i]

    def started(self, ref: Any) -> None:
        """`ref` (a worker's pid()) is ready: the worker was placed (or died: its documents
        fail on their own)."""
        self.booting.pop(ref, None)

    def expire(self) -> list[Any]:
        """The workers not started within SCHEDULE_TIMEOUT, killed and dropped from the pool;
        an error when no worker is left."""
        from tttnn.distributed.cluster import SCHEDULE_TIMEOUT, unschedulable

        now, dropped = time.monotonic(), []
        for ref, (worker, asked) in list(self.booting.items()):
            if now - asked >= SCHEDULE_TIMEOUT:
                del self.booting[ref]
                if worker in self.workers:  # not replaced already
                    with contextlib.suppress(Exception):
                        self.ray.kill(worker)
                    self.workers.remove(worker)
                    dropped.append(worker)
        if not self.workers:
            raise unschedulable("TTT worker", self.rc.cpus_per_worker, self.rc.gpus_per_worker)
        return dropped

    def close(self) -> None:
        for w in self.workers:
            self.ray.kill(w)


def _dispatch(
    cfg: EvalConfig, index: Any, tokenizer: Any, todo: list[Document], pool: _WorkerPool
) -> Iterator[dict[str, Any]]:
    ray = pool.ray
    from ray.exceptions import RayActorError, RayTaskError

    to_retrieve = batches(todo)
    ready: collections.deque[tuple[Document, Retrieved]] = collections.deque()
    attempts: collections.Counter[str] = collections.Counter()
    running: dict[Any, tuple[Any, Document, Retrieved]] = {}  # ref -> (worker, doc, retrieved)
    load: collections.Counter[Any] = collections.Counter()
    exhausted = False
    while True:
        # keep every worker IN_FLIGHT documents deep; retrieve the next batch when out of work
        while True:
            idle = [w for w in pool.workers if load[w] < IN_FLIGHT]
            if not idle:
                break
            if not ready:
                if exhausted:
                    break
                batch = next(to_retrieve, None)
                if batch is None:
                    exhausted = True
                    break
                for doc, got in zip(batch, retrieve_or_fail(batch, cfg, index, tokenizer)):
                    if isinstance(got, dict):
                        yield got
                    else:
                        ready.append((doc, got))
                continue
            worker = min(idle, key=lambda w: load[w])
            doc, got = ready.popleft()
            running[worker.evaluate.remote(doc, _detached(got))] = (worker, doc, got)
            load[worker] += 1
        if not running:
            return
        done, _ = ray.wait([*running, *pool.booting], num_returns=1, timeout=_POLL)
        for worker in pool.expire():  # every loop, as the build driver does
            _requeue_all(running, load, ready, worker)
        if not done or (done[0] not in running and done[0] not in pool.booting):
            continue  # nothing finished, or a ref of a worker just dropped
        ref = done[0]
        if ref in pool.booting:
            pool.started(ref)
            continue
        worker, doc, got = running.pop(ref)
        load[worker] -= 1
        t0 = time.perf_counter()
        try:
            row = ray.get(ref)
        except RayTaskError as e:  # the worker could not load the model: its own error
            raise e.as_instanceof_cause() from None
        except RayActorError as e:  # the worker died: its document goes to another one
            attempts[doc.doc_id] += 1
            if worker in pool.workers:
                _requeue_all(running, load, ready, worker)
                pool.replace(worker)
            if attempts[doc.doc_id] >= MAX_ATTEMPTS:
                yield failed_row(
                    doc, RuntimeError(f"{MAX_ATTEMPTS} TTT workers died evaluating it: {e}"),
                    time.perf_counter() - t0,
                )  # fmt: skip
            else:
                ready.appendleft((doc, got))
            continue
        row["redispatched"] = attempts.get(doc.doc_id, 0)
        yield row


def _detached(got: Retrieved) -> Retrieved:
    """`got` without the store handles of its neighbors (they do not travel; the worker reads
    through its own index)."""
    if got.hits is None:
        return got
    hits = dataclasses.replace(
        got.hits, neighbors=[dataclasses.replace(n, _store=None) for n in got.hits.neighbors]
    )
    return dataclasses.replace(got, hits=hits)


def _requeue_all(
    running: dict[Any, tuple[Any, Document, Retrieved]],
    load: collections.Counter[Any],
    ready: collections.deque[tuple[Document, Retrieved]],
    dead: Any,
) -> None:
    """The other documents queued on a dead worker go back to the front of the queue."""
    for ref in [r for r, (w, _, _) in running.items() if w is dead]:
        _, doc, got = running.pop(ref)
        ready.appendleft((doc, got))
    load.pop(dead, None)
