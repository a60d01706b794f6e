"""`merge_topk`, the core's merge of per-group top-k lists, against a plain Python merge (ties,
padding, k beyond the candidates, both score directions), and against the store's own search."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tttnn._tttnn import EmbeddingStore, merge_topk

# Few distinct values, so ties within and across lists are common; -0.0 and 0.0 differ in the
# IEEE total order, and infinities are ordered like any score.
VALUES = np.array([-np.inf, -1.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.0, np.inf], dtype=np.float32)


def total_order(score: float) -> int:
    """f32 bits as an integer that orders like the IEEE total order (`f32::total_cmp`)."""
    bits = struct.unpack("<i", struct.pack("<f", score))[0]
    return bits ^ 0x7FFFFFFF if bits < 0 else bits


def reference(
    parts: list[tuple[np.ndarray, np.ndarray]], k: int, higher_is_better: bool
) -> tuple[list[list[int]], list[list[float]]]:
    """Every valid candidate of a query, sorted by score (best first), then smaller id."""
    nq = parts[0][0].shape[0]
    out_ids, out_scores = [], []
    for q in range(nq):
        cands = [
            (float(s), int(i))
            for ids, scores in parts
            for i, s in zip(ids[q], scores[q])
            if i >= 0 and not np.isnan(s)
        ]
        sign = -1 if higher_is_better else 1
        cands.sort(key=lambda c: (sign * total_order(c[0]), c[1]))
        best = cands[:k] + [(float("nan"), -1)] * max(0, k - len(cands))
        out_ids.append([i for _, i in best])
        out_scores.append([s for s, _ in best])
    return out_ids, out_scores


def random_parts(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    nq = int(rng.integers(1, 5))
    parts = []
    for _ in range(int(rng.integers(1, 5))):
        k_i = int(rng.integers(0, 6))
        ids = rng.integers(0, 40, size=(nq, k_i)).astype(np.int64)
        scores = rng.choice(VALUES, size=(nq, k_i)).astype(np.float32)
        pad = rng.random((nq, k_i)) < 0.15  # padding as a search writes it
        ids[pad], scores[pad] = -1, np.nan
        scores[rng.random((nq, k_i)) < 0.05] = np.nan  # a NaN score with a real id: skipped too
        ids[rng.random((nq, k_i)) < 0.05] = -1  # and a real score with id -1
        parts.append((ids, scores))
    return parts


@pytest.mark.parametrize("higher_is_better", [True, False])
@pytest.mark.parametrize("seed", range(40))
def test_merge_topk_is_the_plain_merge(seed: int, higher_is_better: bool) -> None:
    rng = np.random.default_rng(seed)
    parts = random_parts(rng)
    candidates = sum(p[0].shape[1] for p in parts)
    for k in {1, 3, max(1, candidates), candidates + 4}:
        ids, scores = merge_topk(
            [p[0] for p in parts], [p[1] for p in parts], k, higher_is_better=higher_is_better
        )
        assert ids.dtype == np.int64 and scores.dtype == np.float32
        assert ids.shape == scores.shape == (parts[0][0].shape[0], k)
        want_ids, want_scores = reference(parts, k, higher_is_better)
        assert ids.tolist() == want_ids, (seed, k)
        # bitwise: -0.0 stays -0.0, padding is NaN
        np.testing.assert_array_equal(
            scores.view(np.int32), np.asarray(want_scores, dtype=np.float32).view(np.int32)
        )


def test_ties_go_to_the_smaller_id_and_padding_fills_the_rest() -> None:
    ids = [np.array([[30, 12, 5]]), np.array([[2, 40, -1]])]
    scores = [np.array([[0.9, 0.5, 0.5]], np.float32), np.array([[0.9, 0.5, np.nan]], np.float32)]
    got_ids, got_scores = merge_topk(ids, scores, 6)
    assert got_ids.tolist() == [[2, 30, 5, 12, 40, -1]]
    assert got_scores[0, :5].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5, 0.5])
    assert np.isnan(got_scores[0, 5])
    got_ids, _ = merge_topk(ids, scores, 2, higher_is_better=False)
    assert got_ids.tolist() == [[5, 12]]
    # ids of any integer dtype and float64 scores (or lists) are converted
    got_ids, _ = merge_topk([i.astype(np.int32) for i in ids], [[[0.9, 0.5, 0.5]], scores[1]], 6)
    assert got_ids.tolist() == [[2, 30, 5, 12, 40, -1]]


def test_bad_lists_are_value_errors() -> None:
    ids, scores = np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="k must be positive"):
        merge_topk([ids], [scores], 0)
    with pytest.raises(ValueError, match="at least one"):
        merge_topk([], [], 3)
    with pytest.raises(ValueError, match="1 id lists for 2 score lists"):
        merge_topk([ids], [scores, scores], 3)
    with pytest.raises(ValueError, match="must match"):
        merge_topk([ids], [scores[:, :2]], 3)
    with pytest.raises(ValueError, match="same queries"):
        merge_topk([ids, ids[:1]], [scores, scores[:1]], 3)
    with pytest.raises(ValueError, match="fit int64"):
        merge_topk([ids.astype(np.uint64)], [scores], 3)
    with pytest.raises(ValueError, match="integers"):
        merge_topk([scores], [scores], 3)
    with pytest.raises(ValueError, match="2-D"):
        merge_topk([ids[0]], [scores], 3)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_merged_shard_groups_are_the_store_search(tmp_path: Path, metric: str) -> None:
    """What a search spread over processes does: search groups of shards, merge the lists."""
    rng = np.random.default_rng(1)
    store = EmbeddingStore.create(tmp_path / "s", 8, metric=metric, shard_size=7)
    base = rng.standard_normal((7, 8)).astype(np.float32)
    store.append(np.concatenate([base, base, base, rng.standard_normal((5, 8))]).astype(np.float32))
    q = np.concatenate([base[:3], rng.standard_normal((3, 8)).astype(np.float32)])
    for k in (1, 4, 9, 30):
        full_ids, full_scores = store.search(q, k)
        for groups in ([[0], [1, 2], [3]], [[2, 0], [3, 1]]):
            lists = [store.search(q, k, shards=g) for g in groups]
            ids, scores = merge_topk(
                [i for i, _ in lists], [s for _, s in lists], k, higher_is_better=metric != "l2"
            )
            np.testing.assert_array_equal(ids, full_ids)
            np.testing.assert_array_equal(scores.view(np.int32), full_scores.view(np.int32))
