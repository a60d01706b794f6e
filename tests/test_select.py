"""SIFT selection (`tttnn.sift_select`, rust/select.rs) against a float64 numpy reference of the
same greedy, its settings, what repeated picks train on, and an evaluation run that selects with
it (the sample index, the real encoder, a tiny Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tttnn
from helpers import SAMPLE_TEST
from tttnn.config import EvalConfig, PackConfig, RetrievalConfig
from tttnn.evaluate import iter_test_documents, run_eval
from tttnn.models import load_causal_lm
from tttnn.pack import pack_neighbors, pick_pieces
from tttnn.ttt import TestTimeTrainer


def reference(x: np.ndarray, q: np.ndarray, n: int, lam: float) -> tuple[list[int], list[float]]:
    """The greedy in its direct form, float64, the whole Gram matrix updated at every pick;
    ties go to the lowest row (`np.argmax` takes the first maximum)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
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
        c = c - cj * col / d
        g = g - np.outer(col, col) / d
    return picks, variances


def alpha_mask(variances: list[float], alpha: float) -> list[bool]:
    """activeft's adaptive stop: keep pick t (1-based) where sqrt(s_t) <= 1 / (alpha t)."""
    return [np.sqrt(max(v, 0.0)) <= 1 / (alpha * t) for t, v in enumerate(variances, start=1)]


@pytest.mark.parametrize("seed", range(25))
def test_matches_numpy_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, d, n = int(rng.integers(1, 60)), int(rng.integers(1, 48)), int(rng.integers(1, 80))
    lam = float(rng.choice([1e-3, 0.01, 0.1, 1.0]))
    if seed % 2:  # unit rows around a few centres, as retrieved candidates are
        centres = rng.standard_normal((3, d))
        x = centres[rng.integers(0, 3, k)] + 0.3 * rng.standard_normal((k, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = x[0] + 0.1 * rng.standard_normal(d)
    else:
        x, q = rng.uniform(-1, 1, (k, d)), rng.uniform(-1, 1, d)
    x, q = x.astype(np.float32), q.astype(np.float32)
    rows, variances = tttnn.sift_select(x, q, n, lam=lam)
    want_rows, want_var = reference(x, q, n, lam)
    assert rows.dtype == np.int64 and variances.dtype == np.float64
    assert rows.tolist() == want_rows
    np.testing.assert_allclose(variances, want_var, rtol=0, atol=1e-9 * float(q @ q))
    assert np.all(np.diff(variances) <= 1e-12)  # conditioning never adds variance
    alpha = float(rng.choice([0.3, 1.0, 3.0, 10.0]))
    kept = alpha_mask(want_var, alpha)
    rows_a, var_a = tttnn.sift_select(x, q, n, lam=lam, alpha=alpha)
    assert rows_a.tolist() == [j for j, keep in zip(want_rows, kept) if keep]
    np.testing.assert_allclose(var_a, [v for v, keep in zip(want_var, kept) if keep], atol=1e-9)


def test_small_case_by_hand() -> None:
    # x0 = (1, 0), x1 = (1, 1), x2 = (0, 1), q = (1, 0), λ = 1. Gains c²/(G_ll + λ): 1/2, 1/3, 0
    # -> x0, s = 1/2. Conditioned on x0: c = (1/2, 1/2, 0), diag (1/2, 3/2, 1), gains 1/6, 1/10,
    # 0 -> x0 again (a repeat), s = 1/3.
    x = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32)
    rows, var = tttnn.sift_select(x, np.array([1, 0], dtype=np.float32), 2, lam=1.0)
    assert rows.tolist() == [0, 0]
    np.testing.assert_allclose(var, [1 / 2, 1 / 3], rtol=1e-15)


def test_redundant_copies_are_passed_over() -> None:
    # Two copies of the nearest row: nearest-first trains on both, SIFT on one copy and then on
    # the other direction.
    x = np.array([[1, 0.2], [1, 0.2], [0.7, -0.7]], dtype=np.float32)
    rows, _ = tttnn.sift_select(x, np.array([1, 0], dtype=np.float32), 2)
    assert rows.tolist() == [0, 2]


def test_ties_go_to_the_lowest_row() -> None:
    x = np.array([[0, 1], [1, 0], [0.5, 0], [1, 0]], dtype=np.float32)
    rows, _ = tttnn.sift_select(x, np.array([1, 0], dtype=np.float32), 1)
    assert rows.tolist() == [1]
    # A query orthogonal to every candidate: all gains are 0, row 0 every time, no variance gone.
    rows, var = tttnn.sift_select(x[:1], np.array([1, 0], dtype=np.float32), 3)
    assert rows.tolist() == [0, 0, 0] and var.tolist() == [1.0, 1.0, 1.0]


def test_alpha_by_hand() -> None:
    # One candidate equal to q, λ = 1: s_t = 1/(1+t). alpha 0.5 keeps t = 1..4 (sqrt(1/5) = 0.447
    # <= 1/2) and drops t = 5, 6 (0.408 > 0.4, 0.378 > 0.333).
    one = np.array([[1, 0]], dtype=np.float32)
    rows, var = tttnn.sift_select(one, one[0], 6, lam=1.0, alpha=0.5)
    assert rows.tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(var, [1 / 2, 1 / 3, 1 / 4, 1 / 5])
    rows, var = tttnn.sift_select(one, one[0], 6, lam=1.0, alpha=1e6)
    assert len(rows) == 0 and len(var) == 0


def test_inputs_converted_and_checked() -> None:
    x = np.eye(3, dtype=np.float64)[:2]
    rows, _ = tttnn.sift_select(x, [0.0, 1.0, 0.0], 1)  # float64 and lists are converted
    assert rows.tolist() == [1]
    q = np.array([1, 0, 0], dtype=np.float32)
    cases = [
        (dict(candidates=x, query=q, n=0), "n \\(picks\\) must be at least 1"),
        (dict(candidates=x, query=q, n=1, lam=0.0), "lambda must be a positive number"),
        (dict(candidates=x, query=q, n=1, lam=float("nan")), "lambda must be a positive"),
        (dict(candidates=x, query=q, n=1, alpha=-1.0), "alpha must be a positive number"),
        (dict(candidates=x, query=q[:2], n=1), "query have dimension 2, expected 3"),
        (dict(candidates=x, query=np.eye(3), n=1), "query must be one vector"),
        (dict(candidates=x[0], query=q, n=1), "candidates must be a 2-D array"),
        (dict(candidates=np.zeros((0, 3)), query=q, n=1), "no candidates"),
        (dict(candidates=x.astype(np.int32), query=q, n=1), "floating-point array"),
        (dict(candidates=np.array([[1, np.nan, 0]]), query=q, n=1), "candidate row 0 has a"),
        (dict(candidates=x, query=np.array([np.inf, 0, 0]), n=1), "query has a non-finite"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            tttnn.sift_select(**kw)


def test_selection_settings_default_to_nearest_and_refuse_bad_values() -> None:
    r = RetrievalConfig()
    assert (r.select, r.candidates, r.sift_lambda, r.sift_alpha) == ("nearest", 200, 0.01, None)
    bad = [
        (dict(select="random"), "select must be one of nearest, sift"),
        (dict(candidates=0), "candidates must be >= 1"),
        (dict(sift_lambda=0.0), "sift_lambda must be a positive number"),
        (dict(sift_alpha=-2.0), "sift_alpha must be a positive number"),
        (dict(select="sift", neighbors=30, candidates=20), "raise --candidates"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            RetrievalConfig(**kw)
    RetrievalConfig(neighbors=30, candidates=20)  # nearest does not use the candidates


def test_pick_pieces_by_hand() -> None:
    # 10 tokens, windows of 4: pieces [0,4) [4,8) [8,10).
    assert [pick_pieces(10, 4, None, k) for k in range(2)] == [[(0, 10)], [(0, 10)]]
    assert [pick_pieces(10, 4, 1, k) for k in range(4)] == [
        [(0, 4)], [(4, 8)], [(8, 10)], [(0, 4)],
    ]  # fmt: skip
    # Two pieces a pick: (0, 1), (2, 0) -> wraps, (1, 2).
    assert [pick_pieces(10, 4, 2, k) for k in range(3)] == [
        [(0, 8)], [(8, 10), (0, 4)], [(4, 10)],
    ]  # fmt: skip
    assert pick_pieces(3, 4, 2, 5) == [(0, 3)]
    assert pick_pieces(0, 4, None, 0) == []


def windows_by_rule(tokens: dict[int, np.ndarray], ids: list[int], width: int, cap: int | None):
    """Plain reference of the repeat rule without pack_short: per pick, its pieces, in order."""
    rows, owners, seen = [], [], {}
    for p, i in enumerate(ids):
        t = tokens[i]
        pieces = [t[a : a + width] for a in range(0, len(t), width)]
        m = len(pieces) if cap is None else min(cap, len(pieces))
        k = seen.get(i, 0)
        seen[i] = k + 1
        for j in range(m):
            rows.append(pieces[(k * m + j) % len(pieces)])
            owners.append(p)
    return rows, owners


@pytest.mark.parametrize("seed", range(20))
def test_repeated_picks_pack_by_rule(sample_index: Path, lm_tokenizer, seed: int) -> None:
    store = tttnn.Index.open(sample_index).store
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in rng.choice(8, size=int(rng.integers(1, 12)))]
    width = int(rng.choice([64, 256, 1024]))
    cap = [None, 1, 2, 3][seed % 4]
    cfg = PackConfig(windows_per_neighbor=cap)
    windows, lengths, doc_index = pack_neighbors(store, ids, cfg, width, lm_tokenizer)
    tokens = {i: np.asarray(store.tokens(i)) for i in set(ids)}
    rows, owners = windows_by_rule(tokens, ids, width, cap)
    assert doc_index.tolist() == owners
    assert lengths.tolist() == [len(r) for r in rows]
    for w, n, r in zip(windows, lengths, rows):
        assert w[:n].tolist() == r.tolist()
    # Without repeats it is exactly the store's packing (the nearest path); with pack_short the
    # same tokens are trained on, in the same order.
    distinct = list(dict.fromkeys(ids))
    packed = pack_neighbors(store, distinct, cfg, width, lm_tokenizer)
    direct = store.pack_windows(distinct, width, max_windows_per_doc=cap)
    for a, b in zip(packed, direct):
        np.testing.assert_array_equal(a, b)
    short = PackConfig(windows_per_neighbor=cap, pack_short=True)
    w2, l2, d2 = pack_neighbors(store, ids, short, width, lm_tokenizer)
    eos = lm_tokenizer.eos_token_id
    flat = [t for w, n in zip(w2, l2) for t in w[:n].tolist() if t != eos]
    assert flat == [t for r in rows for t in r.tolist() if t != eos]
    assert np.all(np.diff(d2) >= 0) and (len(d2) == 0 or d2[-1] <= len(ids) - 1)


@pytest.mark.slow
def test_eval_with_sift(sample_index: Path, tiny_lm: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = EvalConfig.from_flat(
        index=str(sample_index), data=[str(SAMPLE_TEST)], out=str(run), model=str(tiny_lm),
        neighbors=4, select="sift", candidates=12, sift_lambda=0.01, eval_at=(0, 2, 4),
        max_length=64, lr=1e-3, windows_per_neighbor=1, limit=2, autocast_dtype="fp32",
        progress=False, exact=True,
    )  # fmt: skip
    summary = run_eval(cfg)
    assert (summary.ok, summary.failed) == (2, 0)
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    index = tttnn.Index.open(sample_index)
    model, tokenizer = load_causal_lm(str(tiny_lm))
    trainer = TestTimeTrainer(model, tokenizer, cfg.ttt)
    differs = 0
    for row in rows:
        sel = row["selected"]
        picks = [n["id"] for n in row["neighbors"]]
        assert len(picks) == 4 == len(sel["rank"]) == len(sel["variance"])
        assert sel["candidates"] == 12 and row["select_s"] >= 0
        # The picks are what the selection computes on the guarded candidates, in that order.
        query_text = next(
            d.text for d in iter_test_documents(cfg.test) if d.doc_id == row["doc_id"]
        )  # fmt: skip
        hits = index.search([query_text], k=12, exact=True, guard=True)[0]
        vectors = index.store.get_vectors(np.asarray(hits.ids, dtype=np.int64))
        want, var = reference(vectors, index.encoder.encode([query_text])[0], 4, 0.01)
        assert sel["rank"] == want and picks == [hits.ids[j] for j in want]
        np.testing.assert_allclose(sel["variance"], var, atol=1e-6)
        # Training used them: the same trainer on the picks' windows gives the row's figures.
        packed = pack_neighbors(index.store, picks, cfg.pack, 64, trainer.tokenizer)
        out = trainer.run(query_text, *packed, n_neighbors=4)
        assert out.bpb[4] == pytest.approx(row["bpb"]["4"], rel=1e-6)
        assert (out.windows_trained, out.tokens_trained) == (
            row["windows_trained"], row["tokens_trained"],
        )  # fmt: skip
        differs += picks != hits.ids[:4]
        assert set(row["bpb"]) == {"0", "2", "4"} and row["bpb"]["4"] != row["bpb"]["0"]
    assert differs  # SIFT did not just take the nearest four


def test_eval_alpha_stop_still_scores_every_k(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    # An alpha so large that every pick is dropped: nothing is trained on, every k is scored.
    cfg = EvalConfig.from_flat(
        index=str(sample_index), data=[str(SAMPLE_TEST)], out=str(tmp_path / "run"),
        model=str(tiny_lm), neighbors=3, select="sift", candidates=6, sift_alpha=1e6,
        eval_at=(0, 1, 3), max_length=64, lr=1e-3, windows_per_neighbor=1, limit=1,
        autocast_dtype="fp32", progress=False, exact=True,
    )  # fmt: skip
    assert run_eval(cfg).ok == 1
    (row,) = [
        json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    ]
    assert row["neighbors"] == [] and row["selected"]["dropped"] == 3
    assert row["windows_trained"] == 0 and set(row["bpb"]) == {"0", "1", "3"}
    assert row["bpb"]["3"] == pytest.approx(row["bpb"]["0"], rel=1e-9)
