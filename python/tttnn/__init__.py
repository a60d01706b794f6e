"""tttnn: test-time training on nearest neighbors for language models.

Retrieve a text's nearest neighbors from a large corpus by embedding, fine-tune the language model
on them (one gradient step per window), score the text, reset. Hardt & Sun, ICLR 2024.
"""

from __future__ import annotations

from tttnn._tttnn import (
    CorruptIndexError,
    EmbeddingStore,
    __version__,
    dedup_neighbors,
    pack_windows,
)

__all__ = [
    "CorruptIndexError",
    "EmbeddingStore",
    "__version__",
    "dedup_neighbors",
    "pack_windows",
]
