"""Encoder and index on real text with the real encoder (all-MiniLM-L6-v2) and the real default LM
tokenizer (SmolLM2): sentence-transformers agreement, build/open/search, HNSW recall, chunking,
resumption after kill -9 and Ctrl-C, the leakage guard, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import corpus_slice, write_jsonl
from tttnn import CorruptIndexError
from tttnn._tttnn import EmbeddingStore
from tttnn.build import build_index
from tttnn.embed import Encoder, EncoderNotFoundError, default_encoder_path, split_by_tokens
from tttnn.index import (
    Index,
    InvalidIndexError,
    Neighbor,
    SearchResult,
    embed_texts,
    merge_results,
    search_queries,
    search_texts,
)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return corpus_slice(per_domain=10)


@pytest.fixture(scope="module")
def built(rows, encoder, lm_tokenizer, tmp_path_factory) -> tuple[Index, Path]:
    tmp = tmp_path_factory.mktemp("built")
    corpus = write_jsonl(rows, tmp / "slice.jsonl.zst")
    index = build_index(
        [corpus], tmp / "index", encoder=encoder, tokenizer=lm_tokenizer, shard_size=16,
        progress=False,
    )  # fmt: skip
    return index, corpus


# -- encoder ------------------------------------------------------------------------------------


def test_encoder_matches_sentence_transformers(rows, encoder) -> None:
    from sentence_transformers import SentenceTransformer

    assert encoder.precision in ("fp32", "bf16")
    texts = [r["text"] for r in rows[::10]] + [
        "A short sentence.",
        "x",
        "word " + " " * 20_000 + "after a long run of spaces the text goes on " * 10,
    ]
    st = SentenceTransformer(str(default_encoder_path()), device="cpu")
    ref = st.encode(texts, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    default = encoder.precision  # "auto": bf16 on a CPU with native bf16, else fp32
    try:
        for precision, bar in (("fp32", 0.99999), ("bf16", 0.999)):
            encoder.precision = precision
            ours = encoder.encode(texts, batch_size=4)
            assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
            cos = (ours * ref).sum(axis=1)
            assert cos.min() > bar, (precision, cos)
            # rows come back in input order whatever the length sorting did
            perm = np.random.default_rng(0).permutation(len(texts))
            again = encoder.encode([texts[i] for i in perm], batch_size=7)
            assert (again * ours[perm]).sum(axis=1).min() > bar
    finally:
        encoder.precision = default
    assert encoder.encode([]).shape == (0, 384)


def test_missing_encoder_says_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(EncoderNotFoundError, match=r"tried .*local path .*no-such-model"):
        Encoder(str(tmp_path / "no-such-model"))


def test_split_by_tokens_reassembles(rows, lm_tokenizer) -> None:
    text = rows[0]["text"]
    pieces = split_by_tokens(text, lm_tokenizer, 100)
    assert len(pieces) > 2
    assert "".join(t for t, _ in pieces) == text
    full = lm_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert np.concatenate([ids for _, ids in pieces]).tolist() == full
    assert all(len(ids) == 100 for _, ids in pieces[:-1])
    assert split_by_tokens("tiny", lm_tokenizer, 100)[0][0] == "tiny"


# -- build, open, search -----------------------------------------------------------------------


def test_build_info_and_stored_content(built, rows, lm_tokenizer) -> None:
    index, _ = built
    info = index.info()
    assert info["documents"] == 40 and info["entries"] == 40 and info["shards"] == 3
    assert info["status"] == "complete"
    assert info["domains"] == {
        d: {"documents": 10, "entries": 10} for d in {r["meta"]["pile_set_name"] for r in rows}
    }
    assert info["encoder"] == "all-MiniLM-L6-v2" and info["dim"] == 384
    assert info["tokenizer"] == str(lm_tokenizer.name_or_path)
    assert info["dtype"] == "f16" and info["hnsw"] is True and info["size_bytes"] > 0
    assert info["corpus_stats"]["documents"] == 40
    for i in (0, 17, 39):
        rec = index.record(i)
        assert rec["doc_id"] == f"slice.jsonl.zst:{i + 1}" and rec["chunk"] == 0
        assert index.store.text(i) == rows[i]["text"]
        expected = lm_tokenizer(rows[i]["text"], add_special_tokens=False)["input_ids"]
        assert index.store.tokens(i).tolist() == expected


def test_exact_search_finds_each_document_itself(built, rows) -> None:
    index, _ = built
    texts = [r["text"] for r in rows]
    results = index.search(texts, k=5, exact=True)
    for q, res in enumerate(results):
        assert res.query_index == q and len(res.neighbors) == 5 and res.dropped == 0
        top = res.neighbors[0]
        assert top.text == texts[q] or top.score > 0.999  # exact duplicates may tie
        assert top.score > 0.99
        assert res.scores == sorted(res.scores, reverse=True)
    first = results[0].neighbors[0]
    assert (first.doc_id, first.domain, first.chunk) == (
        "slice.jsonl.zst:1",
        rows[0]["meta"]["pile_set_name"],
        0,
    )
    assert first.tokens.dtype == np.uint32 and len(first.tokens) > 0
    # each text query is embedded alone: its neighbors do not depend on the other queries (the
    # scores only to float rounding: one query is a GEMV, many a GEMM)
    alone = index.search([texts[1]], k=5, exact=True)[0]
    assert alone.ids == results[1].ids
    assert alone.scores == pytest.approx(results[1].scores, abs=1e-6)


def test_hnsw_recall_against_exact(built) -> None:
    index, _ = built
    vecs = index.store.get_vectors(np.arange(len(index)))
    exact = index.search(vecs, k=10, exact=True)
    approx = index.search(vecs, k=10, exact=False)
    hits = sum(len(set(e.ids) & set(a.ids)) for e, a in zip(exact, approx))
    assert hits / (10 * len(vecs)) >= 0.95


def test_open_and_search_by_vector(built, encoder) -> None:
    index, _ = built
    again = Index.open(index.path, encoder=encoder)
    assert len(again) == 40 and again.info()["domains"] == index.info()["domains"]
    q = encoder.encode(["int main(void) { return 0; }"])
    a = again.search(q, k=3, exact=True)[0]
    b = again.search(q[0], k=3, exact=True)[0]
    assert a.ids == b.ids
    with pytest.raises(ValueError, match=r"shape \(n, 384\)"):
        again.search(np.zeros((2, 5), dtype=np.float32))


def test_leakage_guard_drops_copies_of_the_query(built, rows) -> None:
    index, _ = built
    text = rows[7]["text"]
    near = text.replace(text.split()[3], "CHANGED", 1)
    plain = index.search([text, near], k=5, exact=True)
    assert plain[0].ids[0] == 7 and plain[1].ids[0] == 7
    guarded = index.search([text, near], k=5, exact=True, guard=True)
    for res in guarded:
        assert 7 not in res.ids and len(res.neighbors) == 5 and res.dropped >= 1
        assert res.ids == [i for i in plain[res.query_index].ids if i != 7][:4] + res.ids[4:]
    vec = index.store.get_vectors([7])
    assert index.search(vec, k=5, exact=True, guard=[text])[0].dropped >= 1
    with pytest.raises(ValueError, match="guard=True needs text queries"):
        index.search(vec, guard=True)


def test_open_errors(built, tmp_path: Path) -> None:
    index, _ = built
    with pytest.raises(FileNotFoundError, match="no index at"):
        Index.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidIndexError, match=r"no manifest\.json"):
        Index.open(tmp_path / "empty")
    EmbeddingStore.create(str(tmp_path / "plain"), 4)
    with pytest.raises(InvalidIndexError, match="not a tttnn index"):
        Index.open(tmp_path / "plain")
    # a truncated vector file is caught by the store when the index is opened
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(index.path, copy)
    vec = copy / "shards" / "00001" / "vectors.bin"
    vec.write_bytes(vec.read_bytes()[:-100])
    with pytest.raises(CorruptIndexError):
        Index.open(copy)


def test_build_refuses_a_non_empty_directory_and_bad_options(built, encoder) -> None:
    index, corpus = built
    with pytest.raises(InvalidIndexError, match="not empty; pass resume=True"):
        build_index([corpus], index.path, encoder=encoder, tokenizer=None, progress=False)
    with pytest.raises(InvalidIndexError, match=r"cannot resume .*dtype='f16'"):
        build_index(
            [corpus], index.path, encoder=encoder, tokenizer=index.meta["tokenizer"],
            vector_dtype="i8", resume=True, progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="dtype must be"):
        build_index([corpus], index.path / "x", encoder=encoder, vector_dtype="f8")


# -- resumption ---------------------------------------------------------------------------------


def _assert_same_index(a: Index, b: Index) -> None:
    n = len(a)
    assert len(b) == n
    assert a.store.shard_counts() == b.store.shard_counts()
    ids = np.arange(n)
    np.testing.assert_allclose(a.store.get_vectors(ids), b.store.get_vectors(ids), atol=2e-3)
    for i in range(n):
        assert a.store.record(i) == b.store.record(i)
        assert a.store.text_bytes(i) == b.store.text_bytes(i)
        assert a.store.tokens(i).tolist() == b.store.tokens(i).tolist()
    ma, mb = dict(a.meta), dict(b.meta)
    assert ma == mb


@pytest.fixture(scope="module")
def small(rows, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("small")
    picked = [r for r in rows if len(r["text"]) < 6000][:12]
    return write_jsonl(picked, tmp / "small.jsonl")


@pytest.mark.slow
def test_resume_after_kill_9_equals_a_clean_build(small, encoder, lm_tokenizer, tmp_path) -> None:
    clean = build_index(
        [small], tmp_path / "clean", encoder=encoder, tokenizer="smollm2-135m", shard_size=4,
        progress=False,
    )  # fmt: skip
    out = tmp_path / "killed"
    child = textwrap.dedent(
        f"""
        import time
        from tttnn.build import build_index
        build_index([{str(small)!r}], {str(out)!r}, shard_size=4, progress=False,
                    on_shard=lambda n: time.sleep(1.0))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            manifest = out / "manifest.json"
            if manifest.is_file() and json.loads(manifest.read_text())["count"] >= 4:
                break
            assert proc.poll() is None, "the child build ended before it was killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    partial = len(EmbeddingStore.open(str(out)))
    assert 4 <= partial < len(clean) and partial % 4 == 0
    assert json.loads(EmbeddingStore.open(str(out)).meta)["status"] == "building"
    resumed = build_index(
        [small], out, encoder=encoder, tokenizer="smollm2-135m", shard_size=4, resume=True,
        progress=False,
    )  # fmt: skip
    _assert_same_index(resumed, clean)
    # resuming a finished build changes nothing; another corpus is refused
    again = build_index(
        [small], out, encoder=encoder, tokenizer="smollm2-135m", resume=True, progress=False
    )
    _assert_same_index(again, clean)
    other = write_jsonl([{"text": "something else"}], tmp_path / "small.jsonl.zst")
    with pytest.raises(InvalidIndexError, match="cannot resume"):
        build_index([other], out, encoder=encoder, tokenizer="smollm2-135m", resume=True)


def test_resume_after_ctrl_c_with_chunks_equals_a_clean_build(
    small, encoder, lm_tokenizer, tmp_path
) -> None:
    kw = dict(encoder=encoder, tokenizer=lm_tokenizer, shard_size=5, chunk_tokens=96, limit=3)
    clean = build_index([small], tmp_path / "clean", progress=False, **kw)
    assert clean.info()["documents"] == 3 and len(clean) > 10

    calls = []

    def interrupt(n: int) -> None:
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index([small], tmp_path / "cut", progress=False, on_shard=interrupt, **kw)
    assert len(EmbeddingStore.open(str(tmp_path / "cut"))) == 10
    resumed = build_index([small], tmp_path / "cut", progress=False, resume=True, **kw)
    _assert_same_index(resumed, clean)

    # chunks point back to their document and reassemble it
    by_doc: dict[str, list[int]] = {}
    for i in range(len(clean)):
        by_doc.setdefault(clean.record(i)["doc_id"], []).append(i)
    texts = [json.loads(line)["text"] for line in small.read_text().splitlines()[:3]]
    for (doc_id, ids), text in zip(by_doc.items(), texts):
        assert [clean.record(i)["chunk"] for i in ids] == list(range(len(ids)))
        assert "".join(clean.store.text(i) for i in ids) == text, doc_id
        tokens = np.concatenate([clean.store.tokens(i) for i in ids]).tolist()
        assert tokens == lm_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert all(len(clean.store.tokens(i)) == 96 for i in ids[:-1])


def test_token_ids_are_stored_in_16_bits_and_a_32_bit_index_grows_in_32(
    small, encoder, lm_tokenizer, tmp_path
) -> None:
    """SmolLM2's 49,152 ids fit 16 bits: the index stores them as u16 (half the bytes) and reads
    back the tokenizer's ids and the same windows. An index of u32 ids (as built before 16-bit
    ids existed) resumes with u32 ids, and holds the same entries as a clean build."""
    kw = dict(encoder=encoder, tokenizer=lm_tokenizer, shard_size=3, progress=False)
    clean = build_index([small], tmp_path / "clean", limit=6, **kw)
    assert clean.store.token_bits == 16 and clean.meta["token_bits"] == 16
    assert clean.info()["token_bits"] == 16
    texts = [json.loads(line)["text"] for line in small.read_text().splitlines()[:6]]
    for i, text in enumerate(texts):
        tokens = clean.store.tokens(i)
        assert tokens.dtype == np.uint32
        assert tokens.tolist() == lm_tokenizer(text, add_special_tokens=False)["input_ids"]
    shard = tmp_path / "clean" / "shards" / "00000"
    n_tokens = sum(len(clean.store.tokens(i)) for i in range(3))
    assert (shard / "tokens.bin").stat().st_size == 2 * n_tokens

    # the first 3 entries as an index of u32 ids, then resumed to 6
    old = tmp_path / "old"
    src, ids = clean.store, [0, 1, 2]
    meta = {k: v for k, v in clean.meta.items() if k != "token_bits"}
    dst = EmbeddingStore.create(
        str(old), src.dim, dtype=src.dtype, metric=src.metric, shard_size=src.shard_size,
        hnsw=src.has_hnsw, with_text=True, with_tokens=True, with_records=True,
        meta=json.dumps({**meta, "status": "building", "limit": 3}),
    )  # fmt: skip
    dst.append(src.get_vectors(ids), texts=[bytes(src.text_bytes(i)) for i in ids],
               tokens=[src.tokens(i) for i in ids], records=[bytes(src.record(i)) for i in ids])  # fmt: skip
    del dst
    grown = build_index([small], old, limit=6, resume=True, **kw)
    assert grown.store.token_bits == 32 and grown.meta["token_bits"] == 32
    assert (old / "shards" / "00001" / "tokens.bin").stat().st_size == 4 * sum(
        len(grown.store.tokens(i)) for i in range(3, 6)
    )
    assert len(grown) == len(clean) == 6
    for i in range(6):
        assert grown.store.tokens(i).tolist() == clean.store.tokens(i).tolist()
    for a, b in zip(
        grown.store.pack_windows(list(range(6)), 64), clean.store.pack_windows(list(range(6)), 64)
    ):
        np.testing.assert_array_equal(a, b)


def test_an_index_refuses_another_encoder(sample_index: Path, tmp_path: Path) -> None:
    """The index records its encoder's fingerprint; a different encoder under the same name
    (other weights) would embed queries into another space: refused when it is loaded."""
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(sample_index, copy)
    store = EmbeddingStore.open(str(copy))
    meta = json.loads(store.meta)
    assert len(meta["encoder_fingerprint"]["weights_sha256"]) == 64
    assert Index.open(copy).search("int main(void)", k=1)[0].neighbors  # the recorded one: fine
    meta["encoder_fingerprint"]["weights_sha256"] = "0" * 64
    store.set_meta(json.dumps(meta))
    del store
    with pytest.raises(InvalidIndexError, match="not the one that built"):
        Index.open(copy).search("int main(void)", k=1)


def test_a_corpus_without_documents_is_an_error(tmp_path: Path, encoder) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\nnot json\n{"meta": {}}\n')
    for on_error in ("skip", "fail"):
        with pytest.raises((InvalidIndexError, ValueError), match=r"no documents|bad\.jsonl:1"):
            build_index([bad], tmp_path / on_error, encoder=encoder, tokenizer=None,
                        on_error=on_error, progress=False)  # fmt: skip


def test_a_corrupt_record_is_an_error_naming_the_file(sample_index: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(sample_index, copy)
    records = copy / "shards" / "00000" / "records.bin"
    data = bytearray(records.read_bytes())
    assert data[0:1] == b"{"
    data[0] = ord("X")  # entry 0's record is no longer JSON
    records.write_bytes(bytes(data))
    index = Index.open(copy)
    # The checksum of records.bin, at the first read of the column, names the file; every
    # record of that shard is then refused (the file is corrupt).
    for i in (0, 1):
        with pytest.raises(CorruptIndexError, match=r"00000/records\.bin.*checksum mismatch"):
            index.record(i)


def test_a_record_that_is_not_json_names_the_entry(tmp_path: Path) -> None:
    """Records intact on disk (checksums agree) whose bytes are not a record: written so by a
    writer other than tttnn's build."""
    meta = json.dumps({"kind": "tttnn.index", "format": 1, "dim": 4, "status": "complete"})
    store = EmbeddingStore.create(str(tmp_path / "idx"), 4, with_records=True, meta=meta)
    store.append(np.eye(4, dtype=np.float32)[:2], records=[b"not json", b'{"doc_id": "a"}'])
    store.release_lock()
    index = Index.open(tmp_path / "idx")
    with pytest.raises(CorruptIndexError, match=r"record of entry 0 \(records.bin of shard 0\)"):
        index.record(0)
    with pytest.raises(CorruptIndexError, match="not a record object"):
        index.record(1)


def _hits(piece_hits: list[list[tuple[int, float]]], dropped: list[int]) -> list[SearchResult]:
    return [
        SearchResult(p, [Neighbor(i, s, f"d{i}", "x", 0) for i, s in hits], d)
        for p, (hits, d) in enumerate(zip(piece_hits, dropped))
    ]


def test_merge_results_gives_each_piece_its_nearest_before_any_second() -> None:
    pieces = _hits(
        [[(1, 0.95), (2, 0.94), (3, 0.93)],  # the piece most like the index (a license header)
         [(4, 0.60), (1, 0.55), (5, 0.50)],
         [(6, 0.70), (7, 0.40)]],
        dropped=[2, 0, 1],
    )  # fmt: skip
    merged = merge_results(pieces, k=5, query_index=7)
    # rank 0 by score: 1, 6, 4; rank 1: 2 (0.94), 1 (already taken), 7 (0.40); then rank 2: 3
    assert merged.ids == [1, 6, 4, 2, 7]
    assert merged.scores == [0.95, 0.70, 0.60, 0.94, 0.40]
    assert merged.query_index == 7 and merged.dropped == 2
    assert merge_results(pieces, k=2).ids == [1, 6]
    # one piece: its own hits, in order (an opening query and a one-piece whole query agree)
    assert merge_results(pieces[:1], k=3).ids == [1, 2, 3]
    # fewer distinct entries than k: all of them, each once
    assert merge_results(pieces, k=50).ids == [1, 6, 4, 2, 7, 3, 5]
    assert merge_results([], k=3).ids == []


def test_encoder_pieces_cover_the_text_each_read_whole(rows, encoder) -> None:
    text = max((r["text"] for r in rows), key=len)
    pieces = encoder.pieces(text)
    assert len(pieces) > 2 and "".join(pieces) == text
    lengths = [len(encoder.tokenizer(p)["input_ids"]) for p in pieces]
    assert max(lengths) <= encoder.max_length, lengths
    short = "a short query"
    assert encoder.pieces(short) == [short]


@pytest.mark.parametrize("span", ["opening", "whole"])
def test_texts_embedded_once_search_as_search_texts_at_every_subset(built, rows, span) -> None:
    index, _ = built
    texts = sorted((r["text"] for r in rows), key=len)[-3:]
    queries = embed_texts(index.encoder, texts, span)
    assert len(queries.vectors) == sum(queries.counts) == len(queries.owner)
    assert (max(queries.counts) > 1) == (span == "whole")
    for shards in ([0], [0, 1, 2], None):
        once, vecs = search_queries(index, queries, 5, guard=texts, exact=True, shards=shards)
        again, vecs2, counts = search_texts(
            index, texts, 5, span=span, guard=texts, exact=True, shards=shards
        )
        assert counts == queries.counts
        assert [(r.ids, r.dropped) for r in once] == [(r.ids, r.dropped) for r in again]
        assert all((a is None) == (span == "whole") for a in vecs)
        if span == "opening":
            assert all(np.array_equal(a, b) for a, b in zip(vecs, vecs2))
    with pytest.raises(ValueError, match="span must be"):
        embed_texts(index.encoder, texts, "middle")
