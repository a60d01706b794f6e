"""Exact and HNSW kNN: tttnn vs numpy, faiss-cpu and usearch-python, at d = 384, k = 20.

Run (numpy's BLAS unslowed):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/bench_knn.py --n 200000 1000000

Unit vectors in Gaussian clusters (fixed seed). Exact search: single-query latency (median) and
1,000-query batch throughput; tttnn goes through `tttnn.EmbeddingStore` on disk (f32, f16, i8).
HNSW (connectivity 16, expansion_add 128 for all three libraries): build throughput, open time,
and the recall@20 / queries-per-second curve of each library over the same ef sweep (ef below
k = 20 is k for all three). Matched recall: for each target recall, the queries/s of each
library interpolated on its own curve (linear in recall between the two sweep points around the
target). The curves go to `--plot` (PNG). Ratios are tttnn / peer time (< 1: tttnn faster).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import tttnn

DIM, K = 384, 20
EF_SWEEP = [20, 24, 28, 32, 40, 48, 64, 96, 128]
RECALL_TARGETS = [0.95, 0.98, 0.99]
CURVES: dict[str, list[tuple[int, float, float]]] = {}  # library -> [(ef, recall, q/s)]
ROWS: list[tuple[str, str, str, float, str]] = []  # (n, case, library, seconds, unit)


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for s in range(0, n, step):
        e = min(n, s + step)
        x = centres[rng.integers(0, clusters, e - s)]
        x += rng.standard_normal((e - s, dim)).astype(np.float32) / np.sqrt(dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    return out


def median_time(f: Callable[[], Any], reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def record(n: int, case: str, lib: str, seconds: float, unit: str = "s") -> None:
    ROWS.append((str(n), case, lib, seconds, unit))
    shown = f"{seconds * 1e3:10.2f} ms" if unit == "s" else f"{seconds:10.0f} {unit}"
    print(f"  {case:<34} {lib:<22} {shown}", flush=True)


def numpy_search(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Matrix product + argpartition, in row blocks to bound memory."""
    q = np.atleast_2d(q)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    step = 50_000
    for s in range(0, len(x), step):
        sc = q @ x[s : s + step].T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + s], axis=1)
    order = np.argsort(-best_s, axis=1)[:, :k]
    return np.take_along_axis(best_i, order, 1)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info

        return "; ".join(
            f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
            f"threads={i.get('num_threads')}"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
    except ImportError:
        return "threadpoolctl not installed"


def exact_section(
    n: int, x: np.ndarray, q: np.ndarray, tmp: Path, reps: int, nq_batch: int
) -> np.ndarray:
    import faiss
    from usearch.index import MetricKind
    from usearch.index import search as usearch_search

    print(f"\n== exact, n = {n:,}, d = {DIM}, k = {K}")
    qb = q[:nq_batch]
    singles = [q[i] for i in range(reps)]

    def single(f: Callable[[np.ndarray], Any]) -> float:
        f(singles[0])  # warm
        it = iter(singles * 2)
        return median_time(lambda: f(next(it)), reps)

    truth = None
    for dtype in ("f32", "f16", "i8"):
        path = tmp / f"exact_{dtype}_{n}"
        t = time.perf_counter()
        store = tttnn.EmbeddingStore.create(
            str(path), DIM, dtype=dtype, metric="cosine", shard_size=100_000
        )
        store.append(x)
        record(n, f"store append {dtype}", "tttnn", n / (time.perf_counter() - t), "vec/s")
        t = time.perf_counter()
        store = tttnn.EmbeddingStore.open(str(path))
        record(n, f"store open {dtype}", "tttnn", time.perf_counter() - t)
        record(n, "exact 1 query", f"tttnn {dtype}", single(lambda v, s=store: s.search(v, K)))
        t = time.perf_counter()
        ids, _ = store.search(qb, K)
        record(n, f"exact {nq_batch} queries", f"tttnn {dtype}", time.perf_counter() - t)
        if dtype == "f32":
            truth = ids
    record(n, "exact 1 query", "numpy", single(lambda v: numpy_search(x, v, K)))
    t = time.perf_counter()
    np_ids = numpy_search(x, qb, K)
    record(n, f"exact {nq_batch} queries", "numpy", time.perf_counter() - t)
    assert truth is not None
    print(f"  (tttnn f32 vs numpy top-{K} agreement: {recall(truth, np_ids):.4f})")
    # The compute limit of a batch: the matrix product alone (BLAS sgemm into a preallocated
    # buffer, no top-k), i.e. what no exact search of this batch can beat.
    out = np.empty((len(qb), 50_000), np.float32)

    def sgemm_only() -> None:
        for s in range(0, n, 50_000):
            e = min(n, s + 50_000)
            np.matmul(qb, x[s:e].T, out=out[:, : e - s])

    sgemm_only()
    t = min(timed(sgemm_only)[1] for _ in range(2))
    record(n, f"exact {nq_batch} queries", "sgemm only (limit)", t)
    print(f"  (sgemm: {len(qb) * n * DIM * 2 / t / 1e9:.0f} GFLOP/s)")

    fi = faiss.IndexFlatIP(DIM)
    fi.add(x)
    record(n, "exact 1 query", "faiss IndexFlatIP", single(lambda v: fi.search(v[None], K)))
    t = time.perf_counter()
    fi.search(qb, K)
    record(n, f"exact {nq_batch} queries", "faiss IndexFlatIP", time.perf_counter() - t)

    def us(v: np.ndarray) -> Any:
        return usearch_search(x, v, K, MetricKind.IP, exact=True, threads=os.cpu_count() or 1)

    record(n, "exact 1 query", "usearch exact", single(us))
    t = time.perf_counter()
    us(qb)
    record(n, f"exact {nq_batch} queries", "usearch exact", time.perf_counter() - t)
    return truth


def hnsw_section(n: int, x: np.ndarray, q: np.ndarray, truth: np.ndarray, tmp: Path) -> None:
    import faiss
    from usearch.index import Index

    print(f"\n== HNSW, n = {n:,} (M = 16, ef_construction = 128), recall@{K} target 0.95")
    nq = len(truth)
    qb = q[:nq]

    def sweep(lib: str, search: Callable[[int], np.ndarray]) -> None:
        curve = CURVES.setdefault(lib, [])
        for ef in EF_SWEEP:
            search(ef)  # warm
            dt = min(timed(lambda e=ef: search(e))[1] for _ in range(3))
            r = recall(search(ef), truth)
            curve.append((ef, r, nq / dt))
            print(f"    {lib:<10} ef={ef:<4} recall={r:.4f} qps={nq / dt:9.0f}", flush=True)
            if r >= 0.999:
                break
        for target in RECALL_TARGETS:
            record(n, f"hnsw qps@recall {target}", lib, qps_at(curve, target), "q/s")

    path = tmp / f"hnsw_{n}"
    store = tttnn.EmbeddingStore.create(str(path), DIM, metric="cosine", shard_size=n)
    store.append(x)
    t = time.perf_counter()
    store.build_hnsw()
    record(n, "hnsw build", "tttnn", n / (time.perf_counter() - t), "vec/s")
    t = time.perf_counter()
    store = tttnn.EmbeddingStore.open(str(path))
    record(n, "hnsw open", "tttnn", time.perf_counter() - t)
    sweep("tttnn", lambda ef: store.search(qb, K, exact=False, ef=ef)[0])

    fi = faiss.IndexHNSWFlat(DIM, 16, faiss.METRIC_INNER_PRODUCT)
    fi.hnsw.efConstruction = 128
    t = time.perf_counter()
    fi.add(x)
    record(n, "hnsw build", "faiss HNSWFlat", n / (time.perf_counter() - t), "vec/s")
    faiss.write_index(fi, str(tmp / "faiss.index"))
    t = time.perf_counter()
    fi = faiss.read_index(str(tmp / "faiss.index"), faiss.IO_FLAG_MMAP)
    record(n, "hnsw open", "faiss HNSWFlat", time.perf_counter() - t)

    def faiss_search(ef: int) -> np.ndarray:
        fi.hnsw.efSearch = ef
        return fi.search(qb, K)[1]

    sweep("faiss", faiss_search)

    ui = Index(ndim=DIM, metric="cos", dtype="f32", connectivity=16, expansion_add=128)
    t = time.perf_counter()
    ui.add(np.arange(n), x, threads=os.cpu_count() or 1)
    record(n, "hnsw build", "usearch", n / (time.perf_counter() - t), "vec/s")
    ui.save(str(tmp / "u.usearch"))
    t = time.perf_counter()
    ui = Index.restore(str(tmp / "u.usearch"), view=True)
    record(n, "hnsw open", "usearch", time.perf_counter() - t)

    def usearch_hnsw(ef: int) -> np.ndarray:
        ui.expansion_search = ef
        return ui.search(qb, K, threads=os.cpu_count() or 1).keys

    sweep("usearch", usearch_hnsw)


def timed(f: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t


def qps_at(curve: list[tuple[int, float, float]], target: float) -> float:
    """Queries/s at `target` recall, linear in recall between the sweep points around it (NaN if
    the sweep never reaches it; the first point's rate if it already starts above)."""
    prev = None
    for _, r, qps in curve:
        if r >= target:
            if prev is None or prev[0] >= r:
                return qps
            r0, q0 = prev
            return q0 + (qps - q0) * (target - r0) / (r - r0)
        prev = (r, qps)
    return float("nan")


def plot_curves(path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lib, curve in CURVES.items():
        ax.plot([c[1] for c in curve], [c[2] for c in curve], marker="o", label=lib)
        for ef, r, qps in curve[:: max(1, len(curve) // 4)]:
            ax.annotate(f"ef {ef}", (r, qps), fontsize=7, textcoords="offset points", xytext=(3, 3))
    for t in RECALL_TARGETS:
        ax.axvline(t, color="grey", lw=0.6, ls=":")
    ax.set_xlabel(f"recall@{K}")
    ax.set_ylabel("queries / s (2 threads)")
    ax.set_title(f"HNSW on {n:,} x {DIM} clustered unit vectors (up and right is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def print_table() -> None:
    print("\n== summary (ratios: tttnn time / peer time; for rates, peer rate / tttnn rate)")
    by: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}
    for n, case, lib, v, unit in ROWS:
        by.setdefault((n, case.split(" (")[0]), {})[lib] = (v, unit)
    for (n, case), libs in by.items():
        ours = {k: v for k, v in libs.items() if k.startswith("tttnn")}
        peers = {k: v for k, v in libs.items() if not k.startswith("tttnn")}
        for lib, (v, unit) in ours.items():
            shown = f"{v * 1e3:9.2f} ms" if unit == "s" else f"{v:9.0f} {unit}"
            ratios = []
            for p, (pv, _) in peers.items():
                r = v / pv if unit == "s" else pv / v
                ratios.append(f"{p} {r:.2f}x")
            print(f"{n:>8} {case:<26} {lib:<10} {shown}   " + ", ".join(ratios))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--batch", type=int, default=1000, help="queries in the batch")
    ap.add_argument(
        "--hnsw-max-n", type=int, default=200_000, help="build HNSW only up to this size"
    )
    ap.add_argument(
        "--plot", type=Path, default=Path("bench_knn_hnsw.png"), help="recall/QPS curves (PNG)"
    )
    ap.add_argument("--hnsw-only", action="store_true", help="skip the exact-search section")
    args = ap.parse_args()
    reps = 5 if args.quick else 20

    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    print(
        f"tttnn {tttnn.__version__}, kernels {tttnn._tttnn._simd_kernels()}, cpus {os.cpu_count()}"
    )
    print(f"numpy {np.__version__} BLAS: {blas_info()}")
    print(
        "OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE')} OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}"
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in args.n:
            data = clustered(n + args.batch, DIM, max(2000, n // 100), seed=1216)
            x, q = data[:n], data[n:]
            if args.hnsw_only:
                truth = numpy_search(x, q, K)
            else:
                truth = exact_section(n, x, q, tmp, reps, args.batch)
            if n <= args.hnsw_max_n:
                CURVES.clear()
                hnsw_section(n, x, q, truth, tmp)
                plot_curves(args.plot, n)
            for f in tmp.iterdir():
                if f.is_file():
                    f.unlink()
            del data, x, q
    print_table()


if __name__ == "__main__":
    main()
