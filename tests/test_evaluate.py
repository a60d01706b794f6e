"""Evaluation runs end to end on real text: the shipped sample corpus, the real encoder and the
real SmolLM2 tokenizer, with a tiny Llama (built here, SmolLM2's vocabulary) as the LM so the run
is quick. Checks the results file, resumption, loud failures, the report and its plots, the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from helpers import SAMPLE_TEST, SAMPLE_TRAIN, corpus_slice, write_jsonl
from tttnn._tttnn import DirLock, StoreLockedError
from tttnn.cli import main
from tttnn.config import EvalConfig
from tttnn.evaluate import run_eval
from tttnn.report import make_report, plot_report, render


def config(index: Path, model: Path, out: Path, **kw) -> EvalConfig:
    base = dict(
        index=str(index), data=[str(SAMPLE_TEST)], out=str(out), model=str(model), neighbors=3,
        eval_at=(0, 1, 3), max_length=64, lr=1e-3, windows_per_neighbor=1, limit=3,
        autocast_dtype="fp32", progress=False, exact=True,
    )  # fmt: skip
    base.update(kw)
    return EvalConfig.from_flat(**base)


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
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
        env = r["env"]  # where the row was computed: a resumed run may span machines
        assert env["device"] == "cpu" and env["threads"] == torch.get_num_threads()
        assert env["torch"] == torch.__version__ and env["hardware"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["retrieval"]["neighbors"] == 3 and "torch" in saved["versions"]
    assert EvalConfig.from_dict(saved["config"]) == config(sample_index, tiny_lm, run)

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
    with pytest.raises(ValueError, match=r"other settings \(ttt.lr: 0.001 -> 0.0005\)"):
        run_eval(config(sample_index, tiny_lm, run, lr=5e-4))
    assert len(rows_of(run)) == 3

    # A run directory moved elsewhere resumes there (where it lives is not a setting).
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    summary = run_eval(config(sample_index, tiny_lm, moved, device="cpu"))
    assert (summary.ok, summary.failed, summary.resumed) == (0, 0, 3)

    # More documents of the same test set extend the run: the 3 done are not redone.
    summary = run_eval(config(sample_index, tiny_lm, moved, limit=4))
    assert (summary.ok, summary.failed, summary.resumed) == (1, 0, 3)
    assert len(rows_of(moved)) == 4

    # One writer per run directory: a second one is refused at once, rows untouched.
    with DirLock(run, what="run"), pytest.raises(StoreLockedError, match=str(run)):
        run_eval(config(sample_index, tiny_lm, run))
    assert len(rows_of(run)) == 3


def test_a_rejected_setting_writes_nothing(tmp_path: Path, sample_index: Path) -> None:
    base = ["eval", "--index", str(sample_index), "--data", str(SAMPLE_TEST), "--out",
            str(tmp_path / "r")]  # fmt: skip
    for extra, message in (
        (["--lr", "-1"], "lr must be a positive number"),
        (["-k", "3", "--eval-at", "5,10"], "eval_at 5, 10 beyond the 3 neighbors"),
        (["--betas", "0.9,1.5"], "betas must be two numbers"),
        (["--query-span", "whole", "--select", "sift"], "SIFT selects against one query vector"),
    ):
        res = CliRunner().invoke(main, base + extra)
        assert res.exit_code == 1 and message in res.output, res.output
        assert "Traceback" not in res.output
        assert not (tmp_path / "r").exists()


def test_a_ray_config_is_not_run_here_by_mistake(tmp_path: Path, sample_index: Path) -> None:
    """`run_eval` evaluates here unless given another executor; a config that asks for Ray is
    refused before anything is written (`tttnn.jobs.evaluate` runs it on Ray)."""
    with pytest.raises(ValueError, match=r"tttnn\.jobs\.evaluate"):
        run_eval(config(sample_index, tmp_path, tmp_path / "run", ray=True))
    assert not (tmp_path / "run").exists()


def test_tokenizer_mismatch_and_missing_tokens_are_refused_up_front(
    sample_index: Path, tmp_path: Path, encoder
) -> None:
    from helpers import byte_tokenizer, tiny_llama
    from tttnn.build import build_index
    from tttnn.index import InvalidIndexError

    other = tmp_path / "byte-llama"  # another vocabulary than the index's (SmolLM2's)
    tok = byte_tokenizer()
    tok.bos_token = tok.eos_token
    tiny_llama(vocab_size=len(tok)).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(InvalidIndexError, match="vocabulary differs"):
        run_eval(config(sample_index, other, tmp_path / "run"))
    assert not (tmp_path / "run" / "results.jsonl").exists()
    # --retokenize trains on the neighbors' text in the model's own ids
    summary = run_eval(config(sample_index, other, tmp_path / "re", retokenize=True, limit=1))
    assert summary.ok == 1
    (row,) = rows_of(tmp_path / "re")
    assert row["windows_trained"] == 3 and row["tokens_trained"] == 3 * 64

    bare = tmp_path / "bare"
    build_index([SAMPLE_TRAIN], bare, encoder=encoder, tokenizer=None, limit=8, progress=False)
    with pytest.raises(InvalidIndexError, match="stores no token ids"):
        run_eval(config(bare, other, tmp_path / "run2"))


def test_exit_codes_say_whether_documents_failed(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    def cli_eval(out: Path, data: Path, neighbors: int) -> Any:
        args = ["eval", "--index", str(sample_index), "--data", str(data), "--out", str(out),
                "--model", str(tiny_lm), "-k", str(neighbors), "--max-length", "64",
                "--windows-per-neighbor", "1", "--autocast", "fp32", "--exact", "-q"]  # fmt: skip
        return CliRunner().invoke(main, args)

    # one test document copies an indexed one (the guard drops the copy: 39 of 40 left), the
    # other does not: with k = 40 the first fails, the second is scored
    copy_of_indexed = corpus_slice(per_domain=1)[0]
    unrelated = {"text": "Completely unrelated prose about a lighthouse keeper. " * 8,
                 "meta": {"pile_set_name": "prose"}}  # fmt: skip
    data = write_jsonl([copy_of_indexed, unrelated], tmp_path / "two.jsonl")
    res = cli_eval(tmp_path / "partial", data, 40)
    assert res.exit_code == 3, res.output
    assert "1 of 2 documents failed" in res.output
    copies = write_jsonl([copy_of_indexed, copy_of_indexed], tmp_path / "copies.jsonl")
    res = cli_eval(tmp_path / "none", copies, 40)
    assert res.exit_code == 1 and "every document failed" in res.output, res.output


def test_report_refuses_duplicate_rows(sample_index: Path, tiny_lm: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_eval(config(sample_index, tiny_lm, run, limit=1))
    line = (run / "results.jsonl").read_text()
    (run / "results.jsonl").write_text(line + line)
    with pytest.raises(ValueError, match="two rows"):
        make_report(run)


def test_retrieval_shortfall_is_a_loud_failure(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    # all 40 entries asked for a copy of an indexed document: the guard drops its copy
    data = write_jsonl(corpus_slice(per_domain=1)[:1], tmp_path / "copy.jsonl")
    run = tmp_path / "run"
    run_eval(config(sample_index, tiny_lm, run, neighbors=40, eval_at=(0, 40), data=[str(data)]))
    (row,) = rows_of(run)
    assert row["status"] == "failed"
    assert "neighbors" in row["error"] and "bpb" not in row


@pytest.mark.slow
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

    # One environment: no note. Rows from another machine, and rows from before rows said
    # where they were computed: the report says so, with the counts.
    assert rep.environments == [(rep.environments[0][0], 4)] and "environments" not in md
    rows[0]["env"] = {**rows[0]["env"], "hardware": "Other CPU (avx2)"}
    del rows[1]["env"]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = render(make_report(run), "md")
    assert "The rows were computed in 3 environments" in md
    assert "- unrecorded: 1 row(s)" in md and "Other CPU (avx2), cpu" in md, md
    assert f"{rep.environments[0][0]}: 2 row(s)" in md


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
    run_eval(config(sample_index, tiny_lm, run, limit=2, baselines=("in-context",)))
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
    docs = list(iter_test_documents(cfg.test))
    tok = load_tokenizer(str(tiny_lm))
    for row, doc in zip(rows_of(tmp_path / "run"), docs):
        query, rest = split_document(doc.text, tok, cfg.ttt.max_length)
        assert query + rest != query and doc.text.startswith(query)
        assert len(tok(query, add_special_tokens=False)["input_ids"]) <= cfg.ttt.max_length
        assert row["status"] == "ok" and row["bytes"] == len(rest.encode("utf-8"))
        assert row["bytes"] < len(doc.text.encode("utf-8"))


@pytest.mark.parametrize("name", ["config.json", "results.jsonl"])
def test_a_run_never_writes_through_a_planted_symbolic_link(
    sample_index: Path, tiny_lm: Path, tmp_path: Path, name: str
) -> None:
    """`RUN/config.json` and `RUN/results.jsonl` are written by the core's rule: a symbolic link
    planted where one belongs is an error naming it, and the file it points to is untouched."""
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    if name == "results.jsonl":  # the config is written first: let it be, then plant the rows
        run_eval(config(sample_index, tiny_lm, run, limit=1))
        (run / name).unlink()
    (run / name).symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        run_eval(config(sample_index, tiny_lm, run, limit=1))
    assert victim.read_text() == "keep me"


def test_a_whole_query_searches_every_piece_and_merges_their_hits(
    sample_index: Path, tiny_lm: Path, lm_tokenizer: Any, tmp_path: Path
) -> None:
    from tttnn.evaluate import iter_test_documents, retrieve
    from tttnn.index import Index

    # test documents of several pieces, and one the encoder reads whole (a short opening)
    tests = corpus_slice(per_domain=1, source=SAMPLE_TEST)
    tests.append({**tests[0], "text": tests[0]["text"][:400]})
    data = write_jsonl(tests, tmp_path / "test.jsonl")
    cfg = config(sample_index, tiny_lm, tmp_path / "run", data=[str(data)], neighbors=8,
                 eval_at=(0, 8), limit=None, query_span="whole")  # fmt: skip
    opening_cfg = dataclasses.replace(
        cfg, retrieval=dataclasses.replace(cfg.retrieval, query_span="opening")
    )
    docs = list(iter_test_documents(cfg.test))
    with Index.open(sample_index) as index:
        whole = retrieve(docs, cfg, index, lm_tokenizer)
        opening = retrieve(docs, opening_cfg, index, lm_tokenizer)
        counts = [len(index.encoder.pieces(d.text)) for d in docs]
        assert [w.pieces for w in whole] == counts
        assert [o.pieces for o in opening] == [1] * len(docs)
        assert counts[-1] == 1 and any(1 < c <= 8 for c in counts), counts
        for doc, w, o, n in zip(docs, whole, opening, counts):
            assert w.hits is not None and o.hits is not None and w.query_vector is None
            assert len(set(w.hits.ids)) == len(w.hits.ids) == 8
            if n == 1:  # the encoder reads the whole text: the same query, the same neighbors
                assert w.hits.ids == o.hits.ids
                continue
            if n > 8:
                continue
            # every piece of the document brings its own nearest entry
            for piece in index.encoder.pieces(doc.text):
                (alone,) = index.search([piece], k=1, exact=True, guard=[doc.text])
                assert alone.ids[0] in w.hits.ids, (doc.doc_id, piece[:60])
        assert any(w.hits.ids != o.hits.ids for w, o in zip(whole, opening))  # type: ignore[union-attr]

    # A run with whole queries trains on those neighbors and records the pieces searched.
    run_eval(dataclasses.replace(cfg, test=dataclasses.replace(cfg.test, limit=2)))
    rows = rows_of(tmp_path / "run")
    assert [r["status"] for r in rows] == ["ok"] * 2, rows
    for r, w, n in zip(rows, whole, counts):
        assert r["query_pieces"] == n
        assert [x["id"] for x in r["neighbors"]] == w.hits.ids  # type: ignore[union-attr]


def test_a_run_records_its_model_under_home_as_tilde(
    sample_index: Path, tiny_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    model = home / ".cache" / "tiny"
    shutil.copytree(tiny_lm, model)
    monkeypatch.setenv("HOME", str(home))
    run = tmp_path / "run"
    run_eval(config(sample_index, model, run, limit=1))
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_path"] == "~/.cache/tiny"
    run_eval(config(sample_index, tmp_path / "home" / ".cache" / "tiny", run, limit=1))  # resumes
