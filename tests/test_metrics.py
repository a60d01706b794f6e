"""Bits per byte as lm-evaluation-harness defines it, checked against independent implementations."""

from __future__ import annotations

import math
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from test_ttt import byte_tokenizer
from tttnn.metrics import (
    bits_per_byte,
    document_loglikelihood,
    get_rolling_token_windows,
    make_disjoint_window,
    rolling_windows,
)

# --- window logic: lm-eval's own test cases (tests/test_utils.py) -------------------------------


def _collect(x, max_seq_len, context_len):
    out = list(get_rolling_token_windows(x, -100, max_seq_len, context_len))
    assert sum(len(p) for _, p in out) == len(x)
    return out


def test_rolling_windows_lm_eval_v1_context_1():
    gold = [
        ([-100, 0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ([9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
        ([19, 20, 21, 22, 23, 24, 25, 26, 27, 28], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]),
        ([23, 24, 25, 26, 27, 28, 29, 30, 31, 32], [30, 31, 32, 33]),
    ]
    assert _collect(list(range(34)), 10, 1) == gold


def test_rolling_windows_lm_eval_v2_context_8():
    gold = [([-100, 0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])]
    gold += [
        (list(range(s - 8, s + 2)), [s, s + 1, s + 2]) for s in range(10, 32, 3)
    ]  # ([2..11], [10, 11, 12]), ([5..14], [13, 14, 15]), ...
    assert _collect(list(range(34)), 10, 8) == gold


def test_rolling_windows_lm_eval_v3_v4_context_10():
    for n in (34, 30):
        gold = [([-100, 0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])]
        gold += [(list(range(t - 10, t)), [t]) for t in range(10, n)]
        assert _collect(list(range(n)), 10, 10) == gold


def test_rolling_windows_lm_eval_v5_exact_multiple():
    gold = [
        ([-100, 0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ([9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]),
        ([19, 20, 21, 22, 23, 24, 25, 26, 27, 28], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]),
    ]
    assert _collect(list(range(30)), 10, 1) == gold


def test_rolling_windows_lm_eval_v6_tiny_windows_and_empty():
    gold = [
        ([-100, 0], [0, 1]),
        ([1, 2], [2, 3]),
        ([3, 4], [4, 5]),
        ([5, 6], [6, 7]),
        ([6, 7], [8]),
    ]
    assert _collect(list(range(9)), 2, 1) == gold
    assert list(get_rolling_token_windows([], -100, 2, 1)) == []
    assert rolling_windows([], -100, 2) == []


def test_make_disjoint_window_lm_eval():
    assert make_disjoint_window(([1, 2, 3, 4, 5], [2, 3, 4, 5, 6])) == ([1], [2, 3, 4, 5, 6])
    assert make_disjoint_window(([1, 2, 3, 4, 5], [4, 5, 6])) == ([1, 2, 3], [4, 5, 6])
    assert make_disjoint_window(([1, 2, 3, 4, 5], [6])) == ([1, 2, 3, 4, 5], [6])


def test_rolling_windows_hand_worked():
    # 7 tokens, windows of 3: [EOT a b]->[a b c], [c d e]->[d e f] (context c), [e f]->[g]
    a, b, c, d, e, f, g = range(10, 17)
    got = rolling_windows([a, b, c, d, e, f, g], 0, 3)
    assert got == [([0], [a, b, c]), ([c], [d, e, f]), ([d, e, f], [g])]
    # model inputs: (ctx + cont)[-(L + 1):][:-1]
    inputs = [(x + y)[-4:][:-1] for x, y in got]
    assert inputs == [[0, a, b], [c, d, e], [d, e, f]]


@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 19, 20, 21, 57])
def test_rolling_windows_partition_and_fit(n):
    toks = list(range(100, 100 + n))
    wins = rolling_windows(toks, 7, 10)
    assert [t for _, cont in wins for t in cont] == toks  # every token once, in order
    for ctx, cont in wins:
        inp = (ctx + cont)[-11:][:-1]
        assert 1 <= len(cont) <= len(inp) <= 10
    with pytest.raises(ValueError):
        rolling_windows(toks, 7, 0)
    with pytest.raises(ValueError):
        list(get_rolling_token_windows(toks, 7, 5, 6))


# --- scoring ------------------------------------------------------------------------------------


def reference_loglikelihood(model, tokens, prefix, max_length) -> float:
    """Σ log p token by token (one forward pass each), from the definition stated independently:
    token t sees [prefix] + tokens[:t] while t < L; later tokens come in chunks of L starting at
    L; a complete chunk [s, s+L) sees tokens from s-1, the final incomplete one from n-L-1."""
    n, L = len(tokens), max_length
    total = 0.0
    model.eval()
    with torch.no_grad():
        for t in range(n):
            if t < L:
                ctx = [prefix, *tokens[:t]]
            else:
                s = L + ((t - L) // L) * L
                start = s - 1 if s + L <= n else n - L - 1
                ctx = tokens[start:t]
            assert 1 <= len(ctx) <= L
            out = model(input_ids=torch.tensor([ctx]), logits_to_keep=1)
            logits = out.logits[0, -1].double()
            total += float(logits.log_softmax(-1)[tokens[t]])
    return total


def labels_loss_reference(model, tokens, prefix, max_length) -> float:
    """Σ log p from HF's own `labels=` loss on each disjoint window (causal: the extra last input
    token of `seq` never conditions a scored position)."""
    total = 0.0
    model.eval()
    with torch.no_grad():
        for ctx, cont in rolling_windows(tokens, prefix, max_length):
            seq = (ctx + cont)[-(max_length + 1) :]
            labels = [-100] * (len(seq) - len(cont)) + cont
            out = model(input_ids=torch.tensor([seq]), labels=torch.tensor([labels]))
            total += -float(out.loss) * len(cont)
    return total


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=260,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval(), byte_tokenizer()


@pytest.mark.parametrize("n", [1, 5, 16, 17, 32, 33, 50])
def test_document_loglikelihood_matches_token_by_token_tiny(tiny, n):
    model, _ = tiny
    rng = random.Random(n)
    toks = [rng.randrange(256) for _ in range(n)]
    for batch_size in (1, 3):
        lp, count = document_loglikelihood(model, toks, 256, 16, batch_size=batch_size)
        assert count == n
        assert lp == pytest.approx(reference_loglikelihood(model, toks, 256, 16), rel=1e-6)


def test_bits_per_byte_counts_utf8_bytes_and_restores_mode(tiny):
    model, tok = tiny
    text = "naïve café — 東京 " * 5
    model.train()
    r = bits_per_byte(model, tok, text, 16)
    assert model.training  # mode restored
    model.eval()
    assert r.n_bytes == len(text.encode("utf-8")) > len(text)
    assert r.n_tokens == r.n_bytes  # byte tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # byte tokenizer has no BOS: lm-eval's prefix falls back to EOS (256)
    ref = reference_loglikelihood(model, ids, 256, 16)
    assert r.nll_nats == pytest.approx(-ref, rel=1e-6)
    assert r.bpb == pytest.approx(-ref / r.n_bytes / math.log(2), rel=1e-6)
    assert bits_per_byte(model, tok, text, 16, tokens=ids) == r


def test_bits_per_byte_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="empty"):
        bits_per_byte(model, tok, "", 16)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        bits_per_byte(model, tok, "abc", 4096)
    with pytest.raises(ValueError, match="autocast"):
        bits_per_byte(model, tok, "abc", 16, autocast_dtype="int8")


@pytest.mark.slow
def test_smollm2_bpb_matches_independent_references():
    import copy
    import json

    from tttnn.models import load_causal_lm, prefix_token_id

    model, tok = load_causal_lm("smollm2-135m", device="cpu")
    assert prefix_token_id(tok) == tok.bos_token_id == 1  # <|im_start|>, lm-eval's choice
    # a real text: the stdlib json module's documentation
    text = (json.__doc__ or "")[:1200]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    max_length = 64
    assert len(ids) > 3 * max_length  # several windows, the last one partial

    # fp32, as evaluations run it: HF's own loss on the same windows, to 1e-6
    r = bits_per_byte(model, tok, text, max_length, autocast_dtype="fp32")
    assert r.n_tokens == len(ids) and r.n_bytes == len(text.encode("utf-8"))
    ref_labels = labels_loss_reference(model, ids, 1, max_length)
    assert -r.nll_nats == pytest.approx(ref_labels, rel=1e-6)
    assert 0.3 < r.bpb < 2.5

    # the window definition itself, token by token with independently derived contexts. One
    # forward pass per token changes matmul shapes, which moves fp32 log-probs by ~1e-5 each;
    # in float64 both sides are exact, so the definitions must agree to 1e-6 (in fact ~1e-12).
    # (a shorter prefix and window keep the per-token float64 loop to ~50 small forward passes)
    short = text[:200]
    short_ids = tok(short, add_special_tokens=False)["input_ids"]
    assert len(short_ids) > 3 * 14
    model64 = copy.deepcopy(model).double()
    r64 = bits_per_byte(model64, tok, short, 14, autocast_dtype="fp32")
    ref_tokenwise = reference_loglikelihood(model64, short_ids, 1, 14)
    assert -r64.nll_nats == pytest.approx(ref_tokenwise, rel=1e-9)
    assert r64.bpb == pytest.approx(-ref_tokenwise / r64.n_bytes / math.log(2), rel=1e-9)
    r32 = bits_per_byte(model, tok, short, 14, autocast_dtype="fp32")
    assert r32.bpb == pytest.approx(r64.bpb, rel=1e-5)  # fp32 is that number to ~1e-6
