"""The writer lock, with real processes: a second writer fails with the holder's pid, a writer
killed with SIGKILL leaves nothing stuck, readers are never blocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tttnn.lock import LOCK_FILE, LockedError, WriterLock, exclusive_writer

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock: POSIX only")

# A writer in its own process: takes the lock (or reports that it could not), then holds it until
# its stdin closes. `go` (optional) is a file to wait for, so several can start at once.
WRITER = r"""
import os, sys, time
from tttnn.lock import LockedError, exclusive_writer
directory, go = sys.argv[1], sys.argv[2]
while go and not os.path.exists(go):
    time.sleep(0.005)
try:
    with exclusive_writer(directory, what="run"):
        print("held", flush=True)
        sys.stdin.read()
except LockedError as e:
    print(f"locked {e.holder_pid}", flush=True)
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
    holder = start_writer(run)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        (run / "results.jsonl").write_text("{}\n")
        # another process: refused, told who holds the lock
        other = subprocess.run(
            [sys.executable, "-c", WRITER, str(run), ""], capture_output=True, text=True, timeout=60
        )
        assert other.stdout == f"locked {holder.pid}\n"
        # this process too, with a message naming the directory and the holder
        locked = rf"^run directory {run} is locked .*pid {holder.pid}"
        with pytest.raises(LockedError, match=locked), exclusive_writer(run, what="run"):
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
    with exclusive_writer(run, what="run") as lock:
        assert lock.held
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not lock.held


def test_one_winner_among_concurrent_writers(tmp_path: Path) -> None:
    run, go = tmp_path / "run", tmp_path / "go"
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
        assert sorted(lines) == ["held\n"] + [f"locked {winners[0].pid}\n"] * 3
    finally:
        for p in procs:
            p.communicate(timeout=30)
    assert all(p.returncode == 0 for p in procs)


def test_same_process_lock_and_release(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "new" / "dir", what="index")
    assert not lock.held
    lock.acquire()  # creates the directory
    try:
        assert lock.held and lock.path.parent.is_dir()
        # a lock belongs to an open file: a second one in this process is refused as well
        mine = r"^index directory .* \(this process\)"
        with (
            pytest.raises(LockedError, match=mine) as info,
            exclusive_writer(lock.directory, "index"),
        ):
            pass
        assert info.value.holder_pid == os.getpid()
        assert info.value.directory == lock.directory
        with pytest.raises(RuntimeError, match="already held"):
            lock.acquire()
    finally:
        lock.release()
    lock.release()  # idempotent
    with exclusive_writer(lock.directory):
        pass


def test_unreadable_holder_record_still_gives_a_clear_error(tmp_path: Path) -> None:
    with exclusive_writer(tmp_path, what="run"):
        (tmp_path / LOCK_FILE).write_text("garbage")  # e.g. the holder has not written it yet
        with pytest.raises(LockedError, match="pid is not recorded") as info:
            WriterLock(tmp_path, "run").acquire()
        assert info.value.holder_pid is None
