"""Streaming corpus readers: Pile-format JSON lines (`.jsonl`, zstd `.jsonl.zst`), folders of `.txt`
files and `.parquet` files with a `text` column, yielding `Document`s one at a time.

Memory stays bounded whatever the file size: JSON lines are read as raw bytes with a length cap
(a huge line is skipped in pieces, never held whole), zstd is decompressed as a stream, parquet is
read batch by batch. Each line is decoded as strict UTF-8, so invalid bytes are reported at the
exact line.

Bad input (`ERROR_KINDS`) is counted in a `CorpusStats`; `on_error="skip"` (default) logs the
first few of each kind and goes on, `on_error="fail"` raises `CorpusError` at the first one.

A corrupt or truncated compressed file is not a bad line: the documents after the damage are
unknown, so it raises `CorpusError` naming the file whatever `on_error` says. Frames are decoded
one at a time and a stream that ends inside a frame is an error (zstandard's `stream_reader`
returns end-of-file there and silently loses the tail); the frame's content checksum, when the
compressor wrote one (the `zstd` tool does by default), is verified by libzstd. The documents
before the damage have already been yielded when the error comes: a build must treat it as fatal.

A corpus that yields no document at all is visible as `CorpusStats.empty`; with
`require_documents=True` the iteration ends with `EmptyCorpusError` instead.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "DEFAULT_MAX_DOC_BYTES",
    "ERROR_KINDS",
    "MAX_DOC_BYTES_LIMIT",
    "Corpus",
    "CorpusError",
    "CorpusStats",
    "Document",
    "EmptyCorpusError",
    "read_corpus",
]

log = logging.getLogger("tttnn.corpus")

DEFAULT_MAX_DOC_BYTES = 10 * 1024 * 1024
"""Documents whose UTF-8 text is longer than this are skipped as `too_large`."""

MAX_DOC_BYTES_LIMIT = 1 << 40
"""The largest `max_doc_bytes` (1 TiB, far beyond any document): a JSON line may be six times its
text, and that cap must stay a size the reader can take."""

ERROR_KINDS = ("malformed_json", "missing_text", "empty_text", "invalid_utf8", "too_large")
"""The kinds of bad input a reader counts."""

_MAX_EXAMPLES = 5  # examples kept per error kind
_LOG_FIRST = 3  # bad documents logged per kind (the rest are only counted)
_JSONL_SUFFIXES = (".jsonl.zst", ".jsonl.zstd", ".jsonl")
# Compressed bytes fed to the decoder per call. One call returns all its output at once, and zstd
# reaches a ratio of about 32,700 (measured: 256 MiB of zeros -> 8,211 bytes), so 1 KiB bounds a
# call's output to about 32 MiB. Not slower than zstandard's stream_reader: 44 MB of the benchmark
# corpus decode in 0.048 s either way (0.043 s with stream_reader).
_ZSTD_INPUT_CHUNK = 1024
_PARQUET_SUFFIXES = (".parquet", ".pq")


class CorpusError(ValueError):
    """Bad corpus input: an unreadable, unknown, corrupt or truncated file, or (with
    `on_error="fail"`) a bad document."""


class EmptyCorpusError(CorpusError):
    """The corpus yielded no document at all (raised when `require_documents=True`)."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    `doc_id` is stable and unique within a build: `"<file name>:<line>"` for JSON lines (1-based),
    `"<file name>:<row>"` for parquet (0-based), `"<folder name>/<relative path>"` for text files.
    `domain` is `meta.pile_set_name` when present, else the file stem or the text file's folder.
    `source` is `meta.source` when present, else the input file's path.
    """

    doc_id: str
    text: str
    domain: str
    source: str


@dataclass
class CorpusStats:
    """What a reader saw: documents yielded, bad inputs counted by kind with a few `file:line`
    examples each."""

    documents: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: int = 0

    @property
    def skipped(self) -> int:
        return sum(self.errors.values())

    @property
    def empty(self) -> bool:
        """No document was yielded (meaningful once the corpus has been read to the end)."""
        return self.documents == 0

    def add_error(self, kind: str, where: str, message: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < _MAX_EXAMPLES:
            ex.append(f"{where}: {message}")

    def summary(self) -> str:
        """One line: documents read, then each bad-input kind with its count and first example."""
        parts = [f"{self.documents} documents read from {self.files} file(s)"]
        if self.skipped == 0:
            parts.append("no bad input")
        else:
            parts.append(f"{self.skipped} skipped")
            for kind in ERROR_KINDS:
                n = self.errors.get(kind, 0)
                if n:
                    first = self.examples.get(kind, [""])[0]
                    parts.append(f"{kind}: {n} (e.g. {first})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "documents": self.documents,
            "files": self.files,
            "skipped": self.skipped,
            "errors": {k: v for k, v in self.errors.items() if v},
            "examples": {k: v for k, v in self.examples.items() if v},
        }


def _strip_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s):
            return name[: -len(s)]
    return None


def _kind_of(path: Path) -> str:
    if path.is_dir():
        return "txt_dir"
    if _strip_suffix(path.name, _JSONL_SUFFIXES) is not None:
        return "jsonl"
    if _strip_suffix(path.name, _PARQUET_SUFFIXES) is not None:
        return "parquet"
    if path.name.lower().endswith(".txt"):
        return "txt_file"
    raise CorpusError(
        f"{path}: unknown corpus format (expected .jsonl, .jsonl.zst, .parquet, .txt or a folder "
        "of .txt files)"
    )


class Corpus:
    """A sequence of corpus inputs read as one stream of `Document`s.

    Iterating re-reads the inputs from the start (and resets `stats`). `bytes_read` / `total_bytes`
    track progress through the files on disk (compressed bytes for `.zst`), for a progress bar.
    With `require_documents=True`, an iteration that yields no document ends with
    `EmptyCorpusError` (its message names the inputs and what was skipped).
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        on_error: str = "skip",
        max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
        require_documents: bool = False,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise CorpusError("no corpus path given")
        if on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', not {on_error!r}")
        if not 0 < max_doc_bytes <= MAX_DOC_BYTES_LIMIT:
            raise ValueError(
                f"max_doc_bytes must be a positive number of bytes up to {MAX_DOC_BYTES_LIMIT} "
                f"(1 TiB), not {max_doc_bytes}"
            )
        self.on_error = on_error
        self.max_doc_bytes = max_doc_bytes
        self.require_documents = require_documents
        for p in self.paths:
            if not p.exists():
                raise FileNotFoundError(f"corpus path not found: {p}")
            _kind_of(p)  # unknown formats fail before anything is read
        # doc ids start with the file name; fall back to the path as given when names collide
        names = [p.name for p in self.paths]
        self._labels = [
            p.name if names.count(p.name) == 1 else str(p).replace(":", "_") for p in self.paths
        ]
        self.stats = CorpusStats()
        self.total_bytes = sum(_size_on_disk(p) for p in self.paths)
        self.bytes_read = 0
        self._bytes_done = 0  # bytes of the inputs already finished
        self.position: tuple[int, int] = (0, 0)  # of `read_file` in a JSON lines file

    def __iter__(self) -> Iterator[Document]:
        self.stats = CorpusStats()
        self.bytes_read = 0
        self._bytes_done = 0
        for i, path in enumerate(self.paths):
            yield from self.read_file(i)
            self._bytes_done += _size_on_disk(path)
            self.bytes_read = self._bytes_done
        if self.require_documents and self.stats.empty:
            raise EmptyCorpusError(
                f"no documents in {', '.join(map(str, self.paths))}: {self.stats.summary()}"
            )

    def is_jsonl(self, i: int) -> bool:
        """Input `i` is a JSON lines file (`read_file` can start it from a `position`)."""
        return _kind_of(self.paths[i]) == "jsonl"

    def read_file(
        self, i: int, start: tuple[int, int] | None = None
    ) -> Generator[Document, None, None]:
        """The documents of the `i`-th input alone, with the doc ids of the whole stream, counted
        into `stats` (not reset) as the whole stream counts them. A distributed build reads its
        work units this way.

        JSON lines only: after each line, `position` is `(lines, bytes)` read so far (bytes of
        the decompressed stream); `start`, a position taken so, continues the file from there
        (a seek, or for `.zst` a decompression without parsing) and counts no new file."""
        path, label = self.paths[i], self._labels[i]
        kind = _kind_of(path)
        if start is not None and kind != "jsonl":
            raise ValueError(f"{path}: only JSON lines files can be read from a position")
        if start is None:
            self.stats.files += 1
        if kind == "jsonl":
            yield from self._read_jsonl(path, label, start or (0, 0))
        elif kind == "parquet":
            yield from self._read_parquet(path, label)
        else:
            yield from self._read_txt(path, label, kind == "txt_dir")

    # -- bad input ----------------------------------------------------------------------------
    def _bad(self, kind: str, where: str, message: str) -> None:
        if self.on_error == "fail":
            raise CorpusError(f"{where}: {message} ({kind})")
        self.stats.add_error(kind, where, message)
        if self.stats.errors[kind] <= _LOG_FIRST:
            log.warning("skipping %s: %s (%s)", where, message, kind)

    def _accept(self, text: Any, where: str) -> str | None:
        """The document text if it is a usable string, else None (after reporting why)."""
        if text is None:
            self._bad("missing_text", where, "no 'text' field")
            return None
        if not isinstance(text, str):
            self._bad(
                "missing_text", where, f"'text' is of type {type(text).__name__}, not a string"
            )
            return None
        if not text.strip():
            self._bad("empty_text", where, "text is empty or whitespace only")
            return None
        try:
            n = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            self._bad(
                "invalid_utf8", where, f"text has an unpaired surrogate at character {e.start}"
            )
            return None
        if n > self.max_doc_bytes:
            self._bad(
                "too_large", where, f"text is {n} bytes, over max_doc_bytes={self.max_doc_bytes}"
            )
            return None
        return text

    # -- formats --------------------------------------------------------------------------------
    def _read_jsonl(self, path: Path, label: str, start: tuple[int, int]) -> Iterator[Document]:
        stem = _strip_suffix(path.name, _JSONL_SUFFIXES) or path.stem
        compressed = path.name.lower().endswith((".zst", ".zstd"))
        # A JSON-escaped line may be longer than its text; the hard cap on a raw line keeps memory
        # bounded, the text itself is checked against max_doc_bytes after parsing.
        line_cap = 6 * self.max_doc_bytes + 4096
        lineno, offset = start
        with open(path, "rb") as raw:
            stream: BinaryIO = (
                io.BufferedReader(_ZstdFrames(raw), buffer_size=1 << 20) if compressed else raw
            )
            with stream:
                try:
                    if not compressed:
                        raw.seek(offset)
                    else:
                        left = offset
                        while left > 0:
                            got = len(stream.read(min(left, 1 << 24)))
                            if got == 0:
                                raise _BadZstd("it ends before the position to start from")
                            left -= got
                except _BadZstd as e:  # only a compressed stream is decompressed
                    raise CorpusError(
                        f"{path.name}: cannot decompress up to byte {offset} ({e}); the file is "
                        "corrupt or truncated"
                    ) from None
                self.position = (lineno, offset)
                while True:
                    try:
                        line = stream.readline(line_cap + 1)
                    except _BadZstd as e:
                        raise CorpusError(
                            f"{path.name}:{lineno + 1}: cannot decompress ({e}); the file is "
                            "corrupt or truncated"
                        ) from None
                    if not line:
                        break
                    lineno += 1
                    offset += len(line)
                    self.bytes_read = self._bytes_done + raw.tell()
                    where = f"{path.name}:{lineno}"
                    if len(line) > line_cap and not line.endswith(b"\n"):
                        # consume the rest of this line in bounded pieces
                        total = len(line)
                        while True:
                            piece = stream.readline(1 << 20)
                            total += len(piece)
                            offset += len(piece)
                            if not piece or piece.endswith(b"\n"):
                                break
                        self.position = (lineno, offset)
                        self._bad(
                            "too_large",
                            where,
                            f"line is {total} bytes, over the cap of {line_cap} for "
                            f"max_doc_bytes={self.max_doc_bytes}",
                        )
                        continue
                    self.position = (lineno, offset)
                    if not line.strip():
                        continue  # blank lines are not documents
                    try:
                        decoded = line.decode("utf-8")
                    except UnicodeDecodeError as e:
                        self._bad("invalid_utf8", where, f"invalid UTF-8 at byte {e.start}")
                        continue
                    try:
                        obj = json.loads(decoded)
                    except json.JSONDecodeError as e:
                        self._bad("malformed_json", where, f"malformed JSON ({e})")
                        continue
                    if not isinstance(obj, dict):
                        self._bad(
                            "malformed_json", where, f"a JSON {type(obj).__name__}, not an object"
                        )
                        continue
                    text = self._accept(obj.get("text"), where)
                    if text is None:
                        continue
                    meta = obj.get("meta")
                    domain, source = stem, str(path)
                    if isinstance(meta, dict):
                        if isinstance(meta.get("pile_set_name"), str) and meta["pile_set_name"]:
                            domain = meta["pile_set_name"]
                        if isinstance(meta.get("source"), str):
                            source = meta["source"]
                    self.stats.documents += 1
                    yield Document(f"{label}:{lineno}", text, domain, source)

    def _read_parquet(self, path: Path, label: str) -> Iterator[Document]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise CorpusError(f"{path}: not a readable parquet file: {e}") from e
        names = pf.schema_arrow.names
        if "text" not in names:
            raise CorpusError(f"{path}: parquet file has no 'text' column (columns: {names})")
        stem = _strip_suffix(path.name, _PARQUET_SUFFIXES) or path.stem
        columns = ["text"] + [
            c for c in ("meta", "domain", "pile_set_name", "source") if c in names
        ]
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            cols = {c: batch.column(c).to_pylist() for c in columns}
            for i in range(batch.num_rows):
                where = f"{path.name}:{row}"
                row += 1
                text = self._accept(cols["text"][i], where)
                if text is None:
                    continue
                domain, source = stem, str(path)
                meta = cols["meta"][i] if "meta" in cols else None
                if isinstance(meta, dict):
                    if isinstance(meta.get("pile_set_name"), str) and meta["pile_set_name"]:
                        domain = meta["pile_set_name"]
                    if isinstance(meta.get("source"), str):
                        source = meta["source"]
                for c in ("pile_set_name", "domain"):
                    if c in cols and isinstance(cols[c][i], str) and cols[c][i]:
                        domain = cols[c][i]
                if "source" in cols and isinstance(cols["source"][i], str):
                    source = cols["source"][i]
                self.stats.documents += 1
                yield Document(f"{label}:{row - 1}", text, domain, source)
            size = _size_on_disk(path)
            self.bytes_read = self._bytes_done + size * row // max(pf.metadata.num_rows, 1)

    def _read_txt(self, path: Path, label: str, is_dir: bool) -> Iterator[Document]:
        if is_dir:
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() == ".txt")
            root = path
        else:
            files = [path]
            root = path.parent
        for f in files:
            rel = f.relative_to(root).as_posix()
            where = f"{label}/{rel}" if is_dir else f.name
            # the first-level sub-folder names the domain; files at the top take the folder's name
            parts = f.relative_to(root).parts
            domain = parts[0] if is_dir and len(parts) > 1 else f.parent.name
            size = f.stat().st_size
            self.bytes_read += size
            if size > self.max_doc_bytes:
                self._bad(
                    "too_large",
                    where,
                    f"file is {size} bytes, over max_doc_bytes={self.max_doc_bytes}",
                )
                continue
            data = f.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                self._bad("invalid_utf8", where, f"invalid UTF-8 at byte {e.start}")
                continue
            text = self._accept(text, where)  # type: ignore[assignment]
            if text is None:
                continue
            self.stats.documents += 1
            yield Document(where, text, domain, str(f))


class _BadZstd(Exception):
    """A zstd stream that ends inside a frame or that libzstd refuses: raised by `_ZstdFrames`
    only, so that a plain file never gets a message about decompression."""


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a zstd file, frame after frame; raises when the input ends
    inside a frame or holds anything but zstd frames (libzstd checks content checksums)."""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError
        self._frame = self._dctx.decompressobj()
        self._in_frame = False  # bytes of the current frame were fed, its end not seen yet
        self._frames = 0
        self._fed = 0  # compressed bytes fed so far
        self._pending = b""  # compressed bytes read but not fed (the start of the next frame)
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._out:
            chunk = self._pending or self._raw.read(_ZSTD_INPUT_CHUNK)
            self._pending = b""
            if not chunk:
                if self._in_frame:
                    raise _BadZstd(
                        f"the input ends inside zstd frame {self._frames + 1}, after "
                        f"{self._fed} compressed bytes"
                    )
                if self._frames == 0:
                    raise _BadZstd("the file holds no zstd frame")
                return 0
            self._in_frame = True
            self._fed += len(chunk)
            try:
                self._out = memoryview(self._frame.decompress(chunk))
            except self._error as e:
                raise _BadZstd(str(e)) from None
            if self._frame.eof:
                self._frames += 1
                self._in_frame = False
                self._pending = self._frame.unused_data
                self._fed -= len(self._pending)
                self._frame = self._dctx.decompressobj()
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*.txt") if p.is_file())
    return path.stat().st_size


def read_corpus(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    on_error: str = "skip",
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    stats: CorpusStats | None = None,
    require_documents: bool = False,
) -> Iterator[Document]:
    """Stream the documents of `paths` (files or folders, in order). When `stats` is given it is
    filled in when the iterator is exhausted or closed."""
    corpus = Corpus(
        paths,
        on_error=on_error,
        max_doc_bytes=max_doc_bytes,
        require_documents=require_documents,
    )
    try:
        yield from corpus
    finally:
        if stats is not None:
            stats.__dict__.update(corpus.stats.__dict__)
