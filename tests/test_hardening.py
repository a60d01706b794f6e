"""A corrupted, tampered or concurrently written store never crashes the process and never
answers wrong without an error. Each test is a regression test for one such failure: a segfault
or abort (run in a child process, so the test fails instead of pytest dying), a silent wrong
answer, or a panic crossing into Python."""

from __future__ import annotations

import json
import os
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
