"""Evaluation runs: retrieve, pack, test-time train, score, reset, for every test document.

`RUN/config.json` holds every setting (`EvalConfig.to_dict()`) and library versions;
`RUN/results.jsonl` gets one row per document as soon as it is done, so an interrupted run
resumes where it stopped when the same command is run again (from any directory: where the run
lives and how it runs are not compared). One process writes a run at a time (a lock in RUN/). A
document whose retrieval or training fails is written with `status: "failed"` and the reason:
never scored as if it had been trained; failed documents are retried on resume. A row is what
`tttnn.compare.row_problem` accepts, on writing and on resuming alike: a document whose score is
not a finite number (the training diverged) is a failed document, and results.jsonl is strict
JSON. Settings the index or the model cannot run (`check_settings`) are refused before anything
is written.
"""

from __future__ import annotations

import json
import platform
import time
import traceback
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tttnn.compare import parse_row, row_problem
from tttnn.config import EvalConfig, SettingError, TestSetConfig
from tttnn.corpus import Document, read_corpus
from tttnn.index import SearchResult, search_texts
from tttnn.metrics import byte_weighted_bpb
from tttnn.select import search_depth, select_neighbors

__all__ = [
    "EvalConfig", "EvalSummary", "Executor", "check_settings", "evaluate_here",
    "iter_test_documents", "load_trainer", "run_eval", "split_document",
]  # fmt: skip

CONFIG_FORMAT = 2  # config.json layout: {"format", "config": EvalConfig.to_dict(), ...}


@dataclass
class EvalSummary:
    """What a call of `run_eval` did: documents scored now, failed now, done before."""

    run_dir: Path
    ok: int
    failed: int
    resumed: int

    @property
    def total(self) -> int:
        return self.ok + self.failed + self.resumed


def iter_test_documents(test: TestSetConfig) -> Iterator[Document]:
    """Test documents in file order, `limit_per_domain` per domain, optionally some domains only."""
    per_domain: dict[str, int] = {}
    n = 0
    for doc in read_corpus(list(test.data), on_error="skip"):
        if test.domains and doc.domain not in test.domains:
            continue
        if (
            test.limit_per_domain is not None
            and per_domain.get(doc.domain, 0) >= test.limit_per_domain
        ):
            continue
        per_domain[doc.domain] = per_domain.get(doc.domain, 0) + 1
        yield doc
        n += 1
        if test.limit is not None and n >= test.limit:
            return


def _versions() -> dict[str, str]:
    import numpy
    import torch
    import transformers

    import tttnn

    return {
        "tttnn": tttnn.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


_NUMERIC_ISA = ("avx512_bf16", "amx_bf16", "avx512f", "avx2")
"""CPU features that change which matmul kernels (and so which rounding) torch uses in bf16."""


def cpu_description() -> str:
    """The CPU's model name and its bf16-relevant features, from /proc/cpuinfo (Linux) or
    `platform.processor()` elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    first: dict[str, str] = {}  # each field of the first processor
    for ln in lines:
        k, _, v = ln.partition(":")
        first.setdefault(k.strip(), v.strip())
    name = first.get("model name") or platform.machine()
    isa = [f for f in _NUMERIC_ISA if f in first.get("flags", "").split()]
    return f"{name} ({', '.join(isa)})" if isa else name


_ENV: dict[str, Any] = {}


def row_environment(device: Any) -> dict[str, Any]:
    """Where a row was computed: device, CPU, torch threads and library versions. A resumed run
    may span machines; bf16 autocast rounds differently on different CPUs, so the same
    document's k = 0 score can differ between them in the third digit (rows are paired within
    themselves: each change is against its own k = 0)."""
    import torch

    key = str(device)
    if key not in _ENV:
        dev = torch.device(device)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_description()
        _ENV[key] = {"device": key, "hardware": name, **_versions()}
    return {**_ENV[key], "threads": torch.get_num_threads()}


def results_of(row: dict[str, Any]) -> dict[str, Any]:
    """A results row without what differs between two runs of the same settings on the same
    documents: timings (`*_s`, `redispatched`) and where it ran (`env`)."""
    return {k: v for k, v in row.items()
            if not k.endswith("_s") and k not in ("redispatched", "env")}  # fmt: skip


def _atomic_write_text(path: Path, text: str) -> None:
    """The core's rule for every file tttnn replaces: never written through a symbolic link."""
    from tttnn._tttnn import atomic_write

    atomic_write(path, text)


def _home_relative(path: str) -> str:
    """`path` with the user's home folder as `~`: a run's record names where the model was
    without naming the machine's user (runs are shared and committed)."""
    home = str(Path.home())
    if path == home or path.startswith(home.rstrip("/") + "/"):
        return "~" + path[len(home.rstrip("/")) :]
    return path


def _check_or_write_config(out: Path, cfg: EvalConfig, resolved_model: str) -> None:
    """Write RUN/config.json, or check that the run there has the same settings."""
    path = out / "config.json"
    if path.is_symlink():  # read nothing through it either (`atomic_write` refuses to write)
        raise OSError(f"{path}: is a symbolic link where tttnn keeps a file of its own; remove it")
    settings = cfg.results_settings()
    if not path.exists():
        record = {"format": CONFIG_FORMAT, "config": cfg.to_dict(),
                  "model_path": _home_relative(resolved_model), "versions": _versions()}  # fmt: skip
        _atomic_write_text(path, json.dumps(record, indent=2))
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    if old.get("format") != CONFIG_FORMAT:
        raise ValueError(
            f"{out} holds a run written by another version of tttnn (config format "
            f"{old.get('format', 1)}); `tttnn report {out}` still reads it, resume it with that "
            "version or start a new --out"
        )
    before = EvalConfig.from_dict(old["config"]).results_settings()
    diff = _diff(before, settings)
    if diff:
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(diff)}); "
            "use another --out, or the same settings to resume"
        )


def _diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} -> {y!r}")
    return out


def _done_documents(results: Path) -> set[str]:
    """Ids of the documents already scored; rewrites results.jsonl without a torn last row (an
    interrupted write) and without failed rows, so those documents are retried. A row that is
    not one tttnn writes (`row_problem`: not an object, no doc_id, a score that is not a finite
    number, ...) is an error naming its file and line, the file untouched: which document it was
    cannot be known, and dropping it might lose a result."""
    if not results.exists():
        return set()
    lines = results.read_bytes().split(b"\n")
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    kept: list[dict[str, Any]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        problem, row = parse_row(raw)
        if row is None and i == last:
            continue  # a torn row from an interrupted write: redone
        if problem is not None:
            raise ValueError(
                f"{results}:{i + 1}: {problem}: not a row tttnn writes; remove or repair that "
                "line and run again (a document without a row is evaluated again)"
            )
        if row["status"] == "ok":
            kept.append(row)
    _atomic_write_text(results, "".join(_row_line(r) for r in kept))
    return {str(r["doc_id"]) for r in kept}


def _row_line(row: dict[str, Any]) -> str:
    """A row as one line of results.jsonl: strict JSON (NaN or infinity is a ValueError)."""
    return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"


def _append_row(path: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Append one durable row (by the core: a symbolic link at `path` is refused) and return
    it: `row`, or where `row_problem` refuses it (a score that is not a finite number: the
    training diverged) a failed row saying why, so every executor's rows follow one rule."""
    from tttnn._tttnn import append_bytes

    problem = row_problem(row)
    if problem is not None:
        named = row if isinstance(row, dict) else {}
        row = {"doc_id": named.get("doc_id"), "domain": named.get("domain"), "status": "failed",
               "error": f"not a result: {problem}"}  # fmt: skip
        if row_problem(row) is not None:  # the executor's fault, not the document's
            raise RuntimeError(f"the evaluation yielded a row that names no document: {problem}")
    append_bytes(path, _row_line(row))
    return row


def split_document(text: str, tokenizer: Any, max_length: int) -> tuple[str, str]:
    """The paper's no-overlap check: the query is the first half of the document (capped at
    `max_length` tokens), the scored text is the rest."""
    half = len(text) // 2
    # Cut at whitespace near the middle so no word is split between query and scored text.
    cut = text.rfind(" ", 0, half)
    cut = cut if cut > half // 2 else half
    query, rest = text[:cut], text[cut:]
    ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    if len(ids) > max_length:
        query = tokenizer.decode(ids[:max_length])
    return query, rest


@dataclass
class Retrieved:
    """A test document's query and scored text, and its neighbors (`hits`, None when the run
    trains on none) with the query's embedding; `seconds`: its share of the batch's search."""

    query: str
    scored: str
    hits: Optional[SearchResult]
    query_vector: Optional[np.ndarray]
    seconds: float
    pieces: int = 1
    """How many pieces of the query were searched (`--query-span whole`; 1: its opening)."""


def retrieve(
    docs: Sequence[Document], cfg: EvalConfig, index: Any, tokenizer: Any
) -> list[Retrieved]:
    """The neighbors of a batch of test documents (`search_texts`: the opening of each, or with
    `--query-span whole` every piece), whatever the index (`Index`, or `RayIndex` over Ray)."""
    r, max_length = cfg.retrieval, cfg.ttt.max_length
    pairs = [
        split_document(d.text, tokenizer, max_length) if cfg.test.split_text else (d.text, d.text)
        for d in docs
    ]
    if r.neighbors == 0 or not docs:
        return [Retrieved(q, s, None, None, 0.0) for q, s in pairs]
    t = time.perf_counter()
    queries = [q for q, _ in pairs]
    results, vectors, pieces = search_texts(
        index, queries, search_depth(r), span=r.query_span, guard=queries if r.guard else None,
        exact=r.exact, ef=r.ef, threshold=r.guard_threshold, shards=r.shards,
    )  # fmt: skip
    share = (time.perf_counter() - t) / len(docs)
    return [
        Retrieved(q, s, hits, vectors[i], share, pieces[i])
        for i, ((q, s), hits) in enumerate(zip(pairs, results))
    ]


def neighbor_windows(
    retrieved: Retrieved, cfg: EvalConfig, index: Any, tokenizer: Any
) -> tuple[dict[str, Any], tuple[Any, Any, Any]]:
    """The retrieved neighbors packed into training windows, nearest first: the results-row
    fields `retrieve_s`, `neighbors`, `guard_dropped`, `pack_s`, and `(windows, lengths,
    doc_index)`. Fewer neighbors than asked is an error. `tttnn.lm_eval` trains through here."""
    from tttnn.pack import pack_neighbors

    neighbors, dropped = [], 0
    if retrieved.hits is not None:
        neighbors, dropped = retrieved.hits.neighbors, retrieved.hits.dropped
        if len(neighbors) < cfg.retrieval.neighbors:
            raise RuntimeError(
                f"retrieval returned {len(neighbors)} neighbors, {cfg.retrieval.neighbors} asked"
            )
    found: dict[str, Any] = {"retrieve_s": retrieved.seconds}
    if retrieved.hits is not None:  # SIFT picks among the candidates; nearest keeps them all
        neighbors, selection = select_neighbors(
            neighbors, retrieved.query_vector, index.store, cfg.retrieval
        )
        found.update(selection)
    found["neighbors"] = [{"id": int(n.id), "score": float(n.score)} for n in neighbors]
    if cfg.retrieval.query_span == "whole":
        found["query_pieces"] = retrieved.pieces
    found["guard_dropped"] = dropped
    t = time.perf_counter()
    ids = [int(n.id) for n in neighbors]
    packed = pack_neighbors(index.store, ids, cfg.pack, cfg.ttt.max_length, tokenizer)
    found["pack_s"] = time.perf_counter() - t
    return found, packed


def evaluate_document(
    doc: Document, cfg: EvalConfig, index: Any, trainer: Any, retrieved: Optional[Retrieved] = None
) -> dict[str, Any]:
    """Pack, test-time train and score one document: its results row. `retrieved`: its
    neighbors from a batch (`retrieve`); searched here when not given."""
    from tttnn.baselines import dynamic_eval, in_context_bpb

    if retrieved is None:
        retrieved = retrieve([doc], cfg, index, trainer.tokenizer)[0]
    row: dict[str, Any] = {"doc_id": doc.doc_id, "domain": doc.domain}
    r, max_length = cfg.retrieval, cfg.ttt.max_length
    query, scored = retrieved.query, retrieved.scored
    row["bytes"] = len(scored.encode("utf-8"))
    found, (windows, lengths, doc_index) = neighbor_windows(
        retrieved, cfg, index, trainer.tokenizer
    )
    row.update(found)
    ids = list(dict.fromkeys(n["id"] for n in found["neighbors"]))  # a SIFT repeat: once
    outcome = trainer.run(scored, windows, lengths, doc_index, n_neighbors=r.neighbors)
    row["tokens"] = outcome.n_tokens
    row["bpb"] = {str(k): v for k, v in outcome.bpb.items()}
    row["windows_trained"] = outcome.windows_trained  # = optimizer steps (one per window)
    row["tokens_trained"] = outcome.tokens_trained
    row["steps"] = {str(k): v for k, v in outcome.steps_at.items()}
    row["tokens_trained_at"] = {str(k): v for k, v in outcome.tokens_trained_at.items()}
    for phase in ("train", "score", "reset"):
        row[f"{phase}_s"] = outcome.seconds.get(phase, 0.0)
    if "in-context" in cfg.baselines:
        t = time.perf_counter()
        row["bpb_in_context"] = in_context_bpb(trainer, scored, index.store, ids, max_length)
        row["in_context_s"] = time.perf_counter() - t
    if "dynamic-eval" in cfg.baselines:  # config check: only with split_text
        t = time.perf_counter()
        row.update(dynamic_eval(trainer, query, scored, r.neighbors))
        row["dynamic_eval_s"] = time.perf_counter() - t
    return row


RETRIEVE_BATCH = 64
"""Test documents searched together (one fan-out over the shards per batch)."""


Rows = Generator[dict[str, Any], None, None]
Executor = Callable[[EvalConfig, str, Any, list[Document]], Rows]
"""Where the documents of a run are evaluated: `executor(cfg, resolved model, index, documents)`
yields their rows in the order they finish (`evaluate_here`, or Ray's
`tttnn.distributed.evaluate.evaluate_on_ray`)."""


def run_eval(cfg: EvalConfig, executor: Optional[Executor] = None) -> EvalSummary:
    """Run (or resume) an evaluation in `cfg.run.out`, the documents evaluated by `executor`
    (default: `evaluate_here`, in this process; `tttnn.jobs.evaluate` picks Ray's for
    `cfg.ray.ray`: the same rows). This process is the only writer of `RUN/results.jsonl`."""
    from tqdm.auto import tqdm

    from tttnn._tttnn import DirLock
    from tttnn.models import model_context, resolve_model

    if executor is None:
        if cfg.ray.ray:
            raise ValueError(
                "this config runs on Ray (ray=True): run it with tttnn.jobs.evaluate, or pass "
                "the Ray executor (tttnn.distributed.evaluate.evaluate_on_ray)"
            )
        executor = evaluate_here
    # Everything that can be checked is, before anything is written: a run directory holds
    # settings that run, so the corrected command never meets "a run with other settings".
    index = open_index(cfg)
    resolved = resolve_model(cfg.model)
    check_settings(cfg, index, model_context(resolved))
    docs = list(iter_test_documents(cfg.test))
    if not docs:
        raise ValueError(f"no test documents in {', '.join(cfg.test.data)}")
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    with DirLock(out, what="run"):
        _check_or_write_config(out, cfg, resolved)
        results = out / "results.jsonl"
        done = _done_documents(results)
        todo = [d for d in docs if d.doc_id not in done]
        summary = EvalSummary(out, ok=0, failed=0, resumed=len(docs) - len(todo))
        if not todo:
            return summary
        rows = executor(cfg, resolved, index, todo)
        scored: list[tuple[float, float, int]] = []  # bpb at 0, at the last k, bytes
        bar = tqdm(total=len(todo), desc="eval", unit="doc", disable=not cfg.run.progress,
                   dynamic_ncols=True)  # fmt: skip
        try:
            for row in rows:
                row = _append_row(results, row)
                bar.update(1)
                if row["status"] == "ok":
                    summary.ok += 1
                    bpb = row["bpb"]
                    scored.append((bpb["0"], bpb[str(max(map(int, bpb)))], row["bytes"]))
                    before = byte_weighted_bpb([s[0] for s in scored], [s[2] for s in scored])
                    after = byte_weighted_bpb([s[1] for s in scored], [s[2] for s in scored])
                    bar.set_postfix_str(
                        f"{row['domain']} bpb {before:.3f}→{after:.3f} (k={max(cfg.ks)})"
                    )
                else:
                    summary.failed += 1
                    bar.write(f"FAILED {row['doc_id']}: {row['error']}")
        finally:
            rows.close()
            bar.close()
    return summary


def check_settings(cfg: EvalConfig, index: Any, context: Optional[int]) -> None:
    """The settings of `cfg` that depend on the index or the model, checked against them (those
    that depend on neither are checked when the config is made): `shards` the index has, no more
    `neighbors` than the entries searched (fewer, once the leakage guard drops a document's own
    copy, is that document's failure), and a `max_length` within the model's `context` (its
    positions; None: unknown). `SettingError` otherwise."""
    r = cfg.retrieval
    try:
        entries = index.entries_in(r.shards)
    except IndexError as e:  # a shard the index does not have, named
        raise SettingError(f"shards: {e}") from None
    if r.neighbors > entries:
        where = f"shards {', '.join(map(str, r.shards))} of " if r.shards else ""
        raise SettingError(
            f"neighbors {r.neighbors} is more than the {entries} entries of {where}the index "
            f"{index.path}: ask for at most {entries}"
        )
    if context is not None and cfg.ttt.max_length > context:
        raise SettingError(
            f"max_length {cfg.ttt.max_length} exceeds the model's context of {context} tokens "
            f"({cfg.model}): use at most {context}"
        )


def open_index(cfg: EvalConfig) -> Any:
    """The run's index, checked complete. With a device set (`--device`), the queries are
    embedded there too, as the model runs there (else both go to CUDA when present)."""
    from tttnn.index import Index

    index = Index.open(cfg.index)
    index.check_complete()
    if cfg.run.device is not None and cfg.retrieval.neighbors > 0:
        from tttnn.embed import Encoder

        name = index.meta.get("encoder") or None  # None: the default, as `Index.encoder` has it
        encoder = Encoder(name, device=cfg.run.device, progress=False)
        index = Index.open(cfg.index, encoder=encoder)  # which checks it is the index's encoder
    return index


def failed_row(doc: Document, e: BaseException, seconds: float) -> dict[str, Any]:
    """The row of a document whose retrieval or training raised `e`."""
    return {"doc_id": doc.doc_id, "domain": doc.domain, "status": "failed",
            "error": f"{type(e).__name__}: {e}",
            "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=5)),
            "total_s": seconds}  # fmt: skip


def batches(docs: Sequence[Document], size: int = RETRIEVE_BATCH) -> Iterator[list[Document]]:
    for i in range(0, len(docs), size):
        yield list(docs[i : i + size])


def retrieve_or_fail(
    batch: list[Document], cfg: EvalConfig, index: Any, tokenizer: Any
) -> list[Retrieved | dict[str, Any]]:
    """`retrieve`, with a failed row for every document of a batch whose search raised."""
    t0 = time.perf_counter()
    try:
        return list(retrieve(batch, cfg, index, tokenizer))
    except Exception as e:
        return [failed_row(d, e, time.perf_counter() - t0) for d in batch]


def score_document(
    doc: Document, cfg: EvalConfig, index: Any, trainer: Any, retrieved: Retrieved
) -> dict[str, Any]:
    """`evaluate_document` as a row that says `ok`, or `failed` with the reason: a failure is
    never scored as if it had been trained."""
    t0 = time.perf_counter()
    try:
        row = evaluate_document(doc, cfg, index, trainer, retrieved)
        row["status"] = "ok"
    except Exception as e:
        return failed_row(doc, e, time.perf_counter() - t0)
    row["total_s"] = time.perf_counter() - t0 + retrieved.seconds
    row["env"] = row_environment(trainer.device)
    return row


def evaluate_here(cfg: EvalConfig, resolved: str, index: Any, todo: list[Document]) -> Rows:
    """Rows of the `todo` documents, evaluated in this process (an `Executor`)."""
    _, tokenizer, trainer = load_trainer(cfg, index, model=resolved, device=cfg.run.device)
    for batch in batches(todo):
        for doc, got in zip(batch, retrieve_or_fail(batch, cfg, index, tokenizer)):
            yield got if isinstance(got, dict) else score_document(doc, cfg, index, trainer, got)


def load_trainer(
    cfg: EvalConfig, index: Any, *, model: Optional[str] = None, device: Any = None
) -> tuple[Any, Any, Any]:
    """`(model, tokenizer, trainer)` ready for the documents of `cfg`: the model resolved (or
    `model`, resolved already) and loaded on `device` (default: CUDA when present), its tokenizer
    checked against the token ids `index` stores (when the run trains on neighbors), and a
    `TestTimeTrainer` of `cfg.ttt` around it. The one setup of a run here, of a Ray worker and of
    the lm-eval model."""
    from tttnn.models import load_causal_lm, resolve_model
    from tttnn.ttt import TestTimeTrainer

    lm, tokenizer = load_causal_lm(model or resolve_model(cfg.model), device=device)
    if cfg.retrieval.neighbors > 0:
        index.check_tokens_for(tokenizer, retokenize=cfg.pack.retokenize)
    return lm, tokenizer, TestTimeTrainer(lm, tokenizer, cfg.ttt)
