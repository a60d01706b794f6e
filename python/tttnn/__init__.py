"""tttnn: test-time training on nearest neighbors for language models.

Retrieve a text's nearest neighbors from a large corpus by embedding, fine-tune the language model
on them (one gradient step per window), score the text, reset. Hardt & Sun, ICLR 2024.
"""

from __future__ import annotations

from tttnn._tttnn import (
    CorruptIndexError,
    EmbeddingStore,
    StoreLockedError,
    __version__,
    dedup_neighbors,
    exact_search,
    pack_windows,
    sift_select,
)
from tttnn.corpus import Document
from tttnn.embed import Encoder
from tttnn.index import Index, Neighbor, SearchResult
from tttnn.metrics import BPBResult, bits_per_byte
from tttnn.ttt import TestTimeTrainer, TTTConfig, TTTOutcome

__all__ = [
    "BPBResult",
    "CorruptIndexError",
    "Document",
    "EmbeddingStore",
    "Encoder",
    "Index",
    "Neighbor",
    "SearchResult",
    "StoreLockedError",
    "TTTConfig",
    "TTTOutcome",
    "TestTimeTrainer",
    "__version__",
    "bits_per_byte",
    "dedup_neighbors",
    "exact_search",
    "pack_windows",
    "sift_select",
]
