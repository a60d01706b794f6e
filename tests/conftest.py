"""Fixtures shared across test modules. Everything runs offline on what the package and its
dependencies ship: the sample corpus, all-MiniLM-L6-v2, SmolLM2's tokenizer (its default model
is converted once into the tttnn cache)."""

from __future__ import annotations

import os
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
    from tttnn.build import build_index

    out = tmp_path_factory.mktemp("sample") / "index"
    build_index([SAMPLE_TRAIN], out, encoder=encoder, tokenizer=lm_tokenizer, limit=40,
                shard_size=16, progress=False)  # fmt: skip
    return out


RAY_NODE_CPUS = (2, 2)
"""Logical CPUs of each node of a test module's Ray cluster (the head first), unless the module
sets its own `RAY_NODE_CPUS`: two nodes, so that a test can lose one."""

FAST_FAILURE = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
}
"""A lost node is noticed after a few missed health checks of 0.5 s (Ray's default: 5 of 3 s)."""


@pytest.fixture(scope="session")
def ray_token_auth():
    """Ray's token authentication on for this process and the clusters it starts, as tttnn
    runs them, and as Ray turns it on in a process that starts a local cluster (`RAY_AUTH_MODE`
    set to token, Ray's config read again): once on, it stays on in the process, so every
    cluster of the session is started the same way (a driver in token mode cannot use workers
    without it). A token is made if there is none (`~/.ray/auth_token`), as `ray.init` does."""
    pytest.importorskip("ray")
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray._raylet import Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    ensure_token_if_auth_enabled(None, create_token_if_missing=True)


@pytest.fixture(scope="module")
def ray_cluster(request, ray_token_auth):
    """A local Ray cluster for the test module (`ray.cluster_utils.Cluster`, token
    authentication on), this process connected to it: nodes of `RAY_NODE_CPUS` logical CPUs and
    no GPU, whatever the machine has, so that actors with explicit `num_cpus` are placed the same
    way on a 2-core machine as on a large one. One per module: the tests add, lose and fill
    nodes."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    head, *others = getattr(request.module, "RAY_NODE_CPUS", RAY_NODE_CPUS)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": head, "num_gpus": 0, "include_dashboard": False,
                        "_system_config": FAST_FAILURE},
    )  # fmt: skip
    for cpus in others:
        cluster.add_node(num_cpus=cpus, num_gpus=0)
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


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
