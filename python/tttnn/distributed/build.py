"""The index build on Ray: the corpus cut into work units, embedded by worker actors, committed by
the driver in unit order.

    driver: scan ──▶ plan units ──▶ dispatch ──────────────▶ adopt units in order ──▶ meta
    worker:                          unit ──▶ read/tokenize/embed/seal ──▶ DIR/units/NNNNN

- **Units.** Ray tasks, one per input file, count its documents (`Corpus.read_file`: the same
  reader, so bad inputs are skipped the same way) and note, in JSON lines files, where every
  `unit_documents`-th document ends (`Corpus.position`); the driver cuts each file into units of
  `unit_documents` documents (`--unit-documents`); `limit` applies to the whole corpus in file
  order, as in one process. A unit is `(file, first document, end)` and the position it starts
  at (a worker seeks there instead of parsing what comes before); its entries follow those of
  the units before it, so ids depend only on the corpus and the settings, never on the number of
  workers or the order in which units finish.
- **Workers** are the actors of a `tttnn.distributed.pool.WorkerPool` (`num_cpus=cpus_per_worker`,
  `num_gpus=gpus_per_worker`, torch threads = CPUs) that load the encoder and the LM tokenizer
  once (`tttnn.build.load_models`) and run the single-process pipeline
  (`tttnn.build.to_entries` / `embed_into`) on a unit, into a small store of its own in
  `DIR/units/NNNNN.tmp-A` (attempt A), HNSW graphs included; when it is sealed, the directory is
  renamed to `DIR/units/NNNNN`: the commit.
- **The driver** is the only writer of `DIR/manifest.json`: it adopts committed units in unit
  order (`EmbeddingStore.adopt`: the unit's shard directories are renamed into `DIR/shards/`
  and listed, with the counts so far in the meta, by one atomic manifest write), then removes the
  unit's directory. A unit's shards are its own, so shards hold up to `shard_size` entries. The
  meta is written as one process writes it (`tttnn.build.index_meta`, `finish_index`), with the
  units' plan and progress beside it.
- **Faults** (the pool's rules: `tttnn.distributed.pool`). A worker that dies (killed actor, lost
  node) is replaced and its unit re-run from scratch in a new `.tmp-A` directory (the old one is
  removed first); a unit whose worker died `MAX_ATTEMPTS` times stops the build. A unit is
  adopted once, from one committed directory, so no entry is stored twice or lost. A worker the
  cluster cannot place within `SCHEDULE_TIMEOUT` (a replacement after a node was lost, say) is
  given up and its unit goes to the others; with no worker left the build stops with an error
  instead of waiting forever. `resume=True` adopts what is committed and runs only the rest.
  Every worker must see `DIR` and the corpus at the same paths: a shared file system on a real
  cluster.
- **Same index.** Ids, documents, text, token ids, records, domains, counts and `corpus_stats`
  equal those of `tttnn.build.build_index`. Vectors are bitwise equal when every encoder batch
  holds the same entries: groups of 64 entries are aligned on the whole build's entry numbers
  (without chunking, entry = document), so this holds when `unit_documents` is a multiple of 64
  and the corpus is one file. A group that straddles a unit boundary (file boundaries, chunked
  builds) is split, and the encoder pads a batch to its longest text, which moves the last bits
  of the other rows of that batch: measured max |diff| in `tests/test_distributed_build.py`.
- **Cost.** Each unit re-reads its file from the start to its first document (reading and JSON
  parsing, no tokenizing or embedding): small next to the encoder, quadratic in units per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from tttnn.config import BuildConfig
from tttnn.corpus import ERROR_KINDS, Corpus, CorpusStats, Document
from tttnn.distributed.cluster import require_ray
from tttnn.distributed.pool import (
    MAX_ATTEMPTS,
    Done,
    PoolWorker,
    Started,
    WorkerPool,
    sized_session,
    worker_count,
)
from tttnn.index import Index, InvalidIndexError

__all__ = ["WorkUnit", "build_distributed", "plan_units"]

PathLike = Union[str, "os.PathLike[str]"]
UNITS = "units"
_MAX_EXAMPLES = 5  # as tttnn.corpus: examples kept per kind of bad input


@dataclass(frozen=True)
class WorkUnit:
    """Documents `[start, stop)` of input `file` (counting the documents the reader yields);
    `offset`: documents of the build before them. `to_end`: read the file past `stop` to its
    end, so bad inputs after its last document are counted (not when `limit` stops there)."""

    index: int
    file: int
    start: int
    stop: int
    offset: int
    to_end: bool
    at_line: Optional[int] = None
    """With `at_byte`: where document `start - 1` ends in a JSON lines file (lines, bytes of the
    decompressed stream), so a worker starts there instead of parsing the documents before."""
    at_byte: Optional[int] = None


def plan_units(
    counts: list[int],
    unit_documents: int,
    limit: Optional[int],
    starts: Optional[list[list[tuple[int, int]]]] = None,
) -> list[WorkUnit]:
    """The units of a corpus whose files hold `counts` documents. A file with no document still
    gets a unit (its bad inputs are counted); a file after the `limit` gets none. `starts[f][k]`:
    the position (`Corpus.position`) after document `(k + 1) * unit_documents - 1` of file `f`
    (JSON lines files; an empty list for the others), where unit `k + 1` of the file starts."""
    units: list[WorkUnit] = []
    done = 0
    for f, n in enumerate(counts):
        if limit is not None and done >= limit:
            break
        take = n if limit is None else min(n, limit - done)
        to_end = limit is None or done + n < limit
        known = starts[f] if starts is not None else []
        for a in range(0, max(take, 1), unit_documents):
            b = min(a + unit_documents, take)
            k = a // unit_documents - 1
            at = known[k] if 0 <= k < len(known) else (None, None)
            units.append(WorkUnit(len(units), f, a, b, done + a, to_end and b == take, *at))
        done += take
    return units


def _plan_sha256(labels: list[str], units: list[WorkUnit]) -> str:
    blob = json.dumps([labels, [asdict(u) for u in units]], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _unit_name(i: int) -> str:
    return f"{i:05d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _corpus_changed(unit: WorkUnit, path: Path, what: str) -> InvalidIndexError:
    return InvalidIndexError(
        f"{path} changed during the build: unit {unit.index} expected documents "
        f"[{unit.start}, {unit.stop}) there, {what}"
    )


def read_unit(corpus: Corpus, unit: WorkUnit) -> Iterator[Document]:
    """The documents of `unit`; `corpus.stats` counts what lies in the unit's part of its file:
    the bad inputs after the document before it, up to its last document (to the end of the
    file with `to_end`), so the units' statistics add up to one process's."""
    path = corpus.paths[unit.file]
    if unit.start == 0:
        corpus.stats = CorpusStats()
    if unit.start > 0 and unit.at_line is not None and unit.at_byte is not None:
        corpus.stats = CorpusStats()  # what comes after the document before the unit
        it = corpus.read_file(unit.file, start=(unit.at_line, unit.at_byte))
        skip = 0
    else:
        it = corpus.read_file(unit.file)
        skip = unit.start
    try:
        for i in range(skip):
            if next(it, None) is None:
                raise _corpus_changed(unit, path, f"it has only {i} documents")
        if skip > 0:
            corpus.stats = CorpusStats()  # what comes after the document before the unit
        for i in range(unit.start, unit.stop):
            doc = next(it, None)
            if doc is None:
                raise _corpus_changed(unit, path, f"it has only {i} documents")
            yield doc
        if unit.to_end and next(it, None) is not None:
            raise _corpus_changed(unit, path, "it has more")
    finally:
        it.close()


def _stats_dict(stats: CorpusStats) -> dict[str, Any]:
    return {"documents": stats.documents, "files": stats.files, "errors": dict(stats.errors),
            "examples": {k: list(v) for k, v in stats.examples.items()}}  # fmt: skip


def _merge_stats(into: CorpusStats, d: Mapping[str, Any]) -> None:
    """Add a unit's statistics; examples in unit order, as many as one process keeps."""
    into.documents += d.get("documents", 0)
    into.files += d.get("files", 0)
    for k, v in d.get("errors", {}).items():
        into.errors[k] = into.errors.get(k, 0) + v
    for k, v in d.get("examples", {}).items():
        ex = into.examples.setdefault(k, [])
        ex.extend(v[: max(0, _MAX_EXAMPLES - len(ex))])


def _stats_from(d: Mapping[str, Any]) -> CorpusStats:
    s = CorpusStats()
    s.errors = dict.fromkeys(ERROR_KINDS, 0)
    _merge_stats(s, d)
    return s


class BuildWorker(PoolWorker):
    """A Ray actor: loads the encoder and the LM tokenizer once (on its first call, so that
    `placed` answers as soon as the cluster has started it), then builds units."""

    def __init__(self, cfg: dict[str, Any], threads: int) -> None:
        self.cfg = BuildConfig.from_dict(cfg)
        self.threads = threads
        self.loading = threading.Lock()  # `ready` and `run` may come in together
        self.enc: Any = None
        self.lm_tok: Any = None
        self.identity: dict[str, Any] = {}
        self.current: tuple[int, int, int] = (-1, 0, 0)  # unit, documents, entries so far

    def _load(self) -> None:
        with self.loading:
            if self.enc is not None:
                return
            import torch

            from tttnn.build import load_models, models_identity
            from tttnn.distributed.devices import actor_device

            torch.set_num_threads(max(1, self.threads))
            device = actor_device(None)
            if device != "cpu":  # the encoder goes to "cuda", the current device: Ray's GPU
                torch.cuda.set_device(device)
            enc, self.lm_tok = load_models(self.cfg, progress=False)
            self.identity = models_identity(enc, self.lm_tok)
            self.enc = enc

    def ready(self) -> dict[str, Any]:
        """The encoder and tokenizer identity (the index meta records it), once loaded."""
        self._load()
        return self.identity

    def progress(self) -> tuple[int, int, int]:
        """`(unit, documents, entries)` of the unit in progress (runs alongside `run`)."""
        return self.current

    def run(
        self, unit: WorkUnit, attempt: int, paths: list[str], out: str, params: dict[str, Any],
        delay: float = 0.0,
    ) -> dict[str, Any]:  # fmt: skip
        """Build `unit` into `out/units/NNNNN` (committed by a rename); returns its summary."""
        from tttnn.build import _create, embed_into, to_entries

        self._load()
        cfg = self.cfg
        units = Path(out) / UNITS
        final = units / _unit_name(unit.index)
        tmp = units / f"{_unit_name(unit.index)}.tmp-{attempt}"
        if tmp.exists():
            shutil.rmtree(tmp)
        corpus = Corpus(paths, on_error=cfg.on_error, max_doc_bytes=cfg.max_doc_bytes)
        self.current = (unit.index, 0, 0)
        chunk_tok = self.lm_tok if self.lm_tok is not None else self.enc.tokenizer
        pairs = to_entries(((d, 0) for d in read_unit(corpus, unit)), self.lm_tok,
                           cfg.chunk_tokens, chunk_tok, lambda: 0)  # fmt: skip

        def on_group(group: list[Any], done: Any) -> None:
            self.current = (unit.index, sum(done.documents.values()), sum(done.entries.values()))
            if delay:
                time.sleep(delay)

        unit_params = {"kind": "tttnn.unit", "tokenizer": cfg.tokenizer, "dim": self.enc.dim,
                       "token_bits": params["token_bits"]}  # fmt: skip
        store = _create(tmp, unit_params, cfg)
        with store:
            # without chunking entry = document: align encoder groups on the whole build's
            offset = unit.offset if cfg.chunk_tokens is None else 0
            done = embed_into(pairs, store, self.enc, cfg, offset=offset, on_group=on_group)
            summary = {
                "kind": "tttnn.unit", "unit": asdict(unit), "attempt": attempt,
                "identity": self.identity, "params_sha256": _sha(params),
                "documents": dict(done.documents), "entries": dict(done.entries),
                "stored": len(store), "corpus_stats": _stats_dict(corpus.stats),
            }  # fmt: skip
            if sum(done.documents.values()) != unit.stop - unit.start:
                raise _corpus_changed(unit, corpus.paths[unit.file], "the count differs")
            store.set_meta(json.dumps(summary))
        del store
        try:
            os.rename(tmp, final)  # the commit
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp)  # an earlier attempt committed the same unit
        _fsync_dir(units)
        self.current = (-1, 0, 0)
        return summary


def _sha(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def scan_file(
    paths: list[str], i: int, cfg: dict[str, Any], every: int
) -> tuple[int, list[tuple[int, int]]]:
    """The documents the reader yields from input `i` (bad inputs skipped as in a build), and
    for a JSON lines file the position after every `every`-th of them (`plan_units`' starts)."""
    c = BuildConfig.from_dict(cfg)
    corpus = Corpus(paths, on_error=c.on_error, max_doc_bytes=c.max_doc_bytes)
    jsonl = corpus.is_jsonl(i)
    n, starts = 0, []
    for _ in corpus.read_file(i):
        n += 1
        if jsonl and n % every == 0:
            starts.append(corpus.position)
    return n, starts


def count_documents(
    paths: list[Path], cfg: BuildConfig, ray: Any = None
) -> tuple[list[int], list[list[tuple[int, int]]]]:
    """`scan_file` of every input: `(counts, starts)`. With `ray`, the files are scanned in
    parallel by Ray tasks (one CPU each), where the corpus lies on every node."""
    args = ([str(p) for p in paths], cfg.to_dict(), cfg.unit_documents)
    if ray is None:
        scans = [scan_file(args[0], i, args[1], args[2]) for i in range(len(paths))]
    else:
        task = ray.remote(num_cpus=1)(scan_file)
        scans = ray.get([task.remote(args[0], i, args[1], args[2]) for i in range(len(paths))])
    return [n for n, _ in scans], [st for _, st in scans]


def build_distributed(
    corpus_paths: PathLike | Iterable[PathLike],
    out: PathLike,
    config: BuildConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    unit_delay: float | Mapping[int, float] = 0.0,
    hook: Callable[[str, WorkUnit, Any], None] | None = None,
    **settings: Any,
) -> Index:
    """`tttnn.build.build_index` on Ray workers (`config.ray`: address, workers, CPUs and GPUs
    per worker); the index is the same (see the module doc). Joins the cluster at
    `config.ray.address`, or starts a local one for the build.

    Test and monitoring hooks: `unit_delay` seconds slept by a worker after each encoder call
    (one number, or by unit index) to slow units down; `hook(event, unit, actor)` is called on
    the driver at `"dispatch"` (actor: the worker's handle), `"commit"` and `"adopt"`.
    """
    from tttnn.build import lock_store, start_build

    require_ray()
    cfg, corpus, out, resuming = start_build(
        corpus_paths, Path(out).absolute(), config, settings, resume
    )
    rc = cfg.ray
    # a second writer is refused now, before a cluster starts or a unit is planned
    held = lock_store(out) if resuming else None

    def size(cpus: float, gpus: float, fit: bool) -> tuple[int, float]:
        n = worker_count(cpus, gpus, workers=rc.workers, cpus_per_worker=rc.cpus_per_worker,
                         gpus_per_worker=rc.gpus_per_worker)  # fmt: skip
        return n, n * rc.cpus_per_worker

    try:
        with sized_session(rc, size) as (ray, workers):
            driver = _Driver(ray, cfg, corpus, out, resuming, progress, unit_delay, hook)
            return driver.run(workers, held)
    except BaseException:
        if held is not None:
            held.release_lock()
        raise


class _Driver:
    """The build's own part: plan the units, hand them to the workers of a `WorkerPool`, adopt
    the committed ones in unit order, show the progress."""

    def __init__(
        self, ray: Any, cfg: BuildConfig, corpus: Corpus, out: Path, resuming: bool,
        progress: bool, unit_delay: float | Mapping[int, float],
        hook: Callable[[str, WorkUnit, Any], None] | None,
    ) -> None:  # fmt: skip
        self.ray, self.cfg, self.corpus, self.out = ray, cfg, corpus, out
        self.resuming, self.progress, self.unit_delay, self.hook = (
            resuming, progress, unit_delay, hook
        )  # fmt: skip
        self.identity: dict[str, Any] | None = None
        # what the adopted units hold
        self.adopted = 0
        self.stats = CorpusStats()
        self.docs: Counter[str] = Counter()
        self.entries: Counter[str] = Counter()

    def run(self, workers: int, held: Any = None) -> Index:
        """The build, on `workers` workers; `held`: the store of a build to resume, its writer
        lock taken (`tttnn.build.lock_store`)."""
        from tttnn.build import index_params, open_store

        cfg, out = self.cfg, self.out
        counts, starts = count_documents(self.corpus.paths, cfg, self.ray)
        units = plan_units(counts, cfg.unit_documents, cfg.limit, starts)
        labels = [Path(p).name for p in self.corpus.paths]
        plan = {"documents_per_unit": cfg.unit_documents, "count": len(units),
                "plan_sha256": _plan_sha256(labels, units)}  # fmt: skip
        if self.resuming:
            old = json.loads(held.meta or "{}")
            prog = old.get("units")
            if not isinstance(prog, dict) or "plan_sha256" not in prog:
                raise InvalidIndexError(
                    f"cannot resume {out} on Ray: it was built by one process (resume it "
                    "without --ray)"
                )
            if prog["plan_sha256"] != plan["plan_sha256"]:
                raise InvalidIndexError(
                    f"cannot resume {out}: its work units differ (documents_per_unit "
                    f"{prog.get('documents_per_unit')} there, {cfg.unit_documents} here, or "
                    "another corpus or limit)"
                )
            if old.get("status") == "complete" and prog.get("adopted") == len(units):
                held.release_lock()
                return Index.open(out)  # nothing left to do
        threads = max(1, int(cfg.ray.cpus_per_worker))
        pool = WorkerPool(BuildWorker, (cfg.to_dict(), threads), cfg.ray, workers,
                          what="build worker", concurrency=2)  # fmt: skip
        try:
            while self.identity is None:  # the first worker's models: the index's params
                for event in pool.wait():
                    if isinstance(event, Started):
                        self._check_identity(event.value)
            params = index_params(self.identity, cfg, self.corpus)
            with open_store(out, params, cfg, self.corpus, self.resuming, store=held) as store:
                return self._build(pool, store, params, plan, units)
        finally:
            pool.close()

    def _build(
        self, pool: WorkerPool, store: Any, params: dict[str, Any], plan: dict[str, Any],
        units: list[WorkUnit],
    ) -> Index:  # fmt: skip
        from tttnn.build import Embedded, finish_index

        unit_dir = self.out / UNITS
        if self.resuming:  # the plan was checked; the counts of the adopted units
            prog = json.loads(store.meta)["units"]
            self.adopted = int(prog.get("adopted", 0))
            self.stats = _stats_from(prog.get("corpus_stats", {}))
            self.docs.update(prog.get("documents", {}))
            self.entries.update(prog.get("entries", {}))
        unit_dir.mkdir(exist_ok=True)
        committed = self._committed(units, self.adopted, params)
        pending = deque(u for u in units[self.adopted :] if u.index not in committed)
        attempts: Counter[int] = Counter()
        shown = _Progress(self, units, committed)
        try:
            while True:
                self._adopt(store, committed, units, params, plan)
                if self.adopted == len(units):
                    break
                while pending and (slot := pool.free()) is not None:
                    unit = pending.popleft()
                    attempts[unit.index] += 1
                    self._dispatch(pool, slot, unit, attempts[unit.index], params)
                for event in pool.wait():
                    if isinstance(event, Started):
                        self._check_identity(event.value)
                    elif isinstance(event, Done):
                        shown.left(event.slot)
                        committed[event.item.index] = event.value
                        shown.committed(event.item)
                        self._hook("commit", event.item, None)
                    else:  # its worker died or was given up: the unit runs again
                        shown.left(event.slot)
                        unit = event.died
                        if unit is not None and attempts[unit.index] >= MAX_ATTEMPTS:
                            raise RuntimeError(
                                f"unit {unit.index} of the build: its worker died "
                                f"{attempts[unit.index]} times"
                            )
                        pending.extendleft([*event.queued, *([unit] if unit else [])])
                shown.update(pool, committed)
        finally:
            shown.close()
        counted = Embedded(self.docs, self.entries)
        index = finish_index(store, params, self.cfg, self.corpus, counted, self.stats,
                             units={**plan, "adopted": self.adopted})  # fmt: skip
        shutil.rmtree(unit_dir, ignore_errors=True)
        return index

    def _adopt(
        self, store: Any, committed: dict[int, dict[str, Any]], units: list[WorkUnit],
        params: dict[str, Any], plan: dict[str, Any],
    ) -> None:  # fmt: skip
        """Adopt the committed units that come next in unit order: their shards join the
        index, with the counts so far, in one manifest write each."""
        from tttnn.build import index_meta

        while self.adopted in committed:
            summary = committed.pop(self.adopted)
            _merge_stats(self.stats, summary["corpus_stats"])
            self.docs.update(summary["documents"])
            self.entries.update(summary["entries"])
            path = self.out / UNITS / _unit_name(self.adopted)
            self.adopted += 1
            meta = index_meta(
                params, "building", documents_so_far=sum(self.docs.values()),
                units={**plan, "adopted": self.adopted, "documents": dict(self.docs),
                       "entries": dict(self.entries), "corpus_stats": self.stats.to_dict()},
            )  # fmt: skip
            store.adopt(str(path), meta=json.dumps(meta))
            shutil.rmtree(path)
            self._hook("adopt", units[self.adopted - 1], None)

    def _dispatch(
        self, pool: WorkerPool, slot: int, unit: WorkUnit, attempt: int, params: dict[str, Any]
    ) -> None:
        for old in (self.out / UNITS).glob(f"{_unit_name(unit.index)}.tmp*"):
            shutil.rmtree(old, ignore_errors=True)
        delay = (
            self.unit_delay.get(unit.index, 0.0)
            if isinstance(self.unit_delay, Mapping)
            else self.unit_delay
        )
        paths = [str(p) for p in self.corpus.paths]
        pool.submit(slot, "run", unit, attempt, paths, str(self.out), params, delay, item=unit)
        self._hook("dispatch", unit, pool.actors[slot])

    def _check_identity(self, identity: dict[str, Any]) -> None:
        """Every worker must load the models the first one loaded (same vectors and ids)."""
        if self.identity is None:
            self.identity = identity
        elif identity != self.identity:
            raise InvalidIndexError(
                "the Ray workers do not load the same encoder and tokenizer: "
                f"{json.dumps(identity)} vs {json.dumps(self.identity)} (same files on every "
                "node?)"
            )

    def _committed(
        self, units: list[WorkUnit], adopted: int, params: dict[str, Any]
    ) -> dict[int, dict[str, Any]]:
        """Committed units found in `DIR/units` on a resume, by index; leftovers removed: adopted
        units, unfinished attempts, and committed ones that are not whole or not this plan's."""
        from tttnn._tttnn import EmbeddingStore

        found: dict[int, dict[str, Any]] = {}
        for d in sorted((self.out / UNITS).iterdir()):
            name = d.name
            if not name.isdigit() or int(name) < adopted or int(name) >= len(units):
                shutil.rmtree(d, ignore_errors=True)
                continue
            try:
                s = EmbeddingStore.open(str(d))
                summary = json.loads(s.meta)
                del s
            except Exception:  # an adoption interrupted after moving shards: re-run it
                summary = None
            ok = (
                summary is not None
                and summary.get("unit") == asdict(units[int(name)])
                and summary.get("identity") == self.identity
                and summary.get("params_sha256") == _sha(params)
            )
            if ok:
                assert summary is not None
                found[int(name)] = summary
            else:
                shutil.rmtree(d, ignore_errors=True)
        return found

    def _hook(self, event: str, unit: WorkUnit, actor: Any) -> None:
        if self.hook is not None:
            self.hook(event, unit, actor)


class _Progress:
    """The build's progress bar: documents of the adopted and committed units, and of the
    units in progress (asked of their workers about once a second)."""

    def __init__(
        self, driver: _Driver, units: list[WorkUnit], committed: dict[int, dict[str, Any]]
    ) -> None:
        from tqdm.auto import tqdm

        self.driver = driver
        self.bar = tqdm(total=sum(u.stop - u.start for u in units), unit="doc",
                        desc=f"indexing {driver.out.name} on Ray", disable=not driver.progress,
                        smoothing=0.1)  # fmt: skip
        self.started = time.perf_counter()
        # documents of the units done: adopted before this run, and committed
        self.base = sum(driver.docs.values()) + sum(
            sum(c["documents"].values()) for c in committed.values()
        )
        self.bar.update(self.base)
        self.bar_start, self.last_poll = self.base, 0.0
        self.in_flight: dict[int, tuple[int, int]] = {}  # slot -> (documents, entries) so far

    def committed(self, unit: WorkUnit) -> None:
        self.base += unit.stop - unit.start

    def left(self, slot: int) -> None:
        """Worker `slot` has no unit in progress any more."""
        self.in_flight.pop(slot, None)

    def update(self, pool: WorkerPool, committed: dict[int, dict[str, Any]]) -> None:
        now = time.perf_counter()
        if now - self.last_poll >= 1.0:
            self.last_poll = now
            self.in_flight = self._poll(pool)
        shown = self.base + sum(d for d, _ in self.in_flight.values())
        self.bar.update(max(0, shown - self.bar.n))
        entries = sum(self.driver.entries.values()) + sum(
            sum(s["entries"].values()) for s in committed.values()
        )
        rate = (shown - self.bar_start) / max(now - self.started, 1e-9)
        self.bar.set_postfix(entries=entries + sum(e for _, e in self.in_flight.values()),
                             docs_per_s=f"{rate:.1f}", workers=len(pool.ready),
                             refresh=False)  # fmt: skip

    def _poll(self, pool: WorkerPool) -> dict[int, tuple[int, int]]:
        """`(documents, entries)` done so far by each busy worker on its current unit."""
        ray = self.driver.ray
        asks = {pool.actors[slot].progress.remote(): (slot, unit.index)
                for slot, unit in pool.busy()}  # fmt: skip
        ready, _ = ray.wait(list(asks), num_returns=len(asks), timeout=1.0)
        out = {slot: self.in_flight[slot] for slot, _ in asks.values() if slot in self.in_flight}
        for ref in ready:
            slot, index = asks[ref]
            with contextlib.suppress(Exception):  # a dying worker: keep what was shown
                u, d, e = ray.get(ref)
                if u == index:
                    out[slot] = (d, e)
        return out

    def close(self) -> None:
        self.bar.close()
