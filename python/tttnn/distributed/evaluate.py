"""The evaluation spread over TTT worker actors (`tttnn eval ... --ray --workers N`).

    driver: retrieval in batches (one fan-out over the shard actors per batch)
       │  (document, its neighbors) ──▶ TTT workers: the model loaded once; pack, train, score, reset
       └─ the only writer of RUN/results.jsonl (`tttnn.evaluate.run_eval` writes what this yields)

A worker sets up as one process does (`tttnn.evaluate.load_trainer`) and runs
`tttnn.evaluate.score_document`, the code of the single-process path, on the same retrieved
neighbors, so a row is the one a single process writes (on CPU, bitwise: the tests check it with
2 workers against 1 process). Each worker reserves `cpus_per_worker` CPUs (torch runs that many
threads) and `gpus_per_worker` GPUs (1: one model per GPU; it then runs on CUDA).

The workers are a `tttnn.distributed.pool.WorkerPool`, with its rules for dead and unplaceable
workers: a worker that dies (killed, lost node) has its documents re-dispatched to the others and
is replaced; a document during which workers died `MAX_ATTEMPTS` times gets a failed row instead
of taking the run down (a rerun retries it). A worker the cluster cannot place within
`SCHEDULE_TIMEOUT` is dropped and its documents go to the others; with none left the run stops
with an error, keeping its rows.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Generator
from typing import Any

from tttnn.config import EvalConfig, RayConfig
from tttnn.corpus import Document
from tttnn.distributed.devices import actor_device, with_worker_gpus
from tttnn.distributed.pool import (
    MAX_ATTEMPTS,
    Done,
    Lost,
    PoolWorker,
    WorkerPool,
    sized_session,
    worker_count,
)
from tttnn.evaluate import Retrieved, batches, failed_row, retrieve_or_fail

__all__ = ["TTTWorker", "evaluate_on_ray", "open_ray_index"]

IN_FLIGHT = 2
"""Documents queued on each worker, so it never waits for the driver between documents."""

SHARD_ACTOR_CPUS = 0.25
"""Logical CPUs each shard actor of an evaluation reserves (they are idle most of the time)."""


class TTTWorker(PoolWorker):
    """A Ray actor: one causal LM and its trainer, evaluating documents one after another. The
    model is loaded by `ready()`, so that `placed()` answers as soon as the cluster has placed
    and started the actor (the pool gives up on actors it cannot place)."""

    def __init__(self, config: dict[str, Any], index: Any) -> None:
        self.cfg = EvalConfig.from_dict(config)
        self.index = index
        self.trainer: Any = None

    def ready(self) -> None:
        if self.trainer is None:
            import torch

            from tttnn.evaluate import load_trainer

            torch.set_num_threads(max(1, int(self.cfg.ray.cpus_per_worker)))
            device = actor_device(self.cfg.run.device)  # the GPU Ray gave this worker
            _, _, self.trainer = load_trainer(self.cfg, self.index, device=device)

    def evaluate(self, doc: Document, retrieved: Retrieved) -> dict[str, Any]:
        from tttnn.evaluate import score_document

        self.ready()
        return score_document(doc, self.cfg, self.index, self.trainer, retrieved)


def open_ray_index(cfg: EvalConfig, actors: int, encoder: Any = None) -> Any:
    """The run's index served by `actors` shard actors (`tttnn.distributed.index.RayIndex`), each
    reserving `SHARD_ACTOR_CPUS`: in an evaluation they search once per batch, and serve the
    neighbors' token ids. `encoder`: the driver's query encoder (default: the index's, loaded
    on first use)."""
    from tttnn.distributed.index import RayIndex

    serving = RayConfig(ray=True, address=cfg.ray.address, workers=actors,
                        cpus_per_worker=SHARD_ACTOR_CPUS)  # fmt: skip
    index = RayIndex.open(cfg.index, serving, encoder=encoder, shards=cfg.retrieval.shards)
    try:
        index.check_complete()
    except Exception:
        index.close()
        raise
    return index


def evaluate_on_ray(
    cfg: EvalConfig, resolved_model: str, index: Any, todo: list[Document]
) -> Generator[dict[str, Any], None, None]:
    """Rows of the `todo` documents, evaluated by Ray workers, in the order they finish (a
    `tttnn.evaluate.Executor`). `index` is the run's index as this process opened it; the
    driver and the workers use it served by shard actors (`open_ray_index`), its query encoder
    (on the run's device) kept. On CUDA each worker asks Ray for one GPU at least."""
    from tttnn.models import load_tokenizer

    cfg = dataclasses.replace(cfg, ray=with_worker_gpus(cfg.ray, cfg.run.device))
    encoder = index.encoder if cfg.retrieval.neighbors > 0 else None

    def size(cpus: float, gpus: float, fit: bool) -> tuple[tuple[int, int], float]:
        workers, actors = _sizes(cfg, cpus, gpus, fit=fit)
        return (workers, actors), _cpus(cfg, workers, actors)

    with sized_session(cfg.ray, size) as (_, (workers, actors)):
        served = open_ray_index(cfg, actors, encoder)
        try:
            tokenizer = load_tokenizer(resolved_model)  # the driver splits (--split-text)
            pool = WorkerPool(TTTWorker, (cfg.to_dict(), served), cfg.ray, workers,
                              what="TTT worker", depth=IN_FLIGHT)  # fmt: skip
            try:
                yield from _dispatch(cfg, served, tokenizer, todo, pool)
            finally:
                pool.close()
        finally:
            served.close()


def _cpus(cfg: EvalConfig, workers: int, actors: int) -> float:
    """Logical CPUs reserved by `workers` TTT workers and `actors` shard actors."""
    return workers * cfg.ray.cpus_per_worker + actors * SHARD_ACTOR_CPUS


def _sizes(cfg: EvalConfig, cpus: float, gpus: float, *, fit: bool) -> tuple[int, int]:
    """(TTT workers, shard actors) on a cluster of `cpus` CPUs and `gpus` GPUs: the pool's
    `worker_count`; --shard-actors, else one per worker. With `fit` (a cluster that cannot
    grow), a default worker count is lowered until workers and shard actors fit in `cpus`, so
    none waits for a CPU forever."""
    rc = cfg.ray
    workers = worker_count(cpus, gpus, workers=rc.workers, cpus_per_worker=rc.cpus_per_worker,
                           gpus_per_worker=rc.gpus_per_worker)  # fmt: skip
    while (
        fit and rc.workers is None and workers > 1
        and _cpus(cfg, workers, rc.shard_actors or workers) > cpus
    ):  # fmt: skip
        workers -= 1
    return workers, rc.shard_actors or workers


def _dispatch(
    cfg: EvalConfig, index: Any, tokenizer: Any, todo: list[Document], pool: WorkerPool
) -> Generator[dict[str, Any], None, None]:
    """The evaluation's own part: retrieve in batches when the workers run out of documents,
    keep each worker `IN_FLIGHT` documents deep, yield the rows (a failed one for a document
    whose workers died `MAX_ATTEMPTS` times)."""
    to_retrieve = batches(todo)
    ready: collections.deque[tuple[Document, Retrieved]] = collections.deque()
    attempts: collections.Counter[str] = collections.Counter()
    while True:
        while (slot := pool.free()) is not None:
            if not ready:
                batch = next(to_retrieve, None)
                if batch is None:
                    break
                for doc, got in zip(batch, retrieve_or_fail(batch, cfg, index, tokenizer)):
                    if isinstance(got, dict):
                        yield got
                    else:
                        ready.append((doc, got))
                continue
            doc, got = ready.popleft()
            pool.submit(slot, "evaluate", doc, _detached(got), item=(doc, got))
        if not pool.running:
            return
        for event in pool.wait():
            if isinstance(event, Done):
                doc, _ = event.item
                row = event.value
                row["redispatched"] = attempts.get(doc.doc_id, 0)
                yield row
            elif isinstance(event, Lost):  # its documents go to the others
                ready.extendleft(reversed(event.queued))
                if event.died is not None:
                    doc, got = event.died
                    attempts[doc.doc_id] += 1
                    if attempts[doc.doc_id] >= MAX_ATTEMPTS:
                        yield failed_row(doc, RuntimeError(
                            f"{MAX_ATTEMPTS} TTT workers died evaluating it: {event.error}"
                        ), 0.0)  # fmt: skip
                    else:
                        ready.appendleft((doc, got))


def _detached(got: Retrieved) -> Retrieved:
    """`got` without the store handles of its neighbors (they do not travel; the worker reads
    through its own index)."""
    if got.hits is None:
        return got
    hits = dataclasses.replace(
        got.hits, neighbors=[dataclasses.replace(n, _store=None) for n in got.hits.neighbors]
    )
    return dataclasses.replace(got, hits=hits)
