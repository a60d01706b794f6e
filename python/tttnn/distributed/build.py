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
- **Workers** are actors (`num_cpus=cpus_per_worker`, `num_gpus=gpus_per_worker`, torch threads =
  CPUs) that load the encoder and the LM tokenizer once and run the single-process pipeline
  (`tttnn.build.to_entries` / `embed_into`) on a unit, into a small store of its own in
  `DIR/units/NNNNN.tmp-A` (attempt A), HNSW graphs included; when it is sealed, the directory is
  renamed to `DIR/units/NNNNN`: the commit.
- **The driver** is the only writer of `DIR/manifest.json`: it adopts committed units in unit
  order (`EmbeddingStore.adopt`: the unit's shard directories are renamed into `DIR/shards/`
  and listed, with the counts so far in the meta, by one atomic manifest write), then removes the
  unit's directory. A unit's shards are its own, so shards hold up to `shard_size` entries.
- **Faults.** A worker that dies (killed actor, lost node) is replaced and its unit re-run from
  scratch in a new `.tmp-A` directory (the old one is removed first); a unit is adopted once,
  from one committed directory, so no entry is stored twice or lost. A worker the cluster cannot
  place within `SCHEDULE_TIMEOUT` (a replacement after a node was lost, say) is given up and its
  unit goes to the others; with no worker left the build stops with an error instead of waiting
  forever. `resume=True` adopts what is committed and runs only the rest. Every worker must see
  `DIR` and the corpus at the same paths: a shared file system on a real cluster.
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
from tttnn.index import Index, InvalidIndexError

__all__ = ["WorkUnit", "build_distributed", "plan_units"]

PathLike = Union[str, "os.PathLike[str]"]
UNITS = "units"
_MAX_EXAMPLES = 5  # as tttnn.corpus: examples kept per kind of bad input
_MAX_ATTEMPTS = 3  # a unit whose workers die this many times fails the build
_POLL = 0.5  # seconds between progress polls of the workers


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


class BuildWorker:
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

    def placed(self) -> dict[str, Any]:
        """Answers once the cluster has placed and started this actor (nothing loaded yet):
        its process id and Ray node id."""
        import ray

        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def _load(self) -> None:
        with self.loading:
            if self.enc is not None:
                return
            import torch

            from tttnn.build import models_identity
            from tttnn.embed import Encoder

            torch.set_num_threads(max(1, self.threads))
            enc = Encoder(self.cfg.encoder, batch_size=self.cfg.batch_size, progress=False)
            if self.cfg.tokenizer is not None:
                from tttnn.models import load_tokenizer

                self.lm_tok = load_tokenizer(self.cfg.tokenizer)
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

        store = _create(tmp, {"kind": "tttnn.unit", "tokenizer": cfg.tokenizer}, cfg, self.enc.dim)
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
    from tttnn.distributed.cluster import require_ray, session

    require_ray()
    if config is not None and settings:
        raise TypeError("pass either config or settings as keywords, not both")
    cfg = config or BuildConfig.from_flat(**settings)
    rc = cfg.ray
    corpus = Corpus(corpus_paths, on_error=cfg.on_error, max_doc_bytes=cfg.max_doc_bytes)
    out = Path(out).absolute()
    resuming = resume and (out / "manifest.json").is_file()
    if out.exists() and not out.is_dir():
        raise InvalidIndexError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not resuming:
        hint = "" if resume else "; pass resume=True (--resume) to continue a build there"
        raise InvalidIndexError(f"{out} already exists and is not empty{hint}")
    local: dict[str, Any] = {}
    if rc.address is None and rc.workers is not None:
        local["num_cpus"] = max(os.cpu_count() or 1, int(-(-rc.workers * rc.cpus_per_worker // 1)))
    with session(rc.address, **local) as ray:
        return _Driver(ray, cfg, corpus, out, resuming, progress, unit_delay, hook).run()


class _Driver:
    def __init__(
        self, ray: Any, cfg: BuildConfig, corpus: Corpus, out: Path, resuming: bool,
        progress: bool, unit_delay: float | Mapping[int, float],
        hook: Callable[[str, WorkUnit, Any], None] | None,
    ) -> None:  # fmt: skip
        self.ray, self.cfg, self.corpus, self.out = ray, cfg, corpus, out
        self.resuming, self.progress, self.unit_delay, self.hook = (
            resuming, progress, unit_delay, hook
        )  # fmt: skip
        rc = cfg.ray
        self.actor_cls = ray.remote(
            num_cpus=rc.cpus_per_worker, num_gpus=rc.gpus_per_worker, max_concurrency=2
        )(BuildWorker)
        self.slots: list[Any] = []  # worker handles
        self.booting: dict[Any, int] = {}  # ready() ref -> slot
        self.placing: dict[Any, tuple[int, float]] = {}  # placed() ref -> (slot, asked at)
        self.retired: set[int] = set()  # slots whose actor the cluster could not place
        self.alive: set[int] = set()
        self.identity: dict[str, Any] | None = None

    # -- workers ----------------------------------------------------------------------------------
    def _start(self, slot: int) -> None:
        rc = self.cfg.ray
        actor = self.actor_cls.remote(self.cfg.to_dict(), max(1, int(rc.cpus_per_worker)))
        if slot == len(self.slots):
            self.slots.append(actor)
        else:
            self.slots[slot] = actor
        self.placing[actor.placed.remote()] = (slot, time.monotonic())
        self.booting[actor.ready.remote()] = slot

    def _booted(self, ref: Any) -> None:
        if ref in self.placing:  # started (or died: its ready() says so)
            del self.placing[ref]
            return
        slot = self.booting.pop(ref)
        try:
            ident = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._start(slot)  # died while loading: try again
            return
        except self.ray.exceptions.RayTaskError as e:  # could not load: the models' own error
            raise e.as_instanceof_cause() from None
        if self.identity is None:
            self.identity = ident
        elif ident != self.identity:
            raise InvalidIndexError(
                "the Ray workers do not load the same encoder and tokenizer: "
                f"{json.dumps(ident)} vs {json.dumps(self.identity)} (same files on every node?)"
            )
        self.alive.add(slot)

    def _workers(self) -> int:
        rc = self.cfg.ray
        if rc.workers is not None:
            return rc.workers
        res = self.ray.cluster_resources()
        if rc.gpus_per_worker > 0 and res.get("GPU", 0) > 0:
            return max(1, int(res["GPU"] // rc.gpus_per_worker))
        return max(1, int(res.get("CPU", 1) // rc.cpus_per_worker))

    # -- the build ----------------------------------------------------------------------------
    def run(self) -> Index:
        from tqdm.auto import tqdm

        from tttnn._tttnn import EmbeddingStore
        from tttnn.build import _create, _open_for_resume, index_params

        ray, cfg, out = self.ray, self.cfg, self.out
        counts, starts = count_documents(self.corpus.paths, cfg, ray)
        units = plan_units(counts, cfg.unit_documents, cfg.limit, starts)
        labels = [Path(p).name for p in self.corpus.paths]
        plan = {"documents_per_unit": cfg.unit_documents, "count": len(units),
                "plan_sha256": _plan_sha256(labels, units)}  # fmt: skip
        if self.resuming:
            old = json.loads(EmbeddingStore.open(str(out)).meta or "{}")
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
                return Index.open(out)  # nothing left to do
        for slot in range(self._workers()):
            self._start(slot)
        try:
            while self.identity is None:
                ready, _ = ray.wait([*self.booting, *self.placing], num_returns=1, timeout=_POLL)
                if ready:
                    self._booted(ready[0])
                else:
                    self._expire({}, deque(), [])
            params = index_params(self.identity, cfg, self.corpus)
            if self.resuming:
                store = _open_for_resume(out, params, self.corpus)
            else:
                store = _create(out, params, cfg, self.identity["dim"])
            with store:
                return self._build(store, params, plan, units, tqdm)
        finally:
            for actor in self.slots:
                with contextlib.suppress(Exception):
                    ray.kill(actor)

    def _build(
        self, store: Any, params: dict[str, Any], plan: dict[str, Any], units: list[WorkUnit],
        tqdm: Any,
    ) -> Index:  # fmt: skip
        ray, cfg, out = self.ray, self.cfg, self.out
        unit_dir = out / UNITS
        stats = CorpusStats()
        docs: Counter[str] = Counter()
        entries: Counter[str] = Counter()
        adopted = 0
        if self.resuming:  # the plan was checked; the counts of the adopted units
            prog = json.loads(store.meta)["units"]
            adopted = int(prog.get("adopted", 0))
            stats = _stats_from(prog.get("corpus_stats", {}))
            docs.update(prog.get("documents", {}))
            entries.update(prog.get("entries", {}))
        unit_dir.mkdir(exist_ok=True)
        committed = self._committed(units, adopted, params)
        pending = deque(u for u in units[adopted:] if u.index not in committed)
        attempts: Counter[int] = Counter()
        running: dict[Any, tuple[int, WorkUnit]] = {}  # run() ref -> (slot, unit)
        idle = [s for s in range(len(self.slots)) if s not in self.retired]
        total_docs = sum(u.stop - u.start for u in units)
        bar = tqdm(total=total_docs, unit="doc", desc=f"indexing {out.name} on Ray",
                   disable=not self.progress, smoothing=0.1)  # fmt: skip
        started = time.perf_counter()
        done_docs = sum(docs.values())  # adopted before this run
        base_docs = done_docs + sum(sum(c["documents"].values()) for c in committed.values())
        bar.update(base_docs)
        last_poll, bar_start = 0.0, base_docs
        in_flight: dict[int, tuple[int, int]] = {}  # slot -> (documents, entries) of its unit

        def meta(status: str) -> dict[str, Any]:
            m = {**params, "status": status, "documents_so_far": sum(docs.values()),
                 "units": {**plan, "adopted": adopted, "documents": dict(docs),
                           "entries": dict(entries), "corpus_stats": stats.to_dict()}}  # fmt: skip
            return m

        try:
            while adopted < len(units):
                while adopted in committed:  # adopt in unit order
                    summary = committed.pop(adopted)
                    _merge_stats(stats, summary["corpus_stats"])
                    docs.update(summary["documents"])
                    entries.update(summary["entries"])
                    path = unit_dir / _unit_name(adopted)
                    adopted += 1
                    store.adopt(str(path), meta=json.dumps(meta("building")))
                    shutil.rmtree(path)
                    self._hook("adopt", units[adopted - 1], None)
                if adopted == len(units):
                    break
                while idle and pending:
                    # a started worker first: a booting one may never be placed
                    slot = next((i for i in idle if i in self.alive), idle[0])
                    idle.remove(slot)
                    unit = pending.popleft()
                    attempts[unit.index] += 1
                    for old in unit_dir.glob(f"{_unit_name(unit.index)}.tmp*"):
                        shutil.rmtree(old, ignore_errors=True)
                    delay = (
                        self.unit_delay.get(unit.index, 0.0)
                        if isinstance(self.unit_delay, Mapping)
                        else self.unit_delay
                    )
                    ref = self.slots[slot].run.remote(
                        unit, attempts[unit.index], [str(p) for p in self.corpus.paths],
                        str(out), params, delay,
                    )  # fmt: skip
                    running[ref] = (slot, unit)
                    self._hook("dispatch", unit, self.slots[slot])
                ready, _ = ray.wait([*running, *self.booting, *self.placing], num_returns=1,
                                    timeout=_POLL)  # fmt: skip
                self._expire(running, pending, idle)
                for ref in ready:
                    if ref in self.booting or ref in self.placing:
                        self._booted(ref)
                        continue
                    slot, unit = running.pop(ref)
                    in_flight.pop(slot, None)
                    try:
                        summary = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        # the worker died (killed, node lost): replace it, re-run its unit
                        if attempts[unit.index] >= _MAX_ATTEMPTS:
                            raise RuntimeError(
                                f"unit {unit.index} of the build: its worker died "
                                f"{attempts[unit.index]} times"
                            ) from None
                        self.alive.discard(slot)
                        with contextlib.suppress(Exception):
                            ray.kill(self.slots[slot])
                        self._start(slot)
                        pending.appendleft(unit)
                        idle.append(slot)
                        continue
                    except ray.exceptions.RayTaskError as e:
                        raise e.as_instanceof_cause() from None
                    committed[unit.index] = summary
                    base_docs += unit.stop - unit.start
                    idle.append(slot)
                    self._hook("commit", unit, None)
                now = time.perf_counter()
                if now - last_poll >= 1.0:
                    last_poll = now
                    in_flight = self._poll(running, in_flight)
                shown = base_docs + sum(d for d, _ in in_flight.values())
                bar.update(max(0, shown - bar.n))
                committed_entries = sum(entries.values()) + sum(
                    sum(s["entries"].values()) for s in committed.values()
                )
                rate = (shown - bar_start) / max(now - started, 1e-9)
                bar.set_postfix(entries=committed_entries + sum(e for _, e in in_flight.values()),
                                docs_per_s=f"{rate:.1f}", workers=len(self.alive),
                                refresh=False)  # fmt: skip
        finally:
            bar.close()
        if not docs and cfg.limit != 0:
            raise InvalidIndexError(f"no documents in {', '.join(map(str, self.corpus.paths))}")
        if cfg.hnsw:
            store.build_hnsw()  # graphs came with the units; this records the settings if empty
        final = {
            **params, "status": "complete", "documents": sum(docs.values()), "entries": len(store),
            "domains": {d: {"documents": docs[d], "entries": entries[d]} for d in sorted(docs)},
            "corpus_stats": stats.to_dict(),
            "units": {**plan, "adopted": adopted},
        }  # fmt: skip
        store.set_meta(json.dumps(final))
        shutil.rmtree(unit_dir, ignore_errors=True)
        return Index(store, final)

    def _expire(
        self, running: dict[Any, tuple[int, WorkUnit]], pending: deque[WorkUnit], idle: list[int]
    ) -> None:
        """Give up on the workers not placed within SCHEDULE_TIMEOUT (the cluster cannot place
        them): their units go back to the queue and their slots are retired. With no worker
        left, the build stops (the committed units are kept for --resume)."""
        from tttnn.distributed.cluster import SCHEDULE_TIMEOUT, unschedulable

        now = time.monotonic()
        for ref, (slot, asked) in list(self.placing.items()):
            if now - asked < SCHEDULE_TIMEOUT:
                continue
            del self.placing[ref]
            for r in [r for r, s in self.booting.items() if s == slot]:
                del self.booting[r]
            with contextlib.suppress(Exception):
                self.ray.kill(self.slots[slot])
            self.retired.add(slot)
            if slot in idle:
                idle.remove(slot)
            for run_ref, (s, unit) in list(running.items()):
                if s == slot:
                    del running[run_ref]
                    pending.appendleft(unit)
        if not self.alive and not self.booting:
            rc = self.cfg.ray
            raise unschedulable("build worker", rc.cpus_per_worker, rc.gpus_per_worker)

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

    def _poll(
        self, running: dict[Any, tuple[int, WorkUnit]], old: dict[int, tuple[int, int]]
    ) -> dict[int, tuple[int, int]]:
        """`(documents, entries)` done so far by each busy worker on its current unit."""
        ray = self.ray
        asks = {self.slots[slot].progress.remote(): (slot, unit.index)
                for slot, unit in running.values()}  # fmt: skip
        ready, _ = ray.wait(list(asks), num_returns=len(asks), timeout=1.0)
        out = {slot: old[slot] for slot, _ in asks.values() if slot in old}
        for ref in ready:
            slot, index = asks[ref]
            with contextlib.suppress(Exception):  # a dying worker: keep what was shown
                u, d, e = ray.get(ref)
                if u == index:
                    out[slot] = (d, e)
        return out

    def _hook(self, event: str, unit: WorkUnit, actor: Any) -> None:
        if self.hook is not None:
            self.hook(event, unit, actor)
