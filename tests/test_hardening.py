"""A corrupted, tampered or concurrently written store never crashes the process and never
answers wrong without an error. Each test is a regression test for one such failure: a segfault
or abort (run in a child process, so the test fails instead of pytest dying), a silent wrong
answer, or a panic crossing into Python."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tttnn
from tttnn import CorruptIndexError, EmbeddingStore
from tttnn._tttnn import StoreLockedError


def rows(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def graph_offsets(path: Path) -> tuple[int, int, int]:
    """(offset of the graph header, node count, offset of node 0) in a usearch file."""
    data = path.read_bytes()
    n, cols = struct.unpack_from("<II", data, 0)
    graph = 8 + n * cols + 64
    return graph, n, graph + 40 + 2 * n


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def hnsw_store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    store = EmbeddingStore.create(str(path), 16, hnsw=True)
    store.append(rows(200, 16, 0))
    return path


def test_corrupt_hnsw_link_is_an_error_not_a_segfault(hnsw_store: Path) -> None:
    graph = hnsw_store / "shards" / "00000" / "hnsw.usearch"
    _, _, node0 = graph_offsets(graph)
    data = bytearray(graph.read_bytes())
    (count,) = struct.unpack_from("<I", data, node0 + 10)
    assert count > 0
    struct.pack_into("<I", data, node0 + 14, 10**6)  # node 0's first base-level link
    graph.write_bytes(bytes(data))
    child = run_child(
        f"""
        import numpy as np
        from tttnn import CorruptIndexError, EmbeddingStore
        store = EmbeddingStore.open({str(hnsw_store)!r})  # opening is still constant time
        print(store.search(np.ones(16, np.float32), 5)[0].tolist())  # exact search is unaffected
        try:
            store.search(np.ones(16, np.float32), 5, exact=False)
        except CorruptIndexError as e:
            print("CorruptIndexError", e)
        """
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert "CorruptIndexError" in child.stdout and "hnsw.usearch" in child.stdout
    assert "slot 1000000" in child.stdout
    with pytest.raises(CorruptIndexError, match=r"hnsw\.usearch"):
        EmbeddingStore.open(str(hnsw_store)).verify()


# Graph header fields: 1 connectivity, 2 base-level connectivity, 3 max level, 4 entry node.
# Connectivity 2 or 3 and base 17 made usearch abort (SIGABRT); connectivity 0 searched silently.
@pytest.mark.parametrize(
    ("field", "value"), [(1, 2), (1, 3), (1, 0), (2, 17), (3, 10**9), (4, 10**9)]
)
def test_corrupt_hnsw_header_is_an_error_not_an_abort(
    hnsw_store: Path, field: int, value: int
) -> None:
    graph = hnsw_store / "shards" / "00000" / "hnsw.usearch"
    header, _, _ = graph_offsets(graph)
    data = bytearray(graph.read_bytes())
    struct.pack_into("<Q", data, header + 8 * field, value)
    graph.write_bytes(bytes(data))
    child = run_child(
        f"""
        import numpy as np
        from tttnn import CorruptIndexError, EmbeddingStore
        try:
            store = EmbeddingStore.open({str(hnsw_store)!r})
            store.search(np.ones(16, np.float32), 5, exact=False)
        except CorruptIndexError as e:
            print("CorruptIndexError", e)
        """
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert "CorruptIndexError" in child.stdout and "HNSW graph" in child.stdout


@pytest.mark.parametrize(("key", "value"), [("metric", "ip"), ("hnsw_scale", 0.5)])
def test_manifest_edited_by_hand_is_corrupt(hnsw_store: Path, key: str, value: object) -> None:
    m = hnsw_store / "manifest.json"
    manifest = json.loads(m.read_text())
    assert "checksum" in manifest
    if key == "metric":
        manifest["metric"] = value
    else:
        manifest["shards"][0]["hnsw_scale"] = value
    m.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(CorruptIndexError, match=r"manifest\.json.*checksum mismatch"):
        EmbeddingStore.open(str(hnsw_store))


def norms_offset(n: int, dim: int, elem: int) -> int:
    data_end = 64 + n * dim * elem
    return (data_end + 63) // 64 * 64


def test_inconsistent_norm_does_not_win_silently(tmp_path: Path) -> None:
    path = tmp_path / "s"
    x = rows(50, 8, 1)
    EmbeddingStore.create(str(path), 8, shard_size=25).append(x)
    vec = path / "shards" / "00001" / "vectors.bin"
    data = bytearray(vec.read_bytes())
    struct.pack_into("<f", data, norms_offset(25, 8, 4) + 4 * 3, 0.001)  # row 28
    vec.write_bytes(bytes(data))
    store = EmbeddingStore.open(str(path))
    # A norm that is finite and positive passes the norm check; the file's checksum (at the
    # shard's first search) catches it before a score outside [-1, 1] could.
    with pytest.raises(CorruptIndexError, match=r"00001/vectors\.bin.*checksum mismatch"):
        store.search(x[28], 3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_norm_is_flagged(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "s"
    x = rows(20, 8, 1)
    EmbeddingStore.create(str(path), 8, metric="l2").append(x)
    vec = path / "shards" / "00000" / "vectors.bin"
    data = bytearray(vec.read_bytes())
    struct.pack_into("<f", data, norms_offset(20, 8, 4) + 4 * 7, bad)
    vec.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="row 7 has norm"):
        EmbeddingStore.open(str(path)).search(x[0], 3)


@pytest.mark.parametrize("nq", [1, 40])  # the row-scan and the matrix-product paths
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_nan_in_f16_row_is_flagged_not_dropped(tmp_path: Path, nq: int, metric: str) -> None:
    path = tmp_path / "s"
    x = rows(30, 8, 2)
    EmbeddingStore.create(str(path), 8, dtype="f16", metric=metric).append(x)
    vec = path / "shards" / "00000" / "vectors.bin"
    data = bytearray(vec.read_bytes())
    struct.pack_into("<H", data, 64 + 2 * (5 * 8 + 3), 0x7E00)  # f16 NaN in row 5
    vec.write_bytes(bytes(data))
    store = EmbeddingStore.open(str(path))
    # The checksum of the vectors (at the shard's first search) sees the changed value; the
    # error is remembered for the process.
    for _ in range(2):
        with pytest.raises(CorruptIndexError, match=r"vectors\.bin.*checksum mismatch"):
            store.search(rows(nq, 8, 3), 3)


def test_non_finite_values_are_refused_at_append(tmp_path: Path) -> None:
    store = EmbeddingStore.create(str(tmp_path / "s"), 4)
    x = rows(3, 4, 0)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1 has a non-finite value"):
        store.append(x)


def test_shifted_offset_is_an_error_not_a_shifted_text(tmp_path: Path) -> None:
    path = tmp_path / "s"
    texts = [f"document number {i}" for i in range(10)]
    EmbeddingStore.create(str(path), 4, with_text=True).append(rows(10, 4, 0), texts=texts)
    off = path / "shards" / "00000" / "text.off"
    data = bytearray(off.read_bytes())
    (o5,) = struct.unpack_from("<Q", data, 64 + 8 * 5)
    struct.pack_into("<Q", data, 64 + 8 * 5, o5 + 3)  # still increasing, in the file
    off.write_bytes(bytes(data))
    store = EmbeddingStore.open(str(path))
    with pytest.raises(CorruptIndexError, match=r"text\.off.*offsets checksum"):
        store.text(4)


def test_absurd_k_is_a_value_error_not_a_panic(tmp_path: Path) -> None:
    store = EmbeddingStore.create(str(tmp_path / "s"), 8, hnsw=True)
    x = rows(40, 8, 0)
    store.append(x)
    for exact in (True, False):
        with pytest.raises(ValueError, match="ask for at most 40"):
            store.search(x[:2], 2**62, exact=exact)
    ids, _ = store.search(x[:2], 50)  # k beyond the store is still padded, as before
    assert ids.shape == (2, 50) and (ids[:, 40:] == -1).all()
    ids, _ = store.search(x[:2], 5, exact=False, ef=2**62)  # a beam wider than the graph
    assert ids[:, 0].tolist() == [0, 1]
    with pytest.raises(ValueError, match="ask for at most 40"):
        tttnn.exact_search(x, x[:2], 2**62)


def test_window_allocation_too_large_is_an_error_not_an_abort() -> None:
    child = run_child(
        """
        import tttnn
        try:
            tttnn.pack_windows([[1], [2], [3]], 2**32 - 1, pad_id=7)
        except ValueError as e:
            print("ValueError", e)
        """
    )
    assert child.returncode == 0, (child.returncode, child.stderr[-2000:])
    assert "do not fit in memory" in child.stdout


def test_symlink_out_of_the_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    EmbeddingStore.create(str(path), 4, with_text=True).append(rows(3, 4, 0), texts=["a", "b", "c"])
    text = path / "shards" / "00000" / "text.bin"
    elsewhere = tmp_path / "elsewhere.bin"
    text.rename(elsewhere)
    text.symlink_to(elsewhere)
    with pytest.raises(CorruptIndexError, match="outside the store directory"):
        EmbeddingStore.open(str(path))
    # A link that stays inside the store is fine, and so is a store reached through a link.
    inside = path / "shards" / "00000" / "text.real"
    text.unlink()
    elsewhere.rename(inside)
    text.symlink_to(inside)
    assert EmbeddingStore.open(str(path)).text(1) == "b"
    (tmp_path / "link").symlink_to(path)
    assert len(EmbeddingStore.open(str(tmp_path / "link"))) == 3


WRITER = r"""
import sys, numpy as np
from tttnn import EmbeddingStore
store = EmbeddingStore.open(sys.argv[1])
store.append(np.ones((2, 4), np.float32))
print("holding", flush=True)
sys.stdin.read()  # hold the handle (and the lock) until the parent closes stdin
"""


def test_one_writer_at_a_time_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    del_me = EmbeddingStore.create(str(path), 4)
    del del_me  # the creating handle wrote the manifest: drop it to release the lock
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdin is not None
    assert writer.stdout.readline().strip() == "holding"
    store = EmbeddingStore.open(str(path))
    with pytest.raises(StoreLockedError, match=f"{path}.*another writer holds"):
        store.append(rows(1, 4, 0))
    assert isinstance(StoreLockedError("x"), BlockingIOError)
    # Readers are not affected.
    assert store.search(np.ones(4, np.float32), 1)[0].tolist() == [[0]]
    # A writer killed with SIGKILL leaves nothing stuck.
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    writer.stdin.close()
    assert EmbeddingStore.open(str(path)).append(rows(1, 4, 0)) == [1]


def test_second_writer_of_a_racing_pair_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s"
    EmbeddingStore.create(str(path), 4)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = []
    for w in writers:
        assert w.stdout is not None
        outs.append(w.stdout.readline().strip())
    errs = [w.communicate("")[1] for w in writers]
    # The writers hold on until all have tried: exactly one got the lock, the others failed
    # with the clear error and wrote nothing.
    assert outs.count("holding") == 1, (outs, errs)
    for w, out, err in zip(writers, outs, errs):
        if out != "holding":
            assert w.returncode == 1 and "StoreLockedError" in err and "another writer" in err
    store = EmbeddingStore.open(str(path))
    assert len(store) == 2
    store.verify()


def test_verify_shard_by_shard(tmp_path: Path) -> None:
    path = tmp_path / "s"
    EmbeddingStore.create(str(path), 4, shard_size=5).append(rows(15, 4, 0))
    vec = path / "shards" / "00001" / "vectors.bin"
    data = bytearray(vec.read_bytes())
    data[70] ^= 0x10
    vec.write_bytes(bytes(data))
    store = EmbeddingStore.open(str(path))
    store.verify_shard(0)
    store.verify_shard(2)
    with pytest.raises(CorruptIndexError, match=r"00001/vectors\.bin.*checksum"):
        store.verify_shard(1)
    with pytest.raises(IndexError, match="shard 3 out of range"):
        store.verify_shard(3)
    with pytest.raises(CorruptIndexError):
        store.verify()


def test_with_block_and_release_lock_free_the_writer_lock(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with EmbeddingStore.create(path, 4) as store:
        store.append(rows(2, 4, 0))
        with pytest.raises(StoreLockedError):
            EmbeddingStore.open(path).append(rows(1, 4, 1))
    other = EmbeddingStore.open(path)  # `store` is still referenced, but released its lock
    assert other.append(rows(1, 4, 1)) == [1]
    other.release_lock()
    assert EmbeddingStore.open(path).append(rows(1, 4, 2)) == [2]
    assert len(store) == 2  # still readable after its lock was released


# -- files: never written through a symbolic link -------------------------------------------------


def test_a_link_planted_in_a_store_is_never_written_through(tmp_path: Path) -> None:
    path = tmp_path / "s"
    EmbeddingStore.create(str(path), 4, shard_size=2).append(rows(3, 4, 0))
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    # The manifest's temporary name, and a leftover shard file: a plain open would write the
    # manifest (or the vectors) into victim, and the rename would leave manifest.json a link.
    (path / "manifest.json.tmp").symlink_to(victim)
    (path / "shards" / "00002.tmp").mkdir()
    (path / "shards" / "00002.tmp" / "vectors.bin").symlink_to(victim)
    store = EmbeddingStore.open(str(path))
    assert store.append(rows(1, 4, 1)) == [2]
    store.set_meta('{"a": 1}')
    del store
    assert victim.read_bytes() == b"keep"
    assert not (path / "manifest.json").is_symlink()
    store = EmbeddingStore.open(str(path))
    assert (len(store), store.meta) == (4, '{"a":1}')
    store.verify()


@pytest.mark.parametrize("where", ["manifest.json", "shards", "shards/00002"])
def test_a_link_where_the_store_writes_is_a_clear_error(tmp_path: Path, where: str) -> None:
    path = tmp_path / "s"
    EmbeddingStore.create(str(path), 4, shard_size=2).append(rows(3, 4, 0))
    link = path / where
    if link.exists():  # a link to the real thing, inside the store: it still opens
        real = path / f"{where}.real"
        link.rename(real)
        link.symlink_to(real)
    else:  # the next shard's directory, pointing out of the store
        (tmp_path / "elsewhere").mkdir()
        link.symlink_to(tmp_path / "elsewhere")
    store = EmbeddingStore.open(str(path))
    with pytest.raises(OSError, match=f"{link}: is a symbolic link"):
        if where == "manifest.json":
            store.set_meta("{}")
        else:
            store.append(rows(1, 4, 1))
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())
    assert len(EmbeddingStore.open(str(path))) == 3


def test_atomic_write_and_append_bytes(tmp_path: Path) -> None:
    from tttnn._tttnn import append_bytes, atomic_write

    target = tmp_path / "config.json"
    atomic_write(target, '{"a": 1}')
    atomic_write(str(target), b'{"a": 2}')
    assert target.read_text() == '{"a": 2}'
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    rows_file = tmp_path / "results.jsonl"
    append_bytes(rows_file, '{"doc": 1}\n')
    append_bytes(rows_file, b'{"doc": 2}\n')
    assert rows_file.read_text() == '{"doc": 1}\n{"doc": 2}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "results.jsonl"]
    # A link in place of either is refused and nothing is written through it; one at the old
    # temporary name is not followed.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "config.json.tmp").symlink_to(victim)
    atomic_write(target, b"3")
    for name, write in [("curve.png", atomic_write), ("rows.jsonl", append_bytes)]:
        (tmp_path / name).symlink_to(victim)
        with pytest.raises(OSError, match=f"{tmp_path / name}: is a symbolic link"):
            write(tmp_path / name, b"png")
    assert victim.read_bytes() == b"keep" and target.read_text() == "3"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        atomic_write(tmp_path / "nowhere" / "x", b"")
    with pytest.raises(TypeError, match="data must be str or bytes"):
        atomic_write(target, 3)  # type: ignore[arg-type]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- a full disk: the error names the file and says what happened ----------------------------------

FULL_DISK = r"""
import json, resource, sys
import numpy as np
import tttnn._tttnn as core
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: EFBIG
def attempt(what, f):
    try:
        f()
        print(json.dumps({"what": what}))
    except Exception as e:
        print(json.dumps({"what": what, "error": f"{type(e).__name__}: {e}",
                          "errno": getattr(e, "errno", None)}))
store = core.EmbeddingStore.create(sys.argv[1] + "/s", 64, dtype="i8", hnsw=True)
x = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
attempt("append", lambda: store.append(x))
big = b"x" * (limit + 1)
attempt("atomic_write", lambda: core.atomic_write(sys.argv[1] + "/config.json", big))
attempt("append_bytes", lambda: core.append_bytes(sys.argv[1] + "/rows.jsonl", big))
"""


def full_disk(tmp_path: Path) -> dict[str, dict[str, object]]:
    """What each write of the core says when a file outgrows a 300 kB size limit, which fails
    the write the way a full disk does (the graph of 2000 rows of 64 i8 codes with their links
    is the largest file of the store; its vectors file fits)."""
    (tmp_path / "config.json").write_text("old")
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path), str(300_000)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr[-2000:]
    return {r["what"]: r for r in map(json.loads, child.stdout.splitlines())}


def test_a_full_disk_while_saving_a_graph_names_the_file_and_the_cause(tmp_path: Path) -> None:
    graph = full_disk(tmp_path)["append"]
    assert "shards/00000.tmp/hnsw.usearch" in graph["error"], graph
    assert "File too large" in graph["error"] and graph["errno"] == errno.EFBIG, graph
    assert len(EmbeddingStore.open(str(tmp_path / "s"))) == 0
    assert not (tmp_path / "s" / "shards" / "00000.tmp").exists()  # its space given back


def test_a_full_disk_in_atomic_write_and_append_bytes_names_the_file(tmp_path: Path) -> None:
    got = full_disk(tmp_path)
    tmp = got["atomic_write"]
    assert str(tmp_path / ".config.json.") in tmp["error"] and tmp["errno"] == errno.EFBIG, tmp
    assert (tmp_path / "config.json").read_text() == "old"  # untouched, no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "rows.jsonl", "s"]
    rows_err = got["append_bytes"]
    assert f"{tmp_path / 'rows.jsonl'}: File too large" in rows_err["error"], rows_err
    assert rows_err["errno"] == errno.EFBIG


# -- integers beyond 64 bits: ValueError naming the argument ---------------------------------------


def test_an_int_beyond_64_bits_is_a_value_error_naming_the_argument(tmp_path: Path) -> None:
    from tttnn import _tttnn as core

    huge = 99999999999999999999
    store = EmbeddingStore.create(str(tmp_path / "s"), 4, with_text=True)
    store.append(rows(3, 4, 0), texts=["a", "b", "c"])
    q = np.ones(4, np.float32)
    cases = [
        ("ef", lambda: store.search(q, 1, ef=huge)),
        ("k", lambda: store.search(q, huge)),
        ("shards[1]", lambda: store.search(q, 1, shards=[0, -huge])),
        ("shard_size", lambda: EmbeddingStore.create(str(tmp_path / "t"), 4, shard_size=huge)),
        ("id", lambda: store.text(huge)),
        ("threads", lambda: store.build_hnsw(threads=huge)),
        ("k", lambda: core.exact_search(rows(3, 4, 0), q, huge)),
        ("pad_id", lambda: core.pack_windows([[1, 2]], 4, pad_id=huge)),
        ("num_shards", lambda: core.check_shards([0], huge)),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be at (most|least) "):
            call()
    # In range, the core's own rules answer as before.
    with pytest.raises(IndexError, match="shard -1 out of range"):
        store.verify_shard(-1)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        store.build_hnsw(threads=-1)
    assert not (tmp_path / "t").exists()


# -- verify checks what search trusts --------------------------------------------------------------


def test_a_manifest_without_its_checksum_is_corrupt(hnsw_store: Path) -> None:
    m = hnsw_store / "manifest.json"
    manifest = json.loads(m.read_text())
    del manifest["checksum"]
    manifest["metric"] = "ip"  # an edit the checksum would have caught
    m.write_text(json.dumps(manifest, indent=2))
    with pytest.raises(CorruptIndexError, match=r"manifest\.json: corrupt: no checksum"):
        EmbeddingStore.open(str(hnsw_store))


def _copy_with_record(index: Path, out: Path, entry: int, record: bytes) -> None:
    """A copy of `index` written anew by the store, its checksums right, with the record of
    `entry` replaced: damage only a record check can see."""
    src = EmbeddingStore.open(str(index))
    n = len(src)
    ids = list(range(n))
    dst = EmbeddingStore.create(
        str(out), src.dim, dtype=src.dtype, metric=src.metric, shard_size=src.shard_size,
        hnsw=src.has_hnsw, with_text=True, with_tokens=True, with_records=True, meta=src.meta,
    )  # fmt: skip
    records = [bytes(src.record(i)) for i in ids]
    records[entry] = record
    dst.append(
        src.get_vectors(ids),
        texts=[bytes(src.text_bytes(i)) for i in ids],
        tokens=[src.tokens(i) for i in ids],
        records=records,
    )


@pytest.mark.parametrize("record", [b'{"doc_id": "x", "domain": "d", "chu', b"[1, 2]", b"\xff"])
def test_index_verify_parses_every_record(
    sample_index: Path, tmp_path: Path, record: bytes
) -> None:
    from click.testing import CliRunner

    from tttnn.cli import main

    bad = tmp_path / "bad"
    _copy_with_record(sample_index, bad, 21, record)
    res = CliRunner().invoke(main, ["index", "verify", str(bad), "-q"])
    assert res.exit_code == 1, res.output
    assert "record of entry 21 (records.bin of shard 1)" in res.output, res.output
    assert "Traceback" not in res.output
    good = tmp_path / "good"
    _copy_with_record(sample_index, good, 21, EmbeddingStore.open(str(sample_index)).record(21))
    res = CliRunner().invoke(main, ["index", "verify", str(good), "-q"])
    assert res.exit_code == 0 and "verified" in res.output, res.output


def test_index_verify_refuses_a_manifest_without_its_checksum(
    sample_index: Path, tmp_path: Path
) -> None:
    import shutil

    from click.testing import CliRunner

    from tttnn.cli import main

    copy = tmp_path / "idx"
    shutil.copytree(sample_index, copy)
    m = copy / "manifest.json"
    manifest = json.loads(m.read_text())
    del manifest["checksum"]
    manifest["shards"][0]["hnsw_scale"] = 0.5
    m.write_text(json.dumps(manifest, indent=2))
    res = CliRunner().invoke(main, ["index", "verify", str(copy), "-q"])
    assert res.exit_code == 1 and "no checksum" in res.output, res.output


def test_index_build_resume_never_writes_through_a_planted_link(
    sample_index: Path, tmp_path: Path, encoder, lm_tokenizer
) -> None:
    import shutil

    from helpers import SAMPLE_TRAIN
    from tttnn.build import build_index
    from tttnn.index import Index

    copy = tmp_path / "idx"
    shutil.copytree(sample_index, copy)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (copy / "manifest.json.tmp").symlink_to(victim)
    build_index([SAMPLE_TRAIN], copy, encoder=encoder, tokenizer=lm_tokenizer, limit=40,
                shard_size=16, resume=True, progress=False)  # fmt: skip
    assert victim.read_bytes() == b"keep"
    assert not (copy / "manifest.json").is_symlink()
    assert Index.open(copy).info()["documents"] == 40


def _holder_of(lock: Path) -> int | None:
    """The pid recorded in a store's lock file: written only once its writer holds the lock."""
    try:
        return int(json.loads(lock.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@pytest.mark.parametrize("executor", ["here", "ray"])
def test_a_second_index_build_resume_is_refused_before_any_work(
    tmp_path: Path, executor: str
) -> None:
    """While one build writes an index, a second build resuming it (here or on Ray) fails with
    the holder named before it loads an encoder, starts a cluster or embeds a document (it used
    to embed for the first shard, tens of seconds on a real corpus, before failing). The second
    build names an encoder that does not exist: had it loaded models first, that would be its
    error."""
    import time

    from helpers import SAMPLE_TRAIN
    from tttnn.build import build_index

    if executor == "ray":
        pytest.importorskip("ray")
        from tttnn.distributed.build import build_distributed as second_build
    else:
        second_build = build_index

    out = tmp_path / "idx"
    args = [str(SAMPLE_TRAIN), "--out", str(out), "--limit", "200", "--shard-size", "16", "-q"]
    holder = subprocess.Popen(
        [sys.executable, "-m", "tttnn", "index", "build", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not ((out / "manifest.json").is_file() and _holder_of(out / ".lock") == holder.pid):
            assert holder.poll() is None, holder.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the build never took its lock"
            time.sleep(0.05)
        assert holder.poll() is None, "the build ended before the second one could try"
        with pytest.raises(StoreLockedError, match=rf"^{re.escape(str(out))}: .*pid {holder.pid}"):
            second_build([SAMPLE_TRAIN], out, limit=200, shard_size=16, resume=True,
                         progress=False, encoder="no-such-encoder")  # fmt: skip
        assert holder.poll() is None  # the first build goes on
    finally:
        holder.kill()
        holder.communicate(timeout=60)
