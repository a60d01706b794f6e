"""The TTT effect against index size: one `tttnn eval` run per size, then their comparison.

    python3 results/large-corpus/curve.py                 # run (or resume) every size, then plot
    python3 results/large-corpus/curve.py --ray           # the same, each run on a local Ray cluster
    python3 results/large-corpus/curve.py --table-only    # the comparison of the runs so far

The smallest and the largest size run first, so that an interrupted curve already answers
whether the effect grows; then the sizes between. `--ray` only changes where the documents run
(one TTT worker per CPU, one torch thread each), not what a row holds: `tttnn eval --ray` gives
the rows one process gives (`docs/distributed.md`).

Each size S·5,180 is the first S shards of `runs/corpus-index` (`--shards 0,...,S-1`: the corpus
starts with the shared train split, so S = 1 is today's index). Every run uses the same
documents (the first 2 test documents of each domain) and the cheap recipe (`RECIPE`). Runs
live in `results/large-corpus/curve/size=N` and resume from their committed rows.

Writes `curve.md` (`tttnn compare` of the sizes, the smallest first: each size's change at k = 20
and its difference to the smallest index, with 95% paired intervals), `curve.json` and
`curve.png` (change against index size, log scale, one line per domain and the byte-weighted
average).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tttnn.compare import (
    WEIGHTED,
    compare,
    load_side,
    plot_comparison,
    render_comparison,
    save_figure,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARD = 5180
SIZES = (1, 4, 16, 20)
"""Index sizes in shards; add the shard count of a larger index when it is built."""
TEST = ["--data", "../shared/corpus/test.jsonl.zst", "--limit-per-domain", "2"]
"""The curve's documents: the first 2 test documents of each domain."""
TRAINING = [
    "-k", "20", "--windows-per-neighbor", "1", "--max-length", "1024", "--lr", "1e-4",
    "--eval-at", "0,20", "--exact",
]  # fmt: skip
"""One 1024-token window per neighbor, AdamW lr 1e-4, k = 20; exact search, so that the curve
measures the index's size and not the HNSW graphs' recall."""
RECIPE = [*TEST, *TRAINING]


def run_dir(shards: int) -> Path:
    return HERE / "curve" / f"size={shards * SHARD}"


def run(index: str, shards: int, ray: bool) -> None:
    out = run_dir(shards).relative_to(ROOT)
    cmd = ["tttnn", "eval", "--index", index, "--shards", ",".join(map(str, range(shards)))]
    cmd += [*RECIPE, "--out", str(out), *(["--ray"] if ray else [])]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--index", default="runs/corpus-index", help="relative to the repository root")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="in shards")
    ap.add_argument("--ray", action="store_true", help="run each size with `tttnn eval --ray`")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    sizes = sorted(set(args.sizes))
    if not args.table_only:
        ends = [sizes[0], sizes[-1]]
        for s in dict.fromkeys([*ends, *sizes]):
            run(args.index, s, args.ray)
    done = [s for s in sizes if (run_dir(s) / "results.jsonl").is_file()]
    if len(done) < 2:
        sys.exit(f"need two sizes with rows to compare; have {[s * SHARD for s in done]}")
    sides = [
        load_side(str(run_dir(s).relative_to(ROOT)), k=20, label=f"{s * SHARD:,} documents")
        for s in done
    ]
    c = compare(sides, intersect=True)
    (HERE / "curve.md").write_text(render_comparison(c, "markdown") + "\n")
    plot_comparison(c, HERE / "curve_bars.png")
    points = {
        g.name: [(s * SHARD, e.change, e.change_ci) for s, e in zip(done, g.entries)]
        for g in c.groups
    }
    (HERE / "curve.json").write_text(json.dumps(points, indent=1) + "\n")
    plot_curve(points, HERE / "curve.png", c.documents)


def plot_curve(points: dict, path: Path, documents: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120, layout="constrained")
    cmap = plt.get_cmap("tab10")
    for i, (name, pts) in enumerate(points.items()):
        if name.startswith("average (domains"):
            continue
        xs = [p[0] for p in pts]
        ys = [(p[1] or 0.0) * 100 for p in pts]
        avg = name == WEIGHTED
        ax.plot(xs, ys, marker="o", lw=3 if avg else 1.2, color="black" if avg else cmap(i % 10),
                label=name)  # fmt: skip
        if avg:
            lo = [p[2][0] * 100 for p in pts]
            hi = [p[2][1] * 100 for p in pts]
            ax.fill_between(xs, lo, hi, color="black", alpha=0.12)
    ax.set_xscale("log")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("index size (documents, log scale)")
    ax.set_ylabel("change in bits per byte at k = 20 vs k = 0 (%)")
    ax.set_title(f"TTT effect against index size ({documents} test documents, 95% band: average)")
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside right center", frameon=False)
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
