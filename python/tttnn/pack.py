"""Packing: the neighbors' token ids -> training windows, nearest neighbor first.

The packing itself is in the Rust core (`EmbeddingStore.pack_windows`, `tttnn.pack_windows`: the
exact rules are in `rust/pack.rs`). Here: the call with a run's settings, and the check of packed
windows handed to the trainer from elsewhere.

**A neighbor picked more than once** (SIFT may pick it again, `tttnn.select`): a neighbor of n
tokens has P = ceil(n / L) pieces of L = max_length tokens (rule 1 of `rust/pack.rs`); each of
its picks trains on m = min(windows_per_neighbor, P) pieces (m = P when unset), and the k-th pick
(k = 0, 1, ...) continues where the previous one stopped: pieces (k·m + i) mod P for i < m
(`pick_pieces`). A pick after the last piece starts again from the first: another step on the
same text, as SIFT does when it selects a point twice. So every pick of a neighbor costs the
steps of its first, and with all windows (the default) every pick trains on the whole neighbor
again. `doc_index` counts picks, so `eval_at`'s k counts picks too.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tttnn.config import PackConfig

__all__ = ["check_windows", "pack_neighbors", "pick_pieces"]


def pack_neighbors(
    store: Any, ids: list[int], cfg: PackConfig, max_length: int, tokenizer: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(windows, lengths, doc_index)` of entries `ids` of the store, in that order: their stored
    token ids, or with `cfg.retokenize` their text tokenized by `tokenizer` (the model's). An id
    may repeat (the module doc says what its later picks train on); `doc_index` indexes `ids`."""
    from tttnn._tttnn import pack_windows

    kw: dict[str, Any] = {
        "eos_id": tokenizer.eos_token_id if cfg.pack_short else None,
        "pack_short": cfg.pack_short,
        "max_windows_per_doc": cfg.windows_per_neighbor,
    }
    if len(set(ids)) < len(ids):
        return _pack_repeated(store, ids, cfg, max_length, tokenizer, kw)
    if not cfg.retokenize:
        return store.pack_windows(ids, max_length, **kw)  # type: ignore[no-any-return]
    return pack_windows(_retokenized(store, ids, tokenizer), max_length, **kw)


def _retokenized(store: Any, ids: list[int], tokenizer: Any) -> list[np.ndarray]:
    texts = [store.text(i) for i in ids]
    return [
        np.asarray(t, dtype=np.uint32)
        for t in tokenizer(texts, add_special_tokens=False)["input_ids"]
    ]


def pick_pieces(
    n_tokens: int, max_length: int, windows_per_neighbor: Optional[int], k: int
) -> list[tuple[int, int]]:
    """The token ranges `[start, end)` the k-th pick (from 0) of a neighbor of `n_tokens` tokens
    trains on (see the module doc): one range, or two when the pick wraps to the first piece.
    Each range starts on a piece boundary, so packing it cuts the same pieces."""
    n_pieces = -(-n_tokens // max_length)
    if n_pieces == 0:
        return []
    m = n_pieces if windows_per_neighbor is None else min(windows_per_neighbor, n_pieces)
    first = (k * m) % n_pieces
    end = first + m
    runs = [(first, min(end, n_pieces))] + ([(0, end - n_pieces)] if end > n_pieces else [])
    return [(a * max_length, min(b * max_length, n_tokens)) for a, b in runs]


def _pack_repeated(
    store: Any, ids: list[int], cfg: PackConfig, max_length: int, tokenizer: Any,
    kw: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """`pack_neighbors` for ids that repeat: each pick's pieces (`pick_pieces`) packed as
    documents in pick order, `doc_index` mapped back to picks."""
    from tttnn._tttnn import pack_windows

    distinct = list(dict.fromkeys(ids))
    docs_of = (
        _retokenized(store, distinct, tokenizer) if cfg.retokenize
        else [np.asarray(store.tokens(i)) for i in distinct]
    )  # fmt: skip
    tokens = dict(zip(distinct, docs_of))
    docs: list[np.ndarray] = []
    pick_of_doc: list[int] = []
    seen: dict[int, int] = {}
    for p, i in enumerate(ids):
        k = seen.get(i, 0)
        seen[i] = k + 1
        for a, b in pick_pieces(len(tokens[i]), max_length, cfg.windows_per_neighbor, k):
            docs.append(tokens[i][a:b])
            pick_of_doc.append(p)
    windows, lengths, doc_index = pack_windows(
        docs, max_length, **{**kw, "max_windows_per_doc": None}
    )
    return windows, lengths, np.asarray(pick_of_doc, dtype=np.int64)[doc_index]


def check_windows(
    windows: Any, lengths: Any, doc_index: Any, max_length: int, vocab: Optional[int],
    n_neighbors: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:  # fmt: skip
    """`(windows, lengths, doc_index, n_neighbors)`: the packed windows as int64 arrays and the
    neighbors they count (default: the last of `doc_index` + 1), or a ValueError that says what
    is wrong."""
    win = np.asarray(windows)
    if win.ndim != 2:
        raise ValueError(f"windows must be a 2-D (W, L) array, got shape {win.shape}")
    if win.size and not np.issubdtype(win.dtype, np.integer):
        raise ValueError(f"windows must hold integer token ids, got dtype {win.dtype}")
    win = np.ascontiguousarray(win, dtype=np.int64)
    lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
    didx = np.asarray(doc_index, dtype=np.int64).reshape(-1)
    n_win, width = win.shape
    if len(lens) != n_win or len(didx) != n_win:
        raise ValueError(
            f"windows has {n_win} rows but lengths has {len(lens)} and doc_index {len(didx)}"
        )
    last = int(didx[-1]) if n_win else -1
    n = last + 1 if n_neighbors is None else n_neighbors
    if n_win:
        if width > max_length:
            raise ValueError(f"windows are {width} tokens wide, more than max_length")
        if lens.min() < 0 or lens.max() > width:
            raise ValueError(
                f"lengths must be within 0..{width} (the window width), got {lens.min()}..{lens.max()}"
            )
        if didx.min() < 0 or np.any(np.diff(didx) < 0):
            raise ValueError("doc_index must be non-negative and non-decreasing (nearest first)")
        real = win[np.arange(width)[None, :] < lens[:, None]]
        if real.size and (real.min() < 0 or (vocab is not None and real.max() >= vocab)):
            raise ValueError(f"token ids out of range for a vocabulary of {vocab}")
    if last >= n:
        raise ValueError(f"n_neighbors={n} but doc_index reaches {last}")
    return win, lens, didx, n
