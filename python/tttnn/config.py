"""The settings of a job, as nested dataclasses: each default stated once, here.

    EvalConfig                       one `tttnn eval` run
    ├── index, model                 the index directory; the causal LM (HF id, folder, alias)
    ├── test: TestSetConfig          test documents: files, limits, domains, --split-text
    ├── retrieval: RetrievalConfig   neighbors per document, exact/HNSW, leakage guard, SIFT
    ├── pack: PackConfig             neighbors' tokens -> training windows
    ├── ttt: TTTConfig               the loop: AdamW, windows, autocast, LoRA, when to score
    ├── baselines                    extra scores of each document ("in-context")
    ├── ray: RayConfig               on Ray: address, workers, CPUs/GPUs each: not a result
    └── run: RunConfig               where and how it runs (out, device, progress): not a result
    BuildConfig                      one `tttnn index build` (with its own `ray: RayConfig`)

Every leaf field has a unique name across the tree. That flat name is the CLI option
(`--weight-decay` for `ttt.weight_decay`; `cli.config_options` makes the options from the fields
and their `help` metadata), the keyword of `EvalConfig.from_flat(...)` and the lm-eval model_args
name. Text, from the command line or model_args, becomes a value in one place (`parse_setting`).
Each field is checked and normalised once, in its dataclass's `__post_init__` (a field with
`choices` against that list, an int against its range, a float as finite: `check_fields`), so a
rejected value fails before anything is written; what depends on the index or the model (shards
that exist, enough entries for the neighbors, a window the model can take) is checked as soon as
they are open, still before (`tttnn.evaluate.check_settings`). `to_dict()` / `from_dict()`
round-trip through JSON losslessly: `RUN/config.json` holds it, and distributed workers receive
it.

Fields use `Optional[...]` rather than `X | None`: `typing.get_type_hints` evaluates them at run
time, on Python 3.9 too.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from tttnn.corpus import DEFAULT_MAX_DOC_BYTES, MAX_DOC_BYTES_LIMIT
from tttnn.embed import DEFAULT_ENCODER
from tttnn.models import DEFAULT_LM

__all__ = [
    "DEMO_SETTINGS",
    "INT_RANGE",
    "K_LADDER",
    "BuildConfig",
    "EvalConfig",
    "PackConfig",
    "RayConfig",
    "RetrievalConfig",
    "RunConfig",
    "SettingError",
    "TTTConfig",
    "TestSetConfig",
    "eval_points",
    "parse_flat",
    "parse_setting",
]

K_LADDER = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
"""Where a document is scored when `eval_at` is not given: these k up to the number of
neighbors, and that number itself."""

INT_RANGE = (-(2**63), 2**63 - 1)
"""The values an int setting may take (a field's `max` may lower the top): the core, numpy and
torch take them as 64-bit integers, and a larger one would fail deep inside a run."""

# The allowed values of the fields with `choices`: the CLI offers them, `check_fields` enforces them.
BASELINES = ("in-context", "dynamic-eval")
SELECTIONS = ("nearest", "sift")
QUERY_SPANS = ("opening", "whole")
AUTOCAST_DTYPES = ("bf16", "fp32")
VECTOR_DTYPES = ("f32", "f16", "i8")
ON_ERROR = ("skip", "fail")

DEMO_SETTINGS: dict[str, Any] = {
    "neighbors": 10,  # fewer neighbors, one window of 512 tokens each: minutes, not hours
    "windows_per_neighbor": 1,
    "max_length": 512,
    "limit_per_domain": 2,
}
"""What `tttnn demo` changes from `EvalConfig`'s defaults, to run in minutes on a laptop CPU."""

C = TypeVar("C", bound="Config")


class Config:
    """What every config dataclass can do: JSON round trip and construction from flat names."""

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        return from_dict(cls, d)

    @classmethod
    def from_flat(cls: type[C], **values: Any) -> C:
        return from_flat(cls, **values)


def opt(default: Any = dataclasses.MISSING, help: str = "", **cli: Any) -> Any:
    """A config field: its default, its help text, and CLI details for
    `tttnn.cli.config_options`: `flags` (default `--field-name`), `choices`, `multiple` (a
    repeatable option instead of a comma-separated list), `exists` (a path that must exist),
    `none` (the word that means None on the command line and in lm-eval model_args; "none" if
    not given), `max` (the largest value of an int field, below `INT_RANGE`'s)."""
    meta = {"help": help, **cli}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=meta)


def none_word(fld: dataclasses.Field[Any]) -> str:
    """The word that means None for an optional field on the command line and in lm-eval
    model_args (`opt(..., none="all")`; "none" if not given)."""
    return str(fld.metadata.get("none", "none"))


def eval_points(eval_at: Optional[tuple[int, ...]], n_neighbors: int) -> tuple[int, ...]:
    """The k at which a document is scored, given `n_neighbors` to train on: `eval_at` (None:
    `K_LADDER` up to `n_neighbors`, and `n_neighbors`), never beyond `n_neighbors`, always 0."""
    if eval_at is None:
        ks = {k for k in K_LADDER if k <= n_neighbors} | {n_neighbors}
    else:
        ks = {k for k in eval_at if k <= n_neighbors}
    return tuple(sorted(ks | {0}))


class SettingError(ValueError):
    """A setting that cannot work with the index or the model it names (shards the index lacks,
    more neighbors than its entries, a window beyond the model's): the command line's usage
    error (exit 2), found before anything is written."""


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def int_limits(fld: dataclasses.Field[Any]) -> tuple[int, int]:
    """The smallest and largest value of an int field (or of each item of a tuple of ints)."""
    return INT_RANGE[0], min(INT_RANGE[1], fld.metadata.get("max", INT_RANGE[1]))


def check_fields(cfg: Any) -> None:
    """Every field of `cfg` that has `choices` holds one of them, every int is within the
    field's `int_limits`, and every float is a finite number (each item, for a tuple): an
    infinite or NaN setting would fail every document of a run, or none visibly."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        choices = f.metadata.get("choices")
        lo, hi = int_limits(f)
        for v in value if isinstance(value, tuple) else (value,):
            if choices:
                _check(v in choices, f"{f.name} must be one of {', '.join(choices)}, got {v!r}")
            if isinstance(v, int) and not isinstance(v, bool):
                _check(lo <= v <= hi, f"{f.name} must be {_range_words(lo, hi, v)}, got {v}")
            elif isinstance(v, float):
                _check(math.isfinite(v), f"{f.name} must be a finite number, got {v}")


def _range_words(lo: int, hi: int, v: int) -> str:
    return f"at most {hi}" if v > hi else f"at least {lo}"


def _positive(name: str, value: Optional[float], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    _check(
        value is not None and math.isfinite(value) and value > 0,
        f"{name} must be a positive number, got {value}",
    )


@dataclass
class TTTConfig(Config):
    """The test-time training loop. The paper's optimizer (AdamW, one step per window, batch 1);
    the learning rate tuned on validation for SmolLM2-135M (results/smollm2-135m-recipe)."""

    lr: float = opt(
        5e-5, "AdamW learning rate (tuned on validation for a 135M model with every window of "
        "each neighbor; the paper: 2e-5 for GPT-2, 5e-6 for 1B+ models).",
    )  # fmt: skip
    eps: float = opt(1e-8, "AdamW epsilon.")
    weight_decay: float = opt(0.01, "AdamW decoupled weight decay.")
    betas: tuple[float, float] = opt((0.9, 0.999), "AdamW betas, e.g. 0.9,0.999.")
    grad_clip: Optional[float] = opt(1.0, "Max global gradient norm ('none': no clipping).")
    max_length: int = opt(1024, "Scoring window (lm-eval rolling windows) and training window.")
    eval_at: Optional[tuple[int, ...]] = opt(
        None, "Score after the first k neighbors, e.g. 0,1,5,20 (default: 0,1,2,5,10,20,50,… to k)."
    )
    autocast_dtype: str = opt(
        "bf16", "Mixed-precision autocast dtype; weights stay fp32.", flags=("--autocast",),
        choices=AUTOCAST_DTYPES,
    )  # fmt: skip
    lora_r: Optional[int] = opt(None, "LoRA rank instead of full fine-tuning.", flags=("--lora",))
    lora_alpha: int = opt(32, "LoRA alpha (scale alpha / r).")
    lora_dropout: float = opt(0.0, "LoRA dropout.")
    lora_target_modules: Optional[tuple[str, ...]] = opt(
        None, "LoRA target modules, e.g. q_proj,v_proj (default: peft's for the model)."
    )
    score_batch_size: int = opt(4, "Scoring windows per forward pass.")
    seed: int = opt(0, "Torch RNG seed for each document (dropout), so documents are independent.")

    def __post_init__(self) -> None:
        check_fields(self)
        _positive("lr", self.lr)
        _positive("eps", self.eps)
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        _positive("grad_clip", self.grad_clip, allow_none=True)
        _check(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}")
        if self.eval_at is not None:
            self.eval_at = tuple(sorted({int(k) for k in self.eval_at}))
            _check(
                bool(self.eval_at) and self.eval_at[0] >= 0,
                f"eval_at must be non-negative neighbor counts, got {self.eval_at}",
            )
        _check(self.lora_r is None or self.lora_r >= 1, f"lora_r must be >= 1, got {self.lora_r}")
        _check(
            0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}"
        )
        if self.lora_target_modules is not None:
            self.lora_target_modules = tuple(self.lora_target_modules)
        _check(self.score_batch_size >= 1, "score_batch_size must be >= 1")


@dataclass
class RetrievalConfig(Config):
    """Which neighbors a test document gets."""

    neighbors: int = opt(20, "Neighbors retrieved and trained on per document (k).",
                         flags=("-k", "--neighbors"))  # fmt: skip
    exact: bool = opt(False, "Exact kNN instead of HNSW.")
    ef: Optional[int] = opt(None, "HNSW beam width (default: the index's).")
    guard: bool = opt(True, "Leakage guard: drop neighbors that copy the query text.")
    guard_threshold: float = opt(0.9, "Leakage guard: similarity at which a neighbor is a copy.")
    shards: Optional[tuple[int, ...]] = opt(
        None, "Search only these shards of the index, e.g. 0,1,2 (the paper's index-size study)."
    )
    query_span: str = opt(
        "opening", "What of each query text is searched: its opening (what the encoder reads, "
        "the paper's), or the whole text (every piece the encoder reads whole searched, the "
        "hits merged rank by rank: `tttnn.index.merge_results`).", choices=QUERY_SPANS,
    )  # fmt: skip
    select: str = opt(
        "nearest", "Which candidates to train on, in what order: nearest first (the paper), or "
        "sift (relevant and not redundant, Hübotter et al. 2025; may pick a neighbor again).",
        choices=SELECTIONS,
    )  # fmt: skip
    candidates: int = opt(200, "SIFT: pick among this many nearest neighbors (K).")
    sift_lambda: float = opt(
        0.01, "SIFT: noise variance λ (small: shun redundancy; large: repeat the nearest)."
    )
    sift_alpha: Optional[float] = opt(
        None, "SIFT adaptive stop: drop pick t where its posterior std > 1/(alpha·t)."
    )

    def __post_init__(self) -> None:
        check_fields(self)
        _check(self.neighbors >= 0, f"neighbors must be >= 0, got {self.neighbors}")
        if self.shards is not None:
            self.shards = tuple(sorted({int(s) for s in self.shards}))
            _check(
                bool(self.shards) and self.shards[0] >= 0,
                f"shards must be non-negative shard numbers, got {self.shards}",
            )
        _check(self.ef is None or self.ef >= 1, f"ef must be >= 1, got {self.ef}")
        _check(
            0 < self.guard_threshold <= 1,
            f"guard_threshold must be in (0, 1], got {self.guard_threshold}",
        )
        _check(self.candidates >= 1, f"candidates must be >= 1, got {self.candidates}")
        _positive("sift_lambda", self.sift_lambda)
        _positive("sift_alpha", self.sift_alpha, allow_none=True)
        _check(
            self.select != "sift" or self.candidates >= self.neighbors,
            f"SIFT picks {self.neighbors} neighbors among the {self.candidates} nearest: "
            "raise --candidates to at least --neighbors",
        )
        _check(
            self.select != "sift" or self.query_span == "opening",
            "SIFT selects against one query vector: --query-span whole has one per piece; use "
            "--select nearest with it",
        )


@dataclass
class PackConfig(Config):
    """How the neighbors' token ids become training windows (`tttnn.pack_windows`)."""

    windows_per_neighbor: Optional[int] = opt(
        None, "Train on at most this many windows of each neighbor ('all', the default and "
        "the paper's: every window; 1 costs about a quarter of the steps).", none="all",
    )  # fmt: skip
    pack_short: bool = opt(False, "Pack short neighbors into shared windows (EOS-separated).")
    retokenize: bool = opt(
        False, "Tokenize the neighbors' text with the model's tokenizer instead of using the "
        "token ids stored in the index (for a model whose vocabulary differs from the index's).",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)
        _check(
            self.windows_per_neighbor is None or self.windows_per_neighbor >= 1,
            f"windows_per_neighbor must be >= 1, got {self.windows_per_neighbor}",
        )


@dataclass
class TestSetConfig(Config):
    """The test documents, in file order."""

    __test__ = False  # not a pytest class

    data: tuple[str, ...] = opt(
        help="Test corpus (jsonl, jsonl.zst, parquet, txt folder); repeatable.",
        multiple=True,
        exists=True,
    )
    limit_per_domain: Optional[int] = opt(None, "At most this many documents per domain.")
    limit: Optional[int] = opt(None, "At most this many documents.")
    domains: tuple[str, ...] = opt((), "Only these domains (repeatable).", flags=("--domain",),
                                   multiple=True)  # fmt: skip
    split_text: bool = opt(False, "Query = first half of the text; score the rest (no overlap).")

    def __post_init__(self) -> None:
        self.data = tuple(str(p) for p in self.data)
        self.domains = tuple(self.domains)
        check_fields(self)
        _check(bool(self.data), "no test data given")
        for name in ("limit_per_domain", "limit"):
            v = getattr(self, name)
            _check(v is None or v >= 1, f"{name} must be >= 1, got {v}")


@dataclass
class RunConfig(Config):
    """Where and how a run executes. None of it changes results: a run may resume elsewhere."""

    out: str = opt(help="Run directory (config.json, results.jsonl).")
    device: Optional[str] = opt(None, "cpu, cuda, cuda:1 ... (default: CUDA when present).")
    progress: bool = opt(True, "Progress bars.")

    def __post_init__(self) -> None:
        self.out = str(self.out)


@dataclass
class RayConfig(Config):
    """Where the work runs beyond this process (`tttnn.distributed`, the extra `tttnn[ray]`).
    None of it changes results: the index and the rows are those of the single-process path."""

    ray: bool = opt(False, "Run on Ray: a local cluster, or the one at --address.")
    address: Optional[str] = opt(
        None, "Ray cluster to join ('auto', or HOST:PORT of the head; its token as Ray reads it)."
    )
    workers: Optional[int] = opt(
        None, "Ray workers: encoders (build), TTT models (eval), shard actors (search); "
        "default: one per GPU, else per CPU.",
    )  # fmt: skip
    shard_actors: Optional[int] = opt(
        None, "Ray actors serving the index's shards to the workers of `tttnn eval --ray` "
        "(default: as many as --workers, at most one per shard).",
    )  # fmt: skip
    cpus_per_worker: float = opt(1.0, "Logical CPUs each Ray worker reserves (torch threads).")
    gpus_per_worker: float = opt(0.0, "GPUs each Ray worker reserves (1: one model per GPU).")

    def __post_init__(self) -> None:
        check_fields(self)
        _check(
            self.workers is None or self.workers >= 1, f"workers must be >= 1, got {self.workers}"
        )
        _check(
            self.shard_actors is None or self.shard_actors >= 1,
            f"shard_actors must be >= 1, got {self.shard_actors}",
        )
        _check(self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        _check(
            self.gpus_per_worker >= 0, f"gpus_per_worker must be >= 0, got {self.gpus_per_worker}"
        )
        if not self.ray:
            _check(
                self.address is None and self.workers is None and self.shard_actors is None,
                "--address, --workers and --shard-actors need --ray",
            )


@dataclass
class EvalConfig(Config):
    """One evaluation run (`tttnn eval`)."""

    index: str = field(metadata={"help": "Index directory.", "exists": True})
    test: TestSetConfig
    run: RunConfig
    model: str = opt(DEFAULT_LM, "Causal LM: HF id, local folder or .gguf, or 'smollm2-135m'.")
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    baselines: tuple[str, ...] = opt(
        (), "Also score each document another way (the paper's baselines): in-context = the "
        "neighbors in the context, no training; dynamic-eval = k steps on the query half, then "
        "score the rest (needs --split-text).", flags=("--baseline",), choices=BASELINES,
        multiple=True,
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.index = str(self.index)
        _check(bool(self.index.strip()), "index must name the index directory, got an empty path")
        self.baselines = tuple(self.baselines)
        check_fields(self)
        _check(
            "dynamic-eval" not in self.baselines or self.test.split_text,
            "--baseline dynamic-eval needs --split-text: dynamic evaluation trains on the query "
            "half of each document and scores the rest",
        )
        k = self.retrieval.neighbors
        beyond = [e for e in self.ttt.eval_at or () if e > k]
        _check(
            not beyond,
            f"eval_at {', '.join(map(str, beyond))} beyond the {k} neighbors retrieved: "
            "raise --neighbors or drop those points",
        )

    @property
    def ks(self) -> tuple[int, ...]:
        """The k at which every document is scored."""
        return eval_points(self.ttt.eval_at, self.retrieval.neighbors)

    def results_settings(self) -> dict[str, Any]:
        """The settings that decide each document's row, compared when a run resumes: all but
        `run`, `ray` and the choice of documents among `data` (`limit`, `limit_per_domain`,
        `domains`), so a run can be extended to more documents, or resumed on another cluster."""
        d = self.to_dict()
        del d["run"], d["ray"]
        for key in ("limit", "limit_per_domain", "domains"):
            del d["test"][key]
        return d


@dataclass
class BuildConfig(Config):
    """One index build (`tttnn index build`)."""

    encoder: str = opt(DEFAULT_ENCODER, "Sentence encoder: HF id or local path.")
    tokenizer: Optional[str] = opt(
        DEFAULT_LM, "LM tokenizer whose token ids are stored ('none': store no tokens)."
    )
    vector_dtype: str = opt("f16", "Storage of the vectors.", choices=VECTOR_DTYPES)
    shard_size: int = opt(10_000, "Entries per shard (the unit of --resume).")
    hnsw: bool = opt(True, "Build HNSW graphs.")
    chunk_tokens: Optional[int] = opt(None, "Index chunks of N LM tokens instead of documents.")
    on_error: str = opt("skip", "Bad corpus inputs: count and skip, or fail.",
                        choices=ON_ERROR)  # fmt: skip
    max_doc_bytes: int = opt(DEFAULT_MAX_DOC_BYTES, "Larger documents are bad inputs.",
                             max=MAX_DOC_BYTES_LIMIT)  # fmt: skip
    batch_size: int = opt(32, "Encoder batch size.")
    limit: Optional[int] = opt(None, "Index at most N documents.")
    unit_documents: int = opt(
        8192, "With --ray: documents per work unit (the unit of re-runs and --resume); keep it a "
        "multiple of 64 so encoder batches are those of one process.",
    )  # fmt: skip
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.tokenizer is not None and self.tokenizer.lower() == "none":
            self.tokenizer = None
        check_fields(self)
        _check(self.shard_size >= 1, f"shard_size must be >= 1, not {self.shard_size}")
        _check(
            self.chunk_tokens is None or self.chunk_tokens >= 1,
            f"chunk_tokens must be >= 1, not {self.chunk_tokens}",
        )
        _check(self.max_doc_bytes >= 1, f"max_doc_bytes must be >= 1, not {self.max_doc_bytes}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, not {self.batch_size}")
        _check(self.limit is None or self.limit >= 0, f"limit must be >= 0, not {self.limit}")
        _check(self.unit_documents >= 1, f"unit_documents must be >= 1, not {self.unit_documents}")


# --- the tree as data ------------------------------------------------------------------------


def is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaf_fields(cls: type) -> dict[str, tuple[tuple[str, ...], dataclasses.Field[Any], Any]]:
    """Every leaf field of the tree under `cls`: flat name -> (path, field, type)."""
    out: dict[str, tuple[tuple[str, ...], dataclasses.Field[Any], Any]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_config(tp):
            for name, (path, leaf, ltp) in leaf_fields(tp).items():
                if name in out:
                    raise TypeError(f"config field name {name!r} is not unique under {cls}")
                out[name] = ((f.name, *path), leaf, ltp)
        elif f.name in out:
            raise TypeError(f"config field name {f.name!r} is not unique under {cls}")
        else:
            out[f.name] = ((f.name,), f, tp)
    return out


def from_flat(cls: type[C], **values: Any) -> C:
    """Build the tree under `cls` from flat leaf names (`lr=1e-4, neighbors=50, out=...`);
    leaves not given keep their defaults."""
    leaves = leaf_fields(cls)
    unknown = sorted(set(values) - set(leaves))
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)}")
    nested: dict[str, Any] = {}
    for name, value in values.items():
        path = leaves[name][0]
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return _build(cls, nested)


def _build(cls: type[C], values: dict[str, Any]) -> C:
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in values:
            v = values[f.name]
            kw[f.name] = _build(hints[f.name], v) if is_config(hints[f.name]) else v
        elif is_config(hints[f.name]) and f.default is dataclasses.MISSING:
            kw[f.name] = _build(hints[f.name], {})  # nested, with required leaves -> TypeError
    return cls(**kw)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The tree as JSON-ready dicts (tuples become lists)."""

    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {
        f.name: to_dict(v) if dataclasses.is_dataclass(v) else plain(v)
        for f in dataclasses.fields(cfg)
        for v in [getattr(cfg, f.name)]
    }


def from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """The inverse of `to_dict`: unknown keys are an error, missing keys take their defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting {', '.join(unknown)}")
    kw: dict[str, Any] = {}
    for name, v in d.items():
        tp = hints[name]
        kw[name] = from_dict(tp, v) if is_config(tp) else _from_json(tp, v)
    return cls(**kw)


def _from_json(tp: Any, v: Any) -> Any:
    """Lists back to tuples where the field is a tuple (also inside Optional)."""
    if v is None:
        return None
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin is typing.Union and len(args) == 1:
        return _from_json(args[0], v)
    if origin is tuple and isinstance(v, list):
        return tuple(v)
    return v


# --- settings as text ------------------------------------------------------------------------

_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("0", "false", "f", "no", "n", "off")


def parse_setting(
    value: Any, tp: Any, none: str = "none", limits: tuple[int, int] = INT_RANGE
) -> Any:
    """The value of a field of type `tp` from its text, for the command line and lm-eval
    model_args alike: numbers as Python reads them (`20`, `1e-4`), booleans as click does (true,
    false, yes, no, on, off, 1, 0), the word `none` (the field's `none_word`, `all` for
    windows_per_neighbor) for None where the field is optional, a tuple's items separated by `,`
    or `:` (`0.9,0.999` on the command line; `0.9:0.999` in model_args, where `,` separates the
    settings). A value that already has the type is kept (lm-eval has made `20` an int, `1e-4` a
    float, `true` a bool); a tuple takes a list, or one item. An int outside `limits` (the
    field's `int_limits`) and a float that is not finite (`inf`, `nan`) are refused here, before
    they reach a run, as `check_fields` refuses them. ValueError `expected ...`, `too large:
    ...` or `not a finite number` otherwise."""
    kind = _setting_kind(tp, none)
    if typing.get_origin(tp) is typing.Union:
        if value is None or (isinstance(value, str) and value.strip().lower() == none):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    try:
        if typing.get_origin(tp) is tuple:
            item = typing.get_args(tp)[0]
            if isinstance(value, str):
                parts: Any = [p.strip() for p in re.split("[,:]", value) if p.strip()]
            else:
                parts = value if isinstance(value, (list, tuple)) else [value]
            values = tuple(_scalar(p, item) for p in parts)
        else:
            values = (_scalar(value, tp),)
    except ValueError:
        raise ValueError(f"expected {kind}") from None
    lo, hi = limits
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and not lo <= v <= hi:
            raise ValueError(f"too {'large' if v > hi else 'small'}: {_range_words(lo, hi, v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("not a finite number")
    return values if typing.get_origin(tp) is tuple else values[0]


def _scalar(value: Any, tp: Any) -> Any:
    if isinstance(value, str):
        if tp is bool:
            word = value.strip().lower()
            if word not in _TRUE + _FALSE:
                raise ValueError(value)
            return word in _TRUE
        return tp(value)  # int("1e-4") and float("x") raise ValueError; str keeps the text
    if value is None:
        ok = False
    elif isinstance(value, bool):
        ok = tp in (bool, str)
    elif isinstance(value, int):
        ok = tp in (int, float, str)
    else:
        ok = tp is str or isinstance(value, tp)
    if not ok:
        raise ValueError(value)
    return tp(value)


def _setting_kind(tp: Any, none: str = "none") -> str:
    """What the text of a field of type `tp` must be, in words: `int`, `float or 'none'`,
    `int values separated by , or :`."""
    words = {int: "int", float: "float", bool: "true or false", str: "text"}
    if typing.get_origin(tp) is typing.Union:
        inner = next(a for a in typing.get_args(tp) if a is not type(None))
        return f"{_setting_kind(inner)} or {none!r}"
    if typing.get_origin(tp) is tuple:
        return f"{words[typing.get_args(tp)[0]]} values separated by , or :"
    return words[tp]


def parse_flat(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings of the tree under `cls` (`from_flat`'s names) from their text
    (`parse_setting`); a ValueError names the setting: `neighbors='many', expected int`."""
    leaves = leaf_fields(cls)
    unknown = sorted(set(values) - set(leaves))
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)}")
    out = {}
    for name, value in values.items():
        _, fld, tp = leaves[name]
        try:
            out[name] = parse_setting(value, tp, none_word(fld), int_limits(fld))
        except ValueError as e:
            raise ValueError(f"{name}={value!r}, {e}") from None
    return out
