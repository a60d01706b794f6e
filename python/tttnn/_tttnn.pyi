"""Type stub for the compiled core `tttnn._tttnn` (checked with `python -m mypy.stubtest tttnn._tttnn`).

This file is the contract between the Rust bindings and the Python layer.

Integer arguments take any Python int: one beyond 64 bits is a ValueError naming the argument and
its range, never an OverflowError. OSErrors from the core name the file in their message and keep
the system's `errno` (`e.errno == errno.ENOSPC` for a full disk).
"""

import os
from collections.abc import Iterable, Sequence
from typing import final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CorruptIndexError",
    "DirLock",
    "EmbeddingStore",
    "StoreLockedError",
    "__version__",
    "_simd_kernels",
    "append_bytes",
    "atomic_write",
    "check_shards",
    "dedup_neighbors",
    "exact_search",
    "merge_topk",
    "pack_windows",
    "sift_select",
]

__version__: str

class CorruptIndexError(ValueError):
    """A store file is truncated, corrupted, inconsistent with its manifest, or of an unknown version."""

class StoreLockedError(BlockingIOError):
    """Another writer (this or another process) holds the writer lock of the directory (a store
    or a run)."""

@final
class DirLock:
    """The writer lock of a directory (it must exist): `DIR/.lock`, the lock a store's writer
    takes, so one convention serves indexes and runs. `with DirLock(run, what="run"):` holds it
    for the block; a second writer (this or another process) gets `StoreLockedError` at once,
    naming the holder's pid and host. The kernel releases the lock when the holder's process
    ends, even when killed. Readers take no lock and never wait. A symbolic link in place of the
    lock file is refused (OSError). Not re-entrant."""

    def __new__(cls, path: str | os.PathLike[str], *, what: str = "directory") -> DirLock:
        """`what` names the directory in the message a second writer gets ("run", "index")."""
    def acquire(self) -> None:
        """Take the lock without waiting; StoreLockedError when another writer holds it,
        RuntimeError when this object holds it already."""
    def release(self) -> None:
        """Let the lock go (nothing happens when it is not held)."""
    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
    @property
    def path(self) -> str:
        """The locked directory."""
    def __enter__(self) -> DirLock:
        """Entering a `with` block takes the lock (see `acquire`)."""
    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        """Leaving the `with` block releases the lock."""

@final
class EmbeddingStore:
    """Append-only, sharded, memory-mapped vectors (f32/f16/i8) with optional per-document text,
    token ids and records (small JSON bytes). Global ids are 0..len(store) in append order.

    One writer per directory: the first write of a handle (create, append, build_hnsw,
    set_meta) takes an advisory lock on `DIR/.lock`, held until the handle is garbage-collected
    or its process exits; a second writer gets StoreLockedError. Readers never take it."""

    @staticmethod
    def create(
        path: str | os.PathLike[str],
        dim: int,
        *,
        dtype: str = "f32",
        metric: str = "cosine",
        shard_size: int = 100_000,
        hnsw: bool = False,
        hnsw_connectivity: int = 16,
        hnsw_expansion_add: int = 128,
        hnsw_expansion_search: int = 64,
        with_text: bool = False,
        with_tokens: bool = False,
        token_bits: int = 32,
        with_records: bool = False,
        meta: str = "{}",
    ) -> EmbeddingStore: ...
    @staticmethod
    def open(
        path: str | os.PathLike[str], *, shards: Sequence[int] | None = None
    ) -> EmbeddingStore:
        """Open an existing store (memory maps; reads only headers and file sizes). `shards`:
        open only these shards (the others' files need not exist); the handle then searches and
        reads them only, by global ids and shard numbers, and cannot write."""
    def opened_shards(self) -> list[int]:
        """Numbers of the shards this handle opened (all of them unless opened with `shards`)."""
    def append(
        self,
        vectors: npt.ArrayLike,
        *,
        texts: Sequence[str | bytes] | None = None,
        tokens: Sequence[npt.NDArray[np.integer] | Sequence[int]] | None = None,
        records: Sequence[bytes | str] | None = None,
    ) -> list[int]:
        """Append `n × dim` vectors (and n texts/tokens/records when the store has them); splits
        into shards of at most `shard_size`, each sealed by an atomic manifest write. Returns the
        ids of the shards written. float16/float64 input is converted to float32; other dtypes,
        NaN/inf, a wrong dimension, invalid UTF-8 or mismatched counts raise ValueError."""
    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        *,
        exact: bool = True,
        ef: int | None = None,
        shards: Sequence[int] | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """`queries` is `(nq, dim)` or `(dim,)`; returns `(ids, scores)` of shape `(nq, k)`, best
        first; missing hits are id -1 / score NaN. `exact=False` walks the HNSW graphs (i8 codes)
        with a beam of `max(ef, k)` candidates (default `ef`: the store's `expansion_search`, 64)
        and re-ranks them exactly against the stored vectors: the scores are exact, recall grows
        with `ef`. `k` beyond the store's size only adds padding, refused (ValueError) past 2**26
        result entries. A stored value found to be corrupt (a non-finite value, a cosine score
        outside [-1, 1], a damaged HNSW graph) raises CorruptIndexError naming the file.
        `shards` searches only those shard numbers (ids stay global): exactly the full search's
        ranking restricted to them; IndexError for a shard that does not exist. Every search
        merges per-shard lists by score, then id, so merging the searches of groups of shards
        gives the search of all of them, bitwise."""
    def build_hnsw(self, *, threads: int = 0) -> int:
        """Build the HNSW graph of every shard that lacks one (resumable); returns how many.
        `threads=0` uses all cores (ValueError when negative)."""
    def verify(self) -> None:
        """Read every file and check its checksum, the norms, the ragged offsets and every link
        of the HNSW graphs; raises CorruptIndexError naming the file on the first problem."""
    def verify_shard(self, i: int) -> None:
        """`verify()` for shard `i` only (0 <= i < num_shards), so a caller can show progress;
        IndexError for a shard that does not exist."""
    def get_vectors(self, ids: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """Dequantized vectors of the given ids, `(len(ids), dim)`."""
    def text(self, id: int) -> str: ...
    def text_bytes(self, id: int) -> bytes: ...
    def tokens(self, id: int) -> npt.NDArray[np.uint32]:
        """A copy of the stored token ids (IndexError when out of range)."""
    def record(self, id: int) -> bytes: ...
    def pack_windows(
        self,
        ids: Sequence[int] | npt.NDArray[np.int64],
        context_length: int,
        *,
        eos_id: int | None = None,
        pack_short: bool = False,
        max_windows_per_doc: int | None = None,
        pad_id: int = 0,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Stored token ids of `ids` (in that order) as training windows; see `pack_windows`."""
    def release_lock(self) -> None:
        """Release this handle's writer lock now (it is otherwise held until the handle is
        garbage-collected); the handle stays usable and its next write takes the lock again."""
    def __enter__(self) -> EmbeddingStore: ...
    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        """Leaving a `with` block releases the writer lock (see `release_lock`)."""
    def set_meta(self, meta: str) -> None:
        """Replace the user metadata (a JSON object string), atomically."""
    def adopt(self, unit: str | os.PathLike[str], *, meta: str | None = None) -> list[int]:
        """Adopt the sealed shards of the store in `unit` as the next shards of this one (ids
        continue from `len(self)`), with `meta` replacing the user metadata in the same atomic
        manifest write. The unit must match: dim, dtype, metric, columns, HNSW settings, shards
        of at most `shard_size` (ValueError otherwise). Returns the ids of the adopted shards;
        the unit is left with no shard (remove its directory)."""
    @property
    def path(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def dtype(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def shard_size(self) -> int: ...
    @property
    def token_bits(self) -> int:
        """Width of a stored token id, 16 or 32 (`create`'s `token_bits`)."""
    @property
    def num_shards(self) -> int: ...
    @property
    def has_hnsw(self) -> bool: ...
    @property
    def meta(self) -> str: ...
    def shard_counts(self) -> list[int]: ...
    def hnsw_stranded(self) -> list[int]:
        """Ids of the rows no HNSW walk reaches; HNSW searches score them exactly."""
    def __len__(self) -> int: ...

def exact_search(
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    metric: str = "cosine",
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact top-k over an in-memory `(n, dim)` f32 array (same kernels as the store).

    `queries` is `(nq, dim)` or `(dim,)`; returns `(ids int64 (nq, k), scores float32 (nq, k))`,
    best first: cosine and "ip" scores are similarities, "l2" scores squared distances. Rows with
    fewer than k hits are padded with id -1 and score NaN."""

def merge_topk(
    ids: Sequence[npt.ArrayLike],
    scores: Sequence[npt.ArrayLike],
    k: int,
    *,
    higher_is_better: bool = True,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Merge per-group top-k lists of the same queries into the top `k` of each query, in the
    order of every search of the core: score by IEEE total order (best first: highest
    similarity, or with `higher_is_better=False` smallest distance), ties by smaller id.
    `ids[i]` (int64) and `scores[i]` (float32) are `(nq, k_i)`, global ids; entries with id -1
    or a NaN score are padding and skipped. Returns `(ids int64 (nq, k), scores float32 (nq,
    k))`, padded with id -1 / score NaN where there are fewer than `k` candidates. Merging the
    searches of groups of shards gives the search of all of them, bitwise. ValueError for lists
    of different queries or shapes, or k < 1."""

def check_shards(shards: Iterable[int], num_shards: int) -> list[int]:
    """The shard numbers `shards` of a store of `num_shards` shards, sorted and distinct: the
    check every search of some shards makes. ValueError when `shards` is empty, IndexError
    naming the smallest number outside `0..num_shards` and how many shards there are."""

def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace the file `path` with `data` (bytes, or str written as UTF-8), atomically, by the
    rule every file of the store is written with.

    A fresh temporary file beside `path` (`.NAME.PID.N.tmp`, created exclusively and without
    following a symbolic link: a name planted there is skipped, never written through) is
    written, fsynced and renamed over `path`, and the directory is fsynced; a reader sees the
    old content or the new, never a mix, and a crash leaves at most the temporary file. `path`
    itself being a symbolic link is refused: OSError naming it ("is a symbolic link ..."), and
    nothing is written. Every other failure (disk full, read-only, missing directory) is an
    OSError naming the file, with the system's `errno`. The new file gets the permissions of
    the umask (as `open(path, "w")`). The GIL is released while writing."""

def append_bytes(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Append `data` (bytes, or str written as UTF-8) to the file `path`, created when absent
    (permissions of the umask), and fsync it, and its directory when the file was new: one
    durable results row per call.

    The file is opened with `O_APPEND|O_NOFOLLOW`: a symbolic link at `path` is refused (OSError
    naming it, "is a symbolic link ...") and nothing is written. Every other failure (disk full
    included) is an OSError naming the file, with the system's `errno`. The GIL is released
    while writing."""

def _simd_kernels() -> str:
    """The SIMD kernel set chosen at runtime for exact search ("avx2" or "scalar")."""

def pack_windows(
    docs: Sequence[npt.NDArray[np.integer] | Sequence[int]] | npt.NDArray[np.integer],
    context_length: int,
    *,
    eos_id: int | None = None,
    pack_short: bool = False,
    max_windows_per_doc: int | None = None,
    pad_id: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Cut documents (in order) into non-overlapping windows of `context_length` tokens.

    Returns `(input_ids (W, L), lengths (W,), doc_index (W,))`: row i holds `lengths[i]` real
    tokens followed by `pad_id`; `doc_index[i]` is the document row i starts in.

    Each document is cut from its start into pieces of `context_length` tokens (the last may be
    shorter); empty documents give none; `max_windows_per_doc=N` keeps the first N pieces.
    Without `pack_short` every piece is a window. With `pack_short=True` (needs `eos_id`) a full
    piece is its own window and closes the open one; a short piece (short document or tail) is
    appended to the open window after one `eos_id` when it fits, else it opens a new window.
    Windows stay in document order. uint32 arrays are borrowed; other integer dtypes and lists
    are converted (ValueError for ids outside 0..2**32-1)."""

def dedup_neighbors(
    query: str | bytes,
    candidates: Sequence[str | bytes],
    *,
    threshold: float = 0.9,
) -> tuple[list[int], list[tuple[int, str]]]:
    """Leakage guard: drop candidates identical to the query or to an earlier kept candidate
    (after whitespace/case normalisation), or whose word-shingle similarity to either reaches
    `threshold`. Returns `(kept indices, [(dropped index, reason)])`, order preserved.

    Similarity: overlap coefficient |A∩B| / min(|A|, |B|) of hashed word 5-shingle sets (word
    sets when either text has < 5 words): catches lightly edited copies and excerpts/supersets.
    Reasons: "empty", "exact-duplicate-of-query", "near-duplicate-of-query", "exact-duplicate",
    "near-duplicate". ValueError for invalid UTF-8 bytes or threshold outside (0, 1]."""

def sift_select(
    candidates: npt.ArrayLike,
    query: npt.ArrayLike,
    n: int,
    *,
    lam: float = 0.01,
    alpha: float | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """SIFT (Hübotter et al., ICLR 2025): `n` greedy picks among the rows of `candidates` `(K, d)`
    that minimise the posterior variance at `query` `(d,)` of a linear-kernel Gaussian process
    with noise variance `lam`; ties go to the lowest row. A row can be picked again. With
    `alpha`, pick t (1-based) is dropped where sqrt(variance_t) > 1 / (alpha * t).

    Returns `(indices int64 (m,), variances float64 (m,))`: candidate rows in pick order and the
    posterior variance after each pick (m = n, or fewer with `alpha`). ValueError for shapes that
    do not match, NaN/inf, n < 1, or lam / alpha that are not positive numbers."""
