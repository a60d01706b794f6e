"""Benchmark `tttnn.sift_select` against a plain numpy float64 implementation of the same greedy.

The peer is the greedy in its direct form: `G = X @ X.T` (BLAS), `c = X @ q`, then N picks
with rank-1 updates of all of `G` (float64 throughout). Both run on the same candidates in the
same process, on unit vectors drawn around a few centres (what the K nearest of a query look
like), K = 200 and d = 384 by default; the script checks that they pick the same rows, then
prints the median time of each and the ratio. With `--index DIR`, it also times reading the K
candidates' stored vectors (`store.get_vectors`, dequantized), which `select_s` in a results row
includes. With `--index DIR --test FILE` (an index of a corpus and its test documents), it runs
the whole selection stage on each test document as `tttnn eval --select sift` does (the guarded K
nearest, their stored vectors, the query's embedding) for each lambda, and reports the time per
query, how many picks are distinct, how many are among the N nearest, and the share of picks from
the query's own domain (SIFT's against nearest's).

    python benches/bench_select.py [--k 200] [--dim 384] [--n 20 50] [--reps 200] [--index DIR]
        [--test ../shared/corpus/test.jsonl.zst --docs-per-domain 5 --lam 0.01 0.1 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import tttnn


def numpy_sift(x: np.ndarray, q: np.ndarray, n: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """The literal greedy in float64 numpy (ties: `argmax` takes the first)."""
    x = x.astype(np.float64)
    q = q.astype(np.float64)
    g = x @ x.T
    c = x @ q
    s = float(q @ q)
    picks, variances = [], []
    for _ in range(n):
        j = int(np.argmax(c * c / (np.diag(g) + lam)))
        d = g[j, j] + lam
        cj = c[j]
        s -= cj * cj / d
        picks.append(j)
        variances.append(s)
        col = g[:, j].copy()
        c -= cj * col / d
        g -= np.outer(col, col / d)
    return np.asarray(picks, dtype=np.int64), np.asarray(variances)


def candidates(k: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    rows = centres[rng.integers(0, 8, k + 1)] + 0.6 * rng.standard_normal((k + 1, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows.astype(np.float32)
    return rows[:k], rows[k]


def median_time(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=200, help="candidates (K)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--n", type=int, nargs="+", default=[20, 50], help="picks (N)")
    ap.add_argument("--lam", type=float, nargs="+", default=[0.01])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--index", help="an index directory: also time reading K stored vectors")
    ap.add_argument("--test", help="test documents (with --index): the selection stage on them")
    ap.add_argument("--docs-per-domain", type=int, default=5)
    args = ap.parse_args()

    x, q = candidates(args.k, args.dim, args.seed)
    lam = args.lam[0]
    print(f"sift_select, K = {args.k}, d = {args.dim}, lambda = {lam}, median of {args.reps}")
    for n in args.n:
        rows, var = tttnn.sift_select(x, q, n, lam=lam)
        ref_rows, ref_var = numpy_sift(x, q, n, lam)
        assert np.array_equal(rows, ref_rows), "tttnn and numpy pick different rows"
        assert np.allclose(var, ref_var, rtol=0, atol=1e-9)
        t_core = median_time(lambda n=n: tttnn.sift_select(x, q, n, lam=lam), args.reps)
        t_np = median_time(lambda n=n: numpy_sift(x, q, n, lam), args.reps)
        print(
            f"  N = {n:>3}: tttnn {t_core * 1e3:7.3f} ms   numpy float64 {t_np * 1e3:7.3f} ms   "
            f"ratio (numpy / tttnn) {t_np / t_core:5.1f}x   {len(set(rows.tolist()))} distinct"
        )
    if args.index:
        store = tttnn.EmbeddingStore.open(args.index)
        rng = np.random.default_rng(args.seed)
        ids = rng.choice(len(store), size=min(args.k, len(store)), replace=False).astype(np.int64)
        t = median_time(lambda: store.get_vectors(ids), args.reps)
        print(f"  get_vectors of {len(ids)} rows ({store.dtype}): {t * 1e3:7.3f} ms")
    if args.index and args.test:
        on_test_documents(args)


def on_test_documents(args: argparse.Namespace) -> None:
    """The selection stage of `tttnn eval --select sift` on real test documents."""
    from tttnn.config import TestSetConfig
    from tttnn.evaluate import iter_test_documents

    index = tttnn.Index.open(args.index)
    test = TestSetConfig(data=(args.test,), limit_per_domain=args.docs_per_domain)
    docs = list(iter_test_documents(test))
    texts = [d.text for d in docs]
    vectors = index.encoder.encode(texts, progress=False)
    results = index.search(vectors, k=args.k, exact=True, guard=texts)
    print(f"\n{len(docs)} test documents of {args.test}, K = {args.k} guarded candidates each")
    print("  lambda    N  select ms (median)  distinct/N  among N nearest  own domain (nearest)")
    for lam in args.lam:
        for n in args.n:
            times, distinct, nearest, own, own_nn = [], [], [], [], []
            for doc, hits, v in zip(docs, results, vectors):
                t0 = time.perf_counter()
                x = index.store.get_vectors(np.asarray(hits.ids, dtype=np.int64))
                rows, _ = tttnn.sift_select(x, v, n, lam=lam)
                times.append(time.perf_counter() - t0)
                picks = rows.tolist()
                distinct.append(len(set(picks)) / n)
                nearest.append(sum(1 for j in picks if j < n) / n)
                own.append(np.mean([hits.neighbors[j].domain == doc.domain for j in picks]))
                own_nn.append(np.mean([h.domain == doc.domain for h in hits.neighbors[:n]]))
            print(
                f"  {lam:<7g} {n:>4}  {statistics.median(times) * 1e3:17.3f}  "
                f"{np.mean(distinct):10.2f}  {np.mean(nearest):15.2f}  "
                f"{np.mean(own):10.2f} ({np.mean(own_nn):.2f})"
            )


if __name__ == "__main__":
    main()
