"""The command line against careless or hostile input: damaged `results.jsonl` rows read by
`tttnn report` and `tttnn compare`, numbers too large for any setting, an output that is the
input of `tttnn sample`, and symbolic links where report, compare or sample write their files.
Each answer is one line (exit 1, or 2 for bad usage) that names the file, never a traceback, and
nothing outside the run directory changes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tttnn.cli import main

HUGE = "99999999999999999999"  # 20 digits: beyond every 64-bit integer


def cli(*args: str) -> Result:
    """`tttnn ARGS`; an exception that escaped the command (a traceback) fails the test."""
    res = CliRunner().invoke(main, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"tttnn {' '.join(args)} raised instead of a message") from (
            res.exception
        )
    return res


def rows(n: int = 6, k: int = 2, factor: float = 0.9) -> list[dict[str, Any]]:
    return [
        {"doc_id": f"d{i}", "domain": "ab"[i % 2], "status": "ok", "bytes": 1000 + 10 * i,
         "bpb": {"0": 1.0 + i / 10, str(k): (1.0 + i / 10) * factor}}
        for i in range(n)
    ]  # fmt: skip


def run_dir(path: Path, text: str | bytes) -> Path:
    path.mkdir(parents=True)
    data = text.encode() if isinstance(text, str) else text
    (path / "results.jsonl").write_bytes(data)
    return path


def jsonl(items: list[Any]) -> str:
    return "".join(json.dumps(r) + "\n" for r in items)


def with_row(line: int, raw: str | bytes) -> bytes:
    """The good rows with line `line` (1-based) replaced by `raw`."""
    lines = jsonl(rows()).encode().splitlines(keepends=True)
    lines[line - 1] = (raw.encode() if isinstance(raw, str) else raw) + b"\n"
    return b"".join(lines)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return run_dir(tmp_path / "good", jsonl(rows()))


# --- damaged rows ---------------------------------------------------------------------------

DAMAGED = {
    "not UTF-8": (with_row(3, b'{"doc_id": "d2\xff"}'), "not UTF-8 (byte 14)"),
    "not JSON": (with_row(3, '{"doc_id": "d2", "dom'),
                 "not JSON at column 18: Unterminated string starting at"),
    "a list": (with_row(3, "[1, 2]"), "a JSON array, not an object"),
    "null": (with_row(3, "null"), "a JSON null, not an object"),
    "no doc_id": (with_row(3, json.dumps({k: v for k, v in rows()[2].items() if k != "doc_id"})),
                  "no doc_id"),
    "no bpb": (with_row(3, json.dumps({k: v for k, v in rows()[2].items() if k != "bpb"})),
               "a scored row without bpb"),
    "a word for a score": (with_row(3, json.dumps({**rows()[2], "bpb": {"0": 1.2, "2": "x"}})),
                           "bpb at k = 2 is 'x', not a finite number"),
    "NaN": (with_row(3, json.dumps({**rows()[2], "bpb": {"0": 1.2, "2": float("nan")}})),
            "bpb at k = 2 is nan, not a finite number"),
    "bytes a word": (with_row(3, json.dumps({**rows()[2], "bytes": "many"})),
                     "bytes is 'many', not a finite number"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_report_leaves_a_damaged_row_out_and_names_its_file_and_line(
    tmp_path: Path, case: str
) -> None:
    data, why = DAMAGED[case]
    run = run_dir(tmp_path / "run", data)
    res = cli("report", str(run), "--no-plot", "--format", "json")
    assert res.exit_code == 0, res.output
    assert res.stderr == f"warning: {run / 'results.jsonl'}:3: left out: {why}\n"
    report = json.loads(res.stdout)
    assert report["weighted"]["documents"] == 5  # the other rows are all there
    assert report["skipped"] == [f"{run / 'results.jsonl'}:3: left out: {why}"]


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_compare_names_a_damaged_row_not_a_missing_baseline(
    tmp_path: Path, good: Path, case: str
) -> None:
    data, why = DAMAGED[case]
    run = run_dir(tmp_path / "run", data)
    res = cli("compare", str(good), str(run), "--reps", "200")
    assert res.exit_code == 1
    assert f"warning: {run / 'results.jsonl'}:3: left out: {why}\n" in res.stderr
    assert "different test documents" in res.stderr and "--baseline None" not in res.output
    res = cli("compare", str(good), str(run), "--reps", "200", "--intersect", "--format", "json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["documents"] == 5 and out["skipped"] == [
        f"{run / 'results.jsonl'}:3: left out: {why}"
    ]


def test_a_torn_last_row_is_left_out_with_a_word(tmp_path: Path, good: Path) -> None:
    run = run_dir(tmp_path / "run", jsonl(rows()) + '{"doc_id": "d6", "domain": "a", "sta')
    res = cli("report", str(run), "--no-plot")
    assert res.exit_code == 0, res.output
    assert res.stderr == (
        f"warning: {run / 'results.jsonl'}:7: left out: a torn last row (an interrupted write; "
        "resuming `tttnn eval` redoes it)\n"
    )
    assert "| **average (byte-weighted)** | 6 |" in res.stdout
    res = cli("compare", str(good), str(run), "--reps", "200")
    assert res.exit_code == 0 and f"{run / 'results.jsonl'}:7: left out" in res.stderr


@pytest.mark.parametrize("command", ["report", "compare"])
def test_an_empty_or_unreadable_results_file_is_an_error_naming_it(
    tmp_path: Path, good: Path, command: str
) -> None:
    def run(path: Path) -> Result:
        args = [str(path), "--no-plot"] if command == "report" else [str(good), str(path)]
        return cli(command, *args)

    empty = run_dir(tmp_path / "empty", "")
    res = run(empty)
    assert res.exit_code == 1
    assert res.output.strip().endswith(
        f"{empty / 'results.jsonl'}: empty: no document was scored yet"
    )
    blank = run_dir(tmp_path / "blank", "\n\n")
    assert run(blank).exit_code == 1 and "empty" in run(blank).output
    damaged = run_dir(tmp_path / "damaged", b"\xff\xfe\n[]\n")
    res = run(damaged)
    assert res.exit_code == 1
    assert f"{damaged / 'results.jsonl'}: no readable row (2 damaged" in res.output
    missing = tmp_path / "missing"
    missing.mkdir()
    res = run(missing)
    assert res.exit_code == 1 and f"{missing / 'results.jsonl'}: no results" in res.output


def test_a_document_with_two_rows_names_both_lines(tmp_path: Path) -> None:
    run = run_dir(tmp_path / "run", jsonl(rows() + rows()[1:2]))
    res = cli("report", str(run), "--no-plot")
    assert res.exit_code == 1
    assert f"{run / 'results.jsonl'}: document 'd1' has two rows (lines 2 and 7)" in res.output


def test_a_damaged_config_of_an_in_context_side_names_the_file(tmp_path: Path) -> None:
    run = run_dir(tmp_path / "run", jsonl([{**r, "bpb_in_context": 1.0} for r in rows()]))
    (run / "config.json").write_text('{"config": {}}')
    res = cli("compare", str(run), f"{run}:in-context", "--reps", "200")
    assert res.exit_code == 1
    assert f"{run / 'config.json'}: no number of neighbors in config.retrieval" in res.output


# --- numbers too large ----------------------------------------------------------------------


def test_a_beam_beyond_64_bits_is_bad_usage(sample_index: Path) -> None:
    res = cli("search", str(sample_index), "a query", "--ef", HUGE)
    assert res.exit_code == 2
    assert f"Invalid value for '--ef': '{HUGE}': too large: at most {2**63 - 1}" in res.output


def test_a_shard_size_beyond_64_bits_is_bad_usage(tmp_path: Path) -> None:
    corpus = tmp_path / "small.jsonl"
    corpus.write_text(jsonl([{"text": f"document {i}"} for i in range(3)]))
    res = cli("index", "build", str(corpus), "--out", str(tmp_path / "idx"), "--shard-size", HUGE)
    assert res.exit_code == 2
    assert f"Invalid value for '--shard-size': '{HUGE}': too large" in res.output
    assert not (tmp_path / "idx").exists()


@pytest.mark.parametrize("limit", [HUGE, str((1 << 40) + 1)])
def test_a_byte_limit_no_reader_can_take_is_bad_usage_not_a_decompression_error(
    tmp_path: Path, limit: str
) -> None:
    corpus = tmp_path / "small.jsonl"  # plain, valid JSON lines
    corpus.write_text(jsonl([{"text": f"document {i}"} for i in range(3)]))
    res = cli("index", "build", str(corpus), "--out", str(tmp_path / "idx"), "--max-doc-bytes",
              limit)  # fmt: skip
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '--max-doc-bytes': '{limit}': too large: at most {1 << 40}" in (
        res.output
    )
    assert "decompress" not in res.output


def test_bootstrap_replicates_beyond_the_bound_are_bad_usage(good: Path, tmp_path: Path) -> None:
    other = run_dir(tmp_path / "other", jsonl(rows(factor=0.8)))
    res = cli("compare", str(good), str(other), "--reps", "2000000000")
    assert res.exit_code == 2
    assert "Invalid value for '--reps': 2000000000 is not in the range 100<=x<=100000" in res.output
    res = cli("compare", str(good), str(other), "--seed", "-1")
    assert res.exit_code == 2 and "Invalid value for '--seed'" in res.output


# --- sample: never over its own input -------------------------------------------------------


@pytest.mark.parametrize("how", ["same path", "another spelling", "symbolic link", "hard link"])
def test_sample_refuses_an_output_that_is_its_input(tmp_path: Path, how: str) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(jsonl([{"text": f"document {i}", "meta": {"pile_set_name": "ab"[i % 2]}}
                             for i in range(40)]))  # fmt: skip
    before = corpus.read_bytes()
    out = {"same path": corpus, "another spelling": tmp_path / "." / ".." / tmp_path.name /
           "docs.jsonl", "symbolic link": tmp_path / "link.jsonl",
           "hard link": tmp_path / "hard.jsonl"}[how]  # fmt: skip
    if how == "symbolic link":
        out.symlink_to(corpus.name)
    elif how == "hard link":
        os.link(corpus, out)
    res = cli("sample", str(corpus), "--per-domain", "1", "--out", str(out))
    assert res.exit_code == 2
    assert f"Invalid value for --out: {out} is the input {corpus}" in res.output
    assert corpus.read_bytes() == before


# --- symbolic links where report, compare and sample write ----------------------------------


def test_report_refuses_to_write_a_plot_through_a_symbolic_link(tmp_path: Path) -> None:
    run = run_dir(tmp_path / "run", jsonl(rows()))
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (run / "curve.png").symlink_to(Path("..") / "victim")
    res = cli("report", str(run))
    assert res.exit_code == 1
    assert (
        f"Error: {run / 'curve.png'}: is a symbolic link where tttnn writes a file of its own"
        in (res.output)
    )
    assert victim.read_text() == "precious\n" and (run / "curve.png").is_symlink()
    assert sorted(p.name for p in run.iterdir()) == ["curve.png", "results.jsonl"]  # no temp left
    (run / "curve.png").unlink()
    res = cli("report", str(run))
    assert res.exit_code == 0, res.output
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_and_sample_refuse_to_write_through_a_symbolic_link(
    tmp_path: Path, good: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "plot.png"
    link.symlink_to(victim)
    other = run_dir(tmp_path / "other", jsonl(rows(factor=0.8)))
    res = cli("compare", str(good), str(other), "--reps", "200", "--plot", str(link))
    assert res.exit_code == 1 and f"{link}: is a symbolic link" in res.output
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(jsonl([{"text": f"document {i}"} for i in range(4)]))
    out = tmp_path / "sample.jsonl"
    out.symlink_to(victim)
    res = cli("sample", str(corpus), "--per-domain", "1", "--out", str(out))
    assert res.exit_code == 1 and f"{out}: is a symbolic link" in res.output
    assert victim.read_text() == "precious\n"
    # a link planted where a temporary file might go is not written through either
    out.unlink()
    (tmp_path / f"{out.name}.tmp").symlink_to(victim)
    res = cli("sample", str(corpus), "--per-domain", "1", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "precious\n"
    assert json.loads(out.read_text().splitlines()[0])["text"].startswith("document")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]
