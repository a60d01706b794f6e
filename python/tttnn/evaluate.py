"""Evaluation runs: retrieve, pack, test-time train, score, reset, for every test document.

`RUN/config.json` holds every setting (and library versions); `RUN/results.jsonl` gets one row per
document as soon as it is done, so an interrupted run resumes where it stopped when the same
command is run again. A document whose retrieval or training fails is written with
`status: "failed"` and the reason: never scored as if it had been trained.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tttnn.corpus import Document, read_corpus

__all__ = ["EvalConfig", "iter_test_documents", "run_eval"]

# Settings that do not change results and may differ between a run and its resumption.
_RESUME_IGNORED = {"progress", "device"}


@dataclass
class EvalConfig:
    index: str
    data: list[str]
    out: str
    model: str = "smollm2-135m"
    neighbors: int = 20
    eval_at: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50)
    max_length: int = 1024
    lr: float = 2e-5
    windows_per_neighbor: int | None = None
    pack_short: bool = False
    lora_r: int | None = None
    split_text: bool = False
    dtype: str = "bf16"
    seed: int = 0
    limit_per_domain: int | None = None
    limit: int | None = None
    exact: bool = False
    guard: bool = True
    baseline_in_context: bool = False
    device: str | None = None
    progress: bool = True
    domains: list[str] = field(default_factory=list)

    def eval_points(self) -> list[int]:
        """`eval_at` cut at the number of neighbors; k = 0 (the model as is) always."""
        ks = sorted({0, *[k for k in self.eval_at if 0 <= k <= self.neighbors]})
        return ks


def iter_test_documents(cfg: EvalConfig) -> Iterator[Document]:
    """Test documents in file order, `limit_per_domain` per domain, optionally some domains only."""
    per_domain: dict[str, int] = {}
    n = 0
    for doc in read_corpus(cfg.data, on_error="skip"):
        if cfg.domains and doc.domain not in cfg.domains:
            continue
        if (
            cfg.limit_per_domain is not None
            and per_domain.get(doc.domain, 0) >= cfg.limit_per_domain
        ):
            continue
        per_domain[doc.domain] = per_domain.get(doc.domain, 0) + 1
        yield doc
        n += 1
        if cfg.limit is not None and n >= cfg.limit:
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


def _prepare_run_dir(cfg: EvalConfig, resolved_model: str) -> tuple[Path, set[str]]:
    """Create RUN/, write or check config.json, and return the ids already done."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in asdict(cfg).items() if k not in _RESUME_IGNORED}
    settings["eval_at"] = list(cfg.eval_at)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
        diff = {
            k: (old["settings"].get(k), v)
            for k, v in settings.items()
            if old["settings"].get(k) != v
        }
        if diff:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} holds a run with other settings ({detail}); "
                "use another --out, or the same settings to resume"
            )
    else:
        _atomic_write_text(
            cfg_path,
            json.dumps(
                {"settings": settings, "model_path": resolved_model, "versions": _versions()},
                indent=2,
            ),
        )
    done: set[str] = set()
    res = out / "results.jsonl"
    if res.exists():
        good: list[str] = []
        with open(res, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn row from an interrupted write: redone below
                good.append(json.dumps(row, ensure_ascii=False))
                if row.get("status") == "ok":
                    done.add(row["doc_id"])
        # Rewrite without torn or failed rows, so failed documents are retried on resume.
        kept = [g for g in good if json.loads(g).get("status") == "ok"]
        _atomic_write_text(res, "".join(g + "\n" for g in kept))
    return out, done


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


def _in_context_bpb(trainer: Any, text: str, index: Any, ids: list[int], cfg: EvalConfig) -> float:
    """The paper's in-context baseline: the neighbors' tokens (nearest last, next to the text,
    EOS-separated, at most half the context) precede the text in the model's rolling context; the
    weights are θ0 (the trainer has reset them)."""
    import math

    from tttnn.metrics import document_loglikelihood, encode_document

    budget = cfg.max_length // 2
    ctx: list[int] = []
    eos = trainer.tokenizer.eos_token_id
    for i in ids:  # nearest first; each goes in front of the ones nearer to the text
        piece = [int(t) for t in index.store.tokens(i)[-budget:]]
        ctx = piece + ([eos] if eos is not None else []) + ctx
        if len(ctx) >= budget:
            break
    ctx = ctx[-budget:]
    tokens = encode_document(trainer.tokenizer, text)
    logprob, _ = document_loglikelihood(
        trainer.model,
        tokens,
        trainer.prefix_token,
        cfg.max_length,
        cfg.dtype,
        context_tokens=ctx,
    )
    return -logprob / len(text.encode("utf-8")) / math.log(2)


def run_eval(cfg: EvalConfig) -> Path:
    """Run (or resume) an evaluation; returns the run directory."""
    from tqdm.auto import tqdm

    from tttnn.index import Index
    from tttnn.models import load_causal_lm, resolve_model
    from tttnn.ttt import TestTimeTrainer, TTTConfig

    if cfg.neighbors < 0:
        raise ValueError("--neighbors must be >= 0")
    index = Index.open(cfg.index)
    if index.meta.get("status") != "complete":
        raise ValueError(
            f"the index at {cfg.index} is incomplete (status {index.meta.get('status')!r}): "
            "finish it with `tttnn index build ... --resume` first"
        )
    resolved = resolve_model(cfg.model)
    out, done = _prepare_run_dir(cfg, resolved)
    docs = [d for d in iter_test_documents(cfg)]
    if not docs:
        raise ValueError(f"no test documents in {', '.join(cfg.data)}")
    todo = [d for d in docs if d.doc_id not in done]
    results_path = out / "results.jsonl"
    if not todo:
        return out

    model, tokenizer = load_causal_lm(resolved, device=cfg.device)
    tcfg = TTTConfig(
        lr=cfg.lr,
        max_length=cfg.max_length,
        eval_at=tuple(cfg.eval_points()),
        autocast_dtype=cfg.dtype,
        lora_r=cfg.lora_r,
        seed=cfg.seed,
    )
    trainer = TestTimeTrainer(model, tokenizer, tcfg)
    ks = cfg.eval_points()
    kmax = max(ks)
    sums = {"before": 0.0, "after": 0.0, "bytes": 0}
    bar = tqdm(todo, desc="eval", unit="doc", disable=not cfg.progress, dynamic_ncols=True)
    for doc in bar:
        bar.set_postfix_str(doc.domain, refresh=False)
        row: dict[str, Any] = {"doc_id": doc.doc_id, "domain": doc.domain}
        t0 = time.perf_counter()
        try:
            query, scored = (
                split_document(doc.text, tokenizer, cfg.max_length)
                if cfg.split_text
                else (doc.text, doc.text)
            )
            row["bytes"] = len(scored.encode("utf-8"))
            t = time.perf_counter()
            neighbors: Sequence[Any] = []
            dropped = 0
            if cfg.neighbors > 0:
                hits = index.search(
                    [query], k=cfg.neighbors, exact=cfg.exact, guard=[query] if cfg.guard else None
                )[0]
                neighbors, dropped = hits.neighbors, hits.dropped
                if len(neighbors) < cfg.neighbors:
                    raise RuntimeError(
                        f"retrieval returned {len(neighbors)} neighbors, {cfg.neighbors} asked"
                    )
            row["retrieve_s"] = time.perf_counter() - t
            row["neighbors"] = [{"id": int(n.id), "score": float(n.score)} for n in neighbors]
            row["guard_dropped"] = dropped
            t = time.perf_counter()
            ids = [int(n.id) for n in neighbors]
            windows, lengths, doc_index = index.store.pack_windows(
                ids,
                cfg.max_length,
                eos_id=tokenizer.eos_token_id if cfg.pack_short else None,
                pack_short=cfg.pack_short,
                max_windows_per_doc=cfg.windows_per_neighbor,
            )
            row["pack_s"] = time.perf_counter() - t
            outcome = trainer.run(scored, windows, lengths, doc_index, n_neighbors=len(ids))
            row["tokens"] = outcome.n_tokens
            row["bpb"] = {str(k): v for k, v in outcome.bpb.items()}
            row["windows_trained"] = outcome.windows_trained
            row["train_s"] = outcome.train_s
            row["score_s"] = outcome.score_s
            row["reset_s"] = outcome.reset_s
            if cfg.baseline_in_context:
                t_ic = time.perf_counter()
                row["bpb_in_context"] = _in_context_bpb(trainer, scored, index, ids, cfg)
                row["in_context_s"] = time.perf_counter() - t_ic
            row["status"] = "ok"
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            row["status"] = "failed"
            row["error"] = f"{type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc(limit=5)
        row["total_s"] = time.perf_counter() - t0
        _append_row(results_path, row)
        if row["status"] == "ok":
            sums["bytes"] += row["bytes"]
            sums["before"] += row["bpb"]["0"] * row["bytes"]
            k_last = str(max(int(k) for k in row["bpb"]))
            sums["after"] += row["bpb"][k_last] * row["bytes"]
            bar.set_postfix_str(
                f"{doc.domain} bpb {sums['before'] / sums['bytes']:.3f}"
                f"→{sums['after'] / sums['bytes']:.3f} (k={kmax})",
                refresh=False,
            )
        else:
            bar.write(f"FAILED {doc.doc_id}: {row['error']}")
    return out
