"""The same package on every Ray node: a cluster tttnn joins gets the driver's tttnn package
(`runtime_env` `py_modules`, `tttnn.distributed.cluster.ship_env`), and the worker pool refuses
a worker that runs another tttnn version or core build (`package_identity`).

One local cluster for the module (`ray.cluster_utils.Cluster`, a head node of 2 logical CPUs)
that this process does not join itself: each test joins it as a job of its own, the way a
driver on another machine would, and leaves.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import tttnn  # noqa: E402
from tttnn.config import RayConfig  # noqa: E402
from tttnn.distributed.cluster import connect, package_identity, ship_env  # noqa: E402
from tttnn.distributed.pool import PoolWorker, Started, WorkerPool  # noqa: E402

WORKER = RayConfig(ray=True, cpus_per_worker=0.5)


@pytest.fixture(scope="module")
def head(ray_token_auth):
    """The cluster, with token authentication on (tttnn joins no other)."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's session: this one joins as a driver would
        ray.shutdown()
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})  # fmt: skip
    yield c
    ray.shutdown()
    c.shutdown()


def _other_package(tmp_path: Path, change: str) -> tuple[Path, dict[str, str]]:
    """A copy of this tttnn package, really different: another `__version__`, or a core
    extension file with other bytes (one more at its end: it loads the same)."""
    copy = tmp_path / "tttnn"
    shutil.copytree(Path(tttnn.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    mine = package_identity()
    if change == "version":
        other = f"{mine['version']}+other"
        with open(copy / "__init__.py", "a", encoding="utf-8") as f:
            f.write(f"\n__version__ = {other!r}\n")
        return copy, {"version": other, "core": mine["core"]}
    core = copy / Path(tttnn._tttnn.__file__).name
    with open(core, "ab") as f:
        f.write(b"\0")
    return copy, {"version": mine["version"], "core": hashlib.sha256(core.read_bytes()).hexdigest()}


def _started(pool: WorkerPool, n: int, timeout: float = 180.0) -> list[Started]:
    seen: list[Started] = []
    end = time.monotonic() + timeout
    while len(seen) < n and time.monotonic() < end:
        seen += [e for e in pool.wait() if isinstance(e, Started)]
    assert len(seen) == n, f"{len(seen)} of {n} workers started in {timeout:.0f} s"
    return seen


@pytest.mark.slow
def test_a_joined_cluster_s_workers_run_the_shipped_package(head):
    """`connect(address)` ships this package: the workers import it from the copy Ray unpacked
    on the node (not from the driver's directory), and it is the same build."""
    assert connect(head.address)
    try:
        assert ray.get_runtime_context().runtime_env.get("py_modules")
        pool = WorkerPool(PoolWorker, (), WORKER, 2, what="worker")
        try:
            _started(pool, 2)
            found = ray.get([a.placed.remote() for a in pool.actors])
        finally:
            pool.close()
    finally:
        ray.shutdown()
    mine = package_identity()
    for f in found:
        assert (f["version"], f["core"]) == (mine["version"], mine["core"])
        assert Path(f["path"]).name == "tttnn" and Path(f["path"]) != Path(mine["path"])
    assert ship_env()["py_modules"] == [mine["path"]]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["version", "core"])
def test_a_worker_with_another_tttnn_is_refused(head, tmp_path, change):
    """A job whose workers import another tttnn (here: a copy with another version, or another
    core build, shipped by the job's own runtime_env) stops at the first worker's start, with
    an error naming both, and no worker replaced: it is not a death to retry."""
    copy, other = _other_package(tmp_path, change)
    ray.init(address=head.address, runtime_env={"py_modules": [str(copy)]}, log_to_driver=False)
    try:
        pool = WorkerPool(PoolWorker, (), WORKER, 1, what="build worker")
        events = []
        try:
            with pytest.raises(RuntimeError, match="every node must run the driver's package") as err:  # fmt: skip
                end = time.monotonic() + 180
                while time.monotonic() < end:
                    events += pool.wait()
        finally:
            pool.close()
        assert pool.replaced == 0 and not any(isinstance(e, Started) for e in events)
    finally:
        ray.shutdown()
    mine = package_identity()
    message = str(err.value)
    assert f"runs tttnn {other['version']} (core sha256 {other['core'][:12]}, from " in message
    assert f"this driver runs tttnn {mine['version']} (core sha256 {mine['core'][:12]}" in message
    assert (other["version"] != mine["version"]) == (change == "version")
    assert (other["core"] != mine["core"]) == (change == "core")
