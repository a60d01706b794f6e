"""Building an index: the corpus streamed through small steps into an `EmbeddingStore`.

    read ──▶ skip what is stored ──▶ tokenize/chunk ──▶ group ──▶ embed ──▶ append/seal
    └──────────── a reader thread ────────────────────┘         (here)    (a writer thread)

Each step is a function over an iterator, testable alone; a distributed build runs the same steps
on a slice of the corpus. Reading and LM tokenizing run in a thread ahead of the encoder (a queue
of `_PREFETCH` groups), and each sealed shard is written while the encoder embeds the next.
Measured on 400 documents of the benchmark corpus (`benches/bench_index.py` prints the ratio to
the encoder alone): with a core left free by the encoder (torch at 1 thread, as when it runs on a
GPU) the build runs at 0.96x the encoder alone (sequential steps: 0.84x); when the CPU encoder
takes both cores of a 2-core machine, 0.79x (sequential: 0.76x), since tokenizing whole documents
is CPU work that no overlap can hide there.

A store seals whole shards atomically, so an interrupted build keeps every sealed shard.
`resume=True` re-reads the corpus, checks that the stored records follow the corpus order, skips
what is stored and appends the rest: the result equals an uninterrupted build.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import numpy as np

from tttnn._tttnn import EmbeddingStore
from tttnn.config import BuildConfig
from tttnn.corpus import Corpus, CorpusStats, Document
from tttnn.embed import Encoder, split_by_tokens
from tttnn.index import (
    INDEX_FORMAT,
    INDEX_KIND,
    Index,
    InvalidIndexError,
    _check_meta,
    vocab_fingerprint,
)

__all__ = [
    "Embedded",
    "Entry",
    "StoredCounts",
    "build_index",
    "embed_groups",
    "embed_into",
    "skip_stored",
    "to_entries",
]

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")

_BUFFER_BYTES = 256 * 1024 * 1024  # seal a shard early when its pending text reaches this
_EMBED_GROUP = 64  # entries per encoder call: small, so the encoder starts after few documents
_TOKENIZE_GROUP = 32  # documents tokenized per tokenizer call...
_TOKENIZE_BYTES = 4 * 1024 * 1024  # ...or fewer when they are long (token lists are big in Python)
_PREFETCH = 4  # entry groups read and tokenized ahead of the encoder


@dataclass
class Entry:
    """One row of the index: a document, or a chunk of one."""

    text: str
    tokens: Optional[np.ndarray]  # LM token ids (uint32), None when the index stores none
    record: bytes  # JSON: doc_id, domain, source, chunk
    domain: str
    pos: int  # corpus bytes read when its document was read (progress)
    first: bool  # the document's first entry


def _record(doc: Document, chunk: int) -> bytes:
    rec = {"doc_id": doc.doc_id, "domain": doc.domain, "source": doc.source, "chunk": chunk}
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# --- the steps -------------------------------------------------------------------------------


@dataclass
class StoredCounts:
    """What `skip_stored` found stored: entries by domain, documents with an entry stored."""

    entries: Counter[str] = field(default_factory=Counter)
    documents: int = 0


def skip_stored(
    docs: Iterable[Document], store: Any, out: Path, found: StoredCounts
) -> Iterator[tuple[Document, Optional[int]]]:
    """`(document, chunks already stored)` for each document; `None` for one wholly stored. The
    stored entries `[0, len(store))` must be the corpus's first entries, in order: a different
    corpus, order or option is an `InvalidIndexError`. On an empty store every count is 0.
    What is stored is counted into `found` on the way."""
    done, cursor = len(store), 0
    for doc in docs:
        if cursor >= done:
            yield doc, 0
            continue
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
            n, cursor = n + 1, cursor + 1
        if n == 0:
            raise InvalidIndexError(
                f"cannot resume {out}: stored entry {cursor} is "
                f"{json.loads(store.record(cursor)).get('doc_id')!r} but the corpus has "
                f"{doc.doc_id!r} there (different corpus, order or options)"
            )
        found.entries[doc.domain] += n
        found.documents += 1
        # another document follows in the store: this one is whole; else chunks may be missing
        yield doc, (None if cursor < done else n)
    if cursor < done:
        raise InvalidIndexError(
            f"cannot resume {out}: it holds {done} entries but the corpus has only {cursor} "
            "(different corpus or limit)"
        )


def to_entries(
    docs: Iterable[tuple[Document, Optional[int]]], lm_tok: Any, chunk_tokens: Optional[int],
    chunk_tok: Any, pos: Callable[[], int],
) -> Iterator[tuple[Document, Entry | None]]:  # fmt: skip
    """The entries of each document minus its first `skip` ones: one per document, or one per
    chunk of `chunk_tokens` tokens of `chunk_tok`; token ids by `lm_tok` (None: no tokens).
    Documents are tokenized in groups. Yields `(document, entry)`, and `(document, None)` for a
    document wholly stored (`skip` None: not tokenized again), so that it is still counted."""
    group: list[tuple[Document, int]] = []
    chars = 0
    for item in itertools.chain(docs, [None]):
        if item is not None and item[1] is None:
            yield item[0], None
            continue
        if item is not None:
            group.append((item[0], item[1] or 0))
            chars += len(item[0].text)
            if len(group) < _TOKENIZE_GROUP and chars < _TOKENIZE_BYTES:
                continue
        at = pos()
        if chunk_tokens is not None:
            per_doc = [
                [(t, ids if lm_tok is not None else None) for t, ids in split_by_tokens(d.text, chunk_tok, chunk_tokens)]
                for d, _ in group
            ]  # fmt: skip
        elif lm_tok is not None:
            ids = lm_token_ids(lm_tok, [d.text for d, _ in group])
            per_doc = [[(d.text, x)] for (d, _), x in zip(group, ids)]
        else:
            per_doc = [[(d.text, None)] for d, _ in group]
        for (doc, skip), pieces in zip(group, per_doc):
            if skip >= len(pieces):
                yield doc, None
            for c, (text, toks) in enumerate(pieces[skip:], start=skip):
                yield doc, Entry(text, toks, _record(doc, c), doc.domain, at, c == 0)
        group, chars = [], 0


def lm_token_ids(tokenizer: Any, texts: list[str]) -> list[np.ndarray]:
    """Token ids (uint32) of each text, no special tokens. A fast tokenizer's Rust backend is
    called directly: the `tokenizer(...)` call builds Python lists and dicts that hold the GIL
    the encoder needs, and took 2.8x as long on 300 corpus documents (same ids, tested)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        encodings = backend.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.uint32) for e in encodings]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(x, dtype=np.uint32) for x in ids]


def embed_groups(
    entries: Iterable[Entry], size: int = _EMBED_GROUP, offset: int = 0
) -> Iterator[list[Entry]]:
    """Entries in groups of `size`, the unit of one encoder call and of progress. `offset`:
    entries before these in the whole build; groups then start at multiples of `size` of the
    whole build (the first is shorter), so an encoder batch holds the same entries however the
    build is cut (the encoder pads a batch to its longest text, which can move the last bits)."""
    it = iter(entries)
    first = size - offset % size
    while group := list(itertools.islice(it, first)):
        yield group
        first = size


def prefetch(items: Iterable[T], depth: int) -> Generator[T, None, None]:
    """`items`, produced by a thread up to `depth` ahead; its exceptions re-raised here. Closing
    the generator stops the thread at its next item."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(msg: tuple[str, Any]) -> bool:
        """Queue `msg` unless the consumer has gone; False when it has."""
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                q.put(msg, timeout=0.1)
                return True
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as e:  # re-raised in the consumer
            put(("error", e))

    thread = threading.Thread(target=produce, name="tttnn-build-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()


class ShardWriter:
    """Collects embedded entries and appends them a shard at a time, in a thread, one append in
    flight. `on_shard(entries stored)` runs in the caller's thread after each append lands."""

    def __init__(self, store: Any, shard_size: int, on_shard: Callable[[int], None] | None) -> None:
        self.store, self.shard_size, self.on_shard = store, shard_size, on_shard
        self.entries: list[Entry] = []
        self.vectors: list[np.ndarray] = []
        self.text_bytes = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tttnn-build-writer")
        self.pending: Future[Any] | None = None
        self.first_chunks = 0  # documents whose first entry is sealed

    def add(self, entries: list[Entry], vectors: np.ndarray) -> None:
        self.entries += entries
        self.vectors.append(vectors)
        self.text_bytes += sum(len(e.text) for e in entries)
        while len(self.entries) >= self.shard_size or self.text_bytes >= _BUFFER_BYTES:
            self._append(min(self.shard_size, len(self.entries)))

    def finish(self) -> None:
        while self.entries:
            self._append(min(self.shard_size, len(self.entries)))
        self.wait()

    def wait(self) -> None:
        if self.pending is not None:
            self.first_chunks += self.pending.result()
            self.pending = None
            if self.on_shard is not None:
                self.on_shard(len(self.store))

    def _append(self, n: int) -> None:
        vecs = np.concatenate(self.vectors)
        batch, self.entries = self.entries[:n], self.entries[n:]
        self.vectors = [vecs[n:]]
        self.text_bytes = sum(len(e.text) for e in self.entries)
        has_tokens = batch[0].tokens is not None
        self.wait()

        def append() -> int:
            self.store.append(
                np.ascontiguousarray(vecs[:n]), texts=[e.text for e in batch],
                tokens=[e.tokens for e in batch] if has_tokens else None,
                records=[e.record for e in batch],
            )  # fmt: skip
            return sum(e.first for e in batch)

        self.pending = self.pool.submit(append)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass
class Embedded:
    """What `embed_into` read and stored: documents (wholly stored ones included) and entries
    stored, by domain."""

    documents: Counter[str] = field(default_factory=Counter)
    entries: Counter[str] = field(default_factory=Counter)


def embed_into(
    pairs: Iterable[tuple[Document, Entry | None]],
    store: Any,
    enc: Encoder,
    cfg: BuildConfig,
    *,
    offset: int = 0,
    on_shard: Callable[[int, int], None] | None = None,
    on_group: Callable[[list[Entry], Embedded], None] | None = None,
) -> Embedded:
    """The end of the pipeline: `to_entries` output grouped (`embed_groups`, aligned by
    `offset`), prefetched, embedded and appended to `store` a shard at a time. Calls
    `on_group(group, counts so far)` after each encoder call and `on_shard(entries stored,
    documents with their first entry sealed)` after each sealed shard."""
    done = Embedded()

    def counted() -> Iterator[Entry]:
        seen: set[str] = set()
        for doc, entry in pairs:
            if doc.doc_id not in seen:
                seen.add(doc.doc_id)
                done.documents[doc.domain] += 1
            if entry is not None:
                done.entries[doc.domain] += 1
                yield entry

    def sealed(n: int) -> None:
        if on_shard is not None:
            on_shard(n, writer.first_chunks)

    writer = ShardWriter(store, cfg.shard_size, sealed)
    groups = prefetch(embed_groups(counted(), offset=offset), _PREFETCH)
    try:
        for group in groups:
            vecs = enc.encode([e.text for e in group], batch_size=cfg.batch_size, progress=False)
            writer.add(group, vecs)
            if on_group is not None:
                on_group(group, done)
        writer.finish()
    finally:
        groups.close()
        writer.close()
    return done


# --- the build -------------------------------------------------------------------------------


def build_index(
    corpus_paths: PathLike | Iterable[PathLike],
    out: PathLike,
    config: BuildConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    encoder: Encoder | str | None = None,
    tokenizer: Any = "config",
    on_shard: Callable[[int], None] | None = None,
    **settings: Any,
) -> Index:
    """Build an index of the documents of `corpus_paths` in the directory `out`.

    Settings: `config`, or `BuildConfig` fields as keywords (`vector_dtype="i8"`, `shard_size=`).
    `encoder` and `tokenizer` may also be loaded objects (an `Encoder`; a tokenizer, or None to
    store no token ids), which then stand for `config.encoder` / `config.tokenizer`. `resume`:
    continue an interrupted build in `out`. `on_shard(entries stored)` runs after each sealed
    shard.
    """
    from tqdm.auto import tqdm

    if isinstance(encoder, str):
        settings["encoder"] = encoder
    lm_tok: Any = None
    if isinstance(tokenizer, (str, os.PathLike)) and tokenizer != "config":
        settings["tokenizer"] = os.fspath(tokenizer)
    elif tokenizer is None:
        settings["tokenizer"] = None
    elif tokenizer != "config":  # a loaded tokenizer
        lm_tok = tokenizer
        settings["tokenizer"] = str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__))
    cfg, corpus, out, resuming = start_build(corpus_paths, Path(out), config, settings, resume)
    held = lock_store(out) if resuming else None  # a second writer is refused now, not later
    try:
        docs = first_documents(corpus, cfg)  # none: an error before anything is created
        enc, lm_tok = load_models(cfg, encoder if isinstance(encoder, Encoder) else None, lm_tok)
        params = index_params(models_identity(enc, lm_tok), cfg, corpus)
        store = open_store(out, params, cfg, corpus, resuming, store=held)
    except BaseException:
        if held is not None:
            held.release_lock()
        raise
    with store:  # the writer lock (DIR/.lock) is released when the build ends or fails
        chunk_tok = lm_tok if lm_tok is not None else enc.tokenizer
        stored = StoredCounts()
        pairs = to_entries(skip_stored(docs, store, out, stored), lm_tok, cfg.chunk_tokens, chunk_tok,
                           lambda: corpus.bytes_read)  # fmt: skip
        stored_before = len(store)

        def sealed(n: int, first_chunks: int) -> None:
            """After each sealed shard: the documents started so far, for `tttnn index info`."""
            started = stored.documents + first_chunks
            store.set_meta(json.dumps(index_meta(params, "building", documents_so_far=started)))
            if on_shard is not None:
                on_shard(n)

        bar = tqdm(total=corpus.total_bytes, unit="B", unit_scale=True, desc=f"indexing {out.name}",
                   disable=not progress, smoothing=0.1)  # fmt: skip
        started, embedded = time.perf_counter(), 0

        def shown(group: list[Entry], done: Embedded) -> None:
            nonlocal embedded
            embedded += len(group)
            bar.update(max(0, group[-1].pos - bar.n))
            rate = embedded / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(docs=sum(done.documents.values()), entries=stored_before + embedded,
                            per_s=f"{rate:.1f}", refresh=False)  # fmt: skip

        try:
            done = embed_into(pairs, store, enc, cfg, offset=stored_before, on_shard=sealed,
                              on_group=shown)  # fmt: skip
            bar.update(max(0, corpus.total_bytes - bar.n))
        finally:
            bar.close()
        done.entries.update(stored.entries)  # resumed: what was stored before counts too
        return finish_index(store, params, cfg, corpus, done, corpus.stats, enc)


# --- what one build and a distributed build share ------------------------------------------------


def start_build(
    corpus_paths: PathLike | Iterable[PathLike], out: Path, config: BuildConfig | None,
    settings: dict[str, Any], resume: bool,
) -> tuple[BuildConfig, Corpus, Path, bool]:  # fmt: skip
    """`(config, corpus, out, resuming)` of a build: the settings (`config`, or `BuildConfig`
    fields in `settings`), the corpus, and whether `out` holds a build to resume; refuses an
    `out` that holds anything else."""
    if config is not None and settings:
        raise TypeError("pass either config or settings as keywords, not both")
    cfg = config or BuildConfig.from_flat(**settings)
    corpus = Corpus(corpus_paths, on_error=cfg.on_error, max_doc_bytes=cfg.max_doc_bytes)
    resuming = resume and (out / "manifest.json").is_file()
    if out.exists() and not out.is_dir():
        raise InvalidIndexError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not resuming:
        hint = "" if resume else "; pass resume=True (--resume) to continue a build there"
        raise InvalidIndexError(f"{out} already exists and is not empty{hint}")
    return cfg, corpus, out, resuming


def lock_store(out: Path) -> Any:
    """The store in `out` (a build to resume), its writer lock (`DIR/.lock`) taken now: the
    store's first write takes it, so the meta is written back as it is. A second writer gets
    `StoreLockedError` naming the holder at once, before it loads a model or embeds anything;
    a directory that is not an index is refused before anything is written."""
    store = EmbeddingStore.open(str(out))
    _check_meta(store, out)
    store.set_meta(store.meta)
    return store


def first_documents(corpus: Corpus, cfg: BuildConfig) -> Iterator[Document]:
    """The documents of a build (at most `cfg.limit`), the corpus read up to its first one: a
    corpus without a usable document is an `InvalidIndexError` before the index directory is
    created, so that the same command runs once the input is fixed (`limit=0` builds an empty
    index)."""
    docs = itertools.islice(corpus, cfg.limit)
    first = next(docs, None)
    if first is None:
        if cfg.limit != 0:
            raise InvalidIndexError(_no_documents(corpus))
        return iter(())
    return itertools.chain([first], docs)


def _no_documents(corpus: Corpus) -> str:
    return f"no documents in {', '.join(map(str, corpus.paths))}"


def load_models(
    cfg: BuildConfig, encoder: Encoder | None = None, lm_tok: Any = None, *, progress: bool = True
) -> tuple[Encoder, Any]:
    """The encoder and LM tokenizer (None: the index stores no token ids) of a build: `encoder`
    and `lm_tok` when given (loaded by the caller), else those `cfg` names."""
    if encoder is None:
        encoder = Encoder(cfg.encoder, batch_size=cfg.batch_size, progress=progress)
    if lm_tok is None and cfg.tokenizer is not None:
        from tttnn.models import load_tokenizer

        lm_tok = load_tokenizer(cfg.tokenizer)
    return encoder, lm_tok


def index_meta(params: dict[str, Any], status: str, **fields: Any) -> dict[str, Any]:
    """The index meta: what a build fixed when it started (`index_params`), its `status`
    ("building", "complete") and what it counted so far."""
    return {**params, "status": status, **fields}


def open_store(
    out: Path, params: dict[str, Any], cfg: BuildConfig, corpus: Corpus, resuming: bool,
    store: Any = None,
) -> Any:  # fmt: skip
    """The store of a build: the one in `out` to resume (`store` when opened already, by
    `lock_store`), checked against `params` (whose `token_bits` becomes the store's), or a new
    one."""
    if resuming:
        return _open_for_resume(out, params, corpus, store)
    return _create(out, params, cfg)


def finish_index(
    store: Any, params: dict[str, Any], cfg: BuildConfig, corpus: Corpus, counted: Embedded,
    stats: CorpusStats, encoder: Encoder | None = None, **fields: Any,
) -> Index:  # fmt: skip
    """Seal a build whose documents and entries by domain are `counted`: the HNSW settings,
    and the complete meta (with `fields`) written once."""
    docs, entries = counted.documents, counted.entries
    if not docs and cfg.limit != 0:
        raise InvalidIndexError(_no_documents(corpus))
    if cfg.hnsw:
        store.build_hnsw()  # distributed: the graphs came with the units; the settings if empty
    meta = index_meta(
        params, "complete", documents=sum(docs.values()), entries=len(store),
        domains={d: {"documents": docs[d], "entries": entries[d]} for d in sorted(docs)},
        corpus_stats=stats.to_dict(), **fields,
    )  # fmt: skip
    store.set_meta(json.dumps(meta))
    return Index(store, meta, encoder)


def models_identity(enc: Encoder, lm_tok: Any) -> dict[str, Any]:
    """What the index meta records of the encoder and the LM tokenizer (the vectors and token
    ids depend on it): every worker of a distributed build must report the same."""
    return {
        "encoder": enc.name, "encoder_fingerprint": enc.fingerprint,
        "encoder_max_length": enc.max_length, "encoder_precision": enc.precision, "dim": enc.dim,
        "tokenizer_sha256": vocab_fingerprint(lm_tok) if lm_tok is not None else None,
        "token_bits": token_bits(lm_tok),
    }  # fmt: skip


def token_bits(tokenizer: Any) -> int:
    """Width of the stored token ids for `tokenizer`: 16 (u16, half the bytes) when every id of
    its vocabulary fits, else 32. None (no token ids stored): 32, what a store records then."""
    return 16 if tokenizer is not None and len(tokenizer) <= 1 << 16 else 32


def index_params(identity: dict[str, Any], cfg: BuildConfig, corpus: Corpus) -> dict[str, Any]:
    """The index meta fixed when a build starts (`status`, counts and statistics come later)."""
    return {
        "kind": INDEX_KIND, "format": INDEX_FORMAT, "encoder": identity["encoder"],
        "encoder_fingerprint": identity["encoder_fingerprint"],
        "encoder_max_length": identity["encoder_max_length"],
        "encoder_precision": identity["encoder_precision"], "dim": identity["dim"],
        "pooling": "mean", "normalized": True, "tokenizer": cfg.tokenizer,
        "tokenizer_sha256": identity["tokenizer_sha256"], "token_bits": identity["token_bits"],
        "special_tokens": False, "dtype": cfg.vector_dtype, "chunk_tokens": cfg.chunk_tokens,
        "corpus": [str(p) for p in corpus.paths], "max_doc_bytes": cfg.max_doc_bytes,
        "limit": cfg.limit,
    }  # fmt: skip


def _create(out: Path, params: dict[str, Any], cfg: BuildConfig) -> Any:
    """A new store for the entries of `params` (an index's, or a work unit's)."""
    return EmbeddingStore.create(
        str(out), params["dim"], dtype=cfg.vector_dtype, metric="cosine",
        shard_size=cfg.shard_size, hnsw=cfg.hnsw, with_text=True,
        with_tokens=params["tokenizer"] is not None, token_bits=params["token_bits"],
        with_records=True,
        meta=json.dumps(index_meta(params, "building")),
    )  # fmt: skip


def _open_for_resume(
    out: Path, params: dict[str, Any], corpus: Corpus, store: Any = None
) -> Any:  # fmt: skip
    if store is None:
        store = EmbeddingStore.open(str(out))
    old = _check_meta(store, out)
    for key in ("encoder", "dim", "tokenizer", "dtype", "chunk_tokens", "max_doc_bytes"):
        if old.get(key) != params[key]:
            raise InvalidIndexError(
                f"cannot resume {out}: it was built with {key}={old.get(key)!r}, "
                f"this build has {key}={params[key]!r}"
            )
    if [Path(p).name for p in old.get("corpus", [])] != [p.name for p in corpus.paths]:
        raise InvalidIndexError(
            f"cannot resume {out}: it was built from {old.get('corpus')}, not {params['corpus']}"
        )
    if store.dtype != params["dtype"]:
        raise InvalidIndexError(f"cannot resume {out}: its store holds {store.dtype}")
    # its token ids keep the width it was created with (an index of u32 ids, made before
    # 16-bit ones existed, grows with u32 ids; its units too, on Ray)
    params["token_bits"] = store.token_bits
    return store
