"""The index of a corpus, opened: search by text or vector, read what it stores, describe it.

Layout: the index directory *is* an `EmbeddingStore` (`manifest.json` with format version,
counts and checksums; shards of vectors, HNSW graphs, text, tokens, records). The store's user
`meta` holds what makes it an index: `kind`, encoder, tokenizer (and a fingerprint of its
vocabulary), dims, chunking, the corpus, the domains with their counts, the corpus statistics and
the build `status`. `tttnn.build` writes it.

Entries: without chunking, one entry per document: its vector embeds the beginning of the text (the
encoder's maximum length, like the paper); its text and token ids are the whole document. With
`chunk_tokens=N`, a document is cut every N tokens of the LM tokenizer; each chunk is an entry with
its own vector, text and tokens, and a record pointing back to the document (`doc_id`, `chunk`).
Token ids are the LM tokenizer's without special tokens.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from tttnn._tttnn import CorruptIndexError, EmbeddingStore, check_shards
from tttnn.config import RetrievalConfig
from tttnn.embed import DEFAULT_ENCODER, Encoder
from tttnn.guard import search_with_guard

__all__ = [
    "INDEX_FORMAT",
    "INDEX_KIND",
    "Index",
    "InvalidIndexError",
    "Neighbor",
    "PartialIndexWarning",
    "SearchResult",
    "TextQueries",
    "embed_texts",
    "merge_results",
    "search_queries",
    "search_texts",
    "vocab_fingerprint",
]

INDEX_KIND = "tttnn.index"
INDEX_FORMAT = 1

PathLike = Union[str, "os.PathLike[str]"]


class InvalidIndexError(ValueError):
    """The path is not a (compatible) tttnn index, or a resume does not match the corpus."""


class PartialIndexWarning(UserWarning):
    """The index is still being built (or its build was interrupted): searches see part of it."""


@dataclass
class Neighbor:
    """One search hit. `text`, `text_bytes` and `tokens` are read on demand from the store's
    memory-mapped files."""

    id: int
    score: float
    doc_id: str
    domain: str
    chunk: int
    _store: Any = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        return str(self._store.text(self.id))

    @property
    def text_bytes(self) -> bytes:
        return bytes(self._store.text_bytes(self.id))

    @property
    def tokens(self) -> np.ndarray:
        """The entry's LM token ids (uint32); raises if the index was built without a tokenizer."""
        return np.asarray(self._store.tokens(self.id))


@dataclass
class SearchResult:
    """The neighbors of query `query_index`, best first; `dropped` neighbors were removed by the
    leakage guard (among those that would otherwise have been returned)."""

    query_index: int
    neighbors: list[Neighbor]
    dropped: int = 0

    @property
    def ids(self) -> list[int]:
        return [n.id for n in self.neighbors]

    @property
    def scores(self) -> list[float]:
        return [n.score for n in self.neighbors]


def merge_results(results: Sequence[SearchResult], k: int, query_index: int = 0) -> SearchResult:
    """One query's neighbors from the hits of its pieces' searches (`--query-span whole`):
    rank by rank (every piece's nearest hit before any piece's second), within a rank the higher
    score first, each entry once (where it first comes), the first `k`. So each part of a long
    document gets neighbors of its own, instead of the part most like some entries taking them
    all (a code file's license header, say); one piece keeps its own hits in order. `dropped`:
    the most that the guard dropped from one piece's hits (a copy of the document is found by
    several of its pieces, and counted once)."""
    ranked = sorted(
        ((rank, -n.score, piece, n) for piece, r in enumerate(results)
         for rank, n in enumerate(r.neighbors)),
        key=lambda t: t[:3],
    )  # fmt: skip
    seen: set[int] = set()
    merged: list[Neighbor] = []
    for *_, n in ranked:
        if len(merged) == k:
            break
        if n.id not in seen:
            seen.add(n.id)
            merged.append(n)
    return SearchResult(query_index, merged, max((r.dropped for r in results), default=0))


@dataclass
class TextQueries:
    """Texts embedded as queries (`embed_texts`), to be searched once or many times
    (`search_queries`): `vectors` holds one row per piece, `owner[j]` is the text piece `j` came
    from, `counts[i]` how many pieces text `i` has (1 for its opening)."""

    span: str
    vectors: np.ndarray
    owner: list[int]
    counts: list[int]


def embed_texts(encoder: Encoder, texts: Sequence[str], span: str = "opening") -> TextQueries:
    """Embed texts as queries, each alone (`Encoder.encode_queries`). `span` "opening": a text as
    the encoder reads it, its opening; "whole": every piece of it that the encoder reads whole
    (`Encoder.pieces`)."""
    if span not in ("opening", "whole"):
        raise ValueError(f"span must be 'opening' or 'whole', not {span!r}")
    pieces = [encoder.pieces(t) if span == "whole" else [t] for t in texts]
    owner = [i for i, ps in enumerate(pieces) for _ in ps]
    vectors = encoder.encode_queries([p for ps in pieces for p in ps])
    return TextQueries(span, vectors, owner, [len(ps) for ps in pieces])


def search_queries(
    index: Any, queries: TextQueries, k: int, *, guard: Optional[Sequence[str]] = None,
    **search: Any,
) -> tuple[list[SearchResult], list[Optional[np.ndarray]]]:  # fmt: skip
    """The `k` nearest entries of each embedded text, whatever the index (`Index`, or `RayIndex`
    over Ray), all searched at once (one fan-out over the shards): `(results, the query vector of
    each text)`. With span "whole" each piece is searched with its text's guard, and the pieces'
    hits are merged (`merge_results`; no one query vector then: None). `guard`: the guard's text
    of each text (None: no guard); `search`: `Index.search`'s other settings."""
    owner = queries.owner
    found = index.search(queries.vectors, k=k,
                         guard=None if guard is None else [guard[i] for i in owner], **search)  # fmt: skip
    if queries.span == "opening":
        return list(found), list(queries.vectors)
    by_text: list[list[SearchResult]] = [[] for _ in queries.counts]
    for i, hits in zip(owner, found):
        by_text[i].append(hits)
    merged = [merge_results(h, k, i) for i, h in enumerate(by_text)]
    return merged, [None] * len(queries.counts)


def search_texts(
    index: Any, texts: Sequence[str], k: int, *, span: str = "opening",
    guard: Optional[Sequence[str]] = None, **search: Any,
) -> tuple[list[SearchResult], list[Optional[np.ndarray]], list[int]]:  # fmt: skip
    """`embed_texts` with the index's encoder, then `search_queries`: `(results, the query vector
    of each text, the pieces searched for each)`."""
    queries = embed_texts(index.encoder, texts, span)
    results, vectors = search_queries(index, queries, k, guard=guard, **search)
    return results, vectors, queries.counts


def vocab_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's vocabulary (token -> id, added tokens included): equal exactly
    when two tokenizers map every token to the same id."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=4)
def _tokenizer_by_name(name: str) -> Any:
    from tttnn.models import load_tokenizer

    return load_tokenizer(name)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Index:
    """An opened index. Make one with `Index.open(path)`, or build one with
    `tttnn.build.build_index` (`tttnn.jobs.build` here or on Ray)."""

    def __init__(self, store: Any, meta: dict[str, Any], encoder: Encoder | None = None) -> None:
        self.store = store
        self.meta = meta
        self.path = Path(store.path)
        self._encoder = encoder

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: PathLike, *, encoder: Encoder | None = None) -> Index:
        """Open an index directory (constant time: memory maps). The store checks its manifest
        and file sizes; this checks that the store is an index. `encoder` (optional) is used for
        text queries instead of loading the one named in the index. Its shards served by Ray
        actors instead: `tttnn.distributed.index.RayIndex.open` (same searches, same answers),
        or `tttnn.jobs.open_index`, which picks."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no index at {p}")
        if not (p / "manifest.json").is_file():
            raise InvalidIndexError(f"{p} is not a tttnn index (no manifest.json)")
        return cls._checked(EmbeddingStore.open(str(p)), p, encoder)

    @classmethod
    def _checked(cls, store: Any, p: Path, encoder: Encoder | None) -> Index:
        """An index of `store` (an `EmbeddingStore` or a store served elsewhere) once its meta
        says it is one and `encoder` (if any) is its encoder."""
        meta = _check_meta(store, p)
        if encoder is not None and encoder.dim != store.dim:
            raise InvalidIndexError(
                f"encoder {encoder.name!r} makes {encoder.dim}-d vectors, the index at {p} holds "
                f"{store.dim}-d vectors of {meta.get('encoder')!r}"
            )
        index = cls(store, meta, encoder)
        if encoder is not None:
            index._check_encoder(encoder)
        return index

    @property
    def encoder(self) -> Encoder:
        """The index's encoder (loaded on first use), checked against the one that built it."""
        if self._encoder is None:
            enc = Encoder(self.meta.get("encoder") or DEFAULT_ENCODER, progress=False)
            self._check_encoder(enc)
            self._encoder = enc
        return self._encoder

    def _check_encoder(self, enc: Encoder) -> None:
        """Refuse an encoder other than the one that built the index: its query vectors would
        not live in the index's space (indexes from before fingerprints are not checked)."""
        from tttnn.embed import compare_fingerprints

        recorded = self.meta.get("encoder_fingerprint")
        diffs = compare_fingerprints(recorded, enc.fingerprint) if recorded else []
        if diffs:
            raise InvalidIndexError(
                f"the encoder found as {enc.name!r} is not the one that built the index at "
                f"{self.path} ({'; '.join(diffs)}): its query vectors would not match"
            )

    def close(self) -> None:
        """Nothing to release (the memory maps go with the index); an index served elsewhere
        (`RayIndex`) stops its actors. So every index can be closed, or used in a `with`."""

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.store)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """An index pickles as its path: unpickled (in a Ray worker), it is opened again there,
        memory-mapped (every worker must see the directory)."""
        return (Index.open, (str(self.path),))

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, entries={len(self)}, encoder={self.meta.get('encoder')!r})"
        )

    def record(self, id: int) -> dict[str, Any]:
        """The record of entry `id`: doc_id, domain, source, chunk."""
        return self._parse_record(int(id), self.store.record(int(id)))

    def verify_shard(self, shard: int) -> None:
        """Check shard `shard` as `tttnn index verify` does: every file against its checksums
        (the store's `verify_shard`), then every record as a search reads it."""
        self.store.verify_shard(shard)
        counts = self.store.shard_counts()
        start = sum(counts[:shard])
        for id in range(start, start + counts[shard]):
            self._parse_record(id, bytes(self.store.record(id)))

    def _parse_record(self, id: int, raw: bytes) -> dict[str, Any]:
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or not {"doc_id", "domain", "chunk"} <= rec.keys():
                raise ValueError(f"not a record object: {raw[:80]!r}")
            if not isinstance(rec["chunk"], int):
                raise ValueError(f"chunk is not an integer: {raw[:80]!r}")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError included
            raise CorruptIndexError(
                f"{self.path}: the record of entry {id} (records.bin of shard "
                f"{self._shard_of(int(id))}) is corrupt ({e}); `tttnn index verify {self.path}` "
                "checks every file"
            ) from None
        return rec

    def _shard_of(self, id: int) -> int:
        return int(np.searchsorted(np.cumsum(self.store.shard_counts()), id, side="right"))

    def check_complete(self) -> None:
        """Raise unless the index's build has completed."""
        if self.meta.get("status") != "complete":
            raise InvalidIndexError(
                f"the index at {self.path} is incomplete (status {self.meta.get('status')!r}): "
                "finish it with `tttnn index build ... --resume` first"
            )

    def check_tokens_for(self, tokenizer: Any, *, retokenize: bool = False) -> None:
        """Raise unless the stored token ids are `tokenizer`'s (same vocabulary), so a model
        with that tokenizer can train on them; with `retokenize` the stored text is used."""
        if retokenize:
            return
        name = self.meta.get("tokenizer")
        if not name:
            raise InvalidIndexError(
                f"the index at {self.path} stores no token ids (built with --tokenizer none): "
                "rebuild it with the model's tokenizer, or pass --retokenize"
            )
        stored = self.meta.get("tokenizer_sha256")
        if stored is None:  # indexes built before the fingerprint was recorded
            stored = vocab_fingerprint(_tokenizer_by_name(name))
        if stored != vocab_fingerprint(tokenizer):
            raise InvalidIndexError(
                f"the index at {self.path} stores token ids of the tokenizer {name!r}, whose "
                f"vocabulary differs from the model's ({getattr(tokenizer, 'name_or_path', '?')!r}): "
                "the model would train on the wrong ids. Use an index built with the model's "
                "tokenizer (--tokenizer), or pass --retokenize"
            )

    # -- searching -------------------------------------------------------------------------------
    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = RetrievalConfig.neighbors,
        *,
        exact: bool = False,
        guard: bool | Sequence[str | bytes] | None = None,
        threshold: float = RetrievalConfig.guard_threshold,
        margin: int | None = None,
        ef: int | None = None,
        shards: Optional[Sequence[int]] = None,
    ) -> list[SearchResult]:
        """The `k` nearest entries of each query (texts, embedded with the index's encoder, or
        vectors `(nq, dim)` / `(dim,)`), best first, cosine scores.

        `exact=True` scans all vectors; otherwise the HNSW graphs are used (when the index has
        them). `guard` turns the leakage guard on: True uses the query texts, or pass one text
        per query (needed for vector queries). It over-fetches `k + margin` candidates and drops
        those identical or nearly identical to the query (`tttnn.dedup_neighbors` at
        `threshold`) or to a better kept neighbor; `SearchResult.dropped` counts them.
        `shards` searches only those shards (the full search's ranking restricted to them).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        n = self._entries_in(shards)
        texts: list[str] | None = None
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, np.ndarray):
            vecs = np.asarray(queries, dtype=np.float32)
            if vecs.ndim == 1:
                vecs = vecs[None, :]
            if vecs.ndim != 2 or vecs.shape[1] != self.store.dim:
                raise ValueError(
                    f"query vectors must have shape (n, {self.store.dim}) or "
                    f"({self.store.dim},), got {queries.shape}"
                )
        else:
            texts = list(queries)
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("queries must be strings or a numpy array of vectors")
            vecs = self.encoder.encode_queries(texts, progress=len(texts) > 256)
        nq = len(vecs)
        guard_texts: list[str | bytes] | None = None
        if guard is True:
            if texts is None:
                raise ValueError("guard=True needs text queries; pass guard=[query texts]")
            guard_texts = list(texts)
        elif guard:
            guard_texts = list(guard)  # type: ignore[arg-type]
            if len(guard_texts) != nq:
                raise ValueError(f"guard has {len(guard_texts)} texts for {nq} queries")
        if self.meta.get("status") != "complete":
            warnings.warn(
                f"the index at {self.path} is {self.meta.get('status', 'incomplete')}: searching "
                f"the {len(self.store)} entries stored so far",
                PartialIndexWarning,
                stacklevel=2,
            )
        if nq == 0 or n == 0:
            return [SearchResult(q, [], 0) for q in range(nq)]
        # an index built without HNSW graphs is searched exactly
        kw: dict[str, Any] = {"exact": exact or not self.store.has_hnsw}
        if ef is not None:
            kw["ef"] = ef
        if shards is not None:
            kw["shards"] = sorted({int(s) for s in shards})
        vecs = np.ascontiguousarray(vecs)
        if guard_texts is None:
            ids, scores = self.store.search(vecs, min(k, n), **kw)
            hits = [(ids[q], scores[q], 0) for q in range(nq)]
        else:
            hits = search_with_guard(
                lambda rows, depth: self.store.search(vecs[rows], depth, **kw),
                self._texts_of, guard_texts, k, n, threshold=threshold, margin=margin,
            )  # fmt: skip
        return self._results(hits)

    def _documents(self) -> Optional[int]:
        """The documents of the index; of a build, those stored so far: one per entry where
        entries are documents, else the count the build recorded with its last sealed shard
        (shards land in the background, so an interrupted build may hold one more; None: not
        recorded yet)."""
        if self.meta.get("documents") is not None:  # a finished build's count
            return self.meta["documents"]
        if len(self.store) == 0:
            return 0
        if self.meta.get("chunk_tokens") is None:
            return len(self.store)
        return self.meta.get("documents_so_far")

    def entries_in(self, shards: Optional[Sequence[int]] = None) -> int:
        """Entries a search of the shards `shards` (None: all) can return; IndexError naming a
        shard the index does not have."""
        return self._entries_in(shards)

    def _entries_in(self, shards: Optional[Sequence[int]]) -> int:
        """Entries of the shards `shards` (None: all); IndexError naming a missing shard."""
        if shards is None:
            return len(self.store)
        counts = self.store.shard_counts()
        return int(sum(counts[s] for s in check_shards(shards, len(counts))))

    def _texts_of(self, ids: list[int]) -> list[bytes]:
        """Text bytes of `ids` (one batch: a store served elsewhere answers in one round)."""
        return [bytes(self.store.text_bytes(i)) for i in ids]

    def _raw_records(self, ids: list[int]) -> list[bytes]:
        """Record bytes of `ids` (one batch, as `_texts_of`)."""
        return [bytes(self.store.record(i)) for i in ids]

    def _results(self, hits: Sequence[tuple[np.ndarray, np.ndarray, int]]) -> list[SearchResult]:
        """SearchResults (with their Neighbors and records) of per-query `(ids, scores,
        dropped)`, padding (id -1) left out; the records of all queries fetched in one batch."""
        rows = [(ids[ids >= 0].tolist(), scores[ids >= 0].tolist(), d) for ids, scores, d in hits]
        wanted = sorted({i for ids, _, _ in rows for i in ids})
        recs = {i: self._parse_record(i, raw) for i, raw in zip(wanted, self._raw_records(wanted))}
        out = []
        for q, (ids, scores, dropped) in enumerate(rows):
            nbs = []
            for i, s in zip(ids, scores):
                r = recs[i]
                nbs.append(
                    Neighbor(i, float(s), r["doc_id"], r["domain"], int(r["chunk"]), self.store)
                )
            out.append(SearchResult(q, nbs, dropped))
        return out

    # -- description -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the index holds: documents, entries, shards, domains with counts, encoder,
        tokenizer and the width of its stored ids, dtype, size on disk, build status and corpus
        statistics."""
        m = self.meta
        return {
            "path": str(self.path),
            "status": m.get("status", "unknown"),
            "documents": self._documents(),
            "entries": len(self.store),
            "shards": self.store.num_shards,
            "domains": m.get("domains", {}),
            "encoder": m.get("encoder"),
            "dim": self.store.dim,
            "tokenizer": m.get("tokenizer"),
            "token_bits": self.store.token_bits,
            "dtype": self.store.dtype,
            "metric": self.store.metric,
            "hnsw": bool(self.store.has_hnsw),
            "hnsw_stranded": len(self.store.hnsw_stranded()),
            "chunk_tokens": m.get("chunk_tokens"),
            "size_bytes": _dir_size(self.path),
            "corpus": m.get("corpus", []),
            "corpus_stats": m.get("corpus_stats", {}),
        }


def _check_meta(store: Any, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(store.meta or "{}")
    except json.JSONDecodeError as e:
        raise InvalidIndexError(f"{path}: the store's meta is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind") != INDEX_KIND:
        raise InvalidIndexError(
            f"{path} is an embedding store but not a tttnn index (its meta has no "
            f"kind={INDEX_KIND!r})"
        )
    fmt = meta.get("format")
    if not isinstance(fmt, int) or fmt > INDEX_FORMAT:
        raise InvalidIndexError(
            f"{path}: index format {fmt!r} is not supported by this tttnn (reads <= {INDEX_FORMAT})"
        )
    if meta.get("dim") != store.dim:
        raise InvalidIndexError(
            f"{path}: meta says dim {meta.get('dim')} but the store holds {store.dim}-d vectors"
        )
    return meta
