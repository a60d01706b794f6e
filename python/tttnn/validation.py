"""A validation split drawn from the training corpus (`tttnn sample`), for tuning the recipe
where it is allowed: nothing is tuned on the test split.

`sample_documents` keeps, in every domain, the `per_domain` documents whose keyed hash
blake2b(seed, text) is smallest: the same documents for the same corpus and seed on every
machine, whatever the order or the file layout of the documents; a document's pick does not
depend on the other domains. They come out in corpus order.

The validation documents are in the index (it is built from the same training corpus), so each
one's own copy is among its nearest neighbors. The leakage guard (on by default, threshold 0.9)
drops it: a candidate whose normalised text equals the query's, or whose word 5-shingles overlap
the query's at >= 0.9 of the smaller set (so with `--split-text` the full document, a superset
of the query half, is dropped too). `tests/test_sample.py` checks both on a real index.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from tttnn._tttnn import atomic_write
from tttnn.corpus import Document, read_corpus

__all__ = ["check_output", "sample_documents", "write_documents"]


def _key(seed: int, text: str) -> bytes:
    return hashlib.blake2b(text.encode(), key=str(seed).encode(), digest_size=16).digest()


def sample_documents(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    per_domain: int,
    seed: int = 0,
    *,
    max_chars: Optional[int] = None,
    domains: Iterable[str] = (),
) -> list[Document]:
    """`per_domain` documents of every domain of the corpus at `paths` (fewer where a domain has
    fewer), picked by seed (see the module doc), in corpus order. `max_chars`: only documents
    at most that long; `domains`: only those domains."""
    if per_domain < 1:
        raise ValueError(f"per_domain must be >= 1, got {per_domain}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    only = set(domains)
    # Per domain a max-heap (keys negated by inversion) of the per_domain smallest keys.
    kept: dict[str, list[tuple[bytes, int, Document]]] = {}
    for pos, doc in enumerate(read_corpus(paths, on_error="skip", require_documents=True)):
        if (only and doc.domain not in only) or (
            max_chars is not None and len(doc.text) > max_chars
        ):
            continue
        inv = bytes(255 - b for b in _key(seed, doc.text))  # larger inv = smaller key
        heap = kept.setdefault(doc.domain, [])
        if len(heap) < per_domain:
            heapq.heappush(heap, (inv, pos, doc))
        elif inv > heap[0][0]:
            heapq.heapreplace(heap, (inv, pos, doc))
    missing = only - set(kept)
    if missing:
        raise ValueError(f"no documents of domain(s) {', '.join(sorted(missing))} in the corpus")
    picked = [(pos, doc) for heap in kept.values() for _, pos, doc in heap]
    return [doc for _, doc in sorted(picked, key=lambda x: x[0])]


def check_output(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an `out` that is one of the corpus files `inputs`: writing the sample there would
    replace the corpus it is drawn from. The same file however it is named: the paths resolved
    (symbolic links followed), and where `out` exists, its device and inode (a hard link)."""
    out = Path(out)
    target = out.resolve()
    here = os.stat(out) if out.exists() else None
    for p in map(Path, inputs):
        st = os.stat(p)
        if p.resolve() == target or (here and (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)):
            raise ValueError(
                f"{out} is the input {p}: writing the sample would replace the corpus it is "
                "drawn from; choose another output"
            )


def write_documents(docs: list[Document], out: str | os.PathLike[str]) -> Path:
    """Pile-format JSON lines (zstd-compressed when `out` ends in .zst), each document's domain
    and source in `meta`, and its id in the corpus it came from as `meta.sampled_from`; written
    by the core's `atomic_write` (a fresh file renamed over `out`; a symbolic link at `out` is
    refused, never written through)."""
    out = Path(out)
    data = "".join(
        json.dumps(
            {"text": d.text, "meta": {"pile_set_name": d.domain, "source": d.source,
                                      "sampled_from": d.doc_id}},
            ensure_ascii=False,
        ) + "\n"
        for d in docs
    ).encode("utf-8")  # fmt: skip
    if out.name.endswith((".zst", ".zstd")):
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data)
    return out
