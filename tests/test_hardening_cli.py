"""The command line against careless or hostile input: damaged `results.jsonl` rows read by
`tttnn report` and `tttnn compare`, numbers too large for any setting, an output that is the
input of `tttnn sample`, and symbolic links where report, compare or sample write their files.
Each answer is one line (exit 1, or 2 for bad usage) that names the file, never a traceback, and
nothing outside the run directory changes."""

from __future__ import annotations

import json
import os
import re
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


# --- eval: scores that are not numbers, rows that are not rows, settings that cannot run ------


def eval_args(index: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """`tttnn eval` of one test document of the packaged sample with the tiny model."""
    from helpers import SAMPLE_TEST

    return ["eval", "--index", str(index), "--data", str(SAMPLE_TEST), "--model", str(model),
            "--out", str(out), "--limit", "1", "-k", "1", "--eval-at", "0,1", "--max-length", "64",
            "--windows-per-neighbor", "1", "--autocast", "fp32", "--exact", "-q", *extra]  # fmt: skip


def strict_rows(path: Path) -> list[Any]:
    """The rows of a results.jsonl read as strict JSON: NaN or Infinity is an error."""

    def refuse(word: str) -> Any:
        raise ValueError(f"{path}: {word} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_score_that_is_not_a_number_is_a_failed_document(
    sample_index: Path, tiny_lm: Path, tmp_path: Path, good: Path
) -> None:
    run = tmp_path / "diverged"
    # a learning rate that is finite but sends the weights to infinity in one step
    res = cli(*eval_args(sample_index, tiny_lm, run, "--lr", "1e308", "--grad-clip", "none"))
    assert res.exit_code == 1 and "every document failed" in res.output, res.output
    (row,) = strict_rows(run / "results.jsonl")
    assert row["status"] == "failed" and "bpb" not in row, row
    assert re.fullmatch(r"not a result: bpb at k = 1 is (nan|inf), not a finite number",
                        row["error"]), row  # fmt: skip
    # report and compare see a failed row, as any other
    res = cli("report", str(run), "--no-plot")
    assert res.exit_code == 0 and "0 (+1 failed)" in res.stdout, res.output
    assert f"- {row['doc_id']} ({row['domain']}): {row['error']}" in res.stdout
    assert not res.stderr and "nan" not in res.stdout.replace(row["error"], "")
    res = cli("compare", str(good), str(run), "--reps", "200")
    assert res.exit_code == 1 and "every row failed" in res.output and "nan%" not in res.output


def test_every_executor_writes_its_rows_by_one_rule(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    """`run_eval` is the one writer of results.jsonl, whoever evaluated the documents (this
    process, or Ray's TTT workers): a row whose score is not a finite number is written as a
    failed row saying so, and the file stays strict JSON."""
    from helpers import SAMPLE_TEST
    from tttnn.config import EvalConfig
    from tttnn.evaluate import run_eval

    cfg = EvalConfig.from_flat(
        index=str(sample_index), data=[str(SAMPLE_TEST)], out=str(tmp_path / "run"),
        model=str(tiny_lm), neighbors=1, max_length=64, limit=3, progress=False,
    )  # fmt: skip

    def executor(cfg: Any, resolved: str, index: Any, docs: list[Any]) -> Any:
        scores = [(float("nan"), 1.0), (1.5, float("inf")), (1.5, 1.0)]  # TTT's, in-context
        for doc, (ttt, in_context) in zip(docs, scores):
            yield {"doc_id": doc.doc_id, "domain": doc.domain, "status": "ok", "bytes": 100,
                   "bpb": {"0": 2.0, "1": ttt}, "bpb_in_context": in_context}  # fmt: skip

    summary = run_eval(cfg, executor)
    assert (summary.ok, summary.failed) == (1, 2)
    rows = strict_rows(tmp_path / "run" / "results.jsonl")
    assert [r["status"] for r in rows] == ["failed", "failed", "ok"]
    assert rows[0]["error"] == "not a result: bpb at k = 1 is nan, not a finite number"
    assert rows[1]["error"] == "not a result: bpb_in_context is inf, not a finite number"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("[1, 2]", "a JSON array, not an object"),
        ("null", "a JSON null, not an object"),
        (json.dumps({k: v for k, v in rows()[1].items() if k != "doc_id"}), "no doc_id"),
        (json.dumps({**rows()[1], "bpb": {"0": float("nan")}}),
         "bpb at k = 0 is nan, not a finite number"),
        ('{"doc_id": "d1", "dom', "not JSON at column 18: Unterminated string starting at"),
    ],
)  # fmt: skip
def test_resuming_a_run_with_a_row_tttnn_does_not_write_names_its_line(
    sample_index: Path, tiny_lm: Path, tmp_path: Path, raw: str, why: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    results = run / "results.jsonl"
    # a row that is not the last one: not a torn row from an interrupted write
    data = (jsonl(rows()[:1]) + raw + "\n" + jsonl(rows()[2:3])).encode()
    results.write_bytes(data)
    res = cli(*eval_args(sample_index, tiny_lm, run))
    assert res.exit_code == 1
    assert res.output.strip() == (
        f"Error: {results}:2: {why}: not a row tttnn writes; remove or repair that line and "
        "run again (a document without a row is evaluated again)"
    )
    assert results.read_bytes() == data  # nothing dropped: which document it was is unknown
    if raw.startswith("{") and why.startswith("not JSON"):
        # the same line last: a row torn by an interrupted write, dropped and evaluated again
        results.write_bytes((jsonl(rows()[:1]) + raw).encode())
        res = cli(*eval_args(sample_index, tiny_lm, run))
        assert res.exit_code == 0, res.output
        assert [r["status"] for r in strict_rows(results)] == ["ok", "ok"]


SETTINGS_THAT_CANNOT_RUN = {
    "a shard the index lacks": (["--shards", "0,3"],
                                "Error: shards: shard 3 out of range: the store has 3 shards"),
    "more neighbors than entries": (["-k", "41", "--eval-at", "0,41"],
                                    "Error: neighbors 41 is more than the 40 entries of the index"),
    "more than the entries of the shards": (
        ["--shards", "2", "-k", "9", "--eval-at", "0,9"],
        "Error: neighbors 9 is more than the 8 entries of shards 2 of the index"),
    "a window beyond the model's": (
        ["--max-length", "257"], "Error: max_length 257 exceeds the model's context of 256 tokens"),
    "a window beyond 64 bits": (["--max-length", HUGE],
                                f"Invalid value for '--max-length': '{HUGE}': too large"),
    "a seed beyond 64 bits": (["--seed", HUGE], f"Invalid value for '--seed': '{HUGE}': too large"),
    "an infinite weight decay": (["--weight-decay", "inf"],
                                 "Invalid value for '--weight-decay': 'inf': not a finite number"),
    "an infinite learning rate": (["--lr", "inf"],
                                  "Invalid value for '--lr': 'inf': not a finite number"),
    "no learning rate": (["--lr", "nan"], "Invalid value for '--lr': 'nan': not a finite number"),
    "an infinite beta": (["--betas", "0.9,-inf"],
                         "Invalid value for '--betas': '0.9,-inf': not a finite number"),
}  # fmt: skip


def test_settings_that_cannot_run_are_refused_before_anything_is_written(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    for case, (extra, message) in SETTINGS_THAT_CANNOT_RUN.items():
        res = cli(*eval_args(sample_index, tiny_lm, run, *extra))
        assert res.exit_code == 2, (case, res.output)
        if message.startswith("Error: "):  # one line, naming the index or the model
            assert res.output.count("\n") == 1 and res.output.startswith(message), (
                case,
                res.output,
            )
        else:  # a bad option, as click reports it
            assert message in res.output, (case, res.output)
        assert not run.exists(), case
    # the corrected command runs: no run with other settings was left behind
    res = cli(*eval_args(sample_index, tiny_lm, run))
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in strict_rows(run / "results.jsonl")] == ["ok"]


@pytest.mark.parametrize("setting", ["lr", "weight_decay", "eps", "guard_threshold",
                                     "cpus_per_worker", "betas"])  # fmt: skip
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_float_setting_must_be_finite(setting: str, value: float) -> None:
    from tttnn.config import EvalConfig

    given = (0.9, value) if setting == "betas" else value
    with pytest.raises(ValueError, match=f"^{setting} must be a finite number, got {value}$"):
        EvalConfig.from_flat(index="i", data=["d"], out="o", **{setting: given})
    EvalConfig.from_flat(index="i", data=["d"], out="o", lr=1e308)  # finite: allowed


# --- index build: a failed build does not block its rerun; info during a build ----------------


@pytest.mark.parametrize("out_exists", [False, True])
def test_a_build_without_documents_leaves_nothing_that_blocks_its_rerun(
    tmp_path: Path, out_exists: bool
) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(jsonl([{"text": "   "}, {"title": "no text"}]))
    out = tmp_path / "idx"
    if out_exists:
        out.mkdir()  # made by the user beforehand: kept, and left empty
    args = ["index", "build", str(corpus), "--out", str(out), "--no-hnsw", "-q"]
    res = cli(*args)
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == f"Error: no documents in {corpus}"
    assert out.exists() == out_exists and (not out_exists or not any(out.iterdir()))
    corpus.write_text(jsonl([{"text": f"document number {i}"} for i in range(3)]))
    res = cli(*args)  # the same command, once the input is fixed
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"indexed 3 documents (3 entries, 1 shards) into {out}")


def test_index_info_during_a_build_counts_what_is_stored(
    tmp_path: Path, encoder: Any, lm_tokenizer: Any
) -> None:
    """A build writes its meta when it starts and counts its documents with each sealed shard:
    before the first, `index info` says 0 (it said "None")."""
    from helpers import SAMPLE_TRAIN
    from tttnn.build import _create, index_params, models_identity
    from tttnn.config import BuildConfig
    from tttnn.corpus import Corpus

    out = tmp_path / "idx"
    cfg = BuildConfig()
    store = _create(out, index_params(models_identity(encoder, lm_tokenizer), cfg,
                                      Corpus([SAMPLE_TRAIN])), cfg)  # fmt: skip
    res = cli("index", "info", str(out))
    assert res.exit_code == 0, res.output
    assert "(building)" in res.output
    assert "documents   0 so far (the build has not finished) (0 entries in 0 shards)" in (
        res.output
    )
    assert json.loads(cli("index", "info", str(out), "--json").stdout)["documents"] == 0
    del store


def test_index_info_of_an_interrupted_build_counts_every_stored_document(
    tmp_path: Path, encoder: Any, lm_tokenizer: Any
) -> None:
    """A build records its count when it seals a shard, but a shard lands in the background and
    is counted with the next one: a build stopped between the two holds a shard more than its
    meta says. Where entries are documents, `index info` counts the entries instead."""
    from helpers import SAMPLE_TRAIN
    from tttnn._tttnn import EmbeddingStore
    from tttnn.build import build_index

    out = tmp_path / "idx"
    build_index([SAMPLE_TRAIN], out, encoder=encoder, tokenizer=lm_tokenizer, limit=12,
                shard_size=4, progress=False)  # fmt: skip
    store = EmbeddingStore.open(str(out))
    meta = json.loads(store.meta)
    del meta["documents"]
    store.set_meta(json.dumps({**meta, "status": "building", "documents_so_far": 8}))
    del store
    res = cli("index", "info", str(out))
    assert res.exit_code == 0, res.output
    assert "documents   12 so far (the build has not finished) (12 entries in 3 shards)" in (
        res.output
    )
