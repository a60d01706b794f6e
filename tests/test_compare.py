"""`tttnn compare` and `tttnn report` (one run compared at each of its k): the paired bootstrap
on constructed rows whose answer is known, the report's rows as the comparison's figures,
pairing and refusals, the CLI, and a real run with both baselines compared as sides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tttnn.cli import main
from tttnn.compare import (
    bootstrap_sides,
    compare,
    interval,
    load_side,
    match_steps,
    parse_side,
    render_comparison,
)
from tttnn.report import make_report, render

DOMAINS = ("code", "legal", "math")


def write_run(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_for(
    nbytes: np.ndarray, b0: np.ndarray, bk: np.ndarray, k: int = 20, **extra: Any
) -> list[dict[str, Any]]:
    """Rows of documents d0, d1, ... in DOMAINS round robin, scored at k = 0 and k."""
    rows = []
    for i, (n, x0, xk) in enumerate(zip(nbytes, b0, bk)):
        rows.append({
            "doc_id": f"d{i}", "domain": DOMAINS[i % len(DOMAINS)], "status": "ok",
            "bytes": int(n), "bpb": {"0": float(x0), str(k): float(xk)},
            "steps": {"0": 0, str(k): k}, "tokens_trained_at": {"0": 0, str(k): 512 * k},
            "windows_trained": k, "tokens_trained": 512 * k, "total_s": 10.0 + i, **extra,
        })  # fmt: skip
    return rows


def docs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1_000, 100_000, n).astype(float), rng.uniform(0.3, 3.0, n)


def test_constant_difference_gives_a_zero_width_interval_at_that_value():
    """Each document: A changes by -10%, B by -25%. However much the documents' own bits per
    byte and sizes vary, every replicate's difference is -15 points: a paired bootstrap says so
    exactly (an unpaired one would spread it)."""
    nbytes, b0 = docs(30)
    b0s = np.stack([b0, b0], axis=1)
    bks = np.stack([0.9 * b0, 0.75 * b0], axis=1)
    w, m = bootstrap_sides([(nbytes, b0s, bks)])
    assert w is not None and m is not None and w.shape == (4000, 2)
    assert np.allclose(w[:, 0], -0.1) and np.allclose(w[:, 1] - w[:, 0], -0.15)
    # Through compare: the same from rows, per domain and on both averages.
    sides = [side_of(rows_for(nbytes, b0, 0.9 * b0), "A"), side_of(rows_for(nbytes, b0, 0.75 * b0), "B")]  # fmt: skip
    c = compare(sides)
    assert [g.name for g in c.groups] == [*DOMAINS, "average (byte-weighted)", "average (domains equal)"]  # fmt: skip
    for g in c.groups:
        a, b = g.entries
        assert a.change == pytest.approx(-0.1) and a.change_ci == pytest.approx((-0.1, -0.1))
        assert b.diff == pytest.approx(-0.15) and b.diff_ci == pytest.approx((-0.15, -0.15))
        assert b.better == g.documents and a.diff is None and a.better is None


def test_symmetric_noise_interval_covers_zero():
    """B's change is A's ± 4 points, + on one document and - on its twin (same size, same bits
    per byte): the difference is 0 and the bootstrap distribution is symmetric about it."""
    nbytes, b0 = docs(20, seed=3)
    nbytes, b0 = np.repeat(nbytes, 2), np.repeat(b0, 2)
    rel_a = 0.85 + 0.0 * b0
    rel_b = rel_a + np.tile([0.04, -0.04], 20)
    strata = [(nbytes, np.stack([b0, b0], 1), np.stack([rel_a * b0, rel_b * b0], 1))]
    w, m = bootstrap_sides(strata)
    assert w is not None and m is not None
    diff = w[:, 1] - w[:, 0]
    lo, hi = np.quantile(diff, [0.025, 0.975])
    assert lo < -0.005 and hi > 0.005  # it varies, and covers 0
    assert abs(lo + hi) < 0.3 * (hi - lo)  # about symmetric


@pytest.mark.parametrize("seed", range(20))
def test_random_cases_interval_holds_the_point_and_matches_report(seed: int, tmp_path: Path):
    """Random documents and changes: each interval holds its point estimate, the sides'
    intervals are exactly those `tttnn report` gives (same draws), and a difference whose
    sign is the same on every document has an interval of that sign."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 30))
    nbytes, b0 = docs(n, seed=seed + 100)
    rel_a = rng.uniform(0.7, 1.05, n)
    rel_b = rel_a - rng.uniform(0.001, 0.05, n)  # B better on every document
    run_a = write_run(tmp_path / "a", rows_for(nbytes, b0, rel_a * b0))
    run_b = write_run(tmp_path / "b", rows_for(nbytes, b0, rel_b * b0))
    c = compare([load_side(run_a), load_side(run_b)])
    rep = make_report(run_a)
    for g, d in zip(c.groups, rep.rows):
        assert g.entries[0].change_ci == d.change_ci
    weighted, macro = c.groups[-2], c.groups[-1]
    assert weighted.entries[0].change_ci == rep.weighted.change_ci
    assert macro.entries[0].change_ci == rep.macro_change_ci
    assert weighted.entries[0].change == pytest.approx(rep.weighted.change(20), rel=1e-12)
    for g in c.groups:
        for e in g.entries:
            if e.change_ci is not None:
                assert e.change_ci[0] - 1e-12 <= e.change <= e.change_ci[1] + 1e-12
        b = g.entries[1]
        assert b.diff is not None and b.diff < 0 and b.better == g.documents
        if b.diff_ci is not None:
            assert b.diff_ci[1] < 0
    # the overall intervals resample within domains: the same as report's own bootstrap
    strata = []
    for dom in DOMAINS:
        i = np.arange(n)[np.arange(n) % 3 == DOMAINS.index(dom)]
        strata.append((nbytes[i], b0[i], rel_b[i] * b0[i]))
    rep_w, _ = bootstrap_sides(strata)
    assert rep_w is not None and weighted.entries[1].change_ci == interval(rep_w[:, 0])


def test_report_intervals_on_known_cases(tmp_path: Path):
    """The report's intervals (the comparison of a run at k = 0 and k) where the answer is
    known."""

    def report(nbytes: list[float], b0: list[float], bk: list[float], name: str) -> Any:
        rows = rows_for(np.array(nbytes), np.array(b0), np.array(bk))
        for r in rows:
            r["domain"] = "code"
        return make_report(write_run(tmp_path / name, rows))

    # Every document improves by exactly 10%: no spread, whichever documents are drawn.
    rep = report([100, 300, 100, 300], [1.0, 2.0, 1.0, 2.0], [0.9, 1.8, 0.9, 1.8], "same")
    assert rep.weighted.change_ci == pytest.approx((-0.1, -0.1))
    assert rep.macro_change_ci == pytest.approx((-0.1, -0.1))
    # Two documents: a replicate draws A twice, B twice (a quarter of the time each) or both,
    # whose change lies between; so the 95% interval is exactly [change of one, of the other].
    rep = report([100, 300], [1.0, 2.0], [0.5, 1.9], "two")
    assert rep.rows[0].change_ci == pytest.approx((-0.5, -0.05))
    assert rep.weighted.change_ci == rep.rows[0].change_ci and rep.weighted.improved == 2
    # Resampling within domains of one document each leaves nothing to vary.
    rows = rows_for(np.array([100.0, 300.0]), np.array([1.0, 2.0]), np.array([0.5, 1.9]))
    rep = make_report(write_run(tmp_path / "strata", rows))
    assert rep.weighted.change_ci is None and rep.macro_change_ci is None
    assert all(r.change_ci is None for r in rep.rows)
    # Pairing matters: a change shared by every document is certain even when the documents'
    # own bits per byte vary a lot (an unpaired bootstrap would spread it).
    nbytes, b0 = docs(50)
    rep = report(list(nbytes), list(b0), list(0.8 * b0), "paired")
    assert rep.weighted.change_ci == pytest.approx((-0.2, -0.2))
    # One notation for intervals, in the report and in the comparison.
    assert "| -20.0% | [-20.0%, -20.0%] | 50/50 |" in render(rep)
    paired = load_side(tmp_path / "paired")
    assert "[-20.0%, -20.0%]" in render_comparison(compare([paired, load_side(paired.run, k=0)]))


def test_report_rows_leave_out_what_not_every_document_has(tmp_path: Path):
    """Domain `code` has a document that did not reach k = 20 and `legal` one without an
    in-context score, `math` only failed documents: each figure is over the documents that all
    have it, the averages only where every domain does, and the failures are counted."""
    nbytes, b0 = docs(9, seed=5)
    rows = rows_for(nbytes, b0, 0.9 * b0, bpb_in_context=1.0)
    for r in rows:
        r["bpb"]["5"] = r["bpb"]["0"] * 0.95
    del rows[0]["bpb"]["20"]  # code
    del rows[1]["bpb_in_context"]  # legal
    for i in (2, 5, 8):  # math
        rows[i] = {"doc_id": f"d{i}", "domain": "math", "status": "failed", "error": "boom"}
    rep = make_report(write_run(tmp_path / "run", rows))
    code, legal, math_ = rep.rows
    assert rep.ks == [0, 5, 20] and [r.domain for r in rep.rows] == ["code", "legal", "math"]
    assert sorted(code.bpb) == [0, 5] and code.change(20) is None and code.change_ci is None
    assert code.in_context == pytest.approx(1.0) and legal.in_context is None
    i = [1, 4, 7]  # legal's documents
    assert legal.bpb[20] == pytest.approx((nbytes[i] @ (0.9 * b0[i])) / nbytes[i].sum())
    assert legal.change(20) == pytest.approx(-0.1) and legal.improved == 3
    assert (math_.documents, math_.failed, math_.bpb) == (0, 3, {})
    assert (rep.weighted.documents, rep.weighted.failed) == (6, 3)
    assert sorted(rep.weighted.bpb) == sorted(rep.macro) == [0, 5]
    assert rep.weighted.in_context is None and rep.macro_change_ci is None
    ok = [r for r in rows if r["status"] == "ok"]
    expect = sum(r["bpb"]["5"] * r["bytes"] for r in ok) / sum(r["bytes"] for r in ok)
    assert rep.weighted.bpb[5] == pytest.approx(expect, rel=1e-12)
    assert rep.macro[5] == pytest.approx((code.bpb[5] + legal.bpb[5]) / 2, rel=1e-12)
    md = render(rep)
    assert "| math | 0 (+3 failed) |" in md and "3 document(s) failed:" in md


def side_of(rows: list[dict[str, Any]], label: str, tmp: Path | None = None) -> Any:
    import tempfile

    tmp = tmp or Path(tempfile.mkdtemp())
    return load_side(write_run(tmp / label, rows), label=label)


def test_pairing_by_doc_id_and_refusals(tmp_path: Path):
    nbytes, b0 = docs(12)
    rows_a = rows_for(nbytes, b0, 0.9 * b0)
    rows_b = rows_for(nbytes, b0, 0.8 * b0)
    shuffled = [rows_b[i] for i in np.random.default_rng(0).permutation(12)]
    a = write_run(tmp_path / "a", rows_a)
    b = write_run(tmp_path / "b", shuffled)
    c = compare([load_side(a), load_side(b)])
    assert c.groups[-2].entries[1].diff_ci == pytest.approx((-0.1, -0.1))  # paired by id

    # different documents: refused, unless --intersect
    fewer = write_run(tmp_path / "fewer", rows_b[:10])
    with pytest.raises(ValueError, match=r"different test documents .*10 in common.*--intersect"):
        compare([load_side(a), load_side(fewer)])
    c = compare([load_side(a), load_side(fewer)], intersect=True)
    assert c.documents == 10 and c.dropped == {str(a): 2, str(fewer): 0}
    assert "--intersect: documents left out" in render_comparison(c)
    # a failed row is not a scored document
    failed = [dict(r) for r in rows_b]
    failed[3] = {"doc_id": "d3", "domain": "code", "status": "failed", "error": "boom"}
    with pytest.raises(ValueError, match="different test documents"):
        compare([load_side(a), load_side(write_run(tmp_path / "failed", failed))])
    # the same id over other text (another split) is never paired
    other = [dict(r) for r in rows_b]
    other[5] = {**other[5], "bytes": other[5]["bytes"] // 2}
    with pytest.raises(ValueError, match="not the same text"):
        compare([load_side(a), load_side(write_run(tmp_path / "other", other))], intersect=True)
    # a document with two rows (two writers): report's loader refuses it
    dup = write_run(tmp_path / "dup", rows_b + rows_b[:1])
    with pytest.raises(ValueError, match="two rows"):
        load_side(dup)
    # one side only, or one side twice
    with pytest.raises(ValueError, match="nothing to compare"):
        compare([load_side(a)])
    with pytest.raises(ValueError, match="given twice"):
        compare([load_side(a), load_side(a)])
    # the same run at two k: both compared, each named by its k
    c = compare([load_side(a), load_side(a, k=0)])
    assert [s["label"] for s in c.sides] == [f"{a}@20", f"{a}@0"]
    assert c.groups[-2].entries[1].diff == pytest.approx(0.1)
    # a k not reached, a baseline not recorded, the in-context baseline at another k
    with pytest.raises(ValueError, match="not scored at k = 5"):
        load_side(a, k=5)
    with pytest.raises(ValueError, match=r"no dynamic-eval scores.*--baseline dynamic-eval"):
        load_side(a, "dynamic-eval")
    ic = write_run(tmp_path / "ic", rows_for(nbytes, b0, 0.9 * b0, bpb_in_context=1.0))
    with pytest.raises(ValueError, match="k = 20 only, not 5"):
        load_side(ic, "in-context", 5)
    assert load_side(ic, "in-context").k == 20


def test_a_side_is_a_run_with_an_optional_baseline_and_k():
    assert parse_side("runs/a") == ("runs/a", None, None)
    assert parse_side("runs/a@5") == ("runs/a", None, 5)
    assert parse_side("runs/a:in-context") == ("runs/a", "in-context", None)
    assert parse_side("runs/a:dynamic-eval@20") == ("runs/a", "dynamic-eval", 20)
    with pytest.raises(ValueError, match="unknown baseline 'dyn'"):
        parse_side("runs/a:dyn")


def test_each_side_carries_steps_tokens_and_seconds_per_document(tmp_path: Path):
    """Steps, tokens and seconds per document of a run and of its baselines, side by side."""
    nbytes, b0 = docs(6)
    rows = rows_for(nbytes, b0, 0.9 * b0, in_context_s=2.0, bpb_in_context=1.0,
                    bpb_dynamic_eval={"0": 1.0, "20": 0.95}, dynamic_eval_s=4.0,
                    dynamic_eval_steps={"0": 0, "20": 20},
                    dynamic_eval_tokens_trained={"0": 0, "20": 20 * 300})  # fmt: skip
    run = write_run(tmp_path / "run", rows)
    c = compare([load_side(run), load_side(run, "dynamic-eval"), load_side(run, "in-context")])
    ttt, dyn, ic = c.groups[-2].entries
    assert (ttt.steps, ttt.tokens) == (20, 20 * 512) and (dyn.steps, dyn.tokens) == (20, 6000)
    assert (ic.steps, ic.tokens, ic.seconds, dyn.seconds) == (0, 0, 2.0, 4.0)
    assert ttt.seconds == pytest.approx(np.mean([10.0 + i - 6.0 for i in range(6)]))
    # rows from before `steps` was recorded: the totals stand for the largest k
    old = [{k: v for k, v in r.items() if k not in ("steps", "tokens_trained_at")} for r in rows]
    side = load_side(write_run(tmp_path / "old", old))
    assert {d.steps for d in side.docs.values()} == {20.0}


def test_match_steps_reads_each_document_within_the_first_sides_steps(tmp_path: Path):
    """A takes 2 steps a pick, B (every window of longer neighbors) 3 on even documents and 5 on
    odd ones. Matched to A at k = 20 (40 steps), B is read at k = 10 (30 steps) on even documents
    and at k = 5 (25 steps) on odd ones: never more steps than A, and the rows' own scores there."""
    nbytes, b0 = docs(8)
    ks = (0, 5, 10, 20)

    def rows(per_pick: list[int], drop: list[float]) -> list[dict[str, Any]]:
        out = rows_for(nbytes, b0, b0)
        for r, step, x0 in zip(out, per_pick, b0):
            r["bpb"] = {str(k): float(x0 * (1 - d)) for k, d in zip(ks, drop)}
            r["steps"] = {str(k): step * k for k in ks}
            r["tokens_trained_at"] = {str(k): 100 * step * k for k in ks}
        return out

    a = write_run(tmp_path / "a", rows([2] * 8, [0, 0.05, 0.08, 0.10]))
    b = write_run(tmp_path / "b", rows([3, 5] * 4, [0, 0.06, 0.12, 0.20]))
    first = load_side(a)
    (matched,) = match_steps(first, [(str(b), None, None)])
    assert matched.matched and matched.k == 20
    assert [d.k for d in matched.docs.values()] == [10, 5] * 4
    assert all(d.steps is not None and d.steps <= 40 for d in matched.docs.values())
    assert {d.seconds for d in matched.docs.values()} == {None}  # rows time the whole run only
    assert [d.bpbk / d.bpb0 for d in matched.docs.values()] == pytest.approx([0.88, 0.94] * 4)
    c = compare([first, matched])
    assert c.groups[-2].entries[1].k_mean == 7.5 and c.sides[1]["matched"]
    # unmatched, B at k = 20 is 10 points ahead; matched, 2 ahead on even documents, 4 behind
    # on odd ones, byte-weighted
    assert compare([first, load_side(b)]).groups[-2].entries[1].diff == pytest.approx(-0.10)
    w = nbytes * b0
    rel = np.array([0.88, 0.94] * 4)
    assert c.groups[-2].entries[1].diff == pytest.approx((w @ rel) / w.sum() - 0.90)
    out = render_comparison(c)
    assert "Matched steps" in out and " 7.5 " in out
    # a ceiling: B@5 is read at most at k = 5
    (capped,) = match_steps(first, [(str(b), None, 5)])
    assert {d.k for d in capped.docs.values()} == {5}
    # rows that record no steps per k cannot be matched
    old = [{k: v for k, v in r.items() if k != "steps"} for r in rows([3] * 8, [0, 0.1, 0.1, 0.1])]
    with pytest.raises(ValueError, match="records no steps per k"):
        match_steps(first, [(str(write_run(tmp_path / "old", old)), None, None)])
    # documents the first side did not score are left out by --intersect, not refused
    fewer = write_run(tmp_path / "fewer", rows([2] * 8, [0, 0.05, 0.08, 0.10])[:6])
    (matched,) = match_steps(load_side(fewer), [(str(b), None, None)])
    assert compare([load_side(fewer), matched], intersect=True).dropped[str(b)] == 2
    # a first side that records no steps at all: nothing to match against
    bare = [{k: v for k, v in r.items() if k not in ("steps", "windows_trained")} for r in old]
    with pytest.raises(ValueError, match="no steps to match in the first side"):
        match_steps(load_side(write_run(tmp_path / "bare", bare)), [(str(b), None, None)])
    res = CliRunner().invoke(main, ["compare", str(a), str(b), "--match-steps", "--reps", "200"])
    assert res.exit_code == 0 and "Matched steps" in res.output, res.output


def test_cli_compare_formats_plot_and_one_line_errors(tmp_path: Path):
    nbytes, b0 = docs(9)
    extra = dict(bpb_in_context=1.0, in_context_s=1.0, bpb_dynamic_eval={"0": 1.0, "20": 0.9},
                 dynamic_eval_s=1.0, dynamic_eval_steps={"0": 0, "20": 20},
                 dynamic_eval_tokens_trained={"0": 0, "20": 2000})  # fmt: skip
    a = write_run(tmp_path / "a", rows_for(nbytes, b0, 0.9 * b0, **extra))
    b = write_run(tmp_path / "b", rows_for(nbytes, b0, 0.8 * b0))
    png = tmp_path / "cmp.png"
    res = CliRunner().invoke(
        main, ["compare", str(a), str(b), "--baseline", "in-context", "--baseline",
               "dynamic-eval", "--plot", str(png), "--reps", "500"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"{a}:in-context" in res.output and f"{a}:dynamic-eval" in res.output
    assert "average (byte-weighted)" in res.output and "-10.0%" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    res = CliRunner().invoke(main, ["compare", str(a), f"{a}:dynamic-eval", "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [s["label"] for s in out["sides"]] == [str(a), f"{a}:dynamic-eval"]
    assert out["groups"][-2]["entries"][1]["steps"] == 20
    res = CliRunner().invoke(
        main, ["compare", str(a), f"{a}:dynamic-eval@0", f"{a}:dynamic-eval", "--reps", "200"]
    )
    assert res.exit_code == 0 and f"{a}:dynamic-eval@0 " in res.output, res.output
    assert f"{a}:dynamic-eval@20 " in res.output
    res = CliRunner().invoke(main, ["compare", str(a), str(b), "--format", "markdown"])
    assert res.exit_code == 0 and res.output.startswith("| group | side |"), res.output
    # errors: one line, exit code 1
    res = CliRunner().invoke(main, ["compare", str(b), "--baseline", "in-context"])
    assert res.exit_code == 1 and "no run recorded the in-context baseline" in res.output
    res = CliRunner().invoke(main, ["compare", str(a), str(tmp_path / "nope")])
    assert res.exit_code == 1 and "no results" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["compare", str(a), str(b), "-k", "7"])
    assert res.exit_code == 1 and "not scored at k = 7" in res.output


@pytest.mark.slow
def test_compare_real_run_with_both_baselines(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    from tttnn.config import EvalConfig
    from tttnn.evaluate import run_eval

    def run(out: Path, lr: float, baselines: tuple[str, ...] = ()) -> Path:
        run_eval(EvalConfig.from_flat(
            index=str(sample_index), data=[str(tmp_path / "test.jsonl")], out=str(out),
            model=str(tiny_lm), neighbors=2, eval_at=(0, 2), max_length=64, lr=lr,
            windows_per_neighbor=1, autocast_dtype="fp32", progress=False, exact=True,
            split_text=True, baselines=baselines,
        ))  # fmt: skip
        return out

    from helpers import SAMPLE_TEST, corpus_slice, write_jsonl

    test_rows = corpus_slice(per_domain=1, source=SAMPLE_TEST, max_chars=3000)
    write_jsonl(test_rows, tmp_path / "test.jsonl")
    a = run(tmp_path / "a", 1e-3, ("in-context", "dynamic-eval"))
    b = run(tmp_path / "b", 3e-3)
    res = CliRunner().invoke(
        main, ["compare", str(a), str(b), f"{a}:dynamic-eval", f"{a}:in-context", "--reps", "200"]
    )
    assert res.exit_code == 0, res.output
    c = compare([load_side(a), load_side(b), load_side(a, "dynamic-eval"), load_side(a, "in-context")], reps=200)  # fmt: skip
    assert c.documents == len(test_rows) >= 4
    ttt, other, dyn, ic = c.groups[-2].entries
    # k = 0 is the same θ0 on the same text for every side
    assert ttt.bpb0 == pytest.approx(other.bpb0, rel=1e-9) == pytest.approx(dyn.bpb0, rel=1e-9)
    assert (ttt.steps, dyn.steps, ic.steps) == (2, 2, 0)
    assert ttt.change != other.change != dyn.change
