"""`tttnn index build`, `tttnn index info` and `tttnn search` through click's CliRunner, on a small
slice of the real corpus with the real encoder and LM tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import corpus_slice, write_jsonl
from tttnn.cli import main
from tttnn.index import Index, merge_results


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("cli")
    rows = [r for r in corpus_slice(per_domain=1) if len(r["text"]) < 8000]
    corpus = write_jsonl(rows, tmp / "docs.jsonl.zst")
    out = tmp / "index"
    res = CliRunner().invoke(
        main, ["index", "build", str(corpus), "--out", str(out), "--shard-size", "3", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert f"indexed {len(rows)} documents" in res.output
    return out, corpus, rows


def test_info_text_and_json(built) -> None:
    out, _, rows = built
    res = CliRunner().invoke(main, ["index", "info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["documents"] == len(rows) and info["tokenizer"] == "smollm2-135m"
    assert info["shards"] == -(-len(rows) // 3) and info["dtype"] == "f16"
    res = CliRunner().invoke(main, ["index", "info", str(out)])
    assert res.exit_code == 0
    assert "all-MiniLM-L6-v2 (384-d, f16, cosine, HNSW)" in res.output
    assert rows[0]["meta"]["pile_set_name"] in res.output


def test_search_texts_and_query_file(built, tmp_path: Path) -> None:
    out, corpus, rows = built
    runner = CliRunner()
    res = runner.invoke(main, ["search", str(out), rows[2]["text"], "-k", "3", "--exact", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert [n["rank"] for n in row["neighbors"]] == [1, 2, 3]
    assert row["neighbors"][0]["doc_id"] == "docs.jsonl.zst:3"
    # HNSW with an explicit beam: candidates are re-ranked exactly, so the scores are exact ones
    res = runner.invoke(
        main, ["search", str(out), rows[2]["text"], "-k", "3", "--ef", "50", "--json"]
    )
    assert res.exit_code == 0, res.output
    hnsw_row = json.loads(res.stdout)
    assert hnsw_row["neighbors"] == row["neighbors"]
    res = runner.invoke(main, ["search", str(out), rows[2]["text"], "--ef", "0"])
    assert res.exit_code == 1 and "ef must be >= 1" in res.output
    res = runner.invoke(main, ["search", str(out), rows[2]["text"], "-k", "2", "--guard"])
    assert res.exit_code == 0, res.output
    assert (
        "[1 dropped by the leakage guard]" in res.output and "docs.jsonl.zst:3 " not in res.output
    )

    dest = tmp_path / "neighbors.jsonl"
    res = runner.invoke(
        main, ["search", str(out), "--queries", str(corpus), "--out", str(dest), "-k", "2"]
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in dest.read_text().splitlines()]
    assert [x["query_id"] for x in lines] == [f"docs.jsonl.zst:{i + 1}" for i in range(len(rows))]
    assert all(x["neighbors"][0]["doc_id"] == x["query_id"] for x in lines)


def test_search_guard_threshold_decides_what_is_a_copy(built) -> None:
    """A query that is the third document with every 20th word changed: about three quarters of
    its word 5-shingles are the document's, a copy at --guard-threshold 0.5, not at 0.9."""
    out, _, rows = built
    words = rows[2]["text"].split()
    edited = " ".join("zzyzx" if i % 20 == 19 else w for i, w in enumerate(words))
    args = ["search", str(out), edited, "-k", "2", "--exact", "--json"]
    runner = CliRunner()
    for extra, dropped in (([], 0), (["--guard"], 0), (["--guard", "--guard-threshold", "0.5"], 1)):
        res = runner.invoke(main, [*args, *extra])
        assert res.exit_code == 0, res.output
        row = json.loads(res.stdout)
        assert row["dropped"] == dropped, extra
        assert (row["neighbors"][0]["doc_id"] == "docs.jsonl.zst:3") == (dropped == 0), extra
    res = runner.invoke(main, [*args, "--guard", "--guard-threshold", "1.5"])
    assert res.exit_code == 1 and "guard_threshold must be in (0, 1]" in res.output


def test_errors_are_one_line_without_traceback(built, tmp_path: Path) -> None:
    out, corpus, _ = built
    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    res = runner.invoke(main, ["index", "info", str(tmp_path / "empty")])
    assert res.exit_code == 1
    assert (
        res.output.strip() == f"Error: {tmp_path / 'empty'} is not a tttnn index (no manifest.json)"
    )
    res = runner.invoke(main, ["index", "build", str(corpus), "--out", str(out), "-q"])
    assert res.exit_code == 1 and "already exists and is not empty" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["search", str(out)])
    assert res.exit_code == 2 and "give query texts or --queries" in res.output
    res = runner.invoke(main, ["index", "build", str(corpus), "--out", "x", "--vector-dtype", "f8"])
    assert res.exit_code == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n')
    res = runner.invoke(
        main,
        ["index", "build", str(bad), "--out", str(tmp_path / "b"), "--on-error", "fail", "-q"],
    )
    assert res.exit_code == 1
    assert res.output.startswith("Error: bad.jsonl:2: malformed JSON")


def test_build_without_hnsw_or_tokens_in_i8(built, tmp_path: Path) -> None:
    _, corpus, rows = built
    out = tmp_path / "lean"
    args = ["index", "build", str(corpus), "--out", str(out), "--no-hnsw", "--vector-dtype", "i8"]
    res = CliRunner().invoke(main, [*args, "--tokenizer", "none", "--limit", "3", "-q"])
    assert res.exit_code == 0, res.output
    info = json.loads(CliRunner().invoke(main, ["index", "info", str(out), "--json"]).stdout)
    assert (info["documents"], info["hnsw"], info["dtype"], info["tokenizer"]) == (
        3,
        False,
        "i8",
        None,
    )
    # without HNSW graphs the search is exact
    res = CliRunner().invoke(main, ["search", str(out), rows[1]["text"], "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["neighbors"][0]["doc_id"] == "docs.jsonl.zst:2"


def test_a_partial_index_says_so(built, tmp_path: Path) -> None:
    """An interrupted build: `index info` counts the documents stored so far, `search` warns
    that it sees part of the index, `eval` refuses it."""
    from tttnn.build import build_index
    from tttnn.index import Index, PartialIndexWarning

    _, corpus, _ = built
    out = tmp_path / "partial"

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index([corpus], out, shard_size=2, on_shard=stop, progress=False)
    runner = CliRunner()
    res = runner.invoke(main, ["index", "info", str(out)])
    assert res.exit_code == 0, res.output
    assert "(building)" in res.output and "documents   2 so far" in res.output
    res = runner.invoke(main, ["search", str(out), "int main", "-k", "1", "--exact"])
    assert res.exit_code == 0, res.output
    assert "warning: the index" in res.output and "2 entries stored so far" in res.output
    with pytest.warns(PartialIndexWarning):
        Index.open(out).search("int main", k=1, exact=True)
    res = runner.invoke(main, ["eval", "--index", str(out), "--data", str(corpus), "--out",
                               str(tmp_path / "run")])  # fmt: skip
    assert res.exit_code == 1 and "incomplete" in res.output


@pytest.mark.parametrize("module", ["tttnn", "tttnn.cli"])
def test_python_dash_m_runs_every_command(module: str) -> None:
    import subprocess
    import sys

    for command in ("eval", "report", "demo", "search", "index"):
        res = subprocess.run([sys.executable, "-m", module, command, "--help"],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "Usage:" in res.stdout


def test_index_verify_reads_everything_and_names_a_bad_file(built, tmp_path: Path) -> None:
    import shutil

    out, _, _ = built
    res = CliRunner().invoke(main, ["index", "verify", str(out), "-q"])
    assert res.exit_code == 0 and "verified" in res.output, res.output
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    text = copy / "shards" / "00000" / "text.bin"
    data = bytearray(text.read_bytes())
    data[len(data) // 2] ^= 0x20  # a flipped bit in the middle of the text: open cannot see it
    text.write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["index", "verify", str(copy), "-q"])
    assert res.exit_code == 1 and "text.bin" in res.output and "Traceback" not in res.output


def test_search_of_a_whole_text_merges_the_hits_of_its_pieces(built) -> None:
    out, _, rows = built
    text = max((r["text"] for r in rows), key=len)
    args = ["search", str(out), text, "-k", "4", "--exact", "--json"]
    res = CliRunner().invoke(main, [*args, "--query-span", "whole"])
    assert res.exit_code == 0, res.output
    got = [n["id"] for n in json.loads(res.stdout)["neighbors"]]
    with Index.open(out) as index:
        pieces = index.encoder.pieces(text)
        assert len(pieces) > 1
        alone = index.search(pieces, k=4, exact=True)
        assert got == merge_results(alone, k=4).ids
        (opening,) = index.search([text], k=4, exact=True)
    res = CliRunner().invoke(main, args)  # the opening: the default
    assert [n["id"] for n in json.loads(res.stdout)["neighbors"]] == opening.ids
