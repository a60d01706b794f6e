"""The evaluation over Ray workers (`tttnn eval --ray`): one local cluster for the module
(`ray_cluster`: one node of 4 logical CPUs), the shipped sample index served by shard actors, a
tiny Llama with SmolLM2's vocabulary. The rows of 2 workers equal those of one process (timings aside; bits per byte to
1e-7, the rounding of another torch thread count); a worker killed mid-document has its document
re-run; the driver stays the only writer."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import SAMPLE_TEST
from tttnn import jobs
from tttnn.config import EvalConfig
from tttnn.evaluate import results_of, run_eval

ray = pytest.importorskip("ray")

RAY_NODE_CPUS = (4,)  # the `ray_cluster` fixture (conftest.py): a worker of 2 CPUs fits one node


def config(index: Path, model: Path, out: Path, **kw) -> EvalConfig:
    base = dict(
        index=str(index), data=[str(SAMPLE_TEST)], out=str(out), model=str(model), neighbors=3,
        eval_at=(0, 1, 3), max_length=64, lr=1e-3, windows_per_neighbor=1, limit=8,
        autocast_dtype="fp32", progress=False, exact=True,
    )  # fmt: skip
    base.update(kw)
    return EvalConfig.from_flat(**base)


def rows_by_id(run: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    out = {r["doc_id"]: r for r in rows}
    assert len(out) == len(rows), "a document was written twice"
    return out


def results(run: Path) -> dict[str, dict]:
    """The rows without what may differ between two runs of the same settings: timings and
    where they ran (the workers run `cpus_per_worker` torch threads, this process all cores)."""
    return {i: results_of(r) for i, r in rows_by_id(run).items()}


def assert_same(got: dict[str, dict], want: dict[str, dict]) -> None:
    """The same rows; bits per byte to 1e-7 relative, not bitwise: the workers train on
    `cpus_per_worker` torch threads, this process on all cores, and torch's CPU kernels round
    differently at another thread count (seen with torch 2.15: 1e-9 relative)."""
    assert got.keys() == want.keys()
    for i, row in got.items():
        assert {**row, "bpb": None} == {**want[i], "bpb": None}, i
        assert row["bpb"] == pytest.approx(want[i]["bpb"], rel=1e-7), i


@pytest.fixture(scope="module")
def single(sample_index, tiny_lm, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("single") / "run"
    run_eval(config(sample_index, tiny_lm, run))
    return run


def _descends_from_us(pid: int) -> bool:
    """`pid` is a descendant of this process (the local cluster this module started), not a
    worker of another Ray cluster on the machine."""
    me = os.getpid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
        if pid == me:
            return True
    return False


def worker_pids() -> list[int]:
    """Processes of live TTT workers of this module's cluster (Ray names an actor's process
    after its class)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::TTTWorker") and _descends_from_us(int(p.name)):
                pids.append(int(p.name))
    return pids


@pytest.mark.slow
def test_two_workers_write_the_rows_of_one_process(
    ray_cluster, sample_index, tiny_lm, single, tmp_path
):
    run = tmp_path / "ray"
    summary = jobs.evaluate(config(sample_index, tiny_lm, run, ray=True, workers=2))
    assert (summary.ok, summary.failed) == (8, 0)
    one, two = results(single), results(run)
    assert all(r["status"] == "ok" for r in one.values())
    assert_same(two, one)
    # resuming over Ray: nothing left to do, nothing written twice
    summary = jobs.evaluate(config(sample_index, tiny_lm, run, ray=True, workers=2))
    assert (summary.ok, summary.resumed) == (0, 8)
    assert_same(results(run), one)


@pytest.mark.slow
def test_whole_document_queries_give_on_ray_the_rows_of_one_process(
    ray_cluster, sample_index, tiny_lm, tmp_path
):
    here, there = tmp_path / "here", tmp_path / "ray"
    run_eval(config(sample_index, tiny_lm, here, query_span="whole", limit=3))
    summary = jobs.evaluate(
        config(sample_index, tiny_lm, there, query_span="whole", limit=3, ray=True, workers=2)
    )
    assert (summary.ok, summary.failed) == (3, 0)
    got = results(there)
    assert all(r["query_pieces"] > 1 for r in got.values()), got  # several pieces each
    assert_same(got, results(here))


@pytest.mark.slow
def test_a_worker_killed_mid_document_has_its_document_rerun(
    ray_cluster, sample_index, tiny_lm, single, tmp_path
):
    run = tmp_path / "killed"
    cfg = config(sample_index, tiny_lm, run, ray=True, workers=2)
    outcome: dict = {}
    t = threading.Thread(target=lambda: outcome.update(summary=jobs.evaluate(cfg)))
    t.start()
    # once a row is written both workers are busy (two documents queued on each): kill one
    deadline = time.monotonic() + 300
    killed = None
    while killed is None and t.is_alive() and time.monotonic() < deadline:
        rows = run / "results.jsonl"
        if rows.exists() and rows.read_text().count("\n") >= 1 and len(worker_pids()) == 2:
            killed = worker_pids()[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    t.join(timeout=600)
    assert killed is not None, "no worker was seen busy"
    summary = outcome["summary"]
    assert (summary.ok, summary.failed) == (8, 0)
    assert_same(results(run), results(single))
    assert sum(r.get("redispatched", 0) for r in rows_by_id(run).values()) >= 1


def test_default_sizes_leave_room_for_the_shard_actors(tmp_path):
    from tttnn.distributed.evaluate import _sizes

    cfg = EvalConfig.from_flat(index=str(tmp_path), data=[str(SAMPLE_TEST)], out=str(tmp_path / "r"),
                               ray=True)  # fmt: skip
    # a local cluster grows its logical CPUs to fit; a cluster that cannot grow gets fewer workers
    assert _sizes(cfg, 2, 0, fit=False) == (2, 2)
    assert _sizes(cfg, 2, 0, fit=True) == (1, 1)  # 2 x 1 CPU + 2 x 0.25 would not fit in 2
    assert _sizes(cfg, 10, 0, fit=True) == (8, 8)  # 8 x 1.25 = 10
    gpu = EvalConfig.from_dict(
        {**cfg.to_dict(), "ray": {**cfg.ray.to_dict(), "gpus_per_worker": 1}}
    )
    assert _sizes(gpu, 64, 4, fit=True) == (4, 4)  # one per GPU
    asked = EvalConfig.from_dict({**cfg.to_dict(), "ray": {**cfg.ray.to_dict(), "workers": 3}})
    assert _sizes(asked, 2, 0, fit=True) == (3, 3)  # --workers is taken as given


@pytest.mark.slow
def test_a_worker_the_cluster_cannot_place_is_given_up(
    ray_cluster, sample_index, tiny_lm, single, tmp_path, monkeypatch
):
    import tttnn.distributed.cluster as dc

    # 4 logical CPUs: 2 shard actors (0.5) and one worker of 2 CPUs fit, the second never does;
    # the documents sent to it go to the first once it is given up
    wait_for_free_cpus(4)  # the actors the tests before killed
    # long enough for the worker that fits to start (its process and imports) on a loaded
    # 2-core machine: at 30 s the test failed once of 3 runs beside two evaluations
    monkeypatch.setattr(dc, "SCHEDULE_TIMEOUT", 90.0)
    run = tmp_path / "one_fits"
    summary = jobs.evaluate(
        config(sample_index, tiny_lm, run, ray=True, workers=2, cpus_per_worker=2)
    )
    assert (summary.ok, summary.failed) == (8, 0)
    assert_same(results(run), results(single))
    # a worker larger than every node: an error before placement, naming the request and the
    # nodes (the placement timeout, cut to 3 s, would raise another error; the busy-cluster case
    # of that timeout is the build's test: both use the one WorkerPool)
    from tttnn.distributed.cluster import ClusterSettingError

    monkeypatch.setattr(dc, "SCHEDULE_TIMEOUT", 3.0)
    with pytest.raises(ClusterSettingError, match=r"each TTT worker asks for 8 CPU and no node "
                       r"of the cluster has that much"):  # fmt: skip
        jobs.evaluate(config(sample_index, tiny_lm, tmp_path / "none", ray=True, workers=1,
                             cpus_per_worker=8))  # fmt: skip


def wait_for_free_cpus(n: float, timeout: float = 120.0) -> None:
    """Until the cluster has `n` CPUs free (Ray frees a killed actor's CPUs asynchronously)."""
    import time

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < n:
        assert time.monotonic() < deadline, f"CPUs still held: {ray.available_resources()}"
        time.sleep(0.2)
