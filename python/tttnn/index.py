"""The index of a corpus: embeddings, text, LM token ids and a record per entry in an on-disk
`EmbeddingStore`, built by streaming the corpus shard by shard, and searched by text or vector.

Layout: the index directory *is* an `EmbeddingStore` (`manifest.json` with format version,
counts and checksums; shards of vectors, HNSW graphs, text, tokens, records). The store's user
`meta` holds what makes it an index: `kind`, encoder, tokenizer, dims, chunking, the corpus, the
domains with their counts and the corpus statistics.

Entries: without chunking, one entry per document: its vector embeds the beginning of the text (the
encoder's maximum length, like the paper); its text and token ids are the whole document. With
`chunk_tokens=N`, a document is cut every N tokens of the LM tokenizer (at token starts, so chunk
texts concatenate back to the document and chunk token ids concatenate to the document's token
ids); each chunk is an entry with its own vector, text and tokens, and a record pointing back to
the document (`doc_id`, `chunk` number). Token ids are the LM tokenizer's without special tokens.

Build is streaming (one shard of entries in memory at a time) and resumable: the store seals whole
shards atomically, and `resume=True` re-reads the corpus, checks that the stored records follow the
corpus order, skips what is stored and appends the rest, so the result equals an uninterrupted
build.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np

from tttnn.corpus import DEFAULT_MAX_DOC_BYTES, Corpus, Document
from tttnn.embed import DEFAULT_ENCODER, Encoder, split_by_tokens

__all__ = [
    "DEFAULT_TOKENIZER",
    "INDEX_FORMAT",
    "INDEX_KIND",
    "Index",
    "InvalidIndexError",
    "Neighbor",
    "SearchResult",
]

INDEX_KIND = "tttnn.index"
INDEX_FORMAT = 1
DEFAULT_TOKENIZER = "smollm2-135m"
DEFAULT_SHARD_SIZE = 10_000
_BUFFER_BYTES = 256 * 1024 * 1024  # seal a shard early when its pending text reaches this
_EMBED_GROUP = 512  # entries embedded per call (sorted by length inside), progress in between
_TOKENIZE_GROUP = 64  # documents tokenized per tokenizer call...
_TOKENIZE_BYTES = 4 * 1024 * 1024  # ...or fewer when they are long (token lists are big in Python)

PathLike = Union[str, "os.PathLike[str]"]


class InvalidIndexError(ValueError):
    """The path is not a (compatible) tttnn index, or a resume does not match the corpus."""


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


@dataclass
class _Entry:
    text: str
    tokens: np.ndarray | None
    record: bytes
    pos: int  # corpus bytes read when its document was read (progress)


def _store_cls() -> Any:
    from tttnn._tttnn import EmbeddingStore

    return EmbeddingStore


def _load_lm_tokenizer(spec: Any) -> tuple[Any, str | None]:
    """(tokenizer, name to record) from a name/path, a loaded tokenizer, or None."""
    if spec is None:
        return None, None
    if isinstance(spec, (str, os.PathLike)):
        name = os.fspath(spec)
        return _tokenizer_by_name(name), name
    return spec, str(getattr(spec, "name_or_path", type(spec).__name__))


@functools.lru_cache(maxsize=4)
def _tokenizer_by_name(name: str) -> Any:
    from tttnn.models import load_tokenizer

    return load_tokenizer(name)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _record(doc: Document, chunk: int) -> bytes:
    rec = {"doc_id": doc.doc_id, "domain": doc.domain, "source": doc.source, "chunk": chunk}
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Index:
    """An opened index. Make one with `Index.build(...)` or `Index.open(path)`."""

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
        text queries instead of loading the one named in the index."""
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no index at {p}")
        if not (p / "manifest.json").is_file():
            raise InvalidIndexError(f"{p} is not a tttnn index (no manifest.json)")
        store = _store_cls().open(str(p))
        meta = _check_meta(store, p)
        if encoder is not None and encoder.dim != store.dim:
            raise InvalidIndexError(
                f"encoder {encoder.name!r} makes {encoder.dim}-d vectors, the index at {p} holds "
                f"{store.dim}-d vectors of {meta.get('encoder')!r}"
            )
        return cls(store, meta, encoder)

    @property
    def encoder(self) -> Encoder:
        """The index's encoder (loaded on first use)."""
        if self._encoder is None:
            self._encoder = Encoder(self.meta.get("encoder") or DEFAULT_ENCODER, progress=False)
        return self._encoder

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return (
            f"Index({str(self.path)!r}, entries={len(self)}, encoder={self.meta.get('encoder')!r})"
        )

    def record(self, id: int) -> dict[str, Any]:
        """The record of entry `id`: doc_id, domain, source, chunk."""
        return dict(json.loads(self.store.record(int(id))))

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        corpus_paths: PathLike | Iterable[PathLike],
        out: PathLike,
        *,
        encoder: str | Encoder | None = None,
        tokenizer: Any = DEFAULT_TOKENIZER,
        dtype: str = "f16",
        shard_size: int = DEFAULT_SHARD_SIZE,
        hnsw: bool = True,
        chunk_tokens: int | None = None,
        resume: bool = False,
        on_error: str = "skip",
        max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
        batch_size: int = 32,
        limit: int | None = None,
        progress: bool = True,
        on_shard: Callable[[int], None] | None = None,
    ) -> Index:
        """Build an index of the documents of `corpus_paths` in the directory `out`.

        `encoder`: an `Encoder`, or a name/path for one (default all-MiniLM-L6-v2).
        `tokenizer`: the LM tokenizer whose token ids are stored (name/path for
        `tttnn.models.load_tokenizer`, a loaded tokenizer, or None to store no tokens).
        `dtype`: vector storage, "f32", "f16" or "i8". `shard_size`: entries per shard (also the
        unit of resumption). `chunk_tokens`: index chunks of N LM tokens instead of whole
        documents. `resume`: continue an interrupted build in `out`. `limit`: index at most this
        many documents. `on_shard(entries stored)` is called after each sealed shard.
        """
        from tqdm.auto import tqdm

        if dtype not in ("f32", "f16", "i8"):
            raise ValueError(f"dtype must be 'f32', 'f16' or 'i8', not {dtype!r}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, not {shard_size}")
        if chunk_tokens is not None and chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, not {chunk_tokens}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        corpus = Corpus(corpus_paths, on_error=on_error, max_doc_bytes=max_doc_bytes)
        out = Path(out)
        has_manifest = (out / "manifest.json").is_file()
        if out.exists() and not out.is_dir():
            raise InvalidIndexError(f"{out} exists and is not a directory")
        if out.exists() and any(out.iterdir()) and not (resume and has_manifest):
            hint = "" if resume else "; pass resume=True (--resume) to continue a build there"
            raise InvalidIndexError(f"{out} already exists and is not empty{hint}")

        enc = encoder if isinstance(encoder, Encoder) else Encoder(encoder, batch_size=batch_size)
        lm_tok, tok_name = _load_lm_tokenizer(tokenizer)
        params = {
            "kind": INDEX_KIND,
            "format": INDEX_FORMAT,
            "encoder": enc.name,
            "encoder_max_length": enc.max_length,
            "encoder_precision": enc.precision,
            "dim": enc.dim,
            "pooling": "mean",
            "normalized": True,
            "tokenizer": tok_name,
            "special_tokens": False,
            "dtype": dtype,
            "chunk_tokens": chunk_tokens,
            "corpus": [str(p) for p in corpus.paths],
            "max_doc_bytes": max_doc_bytes,
            "limit": limit,
        }
        if resume and has_manifest:
            store = _store_cls().open(str(out))
            old = _check_meta(store, out)
            for key in ("encoder", "dim", "tokenizer", "dtype", "chunk_tokens", "max_doc_bytes"):
                if old.get(key) != params[key]:
                    raise InvalidIndexError(
                        f"cannot resume {out}: it was built with {key}={old.get(key)!r}, "
                        f"this build has {key}={params[key]!r}"
                    )
            if [Path(p).name for p in old.get("corpus", [])] != [p.name for p in corpus.paths]:
                raise InvalidIndexError(
                    f"cannot resume {out}: it was built from {old.get('corpus')}, "
                    f"not {params['corpus']}"
                )
            if store.dtype != dtype:
                raise InvalidIndexError(f"cannot resume {out}: its store holds {store.dtype}")
        else:
            store = _store_cls().create(
                str(out),
                enc.dim,
                dtype=dtype,
                metric="cosine",
                shard_size=shard_size,
                hnsw=hnsw,
                with_text=True,
                with_tokens=lm_tok is not None,
                with_records=True,
                meta=json.dumps({**params, "status": "building"}),
            )
        done = len(store)
        chunk_tok = lm_tok if lm_tok is not None else enc.tokenizer

        def entries_of(docs: list[Document], pos: int) -> list[list[_Entry]]:
            """Entries of each document (one, or one per chunk)."""
            res: list[list[_Entry]] = []
            if chunk_tokens is not None:
                for d in docs:
                    pieces = split_by_tokens(d.text, chunk_tok, chunk_tokens)
                    res.append(
                        [
                            _Entry(t, ids if lm_tok is not None else None, _record(d, c), pos)
                            for c, (t, ids) in enumerate(pieces)
                        ]
                    )
                return res
            toks: list[np.ndarray | None] = [None] * len(docs)
            if lm_tok is not None:
                ids = lm_tok([d.text for d in docs], add_special_tokens=False)["input_ids"]
                toks = [np.asarray(x, dtype=np.uint32) for x in ids]
            return [[_Entry(d.text, t, _record(d, 0), pos)] for d, t in zip(docs, toks)]

        pending: list[_Entry] = []
        pending_bytes = 0
        docs_seen = 0
        domain_docs: Counter[str] = Counter()
        domain_entries: Counter[str] = Counter()
        started = time.perf_counter()
        embedded = 0
        bar = tqdm(
            total=corpus.total_bytes,
            unit="B",
            unit_scale=True,
            desc=f"indexing {out.name}",
            disable=not progress,
            smoothing=0.1,
        )

        def flush(n: int) -> None:
            nonlocal pending, pending_bytes, embedded
            batch, pending = pending[:n], pending[n:]
            vecs = np.empty((len(batch), enc.dim), dtype=np.float32)
            for s in range(0, len(batch), _EMBED_GROUP):
                group = batch[s : s + _EMBED_GROUP]
                vecs[s : s + len(group)] = enc.encode(
                    [e.text for e in group], batch_size=batch_size, progress=False
                )
                embedded += len(group)
                bar.update(max(0, group[-1].pos - bar.n))
                rate = embedded / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(docs=docs_seen, entries=done + embedded, per_s=f"{rate:.1f}")
            store.append(
                vecs,
                texts=[e.text for e in batch],
                tokens=[e.tokens for e in batch] if lm_tok is not None else None,
                records=[e.record for e in batch],
            )
            pending_bytes = sum(len(e.text) for e in pending)
            if on_shard is not None:
                on_shard(len(store))

        # resumption: entries [0, done) are stored; walk their records alongside the corpus
        cursor = 0
        tail: list[Document] = []  # documents waiting to be tokenized
        tail_chars = 0

        def add_entries(docs: list[Document], skip_first: int = 0) -> None:
            """Queue the entries of `docs` (minus the first `skip_first` of the first one)."""
            nonlocal pending_bytes
            for d, per_doc in zip(docs, entries_of(docs, corpus.bytes_read)):
                for e in per_doc[skip_first:]:
                    pending.append(e)
                    pending_bytes += len(e.text)
                    domain_entries[d.domain] += 1
                skip_first = 0

        try:
            for doc in itertools.islice(corpus, limit):
                docs_seen += 1
                domain_docs[doc.domain] += 1
                if cursor < done:
                    n = 0
                    while cursor < done:
                        rec = json.loads(store.record(cursor))
                        if rec.get("doc_id") != doc.doc_id:
                            break
                        if rec.get("chunk") != n:
                            raise InvalidIndexError(
                                f"cannot resume {out}: entry {cursor} is chunk {rec.get('chunk')} "
                                f"of {doc.doc_id}, expected chunk {n}"
                            )
                        n += 1
                        cursor += 1
                    if n == 0:
                        raise InvalidIndexError(
                            f"cannot resume {out}: stored entry {cursor} is "
                            f"{json.loads(store.record(cursor)).get('doc_id')!r} but the corpus "
                            f"has {doc.doc_id!r} there (different corpus, order or options)"
                        )
                    domain_entries[doc.domain] += n
                    if cursor == done:
                        # the last stored document may miss chunks that were not sealed yet
                        add_entries([doc], skip_first=n)
                    bar.update(max(0, corpus.bytes_read - bar.n))
                    continue
                tail.append(doc)
                tail_chars += len(doc.text)
                if len(tail) >= _TOKENIZE_GROUP or tail_chars >= _TOKENIZE_BYTES:
                    add_entries(tail)
                    tail, tail_chars = [], 0
                while len(pending) >= shard_size or (pending and pending_bytes >= _BUFFER_BYTES):
                    flush(min(shard_size, len(pending)))
            if tail:
                add_entries(tail)
            if cursor < done:
                raise InvalidIndexError(
                    f"cannot resume {out}: it holds {done} entries but the corpus has only "
                    f"{cursor} (different corpus or limit)"
                )
            while pending:
                flush(min(shard_size, len(pending)))
            bar.update(max(0, corpus.total_bytes - bar.n))
        finally:
            bar.close()
        if hnsw:
            store.build_hnsw()
        meta = {
            **params,
            "status": "complete",
            "documents": docs_seen,
            "entries": len(store),
            "domains": {
                d: {"documents": domain_docs[d], "entries": domain_entries[d]}
                for d in sorted(domain_docs)
            },
            "corpus_stats": corpus.stats.to_dict(),
        }
        store.set_meta(json.dumps(meta))
        return cls(store, meta, enc)

    # -- searching -------------------------------------------------------------------------------
    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = 20,
        *,
        exact: bool = False,
        guard: bool | Sequence[str | bytes] | None = None,
        threshold: float = 0.9,
        margin: int | None = None,
        ef: int | None = None,
    ) -> list[SearchResult]:
        """The `k` nearest entries of each query (texts, embedded with the index's encoder, or
        vectors `(nq, dim)` / `(dim,)`), best first, cosine scores.

        `exact=True` scans all vectors; otherwise the HNSW graphs are used (when the index has
        them). `guard` turns the leakage guard on: True uses the query texts, or pass one text
        per query (needed for vector queries). It over-fetches `k + margin` candidates and drops
        those identical or nearly identical to the query (`tttnn.dedup_neighbors` at
        `threshold`) or to a better kept neighbor; `SearchResult.dropped` counts them.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
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
            vecs = self.encoder.encode(texts, progress=len(texts) > 256)
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
        n = len(self.store)
        if nq == 0 or n == 0:
            return [SearchResult(q, [], 0) for q in range(nq)]
        # an index built without HNSW graphs is searched exactly
        kw: dict[str, Any] = {"exact": exact or not self.store.has_hnsw}
        if ef is not None:
            kw["ef"] = ef
        if guard_texts is None:
            ids, scores = self.store.search(np.ascontiguousarray(vecs), min(k, n), **kw)
            return [SearchResult(q, self._neighbors(ids[q], scores[q]), 0) for q in range(nq)]
        from tttnn._tttnn import dedup_neighbors

        fetch = min(n, k + (margin if margin is not None else max(k, 10)))
        results: list[SearchResult | None] = [None] * nq
        todo = list(range(nq))
        while todo:
            ids, scores = self.store.search(np.ascontiguousarray(vecs[todo]), fetch, **kw)
            again = []
            for row, q in enumerate(todo):
                valid = ids[row] >= 0
                cand_ids, cand_scores = ids[row][valid], scores[row][valid]
                cands = [self.store.text_bytes(int(i)) for i in cand_ids]
                kept, dropped = dedup_neighbors(guard_texts[q], cands, threshold=threshold)
                if len(kept) < k and fetch < n:
                    again.append(q)
                    continue
                kept = kept[:k]
                last = kept[-1] if len(kept) == k else len(cands)
                n_dropped = sum(1 for i, _ in dropped if i < last)
                results[q] = SearchResult(
                    q, self._neighbors(cand_ids[kept], cand_scores[kept]), n_dropped
                )
            todo = again
            fetch = min(n, fetch * 2)
        return [r for r in results if r is not None]

    def _neighbors(self, ids: np.ndarray, scores: np.ndarray) -> list[Neighbor]:
        out = []
        for i, s in zip(ids.tolist(), scores.tolist()):
            if i < 0:
                continue
            rec = json.loads(self.store.record(i))
            out.append(
                Neighbor(i, float(s), rec["doc_id"], rec["domain"], int(rec["chunk"]), self.store)
            )
        return out

    # -- description -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the index holds: documents, entries, shards, domains with counts, encoder,
        tokenizer, dtype, size on disk, build status and corpus statistics."""
        m = self.meta
        return {
            "path": str(self.path),
            "status": m.get("status", "unknown"),
            "documents": m.get("documents"),
            "entries": len(self.store),
            "shards": self.store.num_shards,
            "domains": m.get("domains", {}),
            "encoder": m.get("encoder"),
            "dim": self.store.dim,
            "tokenizer": m.get("tokenizer"),
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
