"""HNSW under each metric, on rows of different norms: stranded rows, recall, queries/s.

Run:
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/bench_hnsw_metrics.py

Rows: unit vectors in Gaussian clusters (fixed seed) times a norm drawn uniformly from
[0.5, 3.0]; queries: more rows of the same clusters, not in the store. Inner product over such
rows is where HNSW's neighbour heuristic strands many (small) rows; tttnn lists them at build
time and scores those that can still make the top k (`|q|·|x|` above the k-th best). The table
gives, per metric, how many rows were stranded, build time, and recall@20 / queries per second
at three beam widths, against numpy's brute force (matrix product + argpartition) measured in
the same run. Ratio: tttnn time / numpy time (< 1: tttnn faster).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

import tttnn

K = 20


def rows(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)]
    x += 0.7 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= rng.uniform(0.5, 3.0, (n, 1)).astype(np.float32)
    return x


def numpy_topk(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
            x / np.linalg.norm(x, axis=1, keepdims=True)
        ).T
    elif metric == "ip":
        s = q @ x.T
    else:
        s = -((q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :])
    part = np.argpartition(-s, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall(a: np.ndarray, e: np.ndarray) -> float:
    return float(np.mean([len(set(u) & set(v)) / K for u, v in zip(a, e)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, nargs="+", default=[64, 384])
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--ef", type=int, nargs="+", default=[20, 64, 200])
    args = ap.parse_args()
    print(f"tttnn {tttnn.__version__}, n = {args.n:,}, k = {K}, {args.queries} queries")
    for dim in args.dim:
        data = rows(args.n + args.queries, dim, max(10, args.n // 100), seed=dim)
        x, q = data[: args.n], data[args.n :]
        for metric in ("ip", "l2", "cosine"):
            with tempfile.TemporaryDirectory() as tmp:
                store = tttnn.EmbeddingStore.create(
                    f"{tmp}/s", dim, metric=metric, shard_size=args.n
                )
                store.append(x)
                t = time.perf_counter()
                store.build_hnsw()
                build = time.perf_counter() - t
                stranded = len(store.hnsw_stranded())
                truth, _ = store.search(q, K)
                t = time.perf_counter()
                npy = numpy_topk(x, q, metric)
                t_np = time.perf_counter() - t
                agree = recall(npy, truth)
                print(
                    f"d={dim:<4} {metric:<6} stranded {stranded:>5} "
                    f"({100 * stranded / args.n:.2f}%), build {build:5.1f} s; "
                    f"numpy {len(q) / t_np:8.0f} q/s (agrees {agree:.4f})"
                )
                for ef in args.ef:
                    store.search(q[:10], K, exact=False, ef=ef)  # warm
                    best = float("inf")
                    for _ in range(3):
                        t = time.perf_counter()
                        ids, _ = store.search(q, K, exact=False, ef=ef)
                        best = min(best, time.perf_counter() - t)
                    print(
                        f"    ef {ef:<4} recall@{K} {recall(ids, truth):.4f}  "
                        f"{len(q) / best:8.0f} q/s  ratio vs numpy {best / t_np:.3f}"
                    )


if __name__ == "__main__":
    main()
