"""Evaluation runs: retrieve, pack, test-time train, score, reset, for every test document.

`RUN/config.json` holds every setting (`EvalConfig.to_dict()`) and library versions;
`RUN/results.jsonl` gets one row per document as soon as it is done, so an interrupted run
resumes where it stopped when the same command is run again (from any directory: where the run
lives and how it runs are not compared). One process writes a run at a time (a lock in RUN/). A
document whose retrieval or training fails is written with `status: "failed"` and the reason:
never scored as if it had been trained; failed documents are retried on resume.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tttnn.config import EvalConfig, TestSetConfig
from tttnn.corpus import Document, read_corpus
from tttnn.metrics import byte_weighted_bpb

__all__ = ["EvalConfig", "EvalSummary", "iter_test_documents", "run_eval", "split_document"]

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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_or_write_config(out: Path, cfg: EvalConfig, resolved_model: str) -> None:
    """Write RUN/config.json, or check that the run there has the same settings."""
    path = out / "config.json"
    settings = cfg.results_settings()
    if not path.exists():
        record = {"format": CONFIG_FORMAT, "config": cfg.to_dict(), "model_path": resolved_model,
                  "versions": _versions()}  # fmt: skip
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
    """Ids of the documents already scored; rewrites results.jsonl without torn or failed rows,
    so failed documents are retried."""
    if not results.exists():
        return set()
    kept: list[dict[str, Any]] = []
    with open(results, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn row from an interrupted write: redone
            if row.get("status") == "ok":
                kept.append(row)
    _atomic_write_text(results, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return {r["doc_id"] for r in kept}


def _append_row(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


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


def evaluate_document(doc: Document, cfg: EvalConfig, index: Any, trainer: Any) -> dict[str, Any]:
    """Retrieve, pack, test-time train and score one document: its results row."""
    from tttnn.baselines import dynamic_eval, in_context_bpb
    from tttnn.pack import pack_neighbors

    row: dict[str, Any] = {"doc_id": doc.doc_id, "domain": doc.domain}
    r, max_length = cfg.retrieval, cfg.ttt.max_length
    query, scored = (
        split_document(doc.text, trainer.tokenizer, max_length) if cfg.test.split_text
        else (doc.text, doc.text)
    )  # fmt: skip
    row["bytes"] = len(scored.encode("utf-8"))
    t = time.perf_counter()
    neighbors, dropped = [], 0
    if r.neighbors > 0:
        hits = index.search([query], k=r.neighbors, exact=r.exact, ef=r.ef,
                            guard=[query] if r.guard else None, threshold=r.guard_threshold)[0]  # fmt: skip
        neighbors, dropped = hits.neighbors, hits.dropped
        if len(neighbors) < r.neighbors:
            raise RuntimeError(
                f"retrieval returned {len(neighbors)} neighbors, {r.neighbors} asked"
            )
    row["retrieve_s"] = time.perf_counter() - t
    row["neighbors"] = [{"id": int(n.id), "score": float(n.score)} for n in neighbors]
    row["guard_dropped"] = dropped
    ids = [int(n.id) for n in neighbors]
    t = time.perf_counter()
    windows, lengths, doc_index = pack_neighbors(
        index.store, ids, cfg.pack, max_length, trainer.tokenizer
    )
    row["pack_s"] = time.perf_counter() - t
    outcome = trainer.run(scored, windows, lengths, doc_index, n_neighbors=len(ids))
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


def run_eval(cfg: EvalConfig) -> EvalSummary:
    """Run (or resume) an evaluation."""
    from tqdm.auto import tqdm

    from tttnn.index import Index
    from tttnn.lock import exclusive_writer
    from tttnn.models import load_causal_lm, resolve_model
    from tttnn.ttt import TestTimeTrainer

    index = Index.open(cfg.index)
    index.check_complete()
    docs = list(iter_test_documents(cfg.test))
    if not docs:
        raise ValueError(f"no test documents in {', '.join(cfg.test.data)}")
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive_writer(out, what="run"):
        resolved = resolve_model(cfg.model)
        _check_or_write_config(out, cfg, resolved)
        results = out / "results.jsonl"
        done = _done_documents(results)
        todo = [d for d in docs if d.doc_id not in done]
        summary = EvalSummary(out, ok=0, failed=0, resumed=len(docs) - len(todo))
        if not todo:
            return summary
        model, tokenizer = load_causal_lm(resolved, device=cfg.run.device)
        if cfg.retrieval.neighbors > 0:
            index.check_tokens_for(tokenizer, retokenize=cfg.pack.retokenize)
        trainer = TestTimeTrainer(model, tokenizer, cfg.ttt)
        scored: list[tuple[float, float, int]] = []  # bpb at 0, at the last k, bytes
        bar = tqdm(todo, desc="eval", unit="doc", disable=not cfg.run.progress, dynamic_ncols=True)
        for doc in bar:
            t0 = time.perf_counter()
            try:
                row = evaluate_document(doc, cfg, index, trainer)
                row["status"] = "ok"
            except Exception as e:
                row = {"doc_id": doc.doc_id, "domain": doc.domain, "status": "failed",
                       "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}  # fmt: skip
            row["total_s"] = time.perf_counter() - t0
            _append_row(results, row)
            if row["status"] == "ok":
                summary.ok += 1
                bpb = row["bpb"]
                scored.append((bpb["0"], bpb[str(max(map(int, bpb)))], row["bytes"]))
                before = byte_weighted_bpb([s[0] for s in scored], [s[2] for s in scored])
                after = byte_weighted_bpb([s[1] for s in scored], [s[2] for s in scored])
                bar.set_postfix_str(f"{doc.domain} bpb {before:.3f}→{after:.3f} (k={max(cfg.ks)})")
            else:
                summary.failed += 1
                bar.write(f"FAILED {doc.doc_id}: {row['error']}")
    return summary
