"""Evaluation runs end to end on real text: the shipped sample corpus, the real encoder and the
real SmolLM2 tokenizer, with a tiny Llama (built here, SmolLM2's vocabulary) as the LM so the run
is quick. Checks the results file, resumption, loud failures, the report and its plots, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from tttnn.cli import main
from tttnn.demo import sample_corpus
from tttnn.evaluate import EvalConfig, run_eval
from tttnn.index import Index
from tttnn.report import bootstrap_change, make_report, plot_report, render


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory) -> Path:
    train, _ = sample_corpus()
    out = tmp_path_factory.mktemp("eval") / "index"
    Index.build([train], out, limit=40, shard_size=16, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer, saved like any HF model folder."""
    from tttnn.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def config(index: Path, model: Path, out: Path, **kw) -> EvalConfig:
    _, test = sample_corpus()
    base = dict(
        index=str(index), data=[str(test)], out=str(out), model=str(model), neighbors=3,
        eval_at=(0, 1, 3), max_length=64, lr=1e-3, windows_per_neighbor=1, limit=3,
        dtype="fp32", progress=False, exact=True,
    )  # fmt: skip
    base.update(kw)
    return EvalConfig(**base)


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_run_writes_rows_and_resumes(sample_index: Path, tiny_lm: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_eval(config(sample_index, tiny_lm, run))
    rows = rows_of(run)
    assert [r["status"] for r in rows] == ["ok"] * 3, rows
    for r in rows:
        assert set(r["bpb"]) == {"0", "1", "3"}
        assert r["windows_trained"] == 3
        assert len(r["neighbors"]) == 3
        assert r["bytes"] > 0 and r["tokens"] > 0
        assert all(r[t] >= 0 for t in ("retrieve_s", "pack_s", "train_s", "score_s", "reset_s"))
        # lr 1e-3 on a random tiny model: training moves the score
        assert r["bpb"]["3"] != r["bpb"]["0"]
    settings = json.loads((run / "config.json").read_text())
    assert settings["settings"]["neighbors"] == 3 and "torch" in settings["versions"]

    # Interrupt: the last row never made it, and a torn half row was left behind.
    lines = (run / "results.jsonl").read_text().splitlines()
    (run / "results.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    run_eval(config(sample_index, tiny_lm, run))
    again = rows_of(run)
    assert [r["doc_id"] for r in again] == [r["doc_id"] for r in rows]
    for a, b in zip(again, rows):
        for k in a["bpb"]:
            assert a["bpb"][k] == pytest.approx(b["bpb"][k], rel=1e-6)

    # Same directory, other settings: refused, nothing overwritten.
    with pytest.raises(ValueError, match="other settings"):
        run_eval(config(sample_index, tiny_lm, run, lr=5e-4))
    assert len(rows_of(run)) == 3


def test_retrieval_shortfall_is_a_loud_failure(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run_eval(config(sample_index, tiny_lm, run, neighbors=500, eval_at=(0, 500), limit=1))
    (row,) = rows_of(run)
    assert row["status"] == "failed"
    assert "neighbors" in row["error"] and "bpb" not in row


def test_report_aggregates_by_bytes_and_plots(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run_eval(config(sample_index, tiny_lm, run, limit=None, limit_per_domain=1))
    rows = rows_of(run)
    assert len({r["domain"] for r in rows}) == 4
    rep = make_report(run)
    assert rep.ks == [0, 1, 3]
    total = sum(r["bytes"] for r in rows)
    for k in ("0", "3"):
        expect = sum(r["bpb"][k] * r["bytes"] for r in rows) / total
        assert rep.weighted.bpb[int(k)] == pytest.approx(expect, rel=1e-12)
    md = render(rep, "md")
    for r in rows:
        assert r["domain"] in md
    # One document per domain: nothing to resample within a domain, so no intervals; the
    # improved counts are those of the rows.
    assert rep.weighted.change_ci is None and all(d.change_ci is None for d in rep.rows)
    assert rep.weighted.improved == sum(r["bpb"]["3"] < r["bpb"]["0"] for r in rows)
    assert "95% CI" in md.splitlines()[0]
    assert json.loads(render(rep, "json"))["ks"] == [0, 1, 3]
    assert render(rep, "csv").splitlines()[0].startswith("domain,docs,k=0")
    for p in plot_report(rep):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000

    res = CliRunner().invoke(main, ["report", str(run), "--format", "csv", "--no-plot"])
    assert res.exit_code == 0, res.output
    assert "weighted" in res.output


def test_bootstrap_interval_of_the_change() -> None:
    """The paired bootstrap on cases whose answer is known."""
    nbytes = np.array([100.0, 300.0])
    b0 = np.array([1.0, 2.0])
    # Every document improves by exactly 10%: no spread, whichever documents are drawn.
    same, same_macro = bootstrap_change([(nbytes, b0, 0.9 * b0), (nbytes, b0, 0.9 * b0)])
    assert same == pytest.approx((-0.1, -0.1)) and same_macro == pytest.approx((-0.1, -0.1))
    # Two documents: a replicate draws A twice, B twice (a quarter of the time each) or both,
    # whose change lies between; so the 95% interval is exactly [change of one, of the other].
    bk = np.array([0.5, 1.9])
    (lo, hi), _ = bootstrap_change([(nbytes, b0, bk)])
    assert (lo, hi) == pytest.approx((-0.5, -0.05))
    # Resampling within strata of one document each leaves nothing to vary.
    assert bootstrap_change([(nbytes[:1], b0[:1], bk[:1]), (nbytes[1:], b0[1:], bk[1:])]) == (
        None,
        None,
    )
    # Pairing matters: a change shared by every document is certain even when the documents'
    # own bits per byte vary a lot (an unpaired bootstrap would spread it).
    rng = np.random.default_rng(0)
    b0 = rng.uniform(0.3, 3.0, 50)
    ci, _ = bootstrap_change([(rng.uniform(1e3, 1e5, 50), b0, 0.8 * b0)])
    assert ci == pytest.approx((-0.2, -0.2))


def test_cli_eval_errors_are_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1
    assert "no results" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(
        main,
        ["eval", "--index", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "r")],
    )
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_in_context_scoring_matches_a_single_forward_pass(tiny_lm: Path) -> None:
    """With room for everything in one window, the in-context score of the text is the plain
    conditional log-likelihood log p(text | EOT, neighbors) from one forward pass."""
    from tttnn.metrics import document_loglikelihood
    from tttnn.models import load_causal_lm

    model, tok = load_causal_lm(str(tiny_lm), device="cpu")
    ctx = tok("def neighbor(x):\n    return x + 1\n", add_special_tokens=False)["input_ids"]
    doc = tok("def text(y):\n    return y * 2\n", add_special_tokens=False)["input_ids"]
    eot = tok.bos_token_id
    got, n = document_loglikelihood(model, doc, eot, 128, None, context_tokens=ctx)
    assert n == len(doc)
    with torch.no_grad():
        inp = torch.tensor([[eot, *ctx, *doc[:-1]]])
        logp = model(input_ids=inp).logits[0].double().log_softmax(-1)
        pos = torch.arange(len(ctx), len(ctx) + len(doc))
        want = float(logp[pos, torch.tensor(doc)].sum())
    assert got == pytest.approx(want, rel=1e-6)
    plain, _ = document_loglikelihood(model, doc, eot, 128, None)
    assert plain != pytest.approx(got, rel=1e-9)  # the context changes the score
    # A context longer than the window: still every document token scored exactly once.
    long_ctx = ctx * 20
    got_long, n_long = document_loglikelihood(model, doc, eot, 32, None, context_tokens=long_ctx)
    assert n_long == len(doc) and got_long < 0


def test_in_context_baseline_column(sample_index: Path, tiny_lm: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_eval(config(sample_index, tiny_lm, run, limit=2, baseline_in_context=True))
    rows = rows_of(run)
    assert all(r["status"] == "ok" and r["bpb_in_context"] > 0 for r in rows), rows
    assert all(0 < r["in_context_s"] < r["total_s"] for r in rows)
    rep = make_report(run)
    assert rep.weighted.in_context is not None
    assert "in-context" in render(rep, "md").splitlines()[0]


def test_split_text_scores_only_the_second_half(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    from tttnn.evaluate import iter_test_documents, split_document
    from tttnn.models import load_tokenizer

    cfg = config(sample_index, tiny_lm, tmp_path / "run", limit=2, split_text=True)
    run_eval(cfg)
    docs = list(iter_test_documents(cfg))
    tok = load_tokenizer(str(tiny_lm))
    for row, doc in zip(rows_of(tmp_path / "run"), docs):
        query, rest = split_document(doc.text, tok, cfg.max_length)
        assert query + rest != query and doc.text.startswith(query)
        assert len(tok(query, add_special_tokens=False)["input_ids"]) <= cfg.max_length
        assert row["status"] == "ok" and row["bytes"] == len(rest.encode("utf-8"))
        assert row["bytes"] < len(doc.text.encode("utf-8"))
