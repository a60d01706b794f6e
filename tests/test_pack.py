"""Tests of `tttnn.pack_windows` and `tttnn.dedup_neighbors` against plain-Python references."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest

import tttnn

# ---------------------------------------------------------------------------------------------
# Plain-Python references (independent of the Rust code)
# ---------------------------------------------------------------------------------------------


def reference_pack(
    docs: Sequence[Sequence[int] | np.ndarray],
    context_length: int,
    *,
    eos_id: int | None = None,
    pack_short: bool = False,
    max_windows_per_doc: int | None = None,
    pad_id: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packing rules, token by token."""
    rows: list[tuple[list[int], int]] = []
    open_window = False
    for d, doc in enumerate(docs):
        doc = [int(t) for t in doc]
        pieces = [doc[s : s + context_length] for s in range(0, len(doc), context_length)]
        if max_windows_per_doc is not None:
            pieces = pieces[:max_windows_per_doc]
        for piece in pieces:
            if pack_short and len(piece) < context_length:
                if open_window and len(rows[-1][0]) + 1 + len(piece) <= context_length:
                    rows[-1][0].append(eos_id)  # type: ignore[arg-type]
                    rows[-1][0].extend(piece)
                    continue
                open_window = True
            else:
                open_window = False
            rows.append((list(piece), d))
    input_ids = np.full((len(rows), context_length), pad_id, dtype=np.int64)
    for i, (row, _) in enumerate(rows):
        input_ids[i, : len(row)] = row
    lengths = np.array([len(r) for r, _ in rows], dtype=np.int64)
    doc_index = np.array([d for _, d in rows], dtype=np.int64)
    return input_ids, lengths, doc_index


def _shingles(words: list[str], n: int = 5) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _similarity(a: list[str], b: list[str]) -> float:
    sa: set[tuple[str, ...]]
    sb: set[tuple[str, ...]]
    if len(a) < 5 or len(b) < 5:
        sa, sb = _shingles(a, 1), _shingles(b, 1)
    else:
        sa, sb = _shingles(a), _shingles(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / min(len(sa), len(sb))


def reference_dedup(
    query: str, candidates: Sequence[str], threshold: float = 0.9
) -> tuple[list[int], list[tuple[int, str]]]:
    """The dedup rule with Python sets of word tuples (no hashing)."""
    q = query.lower().split()
    kept: list[int] = []
    kept_words: list[list[str]] = []
    dropped: list[tuple[int, str]] = []
    for i, c in enumerate(candidates):
        w = c.lower().split()
        if not w:
            reason: str | None = "empty"
        elif q and w == q:
            reason = "exact-duplicate-of-query"
        elif q and _similarity(w, q) >= threshold:
            reason = "near-duplicate-of-query"
        elif any(w == k for k in kept_words):
            reason = "exact-duplicate"
        elif any(_similarity(w, k) >= threshold for k in kept_words):
            reason = "near-duplicate"
        else:
            reason = None
        if reason is None:
            kept.append(i)
            kept_words.append(w)
        else:
            dropped.append((i, reason))
    return kept, dropped


def assert_same(got: tuple[np.ndarray, ...], want: tuple[np.ndarray, ...]) -> None:
    for g, w in zip(got, want):
        assert g.dtype == np.int64
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------------------------------------
# pack_windows
# ---------------------------------------------------------------------------------------------


def test_paper_example_2500_tokens() -> None:
    doc = np.arange(2500, dtype=np.uint32)
    ids, lengths, doc_index = tttnn.pack_windows([doc], 1024)
    assert ids.shape == (3, 1024)
    assert lengths.tolist() == [1024, 1024, 452]
    assert doc_index.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(ids[2, :452], doc[2048:])
    assert (ids[2, 452:] == 0).all()
    assert ids.flags.c_contiguous and ids.flags.writeable


def test_empty_documents_and_no_documents() -> None:
    e = np.array([], dtype=np.uint32)
    ids, lengths, doc_index = tttnn.pack_windows([e, np.arange(1, 4, dtype=np.uint32), e], 8)
    assert lengths.tolist() == [3]
    assert doc_index.tolist() == [1]
    ids, lengths, doc_index = tttnn.pack_windows([], 8)
    assert ids.shape == (0, 8) and lengths.shape == (0,) and doc_index.shape == (0,)
    ids, _, _ = tttnn.pack_windows([e, e], 8, pack_short=True, eos_id=1)
    assert ids.shape == (0, 8)


def test_max_windows_per_doc_and_pad() -> None:
    docs = [np.arange(1, 11, dtype=np.uint32), np.arange(20, 23, dtype=np.uint32)]
    ids, lengths, doc_index = tttnn.pack_windows(docs, 4, max_windows_per_doc=2, pad_id=7)
    assert lengths.tolist() == [4, 4, 3]
    assert doc_index.tolist() == [0, 0, 1]
    assert ids[2].tolist() == [20, 21, 22, 7]


def test_pack_short_layout() -> None:
    docs = [[1, 2], [3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [13], [14]]
    ids, lengths, doc_index = tttnn.pack_windows(docs, 5, pack_short=True, eos_id=0, pad_id=99)
    # [1 2] cannot take [3 4 5] (2+1+3 > 5); the full window [6..10] closes the open one;
    # the tail [11 12] takes [13] but not [14] (4+1+1 > 5).
    assert ids.tolist() == [
        [1, 2, 99, 99, 99],
        [3, 4, 5, 99, 99],
        [6, 7, 8, 9, 10],
        [11, 12, 0, 13, 99],
        [14, 99, 99, 99, 99],
    ]
    assert lengths.tolist() == [2, 3, 5, 4, 1]
    assert doc_index.tolist() == [0, 1, 2, 2, 4]
    # Short docs fill a window exactly.
    ids, lengths, _ = tttnn.pack_windows([[1], [2], [3]], 5, pack_short=True, eos_id=0)
    assert ids.tolist() == [[1, 0, 2, 0, 3]] and lengths.tolist() == [5]


def test_accepts_integer_dtypes_lists_and_views() -> None:
    base = np.arange(1, 30, dtype=np.int64)
    want = tttnn.pack_windows([base.astype(np.uint32)], 8)
    for dt in (np.int64, np.int32, np.uint64, np.uint16, np.int16, np.uint8, np.int8):
        assert_same(tttnn.pack_windows([base.astype(dt)], 8), want)
    assert_same(tttnn.pack_windows([base.tolist()], 8), want)
    assert_same(tttnn.pack_windows((tuple(base.tolist()),), 8), want)
    # Non-contiguous views and a 2-D array of rows.
    strided = np.arange(0, 58, dtype=np.uint32)[::2]
    assert_same(tttnn.pack_windows([strided], 8), reference_pack([strided.tolist()], 8))
    rows = np.arange(24, dtype=np.uint32).reshape(3, 8)
    assert_same(tttnn.pack_windows(rows, 5), reference_pack(rows.tolist(), 5))
    big = np.array([2**32 - 1], dtype=np.uint64)
    assert tttnn.pack_windows([big], 2)[0].tolist() == [[2**32 - 1, 0]]


def test_input_is_not_modified_and_not_aliased() -> None:
    doc = np.arange(10, dtype=np.uint32)
    ids, _, _ = tttnn.pack_windows([doc], 4)
    ids[:] = -1
    assert doc.tolist() == list(range(10))


@pytest.mark.parametrize(
    ("docs", "kwargs", "match"),
    [
        ([[1, 2]], {"context_length": 0}, "context_length must be at least 1"),
        ([[1, 2]], {"context_length": -3}, "context_length must be at least 1"),
        ([[1, 2]], {"context_length": 4, "pack_short": True}, "eos_id"),
        ([[1, 2]], {"context_length": 4, "max_windows_per_doc": 0}, "max_windows_per_doc"),
        ([[1, 2]], {"context_length": 4, "pad_id": -1}, "pad_id"),
        ([[1, 2]], {"context_length": 4, "eos_id": 2**32, "pack_short": True}, "eos_id"),
        ([[1, -2]], {"context_length": 4}, r"document 0: token id -2 at position 1"),
        ([[], [2**32]], {"context_length": 4}, r"document 1: token id 4294967296"),
        ([np.array([5, -1], dtype=np.int32)], {"context_length": 4}, "token id -1"),
        ([np.array([2**40], dtype=np.int64)], {"context_length": 4}, "outside"),
        ([np.array([1.0, 2.0])], {"context_length": 4}, "must be integers"),
        ([[1], [1.5]], {"context_length": 4}, "document 1 must be integers"),
        ([np.zeros((2, 2), dtype=np.uint32)], {"context_length": 4}, "1-D"),
        (np.arange(5, dtype=np.uint32), {"context_length": 4}, "sequence of 1-D"),
    ],
)
def test_bad_input_gives_value_error(docs: object, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tttnn.pack_windows(docs, **kwargs)  # type: ignore[arg-type]


def test_bad_types_give_type_error() -> None:
    with pytest.raises(TypeError, match="document 0"):
        tttnn.pack_windows(["some text"], 4)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="document 1 must be"):
        tttnn.pack_windows([[1], object()], 4)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single str"):
        tttnn.pack_windows("abc", 4)  # type: ignore[arg-type]


def test_random_against_reference() -> None:
    rng = random.Random(1216)
    for _ in range(400):
        L = rng.randint(1, 24)
        docs = [
            [
                rng.randint(1, 50_000)
                for _ in range(rng.choice([0, 1, L - 1, L, L + 1, rng.randint(0, 4 * L)]))
            ]
            for _ in range(rng.randint(0, 10))
        ]
        kwargs = {
            "eos_id": rng.randint(0, 3),
            "pack_short": rng.random() < 0.5,
            "max_windows_per_doc": rng.choice([None, None, 1, 2, 3]),
            "pad_id": rng.randint(0, 3),
        }
        arrays = [np.array(d, dtype=np.uint32) for d in docs]
        got = tttnn.pack_windows(arrays, L, **kwargs)  # type: ignore[arg-type]
        want = reference_pack(docs, L, **kwargs)  # type: ignore[arg-type]
        assert_same(got, want)
        # Invariant: real tokens, EOS separators removed, are the capped docs in order.
        if not kwargs["pack_short"]:
            flat = [t for row, n in zip(got[0].tolist(), got[1].tolist()) for t in row[:n]]
            cap = kwargs["max_windows_per_doc"]
            capped = [t for d in docs for t in (d if cap is None else d[: cap * L])]
            assert flat == capped
        assert (np.diff(got[2]) >= 0).all()


def test_realistic_sizes_against_reference() -> None:
    rng = np.random.default_rng(0)
    docs = [
        rng.integers(0, 50_000, size=int(n), dtype=np.uint32) for n in rng.integers(1, 5000, 50)
    ]
    assert_same(tttnn.pack_windows(docs, 1024), reference_pack(docs, 1024))
    short = [
        rng.integers(0, 50_000, size=int(n), dtype=np.uint32) for n in rng.integers(0, 300, 2000)
    ]
    assert_same(
        tttnn.pack_windows(short, 1024, pack_short=True, eos_id=0),
        reference_pack(short, 1024, pack_short=True, eos_id=0),
    )
    # Large enough for the parallel fill path (> 1M output tokens).
    many = [
        rng.integers(0, 50_000, size=int(n), dtype=np.uint32) for n in rng.integers(1, 3000, 800)
    ]
    assert_same(
        tttnn.pack_windows(many, 512, pack_short=True, eos_id=2),
        reference_pack(many, 512, pack_short=True, eos_id=2),
    )


# ---------------------------------------------------------------------------------------------
# dedup_neighbors
# ---------------------------------------------------------------------------------------------


def _text(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"w{rng.randint(0, 99_999)}" for _ in range(n)]


def test_exact_copies_and_whitespace_case_variants() -> None:
    q = "The quick brown fox jumps over the lazy dog near the river bank."
    cands = [
        q,
        "  the QUICK brown\tfox jumps over the lazy\n\ndog near the river bank. ",
        "A completely different sentence about licenses and software terms here.",
        "a completely  different sentence about LICENSES and software terms here.",
    ]
    kept, dropped = tttnn.dedup_neighbors(q, cands)
    assert kept == [2]
    assert dropped == [
        (0, "exact-duplicate-of-query"),
        (1, "exact-duplicate-of-query"),
        (3, "exact-duplicate"),
    ]


def test_near_duplicates_edits_and_excerpts() -> None:
    words = _text(400, 1)
    q = " ".join(words)
    edited = list(words)
    for i in range(0, 400, 100):  # 4 single-word edits: about 95% of the shingles survive
        edited[i] = "EDITED"
    excerpt = " ".join(words[100:250])  # a neighbor that is a passage of the query
    superset = " ".join(_text(300, 9) + words + _text(300, 8))  # query inside a longer neighbor
    unrelated = " ".join(_text(400, 2))
    cands = [" ".join(edited), excerpt, superset, unrelated]
    kept, dropped = tttnn.dedup_neighbors(q, cands)
    assert kept == [3]
    assert [r for _, r in dropped] == ["near-duplicate-of-query"] * 3
    # The same between candidates, with an unrelated query.
    kept, dropped = tttnn.dedup_neighbors(unrelated, [q, " ".join(edited), excerpt])
    assert kept == [0]
    assert dropped == [(1, "near-duplicate"), (2, "near-duplicate")]
    # A stricter threshold keeps the edited copy.
    kept, _ = tttnn.dedup_neighbors(q, [" ".join(edited)], threshold=1.0)
    assert kept == [0]


def test_unrelated_texts_kept_in_order() -> None:
    cands = [" ".join(_text(100, s)) for s in range(10, 30)]
    kept, dropped = tttnn.dedup_neighbors(" ".join(_text(100, 1)), cands)
    assert kept == list(range(20)) and dropped == []


def test_empty_strings_and_short_texts() -> None:
    kept, dropped = tttnn.dedup_neighbors("query text", ["", "   \n", "other words", b""])
    assert kept == [2]
    assert dropped == [(0, "empty"), (1, "empty"), (3, "empty")]
    # An empty query matches nothing; candidates are still compared with each other.
    kept, dropped = tttnn.dedup_neighbors("", ["a b", "A  B", "c"])
    assert kept == [0, 2] and dropped == [(1, "exact-duplicate")]
    # Short texts (< 5 words) are compared by word sets: all of "lazy dog" is in the query.
    kept, dropped = tttnn.dedup_neighbors("the lazy dog sleeps", ["dog lazy", "cat"])
    assert kept == [1] and dropped == [(0, "near-duplicate-of-query")]
    assert tttnn.dedup_neighbors("q", []) == ([], [])


def test_bytes_and_invalid_utf8() -> None:
    kept, dropped = tttnn.dedup_neighbors(b"caf\xc3\xa9 ol\xc3\xa9", ["CAFÉ   OLÉ", b"x"])
    assert kept == [1] and dropped == [(0, "exact-duplicate-of-query")]
    with pytest.raises(ValueError, match="candidate 1 is not valid UTF-8"):
        tttnn.dedup_neighbors("q", ["ok", b"\xff\xfe bad"])
    with pytest.raises(ValueError, match="query is not valid UTF-8"):
        tttnn.dedup_neighbors(b"\xc3", ["ok"])
    with pytest.raises(ValueError, match="candidate 0 is not valid UTF-8"):
        tttnn.dedup_neighbors("q", ["lone surrogate \ud800"])
    with pytest.raises(ValueError, match="threshold"):
        tttnn.dedup_neighbors("q", ["x"], threshold=0.0)
    with pytest.raises(ValueError, match="threshold"):
        tttnn.dedup_neighbors("q", ["x"], threshold=float("nan"))
    with pytest.raises(TypeError, match="candidate 0 must be str or bytes"):
        tttnn.dedup_neighbors("q", [3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a single str"):
        tttnn.dedup_neighbors("q", "abc")


def test_dedup_random_against_reference() -> None:
    rng = random.Random(7)
    vocab = [f"v{i}" for i in range(30)]  # small vocabulary: many accidental overlaps
    for _ in range(200):

        def doc() -> str:
            n = rng.choice([0, 1, 3, 4, 5, 6, rng.randint(0, 40)])
            return " ".join(rng.choice(vocab) for _ in range(n))

        base = [doc() for _ in range(4)]
        q = rng.choice(base)
        cands = []
        for _ in range(rng.randint(0, 12)):
            c = rng.choice([*base, doc()])
            if rng.random() < 0.3:  # mutate: change case / spacing / one word
                w = c.split()
                if w:
                    w[rng.randrange(len(w))] = rng.choice(vocab).upper()
                c = "  ".join(w)
            cands.append(c)
        t = rng.choice([0.5, 0.8, 0.9, 1.0])
        assert tttnn.dedup_neighbors(q, cands, threshold=t) == reference_dedup(q, cands, t), (
            q,
            cands,
            t,
        )
