"""The baselines: dynamic evaluation (k steps on the query half, then the rest scored) checked
against a plain loop on the query's tokens, for the reset to θ0, and end to end in `tttnn eval`
on the sample index with a tiny Llama; in-context scoring checked against one forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import SAMPLE_TEST, byte_tokenizer, tiny_llama
from tttnn.baselines import dynamic_eval, dynamic_eval_windows, in_context_bpb
from tttnn.cli import main
from tttnn.config import EvalConfig, TTTConfig
from tttnn.evaluate import iter_test_documents, run_eval, split_document
from tttnn.metrics import bits_per_byte
from tttnn.ttt import TestTimeTrainer

QUERY = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
SCORED = "The lazy dog sleeps while the quick brown fox jumps over the box of liquor jugs. "


def ttt_config(**kw) -> TTTConfig:
    base = {"lr": 1e-2, "max_length": 64, "autocast_dtype": "fp32", "eval_at": (0, 1, 3)}
    base.update(kw)
    return TTTConfig(**base)


def plain_dynamic_eval(tok, text: str, scored: str, steps: int, max_length: int) -> float:
    """Dynamic evaluation written plainly: `steps` AdamW steps on the query's windows in turn
    (HF's own loss), then score `scored`."""
    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)  # fmt: skip
    ids = tok(text, add_special_tokens=False)["input_ids"]
    windows = [ids[s : s + max_length] for s in range(0, len(ids), max_length)]
    model.train()
    for i in range(steps):
        x = torch.tensor([windows[i % len(windows)]])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return bits_per_byte(model.eval(), tok, scored, max_length).bpb


def test_dynamic_eval_trains_on_the_query_half_and_resets():
    tok = byte_tokenizer()
    model = tiny_llama()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = TestTimeTrainer(model, tok, ttt_config())
    fields = dynamic_eval(trainer, QUERY, SCORED, steps=3)
    bpb = fields["bpb_dynamic_eval"]
    assert sorted(bpb) == ["0", "1", "3"]
    # 86 query bytes (one token each) in windows of 64: the steps take windows 0, 1, 0
    n = len(QUERY.encode())
    assert 64 < n < 128
    assert fields["dynamic_eval_steps"] == {"0": 0, "1": 1, "3": 3}
    assert fields["dynamic_eval_tokens_trained"] == {"0": 0, "1": 64, "3": 64 + (n - 64) + 64}
    for k in (0, 1, 3):
        want = plain_dynamic_eval(tok, QUERY, SCORED, k, 64)
        assert bpb[str(k)] == pytest.approx(want, rel=1e-5), k
    # Not vacuous: training on other text than the query gives another score at k = 3.
    other = plain_dynamic_eval(tok, SCORED, SCORED, 3, 64)
    assert bpb["3"] != pytest.approx(other, rel=1e-3)
    # Back at θ0 afterwards, no gradients left.
    for n, p in model.named_parameters():
        assert torch.equal(p, theta0[n]), n
        assert p.grad is None


def test_dynamic_eval_windows_cycle_over_the_query():
    tokens = list(range(10, 30))  # 20 tokens: windows of 8 -> 8, 8, 4
    windows, lengths, didx = dynamic_eval_windows(tokens, 5, 8)
    assert lengths.tolist() == [8, 8, 4, 8, 8] and didx.tolist() == [0, 1, 2, 3, 4]
    assert windows[3].tolist() == tokens[:8] and windows[2, :4].tolist() == tokens[16:]
    w0, l0, d0 = dynamic_eval_windows(tokens, 0, 8)
    assert w0.shape[0] == l0.size == d0.size == 0
    with pytest.raises(ValueError, match="nothing to train on"):
        dynamic_eval_windows([5], 3, 8)


class TokenStore:
    """The one call of an embedding store the in-context baseline makes: an entry's token ids."""

    def __init__(self, tok, texts: list[str]) -> None:
        self.ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    def tokens(self, i: int) -> np.ndarray:
        return np.asarray(self.ids[i], dtype=np.uint32)


def test_in_context_scores_the_text_after_the_neighbors_last_tokens():
    """Within one window the in-context baseline is one forward pass over prefix, the
    neighbors' last tokens (nearest last, each followed by EOS, half the context at most) and
    the text, scored on the text's positions only."""
    tok = byte_tokenizer()
    model = tiny_llama(initializer_range=0.2)  # weights large enough that context matters
    trainer = TestTimeTrainer(model, tok, ttt_config(max_length=128))
    store = TokenStore(tok, ["Pack my box with liquor jugs.", "Zebras and foxes. " * 3])
    text = "The lazy dog sleeps."
    bpb = in_context_bpb(trainer, text, store, [0, 1], 128)

    eos, ids = tok.eos_token_id, tok(text, add_special_tokens=False)["input_ids"]
    ctx = [*store.ids[1], eos, *store.ids[0], eos][-64:]  # both fit, the farther one cut
    assert len(ctx) == 64 and ctx[0] != eos
    seq = [trainer.prefix_token, *ctx, *ids]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([seq[:-1]])).logits[0].float().log_softmax(-1)
    scored = logp[len(ctx) :].gather(-1, torch.tensor(ids)[:, None]).sum().item()
    assert bpb == pytest.approx(-scored / len(text.encode()) / np.log(2), rel=1e-5)
    # not vacuous: the neighbors, and their order, change the score
    assert bpb != pytest.approx(bits_per_byte(model, tok, text, 128).bpb, rel=1e-3)
    assert bpb != pytest.approx(in_context_bpb(trainer, text, store, [1, 0], 128), rel=1e-3)


def test_dynamic_eval_needs_split_text(tmp_path: Path, sample_index: Path) -> None:
    base = dict(index=str(sample_index), data=[str(SAMPLE_TEST)], out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match="dynamic-eval needs --split-text"):
        EvalConfig.from_flat(**base, baselines=("dynamic-eval",))
    EvalConfig.from_flat(**base, baselines=("dynamic-eval",), split_text=True)  # accepted
    args = ["eval", "--index", str(sample_index), "--data", str(SAMPLE_TEST), "--out",
            str(tmp_path / "r"), "--baseline", "dynamic-eval"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "needs --split-text" in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_dynamic_eval_in_an_eval_run(sample_index: Path, tiny_lm: Path, tmp_path: Path) -> None:
    from tttnn.models import load_tokenizer

    cfg = EvalConfig.from_flat(
        index=str(sample_index), data=[str(SAMPLE_TEST)], out=str(tmp_path / "run"),
        model=str(tiny_lm), neighbors=3, eval_at=(0, 1, 3), max_length=64, lr=1e-3,
        windows_per_neighbor=1, limit=2, autocast_dtype="fp32", progress=False, exact=True,
        split_text=True, baselines=("dynamic-eval", "in-context"),
    )  # fmt: skip
    run_eval(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    tok = load_tokenizer(str(tiny_lm))
    for row, doc in zip(rows, iter_test_documents(cfg.test)):
        assert row["status"] == "ok", row
        query, _ = split_document(doc.text, tok, 64)
        n_query = len(tok(query, add_special_tokens=False)["input_ids"])
        assert n_query <= 64
        assert row["dynamic_eval_steps"] == {"0": 0, "1": 1, "3": 3}
        assert row["dynamic_eval_tokens_trained"] == {"0": 0, "1": n_query, "3": 3 * n_query}
        de = row["bpb_dynamic_eval"]
        assert set(de) == set(row["bpb"]) == {"0", "1", "3"}
        # the same θ0 scores the same text: k = 0 agrees with the run's
        assert de["0"] == pytest.approx(row["bpb"]["0"], rel=1e-9)
        assert de["3"] != de["0"]
        assert 0 < row["dynamic_eval_s"] < row["total_s"]
        # the run's own steps are recorded by k too (one window per neighbor)
        assert row["steps"] == {"0": 0, "1": 1, "3": 3} and row["windows_trained"] == 3
        assert row["tokens_trained_at"]["3"] == row["tokens_trained"]
    assert np.isfinite([r["bpb_in_context"] for r in rows]).all()
