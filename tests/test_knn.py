"""Exact and approximate kNN against numpy brute force (an independent reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tttnn
from tttnn import _tttnn

METRICS = ["cosine", "ip", "l2"]


def numpy_scores(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) scores in float64, tttnn's convention (similarity, or squared L2 distance)."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    dots = q64 @ x64.T
    if metric == "ip":
        return dots
    if metric == "cosine":
        xn = np.linalg.norm(x64, axis=1)
        qn = np.linalg.norm(q64, axis=1)
        return dots / (qn[:, None] * xn[None, :])
    return (q64**2).sum(1)[:, None] - 2 * dots + (x64**2).sum(1)[None, :]


def numpy_topk(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    s = numpy_scores(x, q, metric)
    order = np.argsort(s if metric == "l2" else -s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def assert_same_topk(
    ids: np.ndarray,
    scores: np.ndarray,
    x: np.ndarray,
    q: np.ndarray,
    k: int,
    metric: str,
    tol: float = 1e-4,
) -> None:
    """Equal to numpy up to ties: the returned scores are the true scores of the returned ids,
    and they equal numpy's k best scores (so any id difference is between equal scores)."""
    want_ids, want_scores = numpy_topk(x, q, k, metric)
    true = np.take_along_axis(numpy_scores(x, q, metric), ids, axis=1)
    np.testing.assert_allclose(scores, true, atol=tol, rtol=tol)
    np.testing.assert_allclose(scores, want_scores, atol=tol, rtol=tol)
    same = (ids == want_ids).mean()
    assert same > 0.95, f"only {same:.3f} of the ids agree with numpy"


def random_data(n: int, dim: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal((nq, dim)).astype(np.float32)
    return x, q


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("nq", [1, 5, 40])
def test_exact_search_equals_numpy(metric: str, nq: int) -> None:
    # dim 100 exercises the SIMD tails; nq 40 the matrix-product path, 1 and 5 the scan path.
    x, q = random_data(3000, 100, nq)
    ids, scores = tttnn.exact_search(x, q, 10, metric=metric)
    assert ids.shape == (nq, 10) and ids.dtype == np.int64
    assert scores.shape == (nq, 10) and scores.dtype == np.float32
    assert_same_topk(ids, scores, x, q, 10, metric)


def test_single_vector_query_and_lists() -> None:
    x, q = random_data(200, 16, 1)
    ids, _ = tttnn.exact_search(x, q[0], 3)
    assert ids.shape == (1, 3)
    ids2, _ = tttnn.exact_search(x.tolist(), q[0].tolist(), 3)
    np.testing.assert_array_equal(ids, ids2)
    # float64 and non-contiguous inputs are converted.
    ids3, _ = tttnn.exact_search(np.asfortranarray(x.astype(np.float64)), q[0], 3)
    np.testing.assert_array_equal(ids, ids3)


def test_k_larger_than_n_is_padded() -> None:
    x, q = random_data(4, 8, 2)
    ids, scores = tttnn.exact_search(x, q, 6, metric="l2")
    assert (ids[:, 4:] == -1).all()
    assert np.isnan(scores[:, 4:]).all()
    assert sorted(ids[0, :4].tolist()) == [0, 1, 2, 3]
    assert_same_topk(ids[:, :4], scores[:, :4], x, q, 4, "l2")


def test_empty_vectors_give_padding() -> None:
    ids, scores = tttnn.exact_search(np.zeros((0, 8), np.float32), np.ones(8, np.float32), 2)
    assert ids.tolist() == [[-1, -1]]
    assert np.isnan(scores).all()


def test_bad_inputs_are_clear_errors() -> None:
    x, q = random_data(50, 8, 2)
    with pytest.raises(ValueError, match="dimension"):
        tttnn.exact_search(x, q[:, :7], 3)
    with pytest.raises(ValueError, match="k must be positive"):
        tttnn.exact_search(x, q, 0)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        tttnn.exact_search(x, bad, 3)
    xb = x.copy()
    xb[3, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        tttnn.exact_search(xb, q, 3)
    with pytest.raises(ValueError, match="unknown metric"):
        tttnn.exact_search(x, q, 3, metric="manhattan")
    with pytest.raises(ValueError, match="2-D"):
        tttnn.exact_search(x[None], q, 3)
    with pytest.raises(ValueError, match="floating-point"):
        tttnn.exact_search(x.astype(np.int32), q, 3)
    with pytest.raises(TypeError):
        tttnn.exact_search(x, "not a vector", 3)


def test_kernel_set_is_reported() -> None:
    assert _tttnn._simd_kernels() in {"avx2", "scalar"}


# ---------------------------------------------------------------------------------------------
# Through the on-disk store, for each dtype.


def dequantized(dtype: str, x: np.ndarray) -> np.ndarray:
    """What each dtype stores (independent of tttnn): f16 rounding, symmetric per-row int8."""
    if dtype == "f32":
        return x
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    scale = np.abs(x).max(axis=1, keepdims=True) / 127.0
    return np.clip(np.round(x / scale), -127, 127) * scale


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
@pytest.mark.parametrize("metric", METRICS)
def test_store_exact_search_per_dtype(tmp_path: Path, dtype: str, metric: str) -> None:
    x, q = random_data(2500, 64, 30, seed=1)
    store = tttnn.EmbeddingStore.create(
        str(tmp_path / "s"), 64, dtype=dtype, metric=metric, shard_size=1000
    )
    store.append(x)
    assert store.num_shards == 3
    # Reference 1: numpy on the vectors the store hands back (its own dequantization).
    back = store.get_vectors(np.arange(len(x)))
    for nq in (1, 30):
        ids, scores = store.search(q[:nq], 10)
        assert_same_topk(ids, scores, back, q[:nq], 10, metric, tol=1e-3)
    # Reference 2: the dtype's rounding computed here, with a tolerance for i8's scale rounding.
    ref = dequantized(dtype, x)
    np.testing.assert_allclose(back, ref, atol=1e-2 if dtype == "i8" else 1e-6)
    ids, scores = store.search(q, 10)
    want_ids, _ = numpy_topk(ref, q, 10, metric)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want_ids)])
    assert overlap > (0.9 if dtype == "i8" else 0.97)


@pytest.mark.parametrize("metric", METRICS)
def test_multi_shard_merge_equals_global_topk(tmp_path: Path, metric: str) -> None:
    x, q = random_data(2000, 32, 12, seed=2)
    store = tttnn.EmbeddingStore.create(str(tmp_path / "s"), 32, metric=metric, shard_size=333)
    store.append(x[:1000])
    store.append(x[1000:])
    assert store.num_shards >= 6
    ids, scores = store.search(q, 25)
    gids, gscores = tttnn.exact_search(x, q, 25, metric=metric)
    np.testing.assert_array_equal(ids, gids)
    np.testing.assert_allclose(scores, gscores, rtol=1e-5, atol=1e-5)


def test_store_k_larger_than_store(tmp_path: Path) -> None:
    x, q = random_data(7, 8, 3)
    store = tttnn.EmbeddingStore.create(str(tmp_path / "s"), 8, dtype="f16", shard_size=3)
    store.append(x)
    ids, scores = store.search(q, 10)
    assert (ids[:, 7:] == -1).all() and np.isnan(scores[:, 7:]).all()
    assert sorted(ids[0, :7].tolist()) == list(range(7))


# ---------------------------------------------------------------------------------------------
# HNSW recall against exact search.


def clustered_unit_vectors(n: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    """Gaussian clusters around random unit centres, normalised (fixed seed)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)]
    x += (spread / np.sqrt(dim)) * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact)]))


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_hnsw_small_store_every_metric(tmp_path: Path, dtype: str) -> None:
    x = clustered_unit_vectors(3000, 48, 60, 0.7, seed=5)
    q = clustered_unit_vectors(50, 48, 60, 0.7, seed=5 + 1)
    # Rows of different lengths, so inner product and L2 differ from cosine: the graph's i8 codes
    # share one scale per shard, which must keep their order.
    x *= np.random.default_rng(9).uniform(0.5, 3.0, (len(x), 1)).astype(np.float32)
    for metric in METRICS:
        path = str(tmp_path / metric)
        store = tttnn.EmbeddingStore.create(
            path, 48, dtype=dtype, metric=metric, shard_size=1000, hnsw=True
        )
        store.append(x)
        assert store.has_hnsw
        reopened = tttnn.EmbeddingStore.open(path)
        ids, scores = reopened.search(q, 10, exact=False)
        eids, escores = reopened.search(q, 10)
        assert recall_at_k(ids, eids) >= 0.95, metric
        # Candidates are re-ranked exactly: every id found has its exact score, best first.
        exact_of = {(r, i): s for r in range(len(q)) for i, s in zip(eids[r], escores[r])}
        for r in range(len(q)):
            for i, sc in zip(ids[r], scores[r]):
                if (r, i) in exact_of:
                    np.testing.assert_allclose(sc, exact_of[r, i], rtol=1e-5, atol=1e-6)
            order = np.diff(scores[r])
            assert (order <= 1e-6).all() if metric != "l2" else (order >= -1e-6).all()
        # A narrow beam finds less than a wide one, never more. A beam as wide as the shard
        # explores everything a walk reaches, and the rows no walk reaches (the graph's
        # stranded nodes) are scored by every search: the wide search is exact.
        narrow, _ = reopened.search(q, 10, exact=False, ef=10)
        wide, _ = reopened.search(q, 10, exact=False, ef=1000)
        assert recall_at_k(narrow, eids) <= recall_at_k(wide, eids) + 1e-9
        assert recall_at_k(wide, eids) == 1.0, metric


def test_hnsw_stranded_rows_are_kept_and_scored(tmp_path: Path) -> None:
    """Inner product over rows of different norms: the graph strands many small rows. They are
    listed in the manifest (they survive a reopen), and a deep search with a beam as wide as the
    store gives the exact scores rank by rank, so every stranded row that belongs is found."""
    n, dim = 5000, 64
    x = clustered_unit_vectors(n, dim, 50, 0.7, seed=11)
    x *= np.random.default_rng(3).uniform(0.5, 3.0, (n, 1)).astype(np.float32)
    q = clustered_unit_vectors(20, dim, 50, 0.7, seed=11)
    path = str(tmp_path / "ip")
    store = tttnn.EmbeddingStore.create(path, dim, metric="ip", shard_size=n, hnsw=True)
    store.append(x)
    stranded = store.hnsw_stranded()
    assert stranded and all(0 <= i < n for i in stranded)
    reopened = tttnn.EmbeddingStore.open(path)
    assert reopened.hnsw_stranded() == stranded
    for queries in (q, -q):
        eids, escores = reopened.search(queries, 1000)
        assert np.isin(eids, stranded).any()
        _, scores = reopened.search(queries, 1000, exact=False, ef=n)
        np.testing.assert_allclose(scores, escores, rtol=1e-5, atol=1e-5)


def test_hnsw_scale_missing_from_manifest_is_a_corrupt_index(tmp_path: Path) -> None:
    """A hand-edited manifest is refused: without its checksum it is corrupt whatever else it
    says (the core's own test reseals edited manifests with a valid checksum and checks that the
    missing scale and an out-of-range stranded key are still caught)."""
    import json

    x = clustered_unit_vectors(500, 16, 10, 0.7, seed=2)
    path = tmp_path / "s"
    tttnn.EmbeddingStore.create(str(path), 16, shard_size=1000, hnsw=True).append(x)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["shards"][0]["hnsw_scale"] > 0
    del manifest["checksum"]  # a manifest of the current format without its checksum is corrupt
    del manifest["shards"][0]["hnsw_scale"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tttnn.CorruptIndexError, match="no checksum"):
        tttnn.EmbeddingStore.open(str(path))
    # A stranded-row id outside the shard is a corrupt index too, not a crash at search time.
    manifest["shards"][0]["hnsw_scale"] = 1.0
    manifest["shards"][0]["hnsw_stranded"] = [500]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tttnn.CorruptIndexError, match="no checksum"):
        tttnn.EmbeddingStore.open(str(path))


@pytest.mark.slow
def test_hnsw_recall_at_20_on_200k_clustered(tmp_path: Path) -> None:
    """recall@20 >= 0.95 on 200,000 × 384 clustered unit vectors (2,000 clusters) at the default
    search settings (ef 64); expansion_add 64 instead of 128 halves the build (about 20 s on 2
    idle cores; recall measured 0.994)."""
    n, dim, nq = 200_000, 384, 200
    data = clustered_unit_vectors(n + nq, dim, 2000, 1.0, seed=42)
    x, q = data[:n], data[n:]
    store = tttnn.EmbeddingStore.create(
        str(tmp_path / "s"), dim, dtype="f32", shard_size=n, hnsw=True, hnsw_expansion_add=64
    )
    store.append(x)
    ids, _ = store.search(q, 20, exact=False)
    eids, _ = store.search(q, 20)
    recall = recall_at_k(ids, eids)
    print(f"recall@20 = {recall:.4f}")
    assert recall >= 0.95
