"""Check tttnn on one device in one command: the demo's job, agreement with the CPU, speed.

    python benches/device_check.py --device cuda --out DIR [--wheels WHEELS]
    python benches/device_check.py --device cpu --out DIR        # smaller settings; CI runs this

What it runs, each figure written to DIR/device_check.json and DIR/device_check.md:
- the demo's job on the packaged sample (`tttnn index build` with the check's encoder, then
  `tttnn demo`, one test document per domain) on the device, with the demo's table;
- agreement with the CPU on the same documents and the same neighbors: bits per byte at k = 0 in
  fp32 (within 1e-4 relative) and at k = 5 in bf16 autocast (within 1%), and the encoder's fp32
  vectors (cosine at least 0.9999);
- test-time training speed at 1024 tokens (steps/s, tokens/s, bf16 autocast as the trainer runs
  it) and that as a share of the device's dense bf16 peak (`BF16_PEAK_TFLOPS`; an unknown device
  gets the raw figure only);
- encoder throughput for index building (documents/s over the sample's training documents).
The exit code is 1 when an agreement check fails.

Air-gapped machines. Only PyTorch, transformers, peft and numpy need to be there: with
`--wheels WHEELS`, tttnn and what else is missing are installed from that folder of wheels
(`make device-wheels` fills it: the tttnn wheel and `pip download` of the few pure or small
dependencies, see docs/install.md). Where the real weights are absent (`--weights auto`), the
models are built from the configs below (SmolLM2-135M's and all-MiniLM-L6-v2's shapes) with
seeded random weights, and their tokenizers are trained on the sample corpus: speed does not
depend on trained weights, and the CPU and the device score the same seeded model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# SmolLM2-135M(-Instruct): LlamaForCausalLM, 134.5M parameters, embeddings tied to the head.
LM_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
LM_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1 (BOS), 2 (EOS)

# all-MiniLM-L6-v2: BertModel, 22.7M parameters, 384-d mean-pooled vectors of 256 tokens at most.
ENCODER_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "vocab_size": 30522,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "initializer_range": 0.02,
    "pad_token_id": 0,
}
ENCODER_MAX_SEQ_LENGTH = 256
ENCODER_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched
# in order against the lower-cased `torch.cuda.get_device_name()`: the first pattern found wins.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("b200", 2250.0),
    ("h200 nvl", 835.0),
    ("h200", 989.4),  # SXM, and GH200
    ("h100 nvl", 835.0),
    ("h100 pcie", 756.0),
    ("h100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("h800", 989.4),
    ("a100", 312.0),
    ("l40s", 362.0),
    ("l40", 181.0),
    ("l4", 121.0),
    ("rtx 4090", 165.2),
    ("a6000", 154.8),
)

# Where CPU and device must agree (relative difference of bits per byte; cosine of fp32 vectors).
K0_FP32_RTOL = 1e-4
K5_BF16_RTOL = 1e-2
VECTOR_MIN_COSINE = 0.9999

# What the check imports beyond the standard library: (module, distribution). The first four
# must be on the machine; the others may come from --wheels.
PRESENT = (("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"),
           ("numpy", "numpy"))  # fmt: skip
FROM_WHEELS = (("tqdm", "tqdm"), ("zstandard", "zstandard"), ("click", "click"),
               ("matplotlib", "matplotlib"))  # fmt: skip

# Settings by size: "full" on an accelerator, "small" on a CPU (CI). A step of SmolLM2-135M
# takes seconds on a CPU whatever the window (fused AdamW alone walks 135M parameters four times),
# so "small" takes few steps and, with random weights, 4 of the 30 layers.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "docs_per_domain_index": None,  # the whole sample (150 per domain)
        "random_lm_layers": None,  # SmolLM2-135M's 30
        "demo": [],  # the demo's own settings: k = 10, windows of 512
        "agree_docs": None,  # one per domain
        "agree_k": 5,
        "agree_max_length": 1024,
        "speed_max_length": 1024,
        "speed_warmup": 5,
        "speed_steps": 30,
    },
    "small": {
        "docs_per_domain_index": 25,
        "random_lm_layers": 4,
        "demo": ["--neighbors", "1", "--max-length", "128"],
        "agree_docs": 2,
        "agree_k": 5,
        "agree_max_length": 128,
        "speed_max_length": 1024,
        "speed_warmup": 1,
        "speed_steps": 1,
    },
}


# --- the environment -----------------------------------------------------------------------------


def _missing(pairs: tuple[tuple[str, str], ...]) -> list[str]:
    return [dist for mod, dist in pairs if importlib.util.find_spec(mod) is None]


def _pip_install(wheels: Path, args: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
           "--disable-pip-version-check", "-q", *args]  # fmt: skip
    print("installing:", " ".join(args), f"(from {wheels})", flush=True)
    subprocess.run(cmd, check=True)


def ensure_packages(wheels: Path | None) -> None:
    """With `wheels`, install tttnn from there (over any other install in this environment), and
    the small dependencies that are missing; without, check that everything is here. The large
    dependencies no folder of wheels carries must be installed already."""
    absent = _missing(PRESENT)
    if absent:
        sys.exit(f"device check: {', '.join(absent)} not installed (not shipped with --wheels)")
    others = _missing(FROM_WHEELS)
    if wheels is None:
        what = ["tttnn"] * (importlib.util.find_spec("tttnn") is None) + others
        if what:
            sys.exit(f"device check: {', '.join(what)} not installed; pass --wheels DIR (a "
                     "folder filled by `make device-wheels`)")  # fmt: skip
        return
    # its other dependencies are the list's, or not needed here (the default models' packages)
    _pip_install(wheels, ["--no-deps", "--force-reinstall", "tttnn"])
    if others:
        _pip_install(wheels, others)
    importlib.invalidate_caches()


# --- models: the real ones, or their shapes with seeded random weights -----------------------------


def _sample() -> tuple[Path, Path]:
    from tttnn.demo import sample_corpus

    return sample_corpus()


def read_jsonl_zst(path: Path) -> list[dict[str, Any]]:
    import zstandard

    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f).read()
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def _domain(row: dict[str, Any]) -> str:
    return str(row.get("meta", {}).get("pile_set_name", "unknown"))


def real_models() -> tuple[str, str] | None:
    """(LM, encoder) when both default models are here without a network: the encoder's package
    and the converted SmolLM2 folder in tttnn's cache."""
    from tttnn.embed import default_encoder_path
    from tttnn.models import MODEL_RECORD, cache_dir

    lm = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    enc = default_encoder_path()
    if enc is None or not (lm / MODEL_RECORD).is_file():
        return None
    return "smollm2-135m", "all-MiniLM-L6-v2"


def build_random_lm(folder: Path, texts: list[str], seed: int, layers: int | None = None) -> None:
    """SmolLM2-135M's shape (with `layers` layers if given) with seeded random weights, and a
    byte-level BPE trained on `texts` (its ids stay below the model's vocabulary, BOS and EOS
    where SmolLM2 has them)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LM_CONFIG["vocab_size"], special_tokens=list(LM_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=LM_SPECIAL_TOKENS[0], bos_token=LM_SPECIAL_TOKENS[1],
        eos_token=LM_SPECIAL_TOKENS[2], pad_token=LM_SPECIAL_TOKENS[2],
    )  # fmt: skip
    torch.manual_seed(seed)
    config = {**LM_CONFIG, "num_hidden_layers": layers or LM_CONFIG["num_hidden_layers"]}
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)


def build_random_encoder(folder: Path, texts: list[str], seed: int) -> None:
    """all-MiniLM-L6-v2's shape with seeded random weights and a WordPiece vocabulary trained
    on `texts` ([PAD] = 0 as in the real one)."""
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    pad, unk, cls, sep, mask = ENCODER_SPECIAL_TOKENS
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=ENCODER_CONFIG["vocab_size"], special_tokens=list(ENCODER_SPECIAL_TOKENS),
        show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )  # fmt: skip
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, pad_token=pad, cls_token=cls, sep_token=sep,
        mask_token=mask, model_max_length=ENCODER_CONFIG["max_position_embeddings"],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**ENCODER_CONFIG))  # with its pooler, as AutoModel loads it
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": ENCODER_MAX_SEQ_LENGTH, "do_lower_case": False}) + "\n"
    )


# --- the device -----------------------------------------------------------------------------------


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    with contextlib.suppress(OSError):
        for line in (
            Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        ):
            if line.startswith("model name"):
                return f"{line.partition(':')[2].strip()}, {os.cpu_count()} logical CPUs"
    return platform.processor() or platform.machine()


def bf16_peak_tflops(name: str) -> float | None:
    low = name.lower()
    return next((peak for pattern, peak in BF16_PEAK_TFLOPS if pattern in low), None)


def subprocess_env(device: Any) -> dict[str, str]:
    """The environment of a `tttnn` command that must run on `device`: the CLI takes CUDA when
    present, so a CPU run hides the GPUs and `cuda:N` shows only GPU N."""
    env = dict(os.environ)
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device.type == "cuda" and device.index is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device.index)
    return env


def tttnn_cmd(args: list[str], env: dict[str, str], log: Path) -> str:
    """Run `python -m tttnn ARGS`, keep its output in `log`, return its stdout."""
    proc = subprocess.run([sys.executable, "-m", "tttnn", *args], env=env, capture_output=True,
                          text=True)  # fmt: skip
    log.write_text(f"$ tttnn {' '.join(args)}\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"`tttnn {' '.join(args)}` failed ({proc.returncode}); see {log}:\n"
                           f"{proc.stderr[-3000:]}")  # fmt: skip
    return proc.stdout


# --- the checks -----------------------------------------------------------------------------------


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def agreement(
    index_dir: Path, lm: str, encoder: str, device: Any, docs: list[dict[str, Any]], k: int,
    max_length: int,
) -> dict[str, Any]:  # fmt: skip
    """Bits per byte of `docs` on the CPU and on `device` with the same neighbors: k = 0 in fp32,
    k = `k` in bf16 after test-time training on the first window of each of the k nearest."""
    import numpy as np
    import torch

    import tttnn
    from tttnn.models import load_causal_lm

    cpu = torch.device("cpu")
    index = tttnn.Index.open(
        index_dir, encoder=tttnn.Encoder(encoder, device="cpu", progress=False)
    )
    found = []
    for d in docs:
        hit = index.search(d["text"], k=k, guard=True)[0]
        windows, lengths, doc_index = index.store.pack_windows(
            hit.ids, max_length, max_windows_per_doc=1
        )
        found.append((hit, np.asarray(windows), np.asarray(lengths), np.asarray(doc_index)))
    scores: dict[str, list[dict[str, float]]] = {}
    for dev in dict.fromkeys((cpu, device)):  # the CPU once when it is the device checked
        model, tok = load_causal_lm(lm, device=dev)
        trainer = tttnn.TestTimeTrainer(
            model,
            tok,
            tttnn.TTTConfig(max_length=max_length, eval_at=(0, k), autocast_dtype="bf16"),
        )
        rows = []
        for d, (_, windows, lengths, doc_index) in zip(docs, found):
            fp32 = tttnn.bits_per_byte(model, tok, d["text"], max_length, autocast_dtype="fp32")
            out = trainer.run(d["text"], windows, lengths, doc_index)
            rows.append({"k0_fp32": fp32.bpb, "k0_bf16": out.bpb[0], f"k{k}_bf16": out.bpb[k]})
        scores[str(dev)] = rows
        del trainer, model
    dev_rows, cpu_rows = scores[str(device)], scores[str(cpu)]
    per_doc = []
    for d, (hit, *_), c, g in zip(docs, found, cpu_rows, dev_rows):
        per_doc.append({
            "domain": _domain(d), "bytes": len(d["text"].encode("utf-8")),
            "neighbors": hit.ids, "cpu": c, str(device): g,
            "rel_k0_fp32": rel(g["k0_fp32"], c["k0_fp32"]),
            f"rel_k{k}_bf16": rel(g[f"k{k}_bf16"], c[f"k{k}_bf16"]),
        })  # fmt: skip
    worst0 = max(r["rel_k0_fp32"] for r in per_doc)
    worstk = max(r[f"rel_k{k}_bf16"] for r in per_doc)
    return {
        "reference": "cpu", "device": str(device), "k": k, "max_length": max_length,
        "windows_per_neighbor": 1, "documents": per_doc,
        "max_rel_k0_fp32": worst0, f"max_rel_k{k}_bf16": worstk,
        "rtol_k0_fp32": K0_FP32_RTOL, f"rtol_k{k}_bf16": K5_BF16_RTOL,
        "pass": worst0 <= K0_FP32_RTOL and worstk <= K5_BF16_RTOL,
    }  # fmt: skip


def encoder_agreement(encoder: str, device: Any, texts: list[str]) -> dict[str, Any]:
    """The encoder's fp32 vectors of `texts` on the CPU and on `device` (batches of 32, as an
    index build embeds): the smallest cosine between the two vectors of a text."""
    import numpy as np

    import tttnn

    vecs = {}
    for dev in dict.fromkeys(("cpu", str(device))):
        enc = tttnn.Encoder(encoder, device=dev, precision="fp32", progress=False)
        vecs[dev] = enc.encode(texts)
        del enc
    cos = np.sum(vecs["cpu"] * vecs[str(device)], axis=1)  # rows are unit-norm
    worst = float(cos.min())
    return {"documents": len(texts), "precision": "fp32", "min_cosine": worst,
            "limit": VECTOR_MIN_COSINE, "pass": worst >= VECTOR_MIN_COSINE}  # fmt: skip


def ttt_speed(lm: str, device: Any, texts: list[str], max_length: int, warmup: int,
              steps: int) -> dict[str, Any]:  # fmt: skip
    """Training steps per second on full windows of `max_length` tokens of `texts`, one step
    per window as the trainer takes them (bf16 autocast, fused AdamW, gradient clipping)."""
    import numpy as np

    import tttnn
    from tttnn.models import load_causal_lm

    model, tok = load_causal_lm(lm, device=device)
    n = warmup + steps
    ids = tok("\n\n".join(texts)[: 16 * n * max_length], add_special_tokens=False)["input_ids"]
    if len(ids) < n * max_length:
        ids = ids * (n * max_length // max(len(ids), 1) + 1)
    windows = np.asarray(ids[: n * max_length], dtype=np.int64).reshape(n, max_length)
    trainer = tttnn.TestTimeTrainer(
        model, tok, tttnn.TTTConfig(max_length=max_length, autocast_dtype="bf16")
    )
    text = texts[0][:400]  # scored before and after training: short, and not in the train time

    def train(w: np.ndarray) -> Any:  # the windows of one neighbor: all trained, then one score
        return trainer.run(text, w, np.full(len(w), max_length), np.zeros(len(w), np.int64))

    if warmup:  # kernels chosen, memory allocated
        train(windows[:warmup])
    out = train(windows[warmup:])
    seconds = out.seconds["train"]
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    # PaLM's model FLOPs (appendix B): 6 N per token, plus attention 12 * layers * width * T
    flops = 6 * n_params * max_length + 12 * cfg.num_hidden_layers * cfg.hidden_size * max_length**2
    steps_per_s = out.windows_trained / seconds
    return {
        "max_length": max_length, "autocast": "bf16", "steps": out.windows_trained,
        "seconds": seconds, "steps_per_s": steps_per_s, "tokens_per_s": steps_per_s * max_length,
        "parameters": n_params, "model_tflop_per_step": flops / 1e12,
        "achieved_tflops": flops * steps_per_s / 1e12,
    }  # fmt: skip


def encoder_speed(encoder: str, device: Any, texts: list[str], batch_size: int,
                  precision: str = "auto") -> dict[str, Any]:  # fmt: skip
    """Documents per second of `Encoder.encode` over `texts`, as an index build embeds them."""
    import tttnn

    enc = tttnn.Encoder(encoder, device=str(device), batch_size=batch_size, precision=precision,
                        progress=False)  # fmt: skip
    enc.encode(texts[:batch_size])  # warm-up
    sync(enc.device)
    t = time.perf_counter()
    enc.encode(texts)
    sync(enc.device)
    secs = time.perf_counter() - t
    return {"documents": len(texts), "batch_size": batch_size, "precision": enc.precision,
            "max_length": enc.max_length, "seconds": secs, "docs_per_s": len(texts) / secs}  # fmt: skip


# --- the report -----------------------------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    a, s = r["agreement"], r["ttt_speed"]
    k = a["k"]
    share = s.get("share_of_bf16_peak")
    lines = [
        f"# Device check: {r['device']['name']} ({r['device']['type']})",
        "",
        f"tttnn {r['tttnn']['version']} ({r['tttnn']['file']}), torch {r['torch']}, "
        f"transformers {r['transformers']}; weights: {r['weights']}; settings: {r['size']}; "
        f"{r['seconds_total']:.0f} s in all.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| index build of {r['index']['documents']} documents (end to end) | "
        f"{r['index']['seconds']:.1f} s ({r['index']['docs_per_s']:.1f} docs/s) |",
    ]
    for e in r["encoder_speed"]:
        lines.append(f"| encoder, {e['precision']}, batch {e['batch_size']} | "
                     f"{e['docs_per_s']:.1f} docs/s ({e['documents']} documents) |")  # fmt: skip
    lines += [
        f"| TTT steps/s at {s['max_length']} tokens, {s['autocast']} | {s['steps_per_s']:.3f} "
        f"({s['steps']} steps) |",
        f"| TTT tokens/s | {s['tokens_per_s']:.0f} |",
        f"| model TFLOP/s ({s['model_tflop_per_step']:.3f} TFLOP per step) | "
        f"{s['achieved_tflops']:.2f} |",
        "| share of the bf16 peak | "
        + (f"{share:.1%} of {s['bf16_peak_tflops']:g} TFLOP/s |" if share is not None
           else "unknown peak for this device (raw figure above) |"),
        f"| bits per byte, k = 0, fp32: largest relative difference to the CPU | "
        f"{a['max_rel_k0_fp32']:.2e} (limit {a['rtol_k0_fp32']:g}) |",
        f"| bits per byte, k = {k}, bf16: largest relative difference to the CPU | "
        f"{a[f'max_rel_k{k}_bf16']:.2e} (limit {a[f'rtol_k{k}_bf16']:g}) |",
        f"| encoder vectors, fp32: smallest cosine to the CPU's ({a['encoder']['documents']} "
        f"documents) | {a['encoder']['min_cosine']:.7f} (limit {a['encoder']['limit']:g}) |",
        f"| agreement | {'pass' if a['pass'] else 'FAIL'} |",
        "",
        f"Agreement, per document (L = {a['max_length']}, first window of each neighbor):",
        "",
        f"| domain | bytes | cpu k=0 fp32 | {a['device']} k=0 fp32 | cpu k={k} bf16 | "
        f"{a['device']} k={k} bf16 |",
        "|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for d in a["documents"]:
        c, g = d["cpu"], d[a["device"]]
        lines.append(f"| {d['domain']} | {d['bytes']} | {c['k0_fp32']:.6f} | {g['k0_fp32']:.6f} "
                     f"| {c[f'k{k}_bf16']:.6f} | {g[f'k{k}_bf16']:.6f} |")  # fmt: skip
    lines += ["", "The demo's table (`tttnn demo`, one test document per domain):", "",
              r["demo"]["table"].strip(), ""]  # fmt: skip
    return "\n".join(lines)


def demo_table(stdout: str) -> str:
    """The demo's report: what it prints after its progress lines, without the paths after it."""
    lines = stdout.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith("[3/3]")), 0)
    end = next((i for i, line in enumerate(lines) if line.startswith("plots:")), len(lines))
    return "\n".join(lines[start:end]).strip()


# --- the command ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: CUDA if any)")
    ap.add_argument("--out", type=Path, required=True, help="Where the report and work files go.")
    ap.add_argument(
        "--wheels",
        type=Path,
        default=None,
        help="Folder of wheels to install tttnn and missing dependencies from.",
    )
    ap.add_argument(
        "--weights",
        choices=("auto", "real", "random"),
        default="auto",
        help="auto: the default models when both are here, else random weights.",
    )
    ap.add_argument(
        "--size",
        choices=tuple(SIZES),
        default=None,
        help="Settings: full on a GPU, small on a CPU (default by device).",
    )
    ap.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    ensure_packages(args.wheels)
    import torch
    import transformers

    import tttnn

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("device check: --device cuda, but torch sees no CUDA device")
    size = SIZES[args.size or ("small" if device.type == "cpu" else "full")]
    out = args.out.resolve()
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    env = subprocess_env(device)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")

    train_path, test_path = _sample()
    train_rows, test_rows = read_jsonl_zst(train_path), read_jsonl_zst(test_path)
    per_domain: dict[str, list[dict[str, Any]]] = {}
    for row in train_rows:
        per_domain.setdefault(_domain(row), []).append(row)
    cap = size["docs_per_domain_index"]
    corpus_rows = [r for rows in per_domain.values() for r in rows[:cap]]
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in corpus_rows), encoding="utf-8")
    texts = [r["text"] for r in corpus_rows]
    first_test: dict[str, dict[str, Any]] = {}
    for row in test_rows:
        first_test.setdefault(_domain(row), row)
    docs = list(first_test.values())

    found = None if args.weights == "random" else real_models()
    if args.weights == "real" and found is None:
        sys.exit("device check: --weights real, but the default models are not both here")
    if found is not None:
        lm, encoder, weights = *found, "real"
    else:
        lm, encoder, weights = str(work / "lm"), str(work / "encoder"), f"random (seed {args.seed})"
        t = time.perf_counter()
        build_random_lm(work / "lm", [r["text"] for r in train_rows], args.seed,
                        size["random_lm_layers"])  # fmt: skip
        build_random_encoder(work / "encoder", [r["text"] for r in train_rows], args.seed)
        print(f"random-weight models from their configs: {time.perf_counter() - t:.0f} s",
              flush=True)  # fmt: skip

    report: dict[str, Any] = {
        "command": ["python", "benches/device_check.py", *(argv or sys.argv[1:])],
        "tttnn": {"version": tttnn.__version__, "file": str(Path(tttnn.__file__).parent)},
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "weights": weights, "size": args.size
        or ("small" if device.type == "cpu" else "full"), "settings": size,
    }  # fmt: skip
    name = device_name(device)
    peak = bf16_peak_tflops(name) if device.type == "cuda" else None
    report["device"] = {"type": device.type, "name": name, "bf16_peak_tflops": peak}
    if device.type == "cuda":
        report["device"]["cuda"] = torch.version.cuda
    print(f"device check on {name} ({device}), weights {weights}", flush=True)

    # 1. the demo's job: the index (with this check's encoder), then `tttnn demo` reusing it
    index_dir = work / "demo" / "index"
    t = time.perf_counter()
    tttnn_cmd(["index", "build", str(corpus), "--out", str(index_dir), "--encoder", encoder,
               "--tokenizer", lm, "-q"], env, logs / "index_build.log")  # fmt: skip
    build_s = time.perf_counter() - t
    tttnn_cmd(["index", "verify", str(index_dir), "-q"], env, logs / "index_verify.log")
    report["index"] = {"documents": len(corpus_rows), "seconds": build_s,
                       "docs_per_s": len(corpus_rows) / build_s}  # fmt: skip
    print(f"index: {len(corpus_rows)} documents in {build_s:.1f} s", flush=True)
    t = time.perf_counter()
    demo_out = tttnn_cmd(["demo", "--workdir", str(work / "demo"), "--model", lm,
                          "--docs-per-domain", "1", "-q", *size["demo"]], env,
                         logs / "demo.log")  # fmt: skip
    report["demo"] = {"seconds": time.perf_counter() - t, "settings": size["demo"],
                      "table": demo_table(demo_out)}  # fmt: skip
    print(f"demo: {report['demo']['seconds']:.0f} s\n{report['demo']['table']}", flush=True)

    # 2. agreement with the CPU
    t = time.perf_counter()
    report["agreement"] = agreement(index_dir, lm, encoder, device, docs[: size["agree_docs"]],
                                    size["agree_k"], size["agree_max_length"])  # fmt: skip
    report["agreement"]["encoder"] = encoder_agreement(encoder, device, texts[:64])
    report["agreement"]["pass"] = (
        report["agreement"]["pass"] and report["agreement"]["encoder"]["pass"]
    )
    report["agreement"]["seconds"] = time.perf_counter() - t
    print(f"agreement: {'pass' if report['agreement']['pass'] else 'FAIL'} "
          f"({report['agreement']['seconds']:.0f} s)", flush=True)  # fmt: skip

    # 3. training speed at 1024 tokens, against the device's bf16 peak
    speed = ttt_speed(lm, device, texts, size["speed_max_length"], size["speed_warmup"],
                      size["speed_steps"])  # fmt: skip
    speed["bf16_peak_tflops"] = peak
    speed["share_of_bf16_peak"] = speed["achieved_tflops"] / peak if peak else None
    report["ttt_speed"] = speed
    print(f"TTT: {speed['steps_per_s']:.3f} steps/s, {speed['tokens_per_s']:.0f} tokens/s",
          flush=True)  # fmt: skip

    # 4. encoder throughput (the index build's embedding), and bf16 where it is not the default
    batch = 32  # BuildConfig.batch_size's default
    report["encoder_speed"] = [encoder_speed(encoder, device, texts, batch)]
    if report["encoder_speed"][0]["precision"] != "bf16" and device.type == "cuda":
        report["encoder_speed"].append(encoder_speed(encoder, device, texts, batch, "bf16"))

    report["seconds_total"] = time.perf_counter() - t_start
    (out / "device_check.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    (out / "device_check.md").write_text(md)
    print(md, flush=True)
    return 0 if report["agreement"]["pass"] else 1


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
