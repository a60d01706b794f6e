"""What validating an index costs: open, the first HNSW search, the first exact search and the
first text read of a process, at 1M × 384.

A graph is checked before usearch walks it: its headers and node levels when the store opens,
its xxh3 and every link before the first HNSW search of the process (once); the xxh3 of a
shard's vectors and its norms at the first search of the shard (exact or HNSW); the xxh3 of a
ragged column's data and its offsets at the first read of the column. Each measurement runs in
a fresh process (the checks are once per process), with the files in the page cache (a second
run of the same process), so it shows the CPU cost of the checks, not the disk.

    python benches/bench_open.py [--n 1000000] [--dir DIR]
        [--baseline PYTHONPATH]   # a tttnn build without the checks, e.g. main before them

The store is built once and kept in DIR (default: `tttnn_bench_open` in the system's temporary
directory), HNSW with expansion_add 16 to keep the build short: the checks cost the same whatever
the build effort, they depend on the node and link counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = r"""
import json, sys, time
import numpy as np
from tttnn import EmbeddingStore
path, mode = sys.argv[1], sys.argv[2]
q = np.random.default_rng(7).standard_normal((1, 384)).astype(np.float32)
t0 = time.perf_counter(); store = EmbeddingStore.open(path); t1 = time.perf_counter()
if mode == "exact":
    store.search(q, 20, exact=True); t2 = time.perf_counter()
    store.search(q, 20, exact=True); t3 = time.perf_counter()
    print(json.dumps({"first_exact": t2 - t1, "second_exact": t3 - t2}))
    sys.exit()
store.search(q, 20, exact=False); t2 = time.perf_counter()
store.search(q, 20, exact=False); t3 = time.perf_counter()
store.text(12345); t4 = time.perf_counter()
store.text(54321); t5 = time.perf_counter()
print(json.dumps({"open": t1 - t0, "first_hnsw": t2 - t1, "second_hnsw": t3 - t2,
                  "first_text": t4 - t3, "second_text": t5 - t4}))
"""


def build(path: Path, n: int, dim: int) -> None:
    import numpy as np

    from tttnn import EmbeddingStore

    store = EmbeddingStore.create(
        str(path), dim, dtype="f16", shard_size=n, hnsw=True, hnsw_expansion_add=16, with_text=True
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t = time.perf_counter()
    store.append(x, texts=[f"document {i}" for i in range(n)])
    print(f"built {n} x {dim} in {time.perf_counter() - t:.0f} s", flush=True)


def probe(path: Path, pythonpath: str | None, reps: int) -> dict[str, float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out: dict[str, float] = {}
    for mode in ("hnsw", "exact"):  # each in fresh processes: the checks are once per process
        runs = []
        for _ in range(reps + 1):  # the first run warms the page cache
            stdout = subprocess.run(
                [sys.executable, "-c", PROBE, str(path), mode],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            runs.append(json.loads(stdout.strip().splitlines()[-1]))
        runs = runs[1:]
        out.update({k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "tttnn_bench_open")
    ap.add_argument("--baseline", help="PYTHONPATH of a tttnn build without the checks")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    path = args.dir / f"store_{args.n}x{args.dim}"
    if not (path / "manifest.json").exists():
        build(path, args.n, args.dim)
    graph = path / "shards" / "00000" / "hnsw.usearch"
    print(
        f"{args.n} x {args.dim}, graph file {graph.stat().st_size / 1e6:.0f} MB, load {os.getloadavg()[0]:.1f}"
    )
    rows = [("this build", probe(path, None, args.reps))]
    if args.baseline:
        rows.append(("baseline", probe(path, args.baseline, args.reps)))
    for name, r in rows:
        print(
            f"  {name:<11} open {r['open'] * 1e3:8.1f} ms   first HNSW search "
            f"{r['first_hnsw'] * 1e3:8.1f} ms   second {r['second_hnsw'] * 1e3:6.2f} ms   "
            f"first text read {r['first_text'] * 1e3:6.2f} ms   second {r['second_text'] * 1e3:6.3f} ms   "
            f"first exact search {r['first_exact'] * 1e3:8.1f} ms   second {r['second_exact'] * 1e3:6.1f} ms"
        )
    if args.baseline:
        new, old = rows[0][1], rows[1][1]
        print(
            f"  added: open {(new['open'] - old['open']) * 1e3:+.1f} ms, first search "
            f"{(new['first_hnsw'] - old['first_hnsw']) * 1e3:+.1f} ms, first exact search "
            f"{(new['first_exact'] - old['first_exact']) * 1e3:+.1f} ms, first text read "
            f"{(new['first_text'] - old['first_text']) * 1e3:+.1f} ms; "
            f"open + first search / baseline open: "
            f"{(new['open'] + new['first_hnsw']) / old['open']:.1f}x "
            f"(baseline {(old['open'] + old['first_hnsw']) / old['open']:.1f}x)"
        )


if __name__ == "__main__":
    main()
