"""Corpus readers: the same documents from every format, and each kind of bad input counted or
raised with its file:line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from helpers import SAMPLE_TEST, SAMPLE_TRAIN, corpus_slice, write_jsonl
from tttnn.corpus import (
    ERROR_KINDS,
    Corpus,
    CorpusError,
    CorpusStats,
    Document,
    EmptyCorpusError,
    read_corpus,
)

TRAIN, TEST = SAMPLE_TRAIN, SAMPLE_TEST  # the sample corpus shipped in the package


def write_txt_dir(rows: list[dict], root: Path) -> Path:
    for i, r in enumerate(rows):
        d = root / r["meta"]["pile_set_name"]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:04d}.txt").write_text(r["text"], encoding="utf-8")
    return root


def write_parquet(rows: list[dict], path: Path, row_group_size: int = 7) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"text": r["text"], "meta": r["meta"]} for r in rows])
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return corpus_slice()


def _key(d: Document) -> tuple[str, str]:
    return (d.domain, d.text)


def test_formats_give_the_same_documents(rows: list[dict], tmp_path: Path) -> None:
    assert len(rows) == 20 and len({r["meta"]["pile_set_name"] for r in rows}) == 4
    expected = [(r["meta"]["pile_set_name"], r["text"]) for r in rows]
    jsonl = list(Corpus(write_jsonl(rows, tmp_path / "slice.jsonl")))
    zst = list(Corpus(write_jsonl(rows, tmp_path / "slice.jsonl.zst")))
    parquet = list(Corpus(write_parquet(rows, tmp_path / "slice.parquet")))
    txt = list(Corpus(write_txt_dir(rows, tmp_path / "txt")))
    assert [_key(d) for d in jsonl] == expected
    assert [_key(d) for d in zst] == expected
    assert [_key(d) for d in parquet] == expected
    # the text folder is read in path order (domain folders sorted): same documents, other order
    assert sorted(_key(d) for d in txt) == sorted(expected)
    assert [d.doc_id for d in jsonl][:2] == ["slice.jsonl:1", "slice.jsonl:2"]
    assert [d.doc_id for d in zst][:2] == ["slice.jsonl.zst:1", "slice.jsonl.zst:2"]
    assert parquet[0].doc_id == "slice.parquet:0"
    first_domain = min(r["meta"]["pile_set_name"] for r in rows)  # folders are read sorted
    assert txt[0].doc_id.startswith(f"txt/{first_domain}/")
    assert jsonl[0].source == rows[0]["meta"]["source"]
    for docs in (jsonl, zst, parquet, txt):
        assert len({d.doc_id for d in docs}) == len(docs)


def test_doc_ids_are_stable_and_zst_streams(tmp_path: Path) -> None:
    corpus = Corpus(TRAIN)
    it = iter(corpus)
    first = next(it)
    # streaming: the first document arrives before the compressed file is consumed
    assert corpus.bytes_read < corpus.total_bytes
    rest = list(it)
    docs = [first, *rest]
    assert len(docs) == 600
    domains = ["code_python", "docs_kernel", "legal_licenses", "man_pages"]
    assert Counter(d.domain for d in docs) == Counter(dict.fromkeys(domains, 150))
    assert [d.doc_id for d in Corpus(TRAIN)] == [d.doc_id for d in docs]
    assert corpus.stats.documents == 600 and corpus.stats.skipped == 0


def test_domain_falls_back_to_file_stem_and_folder(tmp_path: Path) -> None:
    p = tmp_path / "mydata.jsonl"
    p.write_text('{"text": "no meta here"}\n{"text": "meta without name", "meta": {}}\n')
    assert [d.domain for d in Corpus(p)] == ["mydata", "mydata"]
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.txt").write_text("top-level file")
    (tmp_path / "flat" / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "flat" / "sub" / "deeper" / "b.txt").write_text("nested file")
    docs = list(Corpus(tmp_path / "flat"))
    assert [(d.doc_id, d.domain) for d in docs] == [
        ("flat/a.txt", "flat"),
        ("flat/sub/deeper/b.txt", "sub"),
    ]


def _bad_jsonl_lines() -> list[bytes]:
    return [
        b'{"text": "a good document", "meta": {"pile_set_name": "ok"}}',  # 1
        b'{"text": "unterminated',  # 2 malformed
        b'{"meta": {"pile_set_name": "x"}}',  # 3 missing text
        b'{"text": 42}',  # 4 non-string text
        b'{"text": ""}',  # 5 empty
        b'{"text": "  \\n\\t "}',  # 6 whitespace only
        b'{"text": "bad \xff\xfe bytes"}',  # 7 invalid utf-8
        b'{"text": "' + b"x" * 2000 + b'"}',  # 8 over max_doc_bytes=1000
        b"",  # 9 blank line: not a document, not an error
        b'["not", "an object"]',  # 10 malformed (not an object)
        b'{"text": "' + b"y" * 20_000 + b'"}',  # 11 over the raw line cap (6*1000+4096)
        b'{"text": "lone surrogate \\ud800 here"}',  # 12 invalid utf-8 (surrogate escape)
        b'{"text": "the last good one"}',  # 13
    ]


EXPECTED_BAD = {
    "malformed_json": [2, 10],
    "missing_text": [3, 4],
    "empty_text": [5, 6],
    "invalid_utf8": [7, 12],
    "too_large": [8, 11],
}


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.jsonl.zst"])
def test_bad_jsonl_lines_are_counted(tmp_path: Path, name: str) -> None:
    data = b"\n".join(_bad_jsonl_lines()) + b"\n"
    if name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / name
    path.write_bytes(data)
    corpus = Corpus(path, max_doc_bytes=1000)
    docs = list(corpus)
    assert [d.text for d in docs] == ["a good document", "the last good one"]
    assert [d.doc_id for d in docs] == [f"{name}:1", f"{name}:13"]
    stats = corpus.stats
    assert stats.documents == 2
    assert stats.errors == {k: len(v) for k, v in EXPECTED_BAD.items()}
    assert set(stats.errors) == set(ERROR_KINDS)
    for kind, lines in EXPECTED_BAD.items():
        assert [e.split(":")[1] for e in stats.examples[kind]] == [str(n) for n in lines]
    summary = stats.summary()
    assert "2 documents" in summary and "10 skipped" in summary
    assert f"invalid_utf8: 2 (e.g. {name}:7: invalid UTF-8 at byte 14)" in summary
    # read_corpus fills a caller's stats object
    st = CorpusStats()
    assert len(list(read_corpus(path, max_doc_bytes=1000, stats=st))) == 2
    assert st.errors == stats.errors


@pytest.mark.parametrize(("kind", "lines"), sorted(EXPECTED_BAD.items()))
def test_bad_jsonl_lines_raise_with_on_error_fail(tmp_path: Path, kind: str, lines: list) -> None:
    all_lines = _bad_jsonl_lines()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(all_lines[0] + b"\n" + all_lines[lines[0] - 1] + b"\n")
    with pytest.raises(CorpusError, match=rf"^bad\.jsonl:2: .*\({kind}\)$"):
        list(Corpus(path, on_error="fail", max_doc_bytes=1000))


def test_bad_text_files_and_parquet_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "docs"
    (root / "d").mkdir(parents=True)
    (root / "d" / "1_good.txt").write_text("fine text", encoding="utf-8")
    (root / "d" / "2_empty.txt").write_text("   \n")
    (root / "d" / "3_latin1.txt").write_bytes("café".encode("latin-1"))
    (root / "d" / "4_big.txt").write_text("z" * 5000)
    (root / "d" / "ignored.md").write_text("not a .txt file")
    corpus = Corpus(root, max_doc_bytes=1000)
    assert [d.doc_id for d in corpus] == ["docs/d/1_good.txt"]
    assert corpus.stats.errors["empty_text"] == 1
    assert corpus.stats.errors["invalid_utf8"] == 1
    assert corpus.stats.errors["too_large"] == 1
    assert corpus.stats.examples["invalid_utf8"] == ["docs/d/3_latin1.txt: invalid UTF-8 at byte 3"]

    pq.write_table(pa.table({"text": ["ok", None, "", "also ok"]}), tmp_path / "t.parquet")
    corpus = Corpus(tmp_path / "t.parquet")
    assert [(d.doc_id, d.domain) for d in corpus] == [("t.parquet:0", "t"), ("t.parquet:3", "t")]
    assert corpus.stats.errors["missing_text"] == 1 and corpus.stats.errors["empty_text"] == 1
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "notext.parquet")
    with pytest.raises(CorpusError, match="no 'text' column"):
        list(Corpus(tmp_path / "notext.parquet"))


def test_missing_unknown_or_undecompressable_paths_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus path not found"):
        Corpus(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        Corpus(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="on_error"):
        Corpus(tmp_path / "data.csv", on_error="ignore")
    (tmp_path / "x.jsonl.zst").write_bytes(b"this is not zstd")
    with pytest.raises(CorpusError, match=r"^x\.jsonl\.zst:1: cannot decompress"):
        list(Corpus(tmp_path / "x.jsonl.zst"))


def test_a_byte_limit_no_reader_can_take_is_refused_before_reading(tmp_path: Path) -> None:
    """A plain file is never "corrupt or truncated" for a limit it cannot be read with."""
    from tttnn.corpus import MAX_DOC_BYTES_LIMIT

    docs = [{"text": "one"}, {"text": "two"}]
    plain = write_jsonl(docs, tmp_path / "small.jsonl")
    for limit in (99999999999999999999, MAX_DOC_BYTES_LIMIT + 1, 0, -1):
        with pytest.raises(
            ValueError, match=f"positive number of bytes up to {MAX_DOC_BYTES_LIMIT}"
        ):
            Corpus(plain, max_doc_bytes=limit)
    for path in (plain, write_jsonl(docs, tmp_path / "small.jsonl.zst")):
        read = Corpus(path, max_doc_bytes=MAX_DOC_BYTES_LIMIT)  # the largest reads as any other
        assert [d.text for d in read] == ["one", "two"]


def test_same_file_name_in_two_folders_gets_distinct_ids(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "part.jsonl").write_text('{"text": "same"}\n')
    docs = list(Corpus([tmp_path / "a" / "part.jsonl", tmp_path / "b" / "part.jsonl"]))
    assert len({d.doc_id for d in docs}) == 2


# -- damaged compressed files: an error naming the file, whatever on_error says -------------------


def _small_zst(n: int = 300, *, checksum: bool = True) -> bytes:
    lines = "".join(json.dumps({"text": f"document number {i} " * 5}) + "\n" for i in range(n))
    return zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(lines.encode())


@pytest.mark.parametrize("on_error", ["skip", "fail"])
@pytest.mark.parametrize("cut", [1, 4, 50, "half"])
def test_truncated_zst_is_an_error_naming_the_file(tmp_path: Path, on_error: str, cut) -> None:
    data = _small_zst()
    assert len(list(Corpus(_write(tmp_path / "whole.jsonl.zst", data)))) == 300
    keep = len(data) // 2 if cut == "half" else len(data) - cut
    path = _write(tmp_path / "cut.jsonl.zst", data[:keep])
    with pytest.raises(CorpusError, match=r"^cut\.jsonl\.zst:\d+: cannot decompress .*truncated"):
        list(Corpus(path, on_error=on_error))


def test_truncated_packaged_sample_is_an_error(tmp_path: Path) -> None:
    whole = list(Corpus(SAMPLE_TRAIN))
    assert len(whole) == 600
    path = _write(tmp_path / "train.jsonl.zst", SAMPLE_TRAIN.read_bytes()[:-100])
    seen: list[Document] = []
    with pytest.raises(CorpusError, match=r"train\.jsonl\.zst:\d+: .*ends inside zstd frame 1"):
        seen.extend(Corpus(path, on_error="fail"))
    # what came before the damage is intact (and is all the caller got before the error)
    assert 0 < len(seen) < 600 and seen == whole[: len(seen)]


def test_zst_checksum_is_verified(tmp_path: Path) -> None:
    data = _small_zst()
    assert zstandard.get_frame_parameters(data).has_checksum
    # the last 4 bytes of the frame are the content checksum: change one bit of it
    bad = data[:-1] + bytes([data[-1] ^ 1])
    path = _write(tmp_path / "sum.jsonl.zst", bad)
    with pytest.raises(CorpusError, match=r"^sum\.jsonl\.zst:\d+: .*checksum"):
        list(Corpus(path))


def test_zst_corrupt_block_is_an_error(tmp_path: Path) -> None:
    data = bytearray(_small_zst(checksum=False))
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)  # zero the second half
    path = _write(tmp_path / "zeroed.jsonl.zst", bytes(data))
    with pytest.raises(CorpusError, match=r"^zeroed\.jsonl\.zst:\d+: cannot decompress"):
        list(Corpus(path))


def test_zst_frames_are_read_across_and_checked_each(tmp_path: Path) -> None:
    one = zstandard.ZstdCompressor(write_checksum=True).compress(b'{"text": "first"}\n')
    two = zstandard.ZstdCompressor(write_checksum=True).compress(b'{"text": "second"}\n' * 5000)
    path = _write(tmp_path / "frames.jsonl.zst", one + two + one)
    assert [d.text for d in Corpus(path)] == ["first"] + ["second"] * 5000 + ["first"]
    with pytest.raises(CorpusError, match=r"ends inside zstd frame 2"):
        list(Corpus(_write(tmp_path / "f2.jsonl.zst", one + two[:-10])))
    with pytest.raises(CorpusError, match=r"^tail\.jsonl\.zst:2: cannot decompress"):
        list(Corpus(_write(tmp_path / "tail.jsonl.zst", one + b"not zstd at all")))
    with pytest.raises(CorpusError, match=r"^empty\.jsonl\.zst:1: .*no zstd frame"):
        list(Corpus(_write(tmp_path / "empty.jsonl.zst", b"")))


def test_empty_corpus_is_detectable(tmp_path: Path) -> None:
    path = _write(tmp_path / "blank.jsonl", b'\n{"text": "  "}\n{"nope": 1}\n')
    corpus = Corpus(path)
    assert list(corpus) == [] and corpus.stats.empty and corpus.stats.skipped == 2
    with pytest.raises(EmptyCorpusError, match=r"no documents in .*blank\.jsonl: 0 documents"):
        list(Corpus(path, require_documents=True))
    with pytest.raises(EmptyCorpusError, match="2 skipped"):
        list(read_corpus(path, require_documents=True))
    good = _write(tmp_path / "good.jsonl", b'{"text": "x"}\n')
    corpus = Corpus([path, good], require_documents=True)
    assert len(list(corpus)) == 1 and not corpus.stats.empty


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
