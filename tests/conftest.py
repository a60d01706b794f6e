"""Fixtures shared across test modules. Everything runs offline on what the package and its
dependencies ship: the sample corpus, all-MiniLM-L6-v2, SmolLM2's tokenizer (its default model
is converted once into the tttnn cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import SAMPLE_TRAIN, corpus_slice, tiny_llama, write_jsonl


@pytest.fixture(scope="session")
def encoder():
    from tttnn.embed import Encoder

    return Encoder(progress=False)


@pytest.fixture(scope="session")
def lm_tokenizer():
    from tttnn.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, encoder, lm_tokenizer) -> Path:
    """An index of the first 40 documents of the packaged sample (small shards, HNSW)."""
    from tttnn.index import Index

    out = tmp_path_factory.mktemp("sample") / "index"
    Index.build([SAMPLE_TRAIN], out, encoder=encoder, tokenizer=lm_tokenizer, limit=40,
                shard_size=16, progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, lm_tokenizer) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer, saved like any HF model folder."""
    tok = lm_tokenizer
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model = tiny_llama(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def slice_rows() -> list[dict]:
    """Five documents of each of the sample's four domains."""
    return corpus_slice(per_domain=5)


@pytest.fixture(scope="session")
def slice_file(tmp_path_factory, slice_rows) -> Path:
    return write_jsonl(slice_rows, tmp_path_factory.mktemp("slice") / "slice.jsonl.zst")
