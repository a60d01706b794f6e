"""Model resolution and loading: the built-in SmolLM2, local paths, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tttnn.models import (
    DEFAULT_LM,
    ModelLoadError,
    cache_dir,
    load_causal_lm,
    load_tokenizer,
    prefix_token_id,
    resolve_model,
)


def save_tiny(folder: Path) -> None:
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TTTNN_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TTTNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "tttnn"


def test_resolve_passes_paths_and_hub_ids_through(tmp_path):
    folder = tmp_path / "m"
    save_tiny(folder)
    assert resolve_model(folder) == str(folder.resolve())
    assert resolve_model("someorg/some-model") == "someorg/some-model"


def test_bad_paths_give_clear_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # offline, as CI runs (otherwise the hub lookup below retries the network for a minute)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(tmp_path / "nope" / "model")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model(tmp_path)
    with pytest.raises(ModelLoadError, match="empty model name"):
        resolve_model("  ")
    with pytest.raises(ModelLoadError, match=r"no-such-org/no-such-model.*hub id"):
        load_causal_lm("no-such-org/no-such-model", device="cpu")


def test_folder_without_tokenizer_names_the_tokenizer(tmp_path):
    folder = tmp_path / "m"
    save_tiny(folder)
    # a folder without a tokenizer: the error says which tokenizer it could not load
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_causal_lm(folder, device="cpu")


@pytest.mark.slow
def test_default_model_loads_offline_with_lm_eval_prefix():
    path = Path(resolve_model(DEFAULT_LM))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert not list(path.parent.glob(".tmp-*"))  # no half-written conversion left behind
    model, tok = load_causal_lm(DEFAULT_LM, device="cpu")
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    # lm-eval's prefix: BOS when the tokenizer has one. SmolLM2-Instruct: <|im_start|> (id 1)
    assert tok.bos_token == "<|im_start|>" and prefix_token_id(tok) == 1
    assert tok.eos_token == "<|im_end|>"
    assert load_tokenizer(DEFAULT_LM)("def f(x):", add_special_tokens=False)["input_ids"][0] != 1
