"""The writer lock of a directory (the core's, `DIR/.lock`, for stores and runs alike), with real
processes: a second writer fails with the holder's pid, a writer killed with SIGKILL leaves
nothing stuck, readers are never blocked, a symbolic link in place of the lock file is refused."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tttnn._tttnn import DirLock, EmbeddingStore, StoreLockedError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")

LOCK_FILE = ".lock"

# A writer in its own process: takes the lock (or reports that it could not), then holds it until
# its stdin closes. `go` (optional) is a file to wait for, so several can start at once.
WRITER = r"""
import os, sys, time
from tttnn._tttnn import DirLock, StoreLockedError
directory, go = sys.argv[1], sys.argv[2]
while go and not os.path.exists(go):
    time.sleep(0.005)
try:
    with DirLock(directory, what="run"):
        print("held", flush=True)
        sys.stdin.read()
except StoreLockedError as e:
    print(f"locked {e}", flush=True)
"""


def start_writer(directory: Path, go: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(go or "")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_second_writer_fails_until_the_holder_is_killed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = start_writer(run)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        (run / "results.jsonl").write_text("{}\n")
        # another process: refused at once, told who holds the lock
        other = subprocess.run(
            [sys.executable, "-c", WRITER, str(run), ""], capture_output=True, text=True, timeout=60
        )
        assert other.stdout.startswith(f"locked {run}: another writer holds this run's lock")
        assert f"(pid {holder.pid} on " in other.stdout
        assert "this process" not in other.stdout
        # this process too, with a message naming the directory and the holder
        locked = (
            rf"^{re.escape(str(run))}: another writer holds this run's lock "
            rf"\(pid {holder.pid} on "
        )
        with pytest.raises(StoreLockedError, match=locked), DirLock(run, what="run"):
            pass
        # readers are not affected
        assert (run / "results.jsonl").read_text() == "{}\n"
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
    finally:
        holder.kill()
        holder.communicate(timeout=30)  # reaps it and closes the pipes
    # the holder died without releasing anything: the kernel dropped its lock
    assert (run / LOCK_FILE).exists()
    with DirLock(run, what="run") as lock:
        assert lock.held
        record = json.loads((run / LOCK_FILE).read_text())
        assert (record["pid"], record["what"]) == (os.getpid(), "run")
    assert not lock.held


def test_one_winner_among_concurrent_writers(tmp_path: Path) -> None:
    run, go = tmp_path / "run", tmp_path / "go"
    run.mkdir()
    procs = [start_writer(run, go) for _ in range(4)]
    try:
        time.sleep(0.2)
        go.touch()
        lines = []
        for p in procs:
            assert p.stdout is not None
            lines.append(p.stdout.readline())
        winners = [p for p, line in zip(procs, lines) if line == "held\n"]
        assert len(winners) == 1, lines
        losers = [line for line in lines if line != "held\n"]
        assert len(losers) == 3 and all(f"(pid {winners[0].pid} on " in x for x in losers), lines
    finally:
        for p in procs:
            p.communicate(timeout=30)
    assert all(p.returncode == 0 for p in procs)


def test_same_process_lock_and_release(tmp_path: Path) -> None:
    lock = DirLock(tmp_path, what="index")
    assert not lock.held and lock.path == str(tmp_path)
    lock.acquire()
    try:
        assert lock.held
        # a lock belongs to an open file: a second one in this process is refused as well
        mine = r"this index's lock \(pid \d+ on .*, this process; lock file \.lock\)"
        with pytest.raises(StoreLockedError, match=mine), DirLock(tmp_path, what="index"):
            pass
        with pytest.raises(RuntimeError, match="already held"):
            lock.acquire()
    finally:
        lock.release()
    lock.release()  # idempotent
    with DirLock(tmp_path):
        pass
    with pytest.raises(FileNotFoundError):
        DirLock(tmp_path / "missing").acquire()


def test_unreadable_holder_record_still_gives_a_clear_error(tmp_path: Path) -> None:
    with DirLock(tmp_path, what="run"):
        (tmp_path / LOCK_FILE).write_text("garbage")  # e.g. the holder has not written it yet
        with pytest.raises(StoreLockedError, match="pid is not recorded"):
            DirLock(tmp_path, what="run").acquire()


def test_stores_and_runs_share_one_lock(tmp_path: Path) -> None:
    """A store's writer and a `DirLock` on its directory exclude each other: one lock file."""
    store = EmbeddingStore.create(tmp_path / "s", 4)
    index_lock = DirLock(tmp_path / "s", what="index")
    with pytest.raises(StoreLockedError, match="this index's lock"), index_lock:
        pass
    store.release_lock()
    with index_lock, pytest.raises(StoreLockedError, match="this store's lock"):
        store.append(np.ones((1, 4), dtype=np.float32))
    store.append(np.ones((1, 4), dtype=np.float32))
    assert len(store) == 1


def test_a_symbolic_link_in_place_of_the_lock_file_is_refused(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).symlink_to(precious)
    with pytest.raises(OSError, match="symbolic link"), DirLock(run, what="run"):
        pass
    # a store's writer refuses it the same way, and the link's target is untouched
    store = EmbeddingStore.create(tmp_path / "s", 4)
    store.release_lock()
    (tmp_path / "s" / LOCK_FILE).unlink()
    (tmp_path / "s" / LOCK_FILE).symlink_to(precious)
    with pytest.raises(OSError, match="symbolic link"):
        store.append(np.ones((1, 4), dtype=np.float32))
    assert precious.read_text() == "keep" and len(store) == 0
