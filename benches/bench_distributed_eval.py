"""Evaluation over Ray workers against one process, same run: documents/hour and identical rows.

    python benches/bench_distributed_eval.py --index INDEX [--per-domain 2] [--out DIR]

The peer is the single-process path (`tttnn eval`), one process with all the machine's threads;
the Ray run has `--workers` TTT actors of `--cpus-per-worker` threads each (on 2 cores: 2 x 1),
retrieval in the driver, shards served by actors. Both start from nothing (model loads
included: that is what a user waits for). Prints both rates, the ratio, and whether every row
is the same (timings aside). INDEX: `tttnn index build ../shared/corpus/train.jsonl.zst --out
INDEX`. The two runs go to DIR/one and DIR/ray (default: a new temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tttnn import jobs
from tttnn.config import EvalConfig
from tttnn.evaluate import results_of, run_eval

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"


def rows(run: Path) -> dict[str, dict]:
    out = {}
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["doc_id"]] = results_of(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True, help="index of the training corpus")
    ap.add_argument("--test", default=str(SHARED / "test.jsonl.zst"))
    ap.add_argument("--per-domain", type=int, default=2)
    ap.add_argument("--neighbors", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument(
        "--out", default=None, help="emptied first (default: a new temporary directory)"
    )
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="tttnn_bench_distributed_eval_"))
    shutil.rmtree(out, ignore_errors=True)
    common = dict(
        index=args.index, data=[args.test], limit_per_domain=args.per_domain,
        neighbors=args.neighbors, max_length=args.max_length, windows_per_neighbor=1,
        lr=1e-4, progress=True,
    )  # fmt: skip
    threads = os.cpu_count() or 1
    print(f"{os.cpu_count()} cores; {args.per_domain} documents per domain, k={args.neighbors}, "
          f"max_length {args.max_length}", flush=True)  # fmt: skip

    import torch

    torch.set_num_threads(threads)
    t = time.perf_counter()
    one = run_eval(EvalConfig.from_flat(out=str(out / "one"), **common))
    t_one = time.perf_counter() - t

    t = time.perf_counter()
    ray = jobs.evaluate(
        EvalConfig.from_flat(
            out=str(out / "ray"), ray=True, workers=args.workers,
            cpus_per_worker=args.cpus_per_worker, **common,
        )
    )  # fmt: skip
    t_ray = time.perf_counter() - t
    n = one.ok
    same = rows(out / "one") == rows(out / "ray")
    print(f"1 process x {threads} threads : {n} docs in {t_one:7.1f} s = "
          f"{3600 * n / t_one:6.1f} docs/h")  # fmt: skip
    print(f"{args.workers} Ray workers x {args.cpus_per_worker:g} : {ray.ok} docs in {t_ray:7.1f} s = "
          f"{3600 * ray.ok / t_ray:6.1f} docs/h")  # fmt: skip
    print(f"ratio (Ray / one process): {t_one / t_ray:.2f}x; identical rows: {same}")
    if not same or one.failed or ray.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
