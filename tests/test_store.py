"""EmbeddingStore: real files in tmp_path, checked against numpy and plain Python."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tttnn
from tttnn import CorruptIndexError, EmbeddingStore
from tttnn._tttnn import StoreLockedError

TEXTS = ["naïve 東京 🙂", "", "plain ascii", "é" * 100, "line\nbreak\ttab", "\u0000nul"]


def rows(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def make(tmp_path: Path, dim: int = 8, **kw: object) -> EmbeddingStore:
    return EmbeddingStore.create(str(tmp_path / "store"), dim, **kw)  # type: ignore[arg-type]


def i8_reference(x: np.ndarray) -> np.ndarray:
    """Symmetric per-row quantization, written independently of the Rust code."""
    scale = np.abs(x).max(axis=1, keepdims=True) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round(x / safe), -127, 127)
    return (q * scale).astype(np.float32)


@pytest.mark.parametrize("dtype", ["f32", "f16", "i8"])
def test_roundtrip_every_dtype(tmp_path: Path, dtype: str) -> None:
    x = rows(23, 16, 0)
    store = make(tmp_path, 16, dtype=dtype, shard_size=10)
    assert store.append(x) == [0, 1, 2]
    store = EmbeddingStore.open(str(tmp_path / "store"))
    store.verify()
    assert (len(store), store.dim, store.dtype, store.num_shards) == (23, 16, dtype, 3)
    assert store.shard_counts() == [10, 10, 3]
    ids = np.arange(23)[::-1].copy()
    got = store.get_vectors(ids)
    assert got.shape == (23, 16) and got.dtype == np.float32
    want = x[ids]
    if dtype == "f32":
        np.testing.assert_array_equal(got, want)
    elif dtype == "f16":
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
    else:
        scale = np.abs(want).max(axis=1, keepdims=True) / 127.0
        # Within half a quantization step of the input, and equal to the numpy reference except
        # where round-half-even and round-half-away differ (an exact tie).
        assert np.all(np.abs(got - want) <= scale * 0.5 * (1 + 1e-5) + 1e-7)
        np.testing.assert_allclose(got, i8_reference(want), atol=float(scale.max()) + 1e-7)
        assert np.mean(np.isclose(got, i8_reference(want), atol=1e-6)) > 0.99
    assert store.get_vectors([]).shape == (0, 16)


def test_zero_vector_and_list_input(tmp_path: Path) -> None:
    store = make(tmp_path, 3, dtype="i8")
    store.append([[0.0, 0.0, 0.0], [1, -2, 3]])
    np.testing.assert_array_equal(store.get_vectors([0]), np.zeros((1, 3), np.float32))
    want = i8_reference(np.array([[1, -2, 3]], np.float32))
    np.testing.assert_allclose(store.get_vectors([1]), want, rtol=1e-6)


def test_float64_and_float16_are_converted(tmp_path: Path) -> None:
    x = rows(5, 4, 1)
    store = make(tmp_path, 4)
    store.append(x.astype(np.float64))
    store.append(x.astype(np.float16))
    store.append(np.asfortranarray(x))  # non-contiguous layout is copied
    got = store.get_vectors(np.arange(15))
    np.testing.assert_array_equal(got[:5], x)
    np.testing.assert_array_equal(got[5:10], x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(got[10:], x)


def test_text_tokens_records_multi_shard(tmp_path: Path) -> None:
    n = 14
    store = make(tmp_path, 4, shard_size=4, with_text=True, with_tokens=True, with_records=True)
    texts = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(n)]
    toks = [np.arange(i * 3, dtype=np.uint32) + i for i in range(n)]
    recs = [json.dumps({"i": i, "domain": "πβ"}).encode() for i in range(n)]
    half = n // 2
    # Mixed input types: str and bytes texts, int64 arrays and lists for tokens.
    store.append(
        rows(half, 4, 2),
        texts=[t.encode() if i % 2 else t for i, t in enumerate(texts[:half])],
        tokens=[t.astype(np.int64) for t in toks[:half]],
        records=recs[:half],
    )
    store = EmbeddingStore.open(store.path)
    store.append(
        rows(n - half, 4, 3),
        texts=texts[half:],
        tokens=[t.tolist() for t in toks[half:]],
        records=recs[half:],
    )
    assert store.shard_counts() == [4, 3, 4, 3]
    for s in (store, EmbeddingStore.open(store.path)):
        for i in range(n):
            assert s.text(i) == texts[i]
            assert s.text_bytes(i) == texts[i].encode("utf-8")
            t = s.tokens(i)
            assert t.dtype == np.uint32
            np.testing.assert_array_equal(t, toks[i])
            assert json.loads(s.record(i)) == {"i": i, "domain": "πβ"}
        s.verify()
    for bad in (-1, n):
        with pytest.raises(IndexError):
            store.text(bad)
        with pytest.raises(IndexError):
            store.tokens(bad)


def test_columns_not_created(tmp_path: Path) -> None:
    store = make(tmp_path, 2)
    store.append(rows(2, 2, 0))
    with pytest.raises(ValueError, match="without text"):
        store.text(0)
    with pytest.raises(ValueError, match="without tokens"):
        store.append(rows(1, 2, 0), tokens=[[1]])


def test_reopen_after_append_and_meta(tmp_path: Path) -> None:
    store = make(tmp_path, 4, shard_size=5, meta='{"model": "minilm"}')
    x1, x2 = rows(7, 4, 1), rows(3, 4, 2)
    store.append(x1)
    again = EmbeddingStore.open(store.path)
    stale = EmbeddingStore.open(store.path)
    # One writer at a time: `store` holds the lock until it is dropped; readers are unaffected.
    with pytest.raises(StoreLockedError, match="another writer"):
        again.append(x2)
    assert again.search(x1[:1], 1)[0].tolist() == [[0]]
    path = store.path
    del store
    assert again.append(x2) == [2]
    assert len(again) == 10 and len(stale) == 7  # an older handle sees its own sealed state
    del again
    # A handle opened before another writer appended must not write over its shards.
    with pytest.raises(RuntimeError, match="changed by another writer"):
        stale.append(x2)
    del stale
    final = EmbeddingStore.open(path)
    np.testing.assert_array_equal(final.get_vectors(np.arange(10)), np.vstack([x1, x2]))
    assert json.loads(final.meta) == {"model": "minilm"}
    final.set_meta('{"model": "x", "n": [1, 2]}')
    assert json.loads(EmbeddingStore.open(path).meta) == {"model": "x", "n": [1, 2]}
    with pytest.raises(ValueError, match="JSON object"):
        final.set_meta("[1]")
    with pytest.raises(ValueError, match="valid JSON"):
        final.set_meta("{nope")
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["format"] == "tttnn-store" and manifest["count"] == 10
    assert [s["start"] for s in manifest["shards"]] == [0, 5, 7]


def test_bad_vectors(tmp_path: Path) -> None:
    store = make(tmp_path, 4, dtype="f16")
    with pytest.raises(ValueError, match="dimension 3"):
        store.append(rows(2, 3, 0))
    with pytest.raises(ValueError, match="2-D"):
        store.append(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        store.append(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="floating-point"):
        store.append(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(TypeError):
        store.append("abcd")  # type: ignore[arg-type]
    x = rows(3, 4, 0)
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        store.append(x)
    x[2, 1] = np.inf
    with pytest.raises(ValueError, match="row 2"):
        store.append(x)
    x[2, 1] = 1e6
    with pytest.raises(ValueError, match="f16"):
        store.append(x)
    assert len(store) == 0 and store.num_shards == 0
    with pytest.raises(ValueError, match="dtype"):
        make(tmp_path / "b", 4, dtype="f64")
    with pytest.raises(ValueError, match="metric"):
        make(tmp_path / "c", 4, metric="manhattan")
    with pytest.raises(ValueError, match="dim"):
        make(tmp_path / "d", 0)


def test_bad_columns(tmp_path: Path) -> None:
    store = make(tmp_path, 2, with_text=True, with_tokens=True)
    x = rows(2, 2, 0)
    tok = [[1, 2], [3]]
    with pytest.raises(ValueError, match="2 vectors"):
        store.append(x, texts=["a"], tokens=tok)
    with pytest.raises(ValueError, match="2 vectors"):
        store.append(x, texts=["a", "b"], tokens=tok[:1])
    with pytest.raises(ValueError, match="pass text"):
        store.append(x, tokens=tok)
    with pytest.raises(ValueError, match="text 1 is not valid UTF-8"):
        store.append(x, texts=[b"ok", b"\xff\xfe"], tokens=tok)
    with pytest.raises(TypeError, match="single str"):
        store.append(x, texts="ab", tokens=tok)
    with pytest.raises(ValueError, match="outside"):
        store.append(x, texts=["a", "b"], tokens=[[1], [-1]])
    with pytest.raises(ValueError, match="integers"):
        store.append(x, texts=["a", "b"], tokens=[[1.5], [1]])
    with pytest.raises(ValueError, match="records"):
        store.append(x, texts=["a", "b"], tokens=tok, records=[b"", b""])
    assert len(store) == 0
    store.append(x, texts=["a", "b"], tokens=[[], np.array([], dtype=np.uint32)])
    assert store.tokens(0).size == 0


def test_open_needs_a_store_and_create_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        EmbeddingStore.open(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        EmbeddingStore.open(str(tmp_path / "empty"))
    store = make(tmp_path, 2)
    with pytest.raises(FileExistsError):
        make(tmp_path, 2)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        EmbeddingStore.create(str(tmp_path / "junk"), 2)
    store.append(rows(3, 2, 0))
    os.remove(tmp_path / "store" / "shards" / "00000" / "vectors.bin")
    with pytest.raises(FileNotFoundError, match=r"vectors\.bin"):
        EmbeddingStore.open(store.path)


def sealed_store(tmp_path: Path) -> Path:
    store = make(tmp_path, 8, dtype="f32", shard_size=6, with_text=True)
    store.append(rows(10, 8, 0), texts=[f"t{i}" for i in range(10)])
    return tmp_path / "store"


@pytest.mark.parametrize("name", ["vectors.bin", "text.bin", "text.off"])
def test_truncated_file(tmp_path: Path, name: str) -> None:
    root = sealed_store(tmp_path)
    p = root / "shards" / "00001" / name
    data = p.read_bytes()
    p.write_bytes(data[:-1])
    with pytest.raises(CorruptIndexError, match="truncated"):
        EmbeddingStore.open(str(root))
    p.write_bytes(data + b"\0")
    with pytest.raises(CorruptIndexError):
        EmbeddingStore.open(str(root))
    p.write_bytes(data)
    EmbeddingStore.open(str(root)).verify()


@pytest.mark.parametrize("name", ["vectors.bin", "text.bin", "text.off"])
def test_flipped_byte_fails_verify(tmp_path: Path, name: str) -> None:
    root = sealed_store(tmp_path)
    p = root / "shards" / "00000" / name
    data = bytearray(p.read_bytes())
    data[len(data) - 3] ^= 0x10  # in the payload, not the header
    p.write_bytes(bytes(data))
    store = EmbeddingStore.open(str(root))  # open reads headers only
    with pytest.raises(CorruptIndexError, match="checksum"):
        store.verify()


def test_header_corruption_detected_at_open(tmp_path: Path) -> None:
    root = sealed_store(tmp_path)
    p = root / "shards" / "00000" / "vectors.bin"
    data = bytearray(p.read_bytes())
    data[16] ^= 1  # the dim field
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="header checksum"):
        EmbeddingStore.open(str(root))
    data[16] ^= 1
    data[0:8] = b"NOTMAGIC"
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="magic"):
        EmbeddingStore.open(str(root))


def test_unknown_versions(tmp_path: Path) -> None:
    root = sealed_store(tmp_path)
    p = root / "shards" / "00000" / "vectors.bin"
    data = bytearray(p.read_bytes())
    data[8:12] = (7).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="version 7"):
        EmbeddingStore.open(str(root))
    data[8:12] = (1).to_bytes(4, "little")
    p.write_bytes(bytes(data))
    m = root / "manifest.json"
    manifest = json.loads(m.read_text())
    manifest["version"] = 3
    m.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="version 3"):
        EmbeddingStore.open(str(root))
    manifest["version"] = 1
    manifest["count"] = 11
    m.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="checksum mismatch"):
        EmbeddingStore.open(str(root))
    del manifest["checksum"]  # would let the edit through: a manifest without one is corrupt
    m.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="no checksum"):
        EmbeddingStore.open(str(root))
    m.write_text("{not json")
    with pytest.raises(CorruptIndexError, match="JSON"):
        EmbeddingStore.open(str(root))


def test_orphans_ignored_and_overwritten(tmp_path: Path) -> None:
    root = sealed_store(tmp_path)
    (root / "shards" / "00002.tmp").mkdir()
    (root / "shards" / "00002.tmp" / "vectors.bin").write_bytes(b"half")
    (root / "shards" / "00003").mkdir()
    store = EmbeddingStore.open(str(root))
    assert len(store) == 10
    store.append(rows(2, 8, 5), texts=["a", "b"])
    store = EmbeddingStore.open(str(root))
    store.verify()
    np.testing.assert_array_equal(store.get_vectors([10, 11]), rows(2, 8, 5))
    assert not (root / "shards" / "00002.tmp").exists()


def test_exact_search_matches_numpy(tmp_path: Path) -> None:
    x, q = rows(50, 16, 0), rows(5, 16, 1)
    for metric in ("cosine", "ip", "l2"):
        store = make(tmp_path / metric, 16, metric=metric, shard_size=12)
        store.append(x)
        ids, scores = store.search(q, 5)
        assert ids.shape == (5, 5) and scores.dtype == np.float32
        if metric == "cosine":
            ref = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
                x / np.linalg.norm(x, axis=1, keepdims=True)
            ).T
            order = np.argsort(-ref, axis=1)[:, :5]
        elif metric == "ip":
            ref = q @ x.T
            order = np.argsort(-ref, axis=1)[:, :5]
        else:
            ref = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
            order = np.argsort(ref, axis=1)[:, :5]
        np.testing.assert_array_equal(ids, order)
        np.testing.assert_allclose(scores, np.take_along_axis(ref, order, 1), rtol=1e-4, atol=1e-4)
    one_ids, _ = store.search(q[0], 3)
    assert one_ids.shape == (1, 3)
    empty = make(tmp_path / "empty", 16)
    ids, scores = empty.search(q, 2)
    assert (ids == -1).all() and np.isnan(scores).all()
    with pytest.raises(ValueError, match="dimension"):
        store.search(rows(1, 3, 0), 2)
    with pytest.raises(ValueError, match="k must be positive"):
        store.search(q, 0)
    with pytest.raises(ValueError, match="HNSW"):
        store.search(q, 2, exact=False)


def test_hnsw_search_recall(tmp_path: Path) -> None:
    x, q = rows(600, 16, 0), rows(20, 16, 1)
    store = make(tmp_path, 16, shard_size=250, hnsw=True, dtype="f16")
    store.append(x)
    assert store.has_hnsw
    exact_ids, _ = store.search(q, 10)
    store = EmbeddingStore.open(store.path)
    store.verify()
    approx_ids, _ = store.search(q, 10, exact=False, ef=64)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_ids, exact_ids)])
    assert recall > 0.9
    assert approx_ids.max() >= 500  # ids of the last shard are global

    plain = make(tmp_path / "plain", 16, shard_size=250)
    plain.append(x)
    assert not plain.has_hnsw
    assert plain.build_hnsw() == 3
    assert plain.build_hnsw() == 0  # resumable: nothing left to build
    plain = EmbeddingStore.open(plain.path)
    assert plain.has_hnsw
    plain.verify()
    approx_ids, _ = plain.search(q, 10, exact=False)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx_ids, exact_ids)])
    assert recall > 0.9


def test_pack_windows_from_store(tmp_path: Path) -> None:
    store = make(tmp_path, 2, shard_size=3, with_tokens=True)
    toks = [np.arange(i * 5, dtype=np.uint32) + 100 * i for i in range(7)]
    store.append(rows(7, 2, 0), tokens=toks)
    ids = [6, 0, 3, 3]
    got = store.pack_windows(ids, 8, eos_id=1, pack_short=True)
    want = tttnn.pack_windows([toks[i] for i in ids], 8, eos_id=1, pack_short=True)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
        assert g.dtype == np.int64
    with pytest.raises(IndexError):
        store.pack_windows([7], 8)


@pytest.mark.parametrize("bits", [16, 32])
def test_token_ids_of_either_width_read_and_pack_alike(tmp_path: Path, bits: int) -> None:
    store = make(tmp_path, 2, shard_size=3, with_tokens=True, token_bits=bits)
    toks = [np.arange(i * 5, dtype=np.uint32) * 9000 % 65536 for i in range(7)]
    store.append(rows(7, 2, 0), tokens=toks)
    assert store.token_bits == bits
    store.release_lock()
    reopened = EmbeddingStore.open(str(tmp_path / "store"))
    assert reopened.token_bits == bits
    for i, t in enumerate(toks):
        got = reopened.tokens(i)
        assert got.dtype == np.uint32
        np.testing.assert_array_equal(got, t)
    want = tttnn.pack_windows([toks[i] for i in [6, 0, 3]], 8, eos_id=1, pack_short=True)
    for g, w in zip(reopened.pack_windows([6, 0, 3], 8, eos_id=1, pack_short=True), want):
        np.testing.assert_array_equal(g, w)
    # a 16-bit store refuses an id it cannot hold, naming it, and stores nothing of the batch
    big = [np.array([1], dtype=np.uint32), np.array([5, 65536], dtype=np.uint32)]
    if bits == 16:
        with pytest.raises(ValueError, match=r"token id 65536 \(tokens 1, position 1\)"):
            reopened.append(rows(2, 2, 1), tokens=big)
        assert len(reopened) == 7
    else:
        reopened.append(rows(2, 2, 1), tokens=big)
        assert reopened.tokens(8).tolist() == [5, 65536]


@pytest.mark.parametrize("bits", [0, 8, 64, -16])
def test_token_bits_other_than_16_or_32_are_refused(tmp_path: Path, bits: int) -> None:
    with pytest.raises(ValueError, match="token_bits must be 16 or 32"):
        make(tmp_path, 2, with_tokens=True, token_bits=bits)
    assert not (tmp_path / "store").exists()


CHILD = r"""
import sys, numpy as np
from tttnn import EmbeddingStore
path, batch, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = EmbeddingStore.open(path)
while True:
    j = len(store) // batch
    rng = np.random.default_rng(j)
    x = rng.standard_normal((batch, dim)).astype(np.float32)
    store.append(x, texts=[f"batch {j} row {i} 🙂" * 20 for i in range(batch)],
                 tokens=[np.full(50, j, np.uint32)] * batch)
    print(j, flush=True)
"""


def expected_batch(j: int, batch: int, dim: int) -> np.ndarray:
    return np.random.default_rng(j).standard_normal((batch, dim)).astype(np.float32)


@pytest.mark.slow
def test_kill_9_during_append_leaves_last_sealed_state(tmp_path: Path) -> None:
    batch, dim = 3000, 64
    root = tmp_path / "store"
    # shard_size 1000: one append seals three shards, so a kill can land between them.
    EmbeddingStore.create(str(root), dim, shard_size=1000, with_text=True, with_tokens=True)
    rng = np.random.default_rng(0)
    for _round in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(batch), str(dim)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one append done
        time.sleep(float(rng.uniform(0.0, 0.2)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        store = EmbeddingStore.open(str(root))
        store.verify()
        n = len(store)
        assert n > 0 and n % 1000 == 0  # whole shards only
        assert store.shard_counts() == [1000] * (n // 1000)
        got = store.get_vectors(np.arange(n))
        for start in range(0, n, batch):
            j = start // batch
            want = expected_batch(j, batch, dim)[: n - start]
            np.testing.assert_array_equal(got[start : start + batch], want)
        assert store.text(n - 1) == f"batch {(n - 1) // batch} row {(n - 1) % batch} 🙂" * 20
        assert (store.tokens(n - 1) == (n - 1) // batch).all()
        # Cut the store back to whole batches for the next round's child (it numbers batches by
        # len // batch): trim by rewriting nothing, just appending the missing rows of the batch.
        rest = (-n) % batch
        if rest:
            j = n // batch
            x = expected_batch(j, batch, dim)[batch - rest :]
            store.append(
                x,
                texts=[f"batch {j} row {i} 🙂" * 20 for i in range(batch - rest, batch)],
                tokens=[np.full(50, j, np.uint32)] * rest,
            )
        del store  # this handle wrote: it holds the writer lock until dropped
        EmbeddingStore.open(str(root)).verify()
