"""Benchmark `tttnn.pack_windows` and `tttnn.dedup_neighbors` against Python peers.

Peers: the plain-Python loop (the reference the tests compare against) and a numpy
implementation (per-document concatenate + reshape, numpy slice copies for `pack_short`). dedup is
compared with a plain-Python implementation of the same rule (sets of word tuples), on real text
from the benchmark corpus when it is there.

    python benches/bench_pack.py [--repeat 5] [--corpus ../shared/corpus/train.jsonl.zst]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import tttnn

PackResult = tuple[np.ndarray, np.ndarray, np.ndarray]


def python_pack(
    docs: Sequence[Sequence[int] | np.ndarray],
    context_length: int,
    *,
    eos_id: int | None = None,
    pack_short: bool = False,
    pad_id: int = 0,
) -> PackResult:
    """Plain-Python loop over tokens (same rules as the Rust core; no cap)."""
    rows: list[tuple[list[int], int]] = []
    open_window = False
    for d, doc in enumerate(docs):
        row: list[int] = []
        n = len(doc)
        for i in range(n):
            row.append(int(doc[i]))
            if len(row) == context_length or i + 1 == n:
                if pack_short and len(row) < context_length:
                    if open_window and len(rows[-1][0]) + 1 + len(row) <= context_length:
                        rows[-1][0].append(eos_id)  # type: ignore[arg-type]
                        rows[-1][0].extend(row)
                        row = []
                        continue
                    open_window = True
                else:
                    open_window = False
                rows.append((row, d))
                row = []
    out = [r + [pad_id] * (context_length - len(r)) for r, _ in rows]
    return (
        np.array(out, dtype=np.int64).reshape(len(rows), context_length),
        np.array([len(r) for r, _ in rows], dtype=np.int64),
        np.array([d for _, d in rows], dtype=np.int64),
    )


def numpy_pack(
    docs: Sequence[np.ndarray],
    context_length: int,
    *,
    eos_id: int | None = None,
    pack_short: bool = False,
    pad_id: int = 0,
) -> PackResult:
    """numpy peer: without `pack_short`, pad every document to a multiple of L, concatenate and
    reshape; with it, plan the layout per piece in Python and copy with numpy slices."""
    L = context_length
    if not pack_short:
        parts, lengths, doc_index = [], [], []
        for d, doc in enumerate(docs):
            n = len(doc)
            if n == 0:
                continue
            w = -(-n // L)
            padded = np.full(w * L, pad_id, dtype=np.int64)
            padded[:n] = doc
            parts.append(padded)
            lengths.append(np.minimum(L, n - L * np.arange(w)))
            doc_index.append(np.full(w, d, dtype=np.int64))
        if not parts:
            return np.zeros((0, L), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        ids = np.concatenate(parts).reshape(-1, L)
        return ids, np.concatenate(lengths).astype(np.int64), np.concatenate(doc_index)
    # pack_short: list of windows, each a list of (doc, start, stop).
    assert eos_id is not None, "pack_short needs eos_id"
    plan: list[list[tuple[int, int, int]]] = []
    used: list[int] = []
    starts: list[int] = []
    open_window = False
    for d, doc in enumerate(docs):
        n = len(doc)
        for s in range(0, n, L):
            m = min(L, n - s)
            if m < L:
                if open_window and used[-1] + 1 + m <= L:
                    plan[-1].append((d, s, s + m))
                    used[-1] += 1 + m
                    continue
                open_window = True
            else:
                open_window = False
            plan.append([(d, s, s + m)])
            used.append(m)
            starts.append(d)
    ids = np.full((len(plan), L), pad_id, dtype=np.int64)
    for w, pieces in enumerate(plan):
        pos = 0
        for k, (d, s, e) in enumerate(pieces):
            if k:
                ids[w, pos] = eos_id
                pos += 1
            ids[w, pos : pos + e - s] = docs[d][s:e]
            pos += e - s
    return ids, np.array(used, dtype=np.int64), np.array(starts, dtype=np.int64)


def _shingles(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def python_dedup(
    query: str, candidates: Sequence[str], threshold: float = 0.9
) -> tuple[list[int], list[tuple[int, str]]]:
    """Plain-Python implementation of the dedup rule (overlap coefficient of 5-shingle sets)."""

    def sig(text: str) -> tuple[list[str], set[tuple[str, ...]], set[tuple[str, ...]]]:
        w = text.lower().split()
        return w, _shingles(w, 5), _shingles(w, 1)

    def sim(a: tuple[Any, ...], b: tuple[Any, ...]) -> float:
        sa, sb = (a[2], b[2]) if len(a[0]) < 5 or len(b[0]) < 5 else (a[1], b[1])
        return len(sa & sb) / min(len(sa), len(sb)) if sa and sb else 0.0

    q = sig(query)
    kept: list[int] = []
    kept_sigs: list[tuple[Any, ...]] = []
    dropped: list[tuple[int, str]] = []
    for i, c in enumerate(candidates):
        s = sig(c)
        reason = None
        if not s[0]:
            reason = "empty"
        elif q[0] and s[0] == q[0]:
            reason = "exact-duplicate-of-query"
        elif q[0] and sim(s, q) >= threshold:
            reason = "near-duplicate-of-query"
        elif any(s[0] == k[0] for k in kept_sigs):
            reason = "exact-duplicate"
        elif any(sim(s, k) >= threshold for k in kept_sigs):
            reason = "near-duplicate"
        if reason is None:
            kept.append(i)
            kept_sigs.append(s)
        else:
            dropped.append((i, reason))
    return kept, dropped


def best_time(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def same(a: PackResult, b: PackResult) -> bool:
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def bench_pack(name: str, docs: list[np.ndarray], repeat: int, **kw: Any) -> None:
    L = 1024
    ours = tttnn.pack_windows(docs, L, **kw)
    assert same(ours, python_pack(docs, L, **kw)), "python reference disagrees"
    assert same(ours, numpy_pack(docs, L, **kw)), "numpy peer disagrees"
    n_tok = sum(len(d) for d in docs)
    t_rust = best_time(lambda: tttnn.pack_windows(docs, L, **kw), repeat)
    t_np = best_time(lambda: numpy_pack(docs, L, **kw), repeat)
    t_py = best_time(lambda: python_pack(docs, L, **kw), max(1, repeat // 2))
    print(f"\n{name}: {len(docs)} docs, {n_tok:,} tokens -> {len(ours[0])} windows of {L}")
    print(f"  tttnn.pack_windows {t_rust * 1e3:9.3f} ms")
    print(f"  numpy peer         {t_np * 1e3:9.3f} ms   ({t_np / t_rust:6.1f}x slower)")
    print(f"  plain Python loop  {t_py * 1e3:9.3f} ms   ({t_py / t_rust:6.1f}x slower)")


def load_texts(path: Path, n: int) -> list[str]:
    import zstandard

    texts: list[str] = []
    with path.open("rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        for line in io.TextIOWrapper(r, encoding="utf-8"):
            texts.append(json.loads(line)["text"])
            if len(texts) >= n:
                break
    return texts


def bench_dedup(corpus: Path, repeat: int) -> None:
    rng = random.Random(0)
    if corpus.exists():
        pool = [t for t in load_texts(corpus, 2000) if len(t.split()) > 200]
        texts = rng.sample(pool, 51)
        source = corpus.name
    else:
        vocab = [f"w{i}" for i in range(5000)]
        texts = [" ".join(rng.choice(vocab) for _ in range(1500)) for _ in range(51)]
        source = "synthetic"
    query, cands = texts[0], texts[1:]
    words = query.split()
    cands[5] = " ".join(words[: len(words) // 2])  # an excerpt of the query
    cands[20] = cands[3].upper()  # a case variant of another neighbor
    ours = tttnn.dedup_neighbors(query, cands)
    assert ours == python_dedup(query, cands), "python dedup disagrees"
    t_rust = best_time(lambda: tttnn.dedup_neighbors(query, cands), repeat)
    t_py = best_time(lambda: python_dedup(query, cands), repeat)
    n_words = sum(len(c.split()) for c in cands)
    print(f"\ndedup_neighbors: 50 candidates ({source}, {n_words:,} words), dropped {ours[1]}")
    print(f"  tttnn.dedup_neighbors {t_rust * 1e3:9.3f} ms")
    print(f"  plain Python          {t_py * 1e3:9.3f} ms   ({t_py / t_rust:6.1f}x slower)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--corpus",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared/corpus/train.jsonl.zst",
    )
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    neighbors = [
        rng.integers(0, 50_000, size=int(n), dtype=np.uint32) for n in rng.integers(500, 5001, 50)
    ]
    short = [
        rng.integers(0, 50_000, size=int(n), dtype=np.uint32) for n in rng.integers(1, 400, 10_000)
    ]
    bench_pack("50 neighbors of 500-5000 tokens", neighbors, args.repeat)
    bench_pack(
        "same, int64 input (converted)", [d.astype(np.int64) for d in neighbors], args.repeat
    )
    bench_pack("10,000 short docs, pack_short", short, args.repeat, pack_short=True, eos_id=0)
    bench_dedup(args.corpus, args.repeat)


if __name__ == "__main__":
    main()
