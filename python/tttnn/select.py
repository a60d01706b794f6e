"""Selection: which of the retrieved candidates a test document trains on, in what order.

`select="nearest"` (Hardt & Sun): the `neighbors` nearest, nearest first: the search result
as it is.

`select="sift"` (Hübotter et al., "Efficiently Learning at Test-Time: Active Fine-Tuning of
LLMs", ICLR 2025; `jonhue/activeft`): search the `candidates` (K) nearest, with the leakage guard
already applied to them, take their stored vectors (dequantized to f32) and the query's
embedding, and pick `neighbors` of them one after the other, each time the one that most reduces
the posterior variance at the query of a linear-kernel Gaussian process with noise `sift_lambda`
(`tttnn.sift_select`; the exact rule is in `rust/select.rs`). Picks are relevant and not
redundant. A candidate can be picked again: the packer trains each pick of a neighbor on that
neighbor's next windows (`tttnn.pack.pack_neighbors`). `eval_at` counts picks. With
`sift_alpha`, pick t is dropped where its posterior standard deviation exceeds 1/(alpha·t): the
document then trains on fewer picks, and is still scored at every k (a dropped pick trains on
nothing).

Results rows: `neighbors` lists the picks in training order (repeats included), `selected` what
the selection saw and decided, `select_s` its time (reading the K vectors and the greedy).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from tttnn.config import RetrievalConfig

__all__ = ["search_depth", "select_neighbors"]


def search_depth(cfg: RetrievalConfig) -> int:
    """How many neighbors to retrieve: the candidates for SIFT, else the neighbors."""
    return cfg.candidates if cfg.select == "sift" else cfg.neighbors


def select_neighbors(
    hits: Sequence[Any], query_vector: Optional[np.ndarray], store: Any, cfg: RetrievalConfig
) -> tuple[list[Any], dict[str, Any]]:
    """The neighbors to train on, in order (`hits` are the retrieved ones, best first, each with
    an `id`), and the results-row fields of the selection (none for nearest)."""
    if cfg.select == "nearest" or not hits:
        return list(hits), {}
    from tttnn._tttnn import sift_select

    if query_vector is None:
        raise ValueError("SIFT needs the query's embedding")
    t = time.perf_counter()
    vectors = store.get_vectors(np.asarray([int(h.id) for h in hits], dtype=np.int64))
    query = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    rows, variances = sift_select(
        vectors, query, cfg.neighbors, lam=cfg.sift_lambda, alpha=cfg.sift_alpha
    )
    seconds = time.perf_counter() - t
    picks = [hits[int(i)] for i in rows]
    selected = {
        "candidates": len(hits),
        "rank": [int(i) for i in rows],  # position among the candidates, 0 = nearest
        "variance": [float(v) for v in variances],  # posterior variance after each pick
        "prior_variance": float(np.dot(query.astype(np.float64), query.astype(np.float64))),
        "distinct": len({int(i) for i in rows}),
        "dropped": cfg.neighbors - len(rows),  # by the adaptive stop (sift_alpha)
    }
    return picks, {"selected": selected, "select_s": seconds}
