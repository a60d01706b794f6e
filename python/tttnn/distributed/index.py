"""An index whose shards are served by Ray actors: `RayIndex` (and its store, `RayStore`).

    index = RayIndex.open(DIR)                              # a local cluster, default sizes
    index = RayIndex.open(DIR, ray=RayConfig(ray=True, workers=8, cpus_per_worker=0.5))
    index.search(texts_or_vectors, k=20, exact=True, guard=True, shards=(0, 1))

Shard groups. The shards are cut into `workers` groups of contiguous shards balanced by entries
(`shard_groups`); each group is served by one `ShardActor`, which memory-maps its shards only
(`EmbeddingStore.open(DIR, shards=...)`: constant time; the other shards' files need not be on
its node) and searches, reads texts, token ids, records and vectors of its shards. Nothing of the corpus is copied into the driver: the winners' texts and
tokens are fetched from the actors that own them, in one batch per actor.

Each actor reserves `cpus_per_worker` logical CPUs and searches with that many threads (rounded
up), so actors sharing a node do not oversubscribe it.

Search. A query batch is put in the object store once (`ray.put`) and handed to every actor whose
group holds a searched shard; each returns its group's top-k, and the driver merges them per
query into the global top-k, best score first, ties broken by smaller id (`merge_parts`: the
order of `merge_topk` in the Rust core). Every local search is itself per-shard lists merged in
that order, so exact search over Ray returns exactly what `Index.search` returns (ids and scores,
bitwise) and HNSW search returns what the same per-shard HNSW search returns locally, whatever
the grouping.

Faults. Actors are created with `max_restarts` and `max_task_retries`: an actor that dies (killed,
or its node lost) is restarted (memory-mapping its shards again) and the calls in flight are
retried by Ray; all calls are reads, so a retry is harmless. A query batch during which an
actor dies returns the same answer. With `pin=None` a restarted actor may land on any node that
sees the directory.

Placement (`pin`):
- None: Ray's SPREAD strategy; every node must see DIR (shared file system).
A node serving group g needs `DIR/manifest.json` and the directories of g's shards
(`DIR/shards/NNNNNN`), nothing else; the driver needs no file of the index when a node that
has the manifest describes the store for it.
- "resources": the actor of group g asks for 0.01 of the custom resource `tttnn_shards_<g>`;
  start the node holding group g's shards on its local disk with
  `ray start ... --resources='{"tttnn_shards_<g>": 1}'` (several groups per node: list several).
  Another node declaring the same resource can take the group over when its node is lost.
- a list of Ray node ids, one per group: hard node affinity (`NodeAffinitySchedulingStrategy`,
  soft=False); such an actor cannot restart elsewhere when its node is lost.
`RayIndex.groups()` tells which shards each group holds, to copy them where they are served.

A `RayIndex` pickles with its actor handles (not its encoder): it can be handed to other Ray
tasks and actors of the same cluster, which then search and read through the same actors.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from tttnn.distributed import cluster
from tttnn.distributed.cluster import (
    check_fits,
    check_same_package,
    connect,
    package_identity,
    require_ray,
)
from tttnn.distributed.pool import worker_count
from tttnn.index import Index, PathLike

if TYPE_CHECKING:
    from tttnn.config import RayConfig
    from tttnn.embed import Encoder

__all__ = ["RayIndex", "RayStore", "ShardActor", "merge_parts", "shard_groups"]

MAX_RESTARTS = 4  # restarts of a shard actor before its calls fail
MAX_TASK_RETRIES = 4  # retries of a call in flight when its actor dies
_RESOURCE = "tttnn_shards_{}"  # the custom resource pinning group g (pin="resources")
Pin = Union[None, str, Sequence[str]]


def shard_groups(counts: Sequence[int], workers: int) -> list[list[int]]:
    """`min(workers, len(counts))` groups of contiguous shard numbers, every group non-empty,
    cut where the running count of entries is nearest to equal shares."""
    n = len(counts)
    if n == 0:
        return []
    w = max(1, min(int(workers), n))
    cum = np.cumsum(np.asarray(counts, dtype=np.float64))
    cuts, prev = [], 0
    for g in range(1, w):
        # a cut after shard i (exclusive end i + 1); leave a shard for each later group
        lo, hi = prev + 1, n - (w - g)
        ends = np.arange(lo, hi + 1)
        best = int(ends[np.argmin(np.abs(cum[ends - 1] - cum[-1] * g / w))])
        cuts.append(best)
        prev = best
    bounds = [0, *cuts, n]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def merge_parts(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, higher_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-group `(ids, scores)` (each `(nq, k_i)`, global ids, padding id -1) into the
    top-`k` of each query: the Rust core's `merge_topk` (score by IEEE total order, then smaller
    id), padding id -1 / score NaN."""
    from tttnn._tttnn import merge_topk

    ids, scores = [p[0] for p in parts], [p[1] for p in parts]
    return merge_topk(ids, scores, k, higher_is_better=higher_is_better)


class ShardActor:
    """Serves the shards `shards` of the store at `path` (made a Ray actor by `RayStore.open`).
    Every method is a read, so Ray may retry it on a restarted actor."""

    def __init__(self, path: str, shards: Sequence[int], threads: int = 0) -> None:
        if threads > 0:  # before the first parallel call starts rayon's pool in this process
            os.environ["RAYON_NUM_THREADS"] = str(threads)
        from tttnn._tttnn import EmbeddingStore

        self.shards = sorted({int(s) for s in shards})
        if not self.shards or self.shards[0] < 0:
            raise IndexError(f"no shard, or a negative shard number, in {self.shards}")
        # its shards only: a node needs their directories and manifest.json, not the others'
        self.store = EmbeddingStore.open(path, shards=self.shards)
        counts = self.store.shard_counts()
        starts = np.concatenate([[0], np.cumsum(counts)])
        self.lo, self.hi = int(starts[self.shards[0]]), int(starts[self.shards[-1] + 1])

    def search(
        self, queries: np.ndarray, k: int, exact: bool, ef: Optional[int],
        shards: Optional[list[int]],
    ) -> Optional[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
        """This group's top-`k` (global ids), over `shards` ∩ the group (None: the group)."""
        own = self.shards if shards is None else [s for s in shards if s in self.shards]
        if not own:
            return None
        return self.store.search(queries, k, exact=exact, ef=ef, shards=own)

    def _own(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not self.lo <= i < self.hi]
        if bad:
            raise IndexError(f"id {bad[0]} is not in this actor's shards {self.shards}")
        return ids

    def text_bytes(self, ids: Sequence[int]) -> list[bytes]:
        return [bytes(self.store.text_bytes(i)) for i in self._own(ids)]

    def tokens(self, ids: Sequence[int]) -> list[np.ndarray]:
        return [np.asarray(self.store.tokens(i)) for i in self._own(ids)]

    def records(self, ids: Sequence[int]) -> list[bytes]:
        return [bytes(self.store.record(i)) for i in self._own(ids)]

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        return self.store.get_vectors(np.asarray(self._own(ids), dtype=np.int64))

    def stats(self) -> dict[str, Any]:
        """pid, node, peak and current resident set (MB) of this actor's process, and the tttnn
        it runs (`package_identity`)."""
        import ray

        out: dict[str, Any] = {"pid": os.getpid(), "shards": self.shards,
                               "node_id": ray.get_runtime_context().get_node_id(),
                               "node": ray.util.get_node_ip_address(),
                               **package_identity()}  # fmt: skip
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                key = "peak_rss_mb" if line.startswith("VmHWM") else "rss_mb"
                out[key] = int(line.split()[1]) / 1024
        return out


def _describe(path: str) -> dict[str, Any]:
    """What the driver needs to know of the store at `path` (a Ray task where the driver does not
    see the directory)."""
    from tttnn._tttnn import EmbeddingStore

    s = EmbeddingStore.open(path, shards=[])  # the manifest alone
    return {
        "path": s.path, "dim": s.dim, "dtype": s.dtype, "metric": s.metric, "meta": s.meta,
        "counts": [int(c) for c in s.shard_counts()], "has_hnsw": bool(s.has_hnsw),
        "shard_size": s.shard_size, "hnsw_stranded": [int(i) for i in s.hnsw_stranded()],
        "token_bits": s.token_bits,
    }  # fmt: skip


class RayStore:
    """The read surface of an `EmbeddingStore` whose shards are served by `ShardActor`s: search,
    text, text_bytes, tokens, record, get_vectors, pack_windows, and the store's description.
    Make one with `RayStore.open`; it pickles with its actor handles."""

    def __init__(self, info: dict[str, Any], groups: list[list[int]], actors: list[Any]) -> None:
        self._info = info
        self.groups = groups
        self.actors = actors
        counts = info["counts"]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._group_of_shard = {s: g for g, shards in enumerate(groups) for s in shards}
        self.served = sorted(self._group_of_shard)
        self._len = int(self._starts[-1])
        self._owner = True  # the handle that created the actors (kills them on close)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        workers: Optional[int] = None,
        cpus_per_worker: float = 1.0,
        pin: Pin = None,
        max_restarts: int = MAX_RESTARTS,
        max_task_retries: int = MAX_TASK_RETRIES,
        shards: Optional[Sequence[int]] = None,
    ) -> RayStore:
        """Start one `ShardActor` per group of shards of the store at `path` (Ray must be
        initialised: `tttnn.distributed.connect`). `workers` (default: as many as the cluster's
        CPUs allow at `cpus_per_worker` each, at most one per shard); `pin`: see the module doc;
        `shards`: serve only these shards (None: all), searched when a search names none.
        Returns once every actor has memory-mapped its shards."""
        ray = require_ray()
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: tttnn.distributed.connect() first")
        if cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {cpus_per_worker}")
        p = str(Path(path).absolute())
        if Path(p, "manifest.json").is_file():
            info = _describe(p)
        else:  # the driver does not see the directory: ask a node that does
            info = ray.get(ray.remote(num_cpus=0.01)(_describe).options(**_where(pin, 0)).remote(p))
        if workers is None:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            workers = worker_count(cpus, 0, cpus_per_worker=cpus_per_worker)
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        n_shards = len(info["counts"])
        served = list(range(n_shards)) if shards is None else _check_shards(shards, n_shards)
        groups = [
            [served[i] for i in g]
            for g in shard_groups([info["counts"][s] for s in served], workers)
        ]
        if pin is not None and not isinstance(pin, str) and len(pin) != len(groups):
            raise ValueError(f"pin lists {len(pin)} nodes for {len(groups)} shard groups")
        for g in range(len(groups)):  # before any actor is asked for
            check_fits(
                ray, {"CPU": cpus_per_worker, **_where(pin, g).get("resources", {})},
                "shard actor", "lower --cpus-per-worker, or add a node that large",
            )  # fmt: skip
        remote = ray.remote(ShardActor)
        actors = [
            remote.options(
                num_cpus=cpus_per_worker,
                max_restarts=max_restarts,
                max_task_retries=max_task_retries,
                **_where(pin, g),
            ).remote(p, shards, max(1, math.ceil(cpus_per_worker)))
            for g, shards in enumerate(groups)
        ]
        store = cls(info, groups, actors)
        try:  # every actor up (its errors raised here)
            started = ray.get([a.stats.remote() for a in actors], timeout=cluster.SCHEDULE_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            store.close()
            raise RuntimeError(
                f"the shard actors did not start within {cluster.SCHEDULE_TIMEOUT:.0f} s: the "
                f"cluster lacks {cpus_per_worker} CPUs per actor for {len(groups)} actors, or "
                "the resources of `pin` (see tttnn.distributed.index)"
            ) from None
        try:
            for found in started:
                check_same_package(found, "shard actor")
        except RuntimeError:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Stop the actors (only the handle that started them does)."""
        if not self._owner:
            return
        ray = require_ray()
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_owner"] = False  # a copy does not stop the actors
        return state

    # -- description ---------------------------------------------------------------------------
    path = property(lambda self: self._info["path"])
    dim = property(lambda self: self._info["dim"])
    dtype = property(lambda self: self._info["dtype"])
    metric = property(lambda self: self._info["metric"])
    meta = property(lambda self: self._info["meta"])
    has_hnsw = property(lambda self: self._info["has_hnsw"])
    shard_size = property(lambda self: self._info["shard_size"])
    token_bits = property(lambda self: self._info["token_bits"])
    num_shards = property(lambda self: len(self._info["counts"]))

    def shard_counts(self) -> list[int]:
        return list(self._info["counts"])

    def hnsw_stranded(self) -> list[int]:
        return list(self._info["hnsw_stranded"])

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (
            f"RayStore(path={self.path!r}, len={len(self)}, dim={self.dim}, "
            f"shards={self.num_shards}, actors={len(self.actors)})"
        )

    def actor_stats(self) -> list[dict[str, Any]]:
        """`ShardActor.stats()` of every actor (pid, node, shards, peak and current RSS)."""
        return self._get([a.stats.remote() for a in self.actors])

    # -- search --------------------------------------------------------------------------------
    def search(
        self,
        queries: Any,
        k: int,
        *,
        exact: bool = True,
        ef: Optional[int] = None,
        shards: Optional[Sequence[int]] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`EmbeddingStore.search` over the actors: the query batch is put once, fanned out to the
        groups holding searched shards, and their lists merged (same ids and scores)."""
        ray = require_ray()
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(
                f"queries must have shape (n, {self.dim}) or ({self.dim},), got {q.shape}"
            )
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        wanted: Optional[list[int]] = None
        groups: Sequence[int] = range(len(self.groups))
        if shards is not None:
            wanted = _check_shards(shards, self.num_shards)
            missing = [s for s in wanted if s not in self._group_of_shard]
            if missing:
                raise IndexError(f"shard {missing[0]} is not served (served: {self.served})")
            groups = sorted({self._group_of_shard[s] for s in wanted})
        ref = ray.put(q)
        parts = self._get([self.actors[g].search.remote(ref, k, exact, ef, wanted) for g in groups])
        parts = [p for p in parts if p is not None]
        return merge_parts(parts, k, higher_is_better=self.metric != "l2")

    # -- reads ---------------------------------------------------------------------------------
    def _by_group(self, ids: Sequence[int]) -> dict[int, list[int]]:
        arr = np.asarray([int(i) for i in ids], dtype=np.int64)
        bad = arr[(arr < 0) | (arr >= self._len)]
        if len(bad):
            raise IndexError(f"id {int(bad[0])} out of range: the store holds {self._len} vectors")
        out: dict[int, list[int]] = {}
        for i, s in zip(arr.tolist(), np.searchsorted(self._starts, arr, side="right") - 1):
            g = self._group_of_shard.get(int(s))
            if g is None:
                raise IndexError(f"id {i} is in shard {s}, not served (served: {self.served})")
            out.setdefault(g, []).append(i)
        return out

    def _gather(self, method: str, ids: Sequence[int]) -> list[Any]:
        """`method` of the actors owning `ids`, one call per actor, answers in the order of ids."""
        by = self._by_group(ids)
        groups = list(by)
        answers = self._get([getattr(self.actors[g], method).remote(by[g]) for g in groups])
        got = {i: a for g, ans in zip(groups, answers) for i, a in zip(by[g], ans)}
        return [got[int(i)] for i in ids]

    def texts_bytes(self, ids: Sequence[int]) -> list[bytes]:
        return self._gather("text_bytes", ids)

    def tokens_many(self, ids: Sequence[int]) -> list[np.ndarray]:
        return self._gather("tokens", ids)

    def records(self, ids: Sequence[int]) -> list[bytes]:
        return self._gather("records", ids)

    def text_bytes(self, id: int) -> bytes:
        return self.texts_bytes([id])[0]

    def text(self, id: int) -> str:
        return self.text_bytes(id).decode("utf-8")

    def tokens(self, id: int) -> np.ndarray:
        return self.tokens_many([id])[0]

    def record(self, id: int) -> bytes:
        return self.records([id])[0]

    def get_vectors(self, ids: Any) -> np.ndarray:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).ravel()]
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(self._gather("get_vectors", ids)).astype(np.float32, copy=False)

    def pack_windows(
        self, ids: Any, context_length: int, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`EmbeddingStore.pack_windows`: the token ids fetched from their actors, packed here by
        `tttnn.pack_windows` (the same rules, so the same arrays)."""
        from tttnn._tttnn import pack_windows

        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).ravel()]
        docs = self.tokens_many(ids) if ids else []
        return pack_windows(docs, context_length, **kw)

    def _get(self, refs: list[Any]) -> list[Any]:
        """`ray.get`, retried while an actor is only unreachable (restarting): Ray retries the
        call itself (`max_task_retries`); this covers the window before it knows."""
        ray = require_ray()
        from ray.exceptions import ActorUnavailableError

        for attempt in range(5):
            try:
                return list(ray.get(refs))
            except ActorUnavailableError:
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover


def _check_shards(shards: Sequence[int], n_shards: int) -> list[int]:
    """Sorted distinct shard numbers, each < `n_shards` (IndexError) and at least one: the
    core's `check_shards`."""
    from tttnn._tttnn import check_shards

    return check_shards(shards, n_shards)


def _where(pin: Pin, g: int) -> dict[str, Any]:
    """Ray options placing the actor of group `g` (see the module doc)."""
    if pin is None:
        return {"scheduling_strategy": "SPREAD"}
    if pin == "resources":
        return {"resources": {_RESOURCE.format(g): 0.01}}
    if isinstance(pin, str):
        raise ValueError(f"pin must be None, 'resources' or a list of node ids, not {pin!r}")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=pin[g], soft=False)}


class RayIndex(Index):
    """`tttnn.Index` over a `RayStore`: the same `search` (texts or vectors, guard, shards),
    `record`, `check_complete`, `check_tokens_for`, `encoder` and `store` surface, with the
    shards served by Ray actors (the encoder of text queries runs here, in the driver)."""

    store: RayStore

    @classmethod
    def open(  # type: ignore[override]
        cls,
        path: PathLike,
        ray: RayConfig | bool | None = True,
        *,
        encoder: Encoder | None = None,
        shards: Optional[Sequence[int]] = None,
        pin: Pin = None,
        **kw: Any,
    ) -> RayIndex:
        """Join the cluster of `ray` (a `RayConfig`: address, workers, cpus_per_worker; True: a
        local cluster), start the shard actors of the index at `path` and check it is an index.
        `shards`: serve (and search) only these shards. `pin` and `kw` (max_restarts,
        max_task_retries) go to `RayStore.open`."""
        from tttnn.config import RayConfig

        cfg = ray if isinstance(ray, RayConfig) else RayConfig(ray=True)
        p = Path(path)
        if not p.exists() and cfg.address is None:
            raise FileNotFoundError(f"no index at {p}")
        started = connect(cfg.address)
        try:
            store = RayStore.open(
                p, workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker, pin=pin,
                shards=shards, **kw,
            )  # fmt: skip
        except BaseException:
            if started:  # the cluster this call started goes with the error
                require_ray().shutdown()
            raise
        try:
            index = cls._checked(store, p, encoder)
        except Exception:
            store.close()
            if started:
                require_ray().shutdown()
            raise
        assert isinstance(index, RayIndex)
        index._started_ray = started
        return index

    def __init__(self, store: Any, meta: dict[str, Any], encoder: Encoder | None = None) -> None:
        super().__init__(store, meta, encoder)
        self.path = Path(store.path)
        self._started_ray = False

    def __reduce__(self) -> Any:  # type: ignore[override]
        """Pickles with its store's actor handles (not the encoder, loaded again on use)."""
        return (_restore, (self.store, self.meta))

    def __repr__(self) -> str:
        return (
            f"RayIndex({str(self.path)!r}, entries={len(self)}, actors={len(self.store.actors)}, "
            f"encoder={self.meta.get('encoder')!r})"
        )

    def groups(self) -> list[list[int]]:
        """The shard numbers each actor serves (group g: actor g)."""
        return [list(g) for g in self.store.groups]

    def close(self) -> None:
        """Stop the shard actors, and Ray if `open` started it."""
        self.store.close()
        if self._started_ray:
            require_ray().shutdown()
            self._started_ray = False

    def __enter__(self) -> RayIndex:
        return self

    def _entries_in(self, shards: Optional[Sequence[int]]) -> int:
        counts = self.store.shard_counts()
        if shards is None:  # the served shards
            return int(sum(counts[s] for s in self.store.served))
        return super()._entries_in(shards)

    def _texts_of(self, ids: list[int]) -> list[bytes]:
        return self.store.texts_bytes(ids)

    def _raw_records(self, ids: list[int]) -> list[bytes]:
        return self.store.records(ids)


def _restore(store: RayStore, meta: dict[str, Any]) -> RayIndex:
    return RayIndex(store, meta)
