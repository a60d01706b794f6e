"""The leakage guard: drop retrieved neighbors that copy the query.

A test document may itself be in the corpus, or be repeated there with small edits (licenses,
generated files); training on such a copy would report a gain that is memorisation. The guard
over-fetches `k + margin` candidates, drops those identical or nearly identical to the query text
(`tttnn.dedup_neighbors` at `threshold`) or to a better kept neighbor, and fetches deeper (doubling)
for the queries left with fewer than `k`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Optional

import numpy as np

from tttnn._tttnn import dedup_neighbors

__all__ = ["search_with_guard"]

Hits = tuple[np.ndarray, np.ndarray, int]  # ids, scores (best first), candidates dropped


def search_with_guard(
    search: Callable[[list[int], int], tuple[np.ndarray, np.ndarray]],
    texts_of: Callable[[list[int]], Sequence[bytes]],
    query_texts: Sequence[str | bytes],
    k: int,
    n: int,
    *,
    threshold: float,
    margin: Optional[int] = None,
) -> list[Hits]:
    """The guarded top-`k` of each query. `search(rows, depth)` returns `(ids, scores)` of the
    queries `rows` (padded with id -1), `texts_of(ids)` the candidates' texts (called once per
    round with every candidate of the round, so a remote store answers in one batch), `n` the
    index size. `dropped` counts the candidates removed among those that ranked above the k-th
    kept one. `threshold`: `tttnn.dedup_neighbors`'s (`RetrievalConfig.guard_threshold`)."""
    depth = min(n, k + (margin if margin is not None else max(k, 10)))
    results: list[Optional[Hits]] = [None] * len(query_texts)
    todo = list(range(len(query_texts)))
    while todo:
        ids, scores = search(todo, depth)
        wanted = sorted({int(i) for i in ids[ids >= 0].tolist()})
        text = dict(zip(wanted, texts_of(wanted)))
        again = []
        for row, q in enumerate(todo):
            valid = ids[row] >= 0
            cand_ids, cand_scores = ids[row][valid], scores[row][valid]
            cands = [text[int(i)] for i in cand_ids]
            kept, dropped = dedup_neighbors(query_texts[q], cands, threshold=threshold)
            if len(kept) < k and depth < n:
                again.append(q)
                continue
            kept = kept[:k]
            last = kept[-1] if len(kept) == k else len(cands)
            n_dropped = sum(1 for i, _ in dropped if i < last)
            results[q] = (cand_ids[kept], cand_scores[kept], n_dropped)
        todo = again
        depth = min(n, depth * 2)
    return [r for r in results if r is not None]
