"""`benches/device_check.py`: the one-command check for a GPU machine, run here on the CPU with its
smaller settings and random weights (the path an air-gapped GPU machine takes), so that it cannot
rot before a GPU is at hand; and the facts it is built on (the models' shapes, the peaks)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benches" / "device_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dc = _load()


def test_peaks_by_device_name() -> None:
    peak = dc.bf16_peak_tflops
    assert peak("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA H100 NVL") == 835.0
    assert peak("NVIDIA H200") == 989.4
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA L40S") == 362.0 and peak("NVIDIA L4") == 121.0
    assert peak("NVIDIA A10G") is None and peak("Tesla T4") is None  # raw figures only


def test_random_models_have_the_default_models_shapes(lm_tokenizer) -> None:
    """The configs written into the script are those of the real SmolLM2-135M and
    all-MiniLM-L6-v2 (as installed here), in every field that sets a shape or the arithmetic."""
    from transformers import AutoConfig, BertConfig, LlamaConfig

    from tttnn.embed import default_encoder_path
    from tttnn.models import resolve_model

    real_lm = AutoConfig.from_pretrained(resolve_model("smollm2-135m"))
    ours_lm = LlamaConfig(**dc.LM_CONFIG)
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
              "max_position_embeddings", "tie_word_embeddings", "attention_bias", "mlp_bias",
              "bos_token_id", "eos_token_id")  # fmt: skip
    for f in fields:
        assert getattr(ours_lm, f) == getattr(real_lm, f), f
    assert ours_lm.rms_norm_eps == pytest.approx(real_lm.rms_norm_eps, rel=1e-6)
    assert lm_tokenizer.bos_token_id == 1 and lm_tokenizer.eos_token_id == 2
    encoder = default_encoder_path()
    assert encoder is not None
    real_enc = AutoConfig.from_pretrained(encoder)
    ours_enc = BertConfig(**dc.ENCODER_CONFIG)
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "hidden_act", "max_position_embeddings", "type_vocab_size",
              "layer_norm_eps", "pad_token_id"):  # fmt: skip
        assert getattr(ours_enc, f) == getattr(real_enc, f), f
    sbert = json.loads((encoder / "sentence_bert_config.json").read_text())
    assert sbert["max_seq_length"] == dc.ENCODER_MAX_SEQ_LENGTH


@pytest.mark.slow
def test_device_check_runs_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--weights", "random", "--out",
         str(tmp_path)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    import tttnn

    assert report["tttnn"]["file"] == str(Path(tttnn.__file__).parent)
    assert report["device"] == {"type": "cpu", "name": report["device"]["name"],
                                "bf16_peak_tflops": None}  # fmt: skip
    assert report["size"] == "small" and report["weights"] == "random (seed 0)"
    assert report["index"]["documents"] == 100  # 25 of each of the sample's 4 domains

    # the demo's table: one test document of each domain, scored at k = 0 and 1
    table = report["demo"]["table"]
    for domain in ("code_python", "docs_kernel", "legal_licenses", "man_pages"):
        assert f"| {domain} | 1 |" in table, table
    assert "failed" not in table

    a = report["agreement"]
    assert a["device"] == "cpu" and a["k"] == 5 and len(a["documents"]) == 2
    for d in a["documents"]:
        assert len(d["neighbors"]) == 5
        cpu = d["cpu"]
        assert 0 < cpu["k5_bf16"] < cpu["k0_bf16"]  # five steps on its neighbors lower it
        assert d["rel_k0_fp32"] == 0.0 and d["rel_k5_bf16"] == 0.0  # the CPU against itself
    assert a["encoder"]["documents"] == 64 and a["encoder"]["min_cosine"] == pytest.approx(1.0)
    assert a["pass"] is True

    s = report["ttt_speed"]
    assert s["max_length"] == 1024 and s["steps"] == 1 and s["steps_per_s"] > 0
    assert s["tokens_per_s"] == pytest.approx(s["steps_per_s"] * 1024)
    assert s["share_of_bf16_peak"] is None  # no peak for a CPU: the raw figures only
    assert s["parameters"] > 40e6  # 4 of the 30 layers, the 49152 x 576 embedding tied to the head
    enc = report["encoder_speed"]
    assert len(enc) == 1 and enc[0]["documents"] == 100 and enc[0]["docs_per_s"] > 0

    md = (tmp_path / "device_check.md").read_text()
    assert "| TTT steps/s at 1024 tokens, bf16 |" in md and table.splitlines()[0] in md
