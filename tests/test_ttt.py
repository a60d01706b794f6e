"""Test-time training loop: mechanics on a tiny Llama built here, the effect on real SmolLM2."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from helpers import byte_tokenizer, pack, tiny_llama
from tttnn.metrics import bits_per_byte
from tttnn.ttt import TestTimeTrainer, TTTConfig, TTTError

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. "
)
NEIGHBORS = [
    "The quick brown fox jumps over the lazy dog again and again, every single day. " * 2,
    "Pack my box with five dozen liquor jugs, said the sphinx of black quartz. " * 2,
    "Daft zebras jump quickly over lazy dogs while brown foxes watch. " * 2,
]


def cfg(**kw) -> TTTConfig:
    base = {"lr": 1e-2, "max_length": 64, "autocast_dtype": "fp32", "eval_at": (0, 1, 2, 3)}
    base.update(kw)
    return TTTConfig(**base)


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class StepCounter:
    """Counts optimizer steps globally (torch's optimizer step hook)."""

    def __enter__(self):
        self.n = 0

        def hook(opt, args, kwargs):
            self.n += 1

        self.handle = register_optimizer_step_post_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_reset_restores_weights_exactly_and_training_changes_bpb():
    tok = byte_tokenizer()
    model = tiny_llama()
    before = params_of(model)
    trainer = TestTimeTrainer(model, tok, cfg())
    out = trainer.run(TEXT, *pack(tok, NEIGHBORS, 48))
    assert sorted(out.bpb) == [0, 1, 2, 3]
    assert out.bpb[3] < out.bpb[0]  # lr 1e-2 on related text: a real change
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.grad is None
    assert not model.training  # mode restored
    # scoring after the run gives the k = 0 number again
    again = bits_per_byte(model, tok, TEXT, 64)
    assert again.bpb == pytest.approx(out.bpb[0], rel=1e-12)
    assert out.n_bytes == len(TEXT.encode())
    assert out.bpb[0] == pytest.approx(out.nll_nats[0] / out.n_bytes / math.log(2))


def test_fresh_optimizer_second_document_independent_of_first():
    tok = byte_tokenizer()
    doc_a, doc_b = TEXT, "Sphinx of black quartz, judge my vow. " * 3
    wins_a = pack(tok, NEIGHBORS, 48)
    wins_b = pack(tok, NEIGHBORS[::-1], 40)
    trainer = TestTimeTrainer(tiny_llama(), tok, cfg())
    trainer.run(doc_a, *wins_a)
    b_after_a = trainer.run(doc_b, *wins_b)
    b_alone = TestTimeTrainer(tiny_llama(), tok, cfg()).run(doc_b, *wins_b)
    assert b_after_a.bpb == b_alone.bpb
    assert b_after_a.losses == b_alone.losses


def plain_train(model, opt, wins, lengths, didx, lo: int, hi: int, clip: float) -> None:
    """The paper's loop written plainly: one AdamW step per window of neighbors lo..hi-1, HF's
    own loss."""
    model.train()
    for i in np.flatnonzero((didx >= lo) & (didx < hi)):
        ids = torch.from_numpy(wins[i, : lengths[i]]).unsqueeze(0)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


def adamw(model, weight_decay: float = 0.01):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=weight_decay)  # fmt: skip


def test_carrying_optimizer_state_would_change_the_result():
    """The independence above is not vacuous: a plain loop that keeps AdamW's moments from
    document A (weights reset, optimizer not) scores document B differently."""
    tok = byte_tokenizer()
    doc_b = "Sphinx of black quartz, judge my vow. " * 3
    wins_a, wins_b = pack(tok, NEIGHBORS, 48), pack(tok, NEIGHBORS[::-1], 40)
    model = tiny_llama()
    theta0 = params_of(model)
    opt = adamw(model)
    plain_train(model, opt, *wins_a, 0, 3, clip=1.0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(theta0[n])
    plain_train(model, opt, *wins_b, 0, 3, clip=1.0)
    leaky = bits_per_byte(model, tok, doc_b, 64).bpb
    trainer = TestTimeTrainer(tiny_llama(), tok, cfg(eval_at=(0, 3)))
    trainer.run(TEXT, *wins_a)
    assert trainer.run(doc_b, *wins_b).bpb[3] != pytest.approx(leaky, rel=1e-6)
    # the same plain loop with a fresh optimizer for B is what the trainer computes
    fresh = tiny_llama()
    plain_train(fresh, adamw(fresh), *wins_b, 0, 3, clip=1.0)
    expected = bits_per_byte(fresh, tok, doc_b, 64).bpb
    assert trainer.run(doc_b, *wins_b).bpb[3] == pytest.approx(expected, rel=1e-5)


def test_one_step_per_window_and_eval_at_cut_at_neighbors():
    tok = byte_tokenizer()
    wins, lengths, didx = pack(tok, NEIGHBORS, 32)
    per_neighbor = np.bincount(didx)
    trainer = TestTimeTrainer(tiny_llama(), tok, cfg(eval_at=(0, 1, 2, 5, 10)))
    with StepCounter() as steps:
        out = trainer.run(TEXT, wins, lengths, didx)
    # 3 neighbors: eval_at cut to 0, 1, 2; neighbor 2 is never needed so never trained on
    assert sorted(out.bpb) == [0, 1, 2]
    assert steps.n == out.windows_trained == per_neighbor[:2].sum() == len(out.losses)
    with StepCounter() as steps:
        out = trainer.run(TEXT, wins, lengths, didx, n_neighbors=5)
    assert sorted(out.bpb) == [0, 1, 2, 5]
    assert steps.n == out.windows_trained == len(wins)
    assert out.bpb[5] != out.bpb[2]


def test_matches_an_independent_plain_loop():
    """bpb at k equals: fresh AdamW, one step per window with HF's own loss, lm-eval scoring."""
    tok = byte_tokenizer()
    wins, lengths, didx = pack(tok, NEIGHBORS, 48)
    config = cfg(eval_at=(0, 1, 3), weight_decay=0.05, grad_clip=0.5)
    out = TestTimeTrainer(tiny_llama(), tok, config).run(TEXT, wins, lengths, didx)

    model = tiny_llama()
    opt = adamw(model, weight_decay=0.05)
    expected = {0: bits_per_byte(model, tok, TEXT, 64).bpb}
    done = 0
    for k in (1, 3):
        plain_train(model, opt, wins, lengths, didx, done, k, clip=0.5)
        expected[k] = bits_per_byte(model, tok, TEXT, 64).bpb
        done = k
    assert out.bpb.keys() == expected.keys()
    for k in expected:
        assert out.bpb[k] == pytest.approx(expected[k], rel=1e-5), k
    assert out.tokens_trained == int(lengths.sum())


def test_lora_reset_leaves_base_untouched_and_outputs_equal_original():
    tok = byte_tokenizer()
    model = tiny_llama()
    reference = copy.deepcopy(model)
    ids = torch.tensor([tok(TEXT, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        original_logits = reference(input_ids=ids).logits
    base_before = params_of(reference)

    trainer = TestTimeTrainer(model, tok, cfg(lora_r=4, lora_alpha=8, lr=5e-2))
    lora_params = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert lora_params and all("lora_" in n for n in lora_params)
    out = trainer.run(TEXT, *pack(tok, NEIGHBORS, 48))
    assert out.bpb[3] != out.bpb[0]  # the adapter did learn something

    # base weights bit-for-bit untouched; adapter B back to zero so θ == θ0
    for name, p in trainer.model.named_parameters():
        if "lora_" in name:
            continue
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p, base_before[base_name]), name
    with torch.no_grad():
        after = trainer.model(input_ids=ids).logits
    torch.testing.assert_close(after, original_logits, rtol=0, atol=1e-6)
    # a second run starts from the same adapter init: same numbers
    assert trainer.run(TEXT, *pack(tok, NEIGHBORS, 48)).bpb == out.bpb


def test_empty_windows_score_only_k0():
    tok = byte_tokenizer()
    trainer = TestTimeTrainer(tiny_llama(), tok, cfg())
    empty = np.zeros((0, 64), dtype=np.int64)
    with StepCounter() as steps:
        out = trainer.run(TEXT, empty, np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert list(out.bpb) == [0] and steps.n == 0 and out.windows_trained == 0
    assert out.seconds.get("train", 0.0) == 0.0 and out.seconds["reset"] >= 0


def test_short_windows_are_skipped_not_stepped():
    tok = byte_tokenizer()
    wins, lengths, didx = pack(tok, NEIGHBORS[:1], 32)
    lengths[1] = 1  # one real token: nothing to predict
    with StepCounter() as steps:
        out = TestTimeTrainer(tiny_llama(), tok, cfg()).run(TEXT, wins, lengths, didx)
    assert out.windows_skipped == 1 and steps.n == len(wins) - 1 == out.windows_trained


def test_bad_inputs_raise_clear_errors():
    tok = byte_tokenizer()
    trainer = TestTimeTrainer(tiny_llama(), tok, cfg())
    wins, lengths, didx = pack(tok, NEIGHBORS, 32)
    with pytest.raises(ValueError, match="lengths must be within"):
        trainer.run(TEXT, wins, np.full_like(lengths, 33), didx)
    with pytest.raises(ValueError, match="2-D"):
        trainer.run(TEXT, wins[0], lengths[:1], didx[:1])
    with pytest.raises(ValueError, match="rows"):
        trainer.run(TEXT, wins, lengths[:-1], didx)
    with pytest.raises(ValueError, match="non-decreasing"):
        trainer.run(TEXT, wins, lengths, didx[::-1].copy())
    with pytest.raises(ValueError, match="more than max_length"):
        trainer.run(TEXT, np.zeros((1, 65), np.int64), np.array([65]), np.array([0]))
    with pytest.raises(ValueError, match="out of range"):
        trainer.run(TEXT, np.full((1, 8), 999, np.int64), np.array([8]), np.array([0]))
    with pytest.raises(ValueError, match="empty text"):
        trainer.run("", wins, lengths, didx)
    with pytest.raises(ValueError, match="n_neighbors"):
        trainer.run(TEXT, wins, lengths, didx, n_neighbors=1)
    with pytest.raises(ValueError, match="autocast_dtype"):
        TTTConfig(autocast_dtype="fp8")
    with pytest.raises(ValueError, match="lr"):
        TTTConfig(lr=-1.0)
    with pytest.raises(ValueError, match="eval_at"):
        TTTConfig(eval_at=(-1, 2))
    assert TTTConfig(eval_at=(5, 0, 1, 1)).eval_at == (0, 1, 5)


def test_nan_training_raises_ttterror_and_still_resets():
    tok = byte_tokenizer()
    model = tiny_llama()
    trainer = TestTimeTrainer(model, tok, cfg())
    clean = params_of(model)
    wins = pack(tok, NEIGHBORS, 48)
    calls = []

    def poison(module, args, output):  # NaN activations from the second training forward on
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) >= 2:
                return output * float("nan")
        return output

    handle = model.model.layers[0].mlp.register_forward_hook(poison)
    with pytest.raises(
        TTTError, match=r"window 1 \(neighbor 0, 48 tokens\) failed: non-finite training loss"
    ):
        trainer.run(TEXT, *wins)
    handle.remove()
    # the losses are looked at once per k, not after each step (on a GPU that would wait for
    # the device every step): the steps up to k = 1, neighbor 0's windows, ran; none after
    assert len(calls) == int((wins[2] == 0).sum()) > 2
    for name, p in model.named_parameters():
        assert torch.equal(p, clean[name]), name
    # and the next document runs as if nothing had happened
    assert (
        trainer.run(TEXT, *wins).bpb
        == TestTimeTrainer(tiny_llama(), tok, cfg()).run(TEXT, *wins).bpb
    )


def test_nonfinite_gradient_norm_raises_ttterror_naming_its_window():
    tok = byte_tokenizer()
    model = tiny_llama()
    trainer = TestTimeTrainer(model, tok, cfg(grad_clip=1.0))
    clean = params_of(model)
    wins = pack(tok, NEIGHBORS, 48)
    grads = []

    def blow_up(grad):  # the third step's gradient is infinite, its loss finite
        grads.append(1)
        return grad * float("inf") if len(grads) == 3 else grad

    handle = model.lm_head.weight.register_hook(blow_up)
    with pytest.raises(TTTError, match=r"window 2 \(neighbor 0, .*non-finite gradient norm"):
        trainer.run(TEXT, *wins)
    handle.remove()
    for name, p in model.named_parameters():
        assert torch.equal(p, clean[name]), name


def test_seeded_dropout_leaves_the_callers_rng_state_alone():
    """Dropout is seeded for each document in a fork of the caller's RNG: two runs draw the same
    dropout whatever the caller drew in between, and afterwards the caller's CPU state is the one
    it had, no CUDA generator was reseeded, and no reseeding is queued for when CUDA starts
    (`torch.manual_seed` queues one on a machine whose CUDA is not started yet)."""
    tok = byte_tokenizer()
    wins = pack(tok, NEIGHBORS, 48)
    trainer = TestTimeTrainer(tiny_llama(attention_dropout=0.3), tok, cfg())
    torch.rand(3)
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    queued = torch.cuda._lazy_seed_tracker.get_calls()  # torch's own queue of lazy seedings
    first = trainer.run(TEXT, *wins)
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert all(map(torch.equal, torch.cuda.get_rng_state_all(), cuda_states))
    assert torch.cuda._lazy_seed_tracker.get_calls() == queued
    torch.rand(5)
    second = trainer.run(TEXT, *wins)
    assert first.losses == second.losses and first.bpb == second.bpb
    without_dropout = TestTimeTrainer(tiny_llama(), tok, cfg()).run(TEXT, *wins)
    assert without_dropout.losses != first.losses  # dropout did draw


def test_trained_block_sees_the_weights_run_scores_at_the_last_k_then_theta0():
    """`trained` (the lm-eval path) runs the same loop as `run`: in the block the weights are
    those `run` scores at k = all neighbors, the model in eval mode; θ0 back afterwards, also
    when the block raises."""
    tok = byte_tokenizer()
    model = tiny_llama()
    theta0 = params_of(model)
    trainer = TestTimeTrainer(model, tok, cfg())
    wins = pack(tok, NEIGHBORS, 48)
    out = trainer.run(TEXT, *wins)
    tokens = tok(TEXT, add_special_tokens=False)["input_ids"]
    with trainer.trained(*wins) as trained:
        assert not model.training
        assert trainer.score(tokens) == out.nll_nats[3]
        assert not torch.equal(model.lm_head.weight, theta0["lm_head.weight"])
    assert (trained.windows_trained, trained.tokens_trained) == (len(wins[0]), int(wins[1].sum()))
    with pytest.raises(KeyError), trainer.trained(*wins):
        raise KeyError("scoring failed")
    for name, p in model.named_parameters():
        assert torch.equal(p, theta0[name]), name
        assert p.grad is None


def test_weights_loaded_between_documents_are_reset_unless_snapshotted():
    """θ0 is the snapshot: weights loaded into the model between documents are trained from by
    the next document and then replaced by θ0, unless `snapshot()` makes them the new θ0."""
    tok = byte_tokenizer()
    model = tiny_llama()
    theta0 = params_of(model)
    trainer = TestTimeTrainer(model, tok, cfg())
    wins = pack(tok, NEIGHBORS, 48)
    other = tiny_llama(seed=1)
    expected = TestTimeTrainer(tiny_llama(seed=1), tok, cfg()).run(TEXT, *wins).bpb
    model.load_state_dict(other.state_dict())
    assert trainer.run(TEXT, *wins).bpb == expected
    for name, p in model.named_parameters():
        assert torch.equal(p, theta0[name]), name
    model.load_state_dict(other.state_dict())
    trainer.snapshot()
    assert trainer.run(TEXT, *wins).bpb == expected
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(other.named_parameters())[name]), name


@pytest.mark.slow
def test_smollm2_bpb_goes_down_after_training_on_its_own_windows():
    from tttnn.models import load_causal_lm

    model, tok = load_causal_lm("smollm2-135m", device="cpu")
    text = (
        "In the small harbour town of Vellmoor, the lighthouse keeper Ansgar Thole kept a ledger "
        "of every ship that passed: the Merel on Mondays, the Kittiwake on Thursdays, and the "
        "old ferry Grosse Liese whenever the fog allowed. Ansgar wrote each entry in green ink, "
        "because his grandfather, the first keeper of Vellmoor light, had done the same."
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    width = 48
    rows = [ids[s : s + width] for s in range(0, len(ids), width)]
    wins = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        wins[i, : len(r)] = r
    lengths = np.array([len(r) for r in rows], np.int64)
    # the text's own windows as its one neighbor: one step per window, then score again
    trainer = TestTimeTrainer(
        model, tok, TTTConfig(lr=1e-4, max_length=64, eval_at=(0, 1), autocast_dtype="bf16")
    )
    out = trainer.run(text, wins, lengths, np.zeros(len(rows), np.int64))
    assert out.windows_trained == len(rows) == 2
    assert out.bpb[1] < 0.85 * out.bpb[0], out.bpb
