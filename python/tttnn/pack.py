"""Packing: the neighbors' token ids -> training windows, nearest neighbor first.

The packing itself is in the Rust core (`EmbeddingStore.pack_windows`, `tttnn.pack_windows`: the
exact rules are in `rust/pack.rs`). Here: the call with a run's settings, and the check of packed
windows handed to the trainer from elsewhere.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tttnn.config import PackConfig

__all__ = ["check_windows", "pack_neighbors"]


def pack_neighbors(
    store: Any, ids: list[int], cfg: PackConfig, max_length: int, tokenizer: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(windows, lengths, doc_index)` of entries `ids` of the store, in that order: their stored
    token ids, or with `cfg.retokenize` their text tokenized by `tokenizer` (the model's)."""
    from tttnn._tttnn import pack_windows

    kw: dict[str, Any] = {
        "eos_id": tokenizer.eos_token_id if cfg.pack_short else None,
        "pack_short": cfg.pack_short,
        "max_windows_per_doc": cfg.windows_per_neighbor,
    }
    if not cfg.retokenize:
        return store.pack_windows(ids, max_length, **kw)  # type: ignore[no-any-return]
    texts = [store.text(i) for i in ids]
    docs = [
        np.asarray(t, dtype=np.uint32)
        for t in tokenizer(texts, add_special_tokens=False)["input_ids"]
    ]
    return pack_windows(docs, max_length, **kw)


def check_windows(
    windows: Any, lengths: Any, doc_index: Any, max_length: int, vocab: Optional[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed windows as int64 arrays, or a ValueError that says what is wrong."""
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
    if n_win == 0:
        return win, lens, didx
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
    return win, lens, didx
