"""Plain helpers shared by the tests (fixtures built on them are in conftest.py): real text from
the sample corpus that ships in the package, corpus files in every format, a tiny Llama and a
byte-level tokenizer for fast mechanics."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import zstandard
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tttnn.demo import sample_corpus

SAMPLE_TRAIN, SAMPLE_TEST = sample_corpus()


def corpus_slice(
    per_domain: int = 5, max_chars: int = 12_000, source: Path = SAMPLE_TRAIN
) -> list[dict]:
    """The first `per_domain` documents of each domain of `source` (the packaged sample's train
    split: four domains of the benchmark corpus) shorter than `max_chars`, as Pile JSON objects,
    in file order."""
    taken: Counter[str] = Counter()
    rows = []
    with source.open("rb") as f:
        reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        for line in reader:
            obj = json.loads(line)
            dom = obj["meta"]["pile_set_name"]
            if taken[dom] < per_domain and len(obj["text"]) <= max_chars:
                taken[dom] += 1
                rows.append(obj)
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor(level=3).compress(data)
    path.write_bytes(data)
    return path


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (GPT-2's byte alphabet, no merges) plus an EOS token."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def tiny_llama(
    seed: int = 0, vocab_size: int = 260, max_positions: int = 256, **cfg
) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights (seeded), in eval mode."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=False, **cfg,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def pack(tok: PreTrainedTokenizerFast, texts: list[str], width: int):
    """Non-overlapping windows of each text in order, as tttnn.pack_windows lays them out."""
    rows, lengths, doc_index = [], [], []
    for d, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), width):
            chunk = ids[s : s + width]
            rows.append(chunk + [0] * (width - len(chunk)))
            lengths.append(len(chunk))
            doc_index.append(d)
    return (
        np.array(rows, dtype=np.int64).reshape(-1, width),
        np.array(lengths, dtype=np.int64),
        np.array(doc_index, dtype=np.int64),
    )
