"""Validation split (`tttnn sample`): reproducible picks from the training corpus, and the leakage
guard dropping each validation document's own copy from its neighbors in a real index."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import SAMPLE_TRAIN, write_jsonl
from tttnn.cli import main
from tttnn.corpus import read_corpus
from tttnn.validation import sample_documents, write_documents


def test_picks_are_reproducible_per_domain_and_in_corpus_order(tmp_path: Path):
    a = sample_documents(SAMPLE_TRAIN, 3, seed=0)
    assert [d.doc_id for d in a] == [d.doc_id for d in sample_documents(SAMPLE_TRAIN, 3, seed=0)]
    counts: dict[str, int] = {}
    for d in a:
        counts[d.domain] = counts.get(d.domain, 0) + 1
    assert counts == {"code_python": 3, "docs_kernel": 3, "legal_licenses": 3, "man_pages": 3}
    lines = [int(d.doc_id.rsplit(":", 1)[1]) for d in a]
    assert lines == sorted(lines)
    others = {d.doc_id for s in range(1, 6) for d in sample_documents(SAMPLE_TRAIN, 3, seed=s)}
    assert len(others - {d.doc_id for d in a}) > 20  # seeds pick other documents
    # A domain's picks depend neither on the other domains nor on the order of the file.
    rows = [json.loads(line) for line in _lines(SAMPLE_TRAIN)]
    legal = [r for r in rows if r["meta"]["pile_set_name"] == "legal_licenses"]
    mixed = rows[::-1]
    only = sample_documents(write_jsonl(legal, tmp_path / "legal.jsonl"), 3, seed=0)
    rev = sample_documents(write_jsonl(mixed, tmp_path / "rev.jsonl"), 3, seed=0)
    texts = {d.text for d in a if d.domain == "legal_licenses"}
    assert {d.text for d in only} == texts
    assert {d.text for d in rev} == {d.text for d in a}
    # filters
    short = sample_documents(SAMPLE_TRAIN, 2, max_chars=2000, domains=["man_pages"])
    assert len(short) == 2 and all(len(d.text) <= 2000 and d.domain == "man_pages" for d in short)
    with pytest.raises(ValueError, match="no documents of domain"):
        sample_documents(SAMPLE_TRAIN, 2, domains=["nope"])
    with pytest.raises(ValueError, match="per_domain must be >= 1"):
        sample_documents(SAMPLE_TRAIN, 0)


def _lines(path: Path) -> list[str]:
    import io

    import zstandard

    with path.open("rb") as f:
        reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8")
        return reader.read().splitlines()


def test_written_sample_reads_back_with_its_origin(tmp_path: Path):
    docs = sample_documents(SAMPLE_TRAIN, 1, seed=7)
    for name in ("val.jsonl", "val.jsonl.zst"):
        out = write_documents(docs, tmp_path / name)
        back = list(read_corpus(out))
        assert [(d.text, d.domain) for d in back] == [(d.text, d.domain) for d in docs]
    res = CliRunner().invoke(
        main, ["sample", str(SAMPLE_TRAIN), "--per-domain", "1", "--seed", "7", "--out",
               str(tmp_path / "cli.jsonl")],
    )  # fmt: skip
    assert res.exit_code == 0 and "wrote 4 documents" in res.output, res.output
    meta = [json.loads(x)["meta"] for x in (tmp_path / "cli.jsonl").read_text().splitlines()]
    assert [m["sampled_from"] for m in meta] == [d.doc_id for d in docs]
    res = CliRunner().invoke(main, ["sample", str(SAMPLE_TRAIN), "--per-domain", "1",
                                    "--domain", "nope", "--out", str(tmp_path / "x.jsonl")])  # fmt: skip
    assert res.exit_code == 1 and "no documents of domain" in res.output


def test_the_guard_drops_each_validation_documents_own_copy(
    sample_index: Path, tmp_path: Path, lm_tokenizer
) -> None:
    """The sample index holds the first 40 documents of the training sample: draw validation
    documents from those same 40 (same file name, so the same doc ids) and search the index."""
    from tttnn.evaluate import split_document
    from tttnn.index import Index

    first40 = [json.loads(line) for line in itertools.islice(_lines(SAMPLE_TRAIN), 40)]
    train = write_jsonl(first40, tmp_path / SAMPLE_TRAIN.name)
    val = sample_documents(train, 4, seed=0)  # all 40 are code_python
    assert len(val) == 4
    index = Index.open(sample_index)
    for doc in val:
        plain = index.search([doc.text], k=5, exact=True)[0]
        assert plain.neighbors[0].doc_id == doc.doc_id  # its own copy is the nearest
        guarded = index.search([doc.text], k=5, exact=True, guard=[doc.text], threshold=0.9)[0]
        assert doc.doc_id not in {n.doc_id for n in guarded.neighbors}
        assert guarded.dropped >= 1 and len(guarded.neighbors) == 5
        # with --split-text the query is the first half: the full copy is still dropped
        query, _ = split_document(doc.text, lm_tokenizer, 1024)
        half = index.search([query], k=5, exact=True, guard=[query], threshold=0.9)[0]
        assert doc.doc_id not in {n.doc_id for n in half.neighbors}
