"""The index build on Ray (`tttnn.distributed.build`): 2 workers against one process, a worker
killed mid-unit, a node lost mid-unit, a worker the cluster cannot place, an interrupted build
resumed. One local Ray cluster for the module (`ray_cluster`: two nodes of 2 logical CPUs), real
models, a corpus of two files with bad inputs in both."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import corpus_slice, write_jsonl

ray = pytest.importorskip("ray")

from tttnn._tttnn import EmbeddingStore  # noqa: E402
from tttnn.build import build_index  # noqa: E402
from tttnn.config import BuildConfig  # noqa: E402
from tttnn.distributed.build import build_distributed, plan_units  # noqa: E402
from tttnn.distributed.cluster import ClusterSettingError  # noqa: E402
from tttnn.distributed.pool import PoolWorker  # noqa: E402
from tttnn.index import Index  # noqa: E402

GROUP = 64  # tttnn.build._EMBED_GROUP: entries per encoder call
SETTINGS = {"shard_size": 32, "unit_documents": 64, "max_doc_bytes": 20_000}
# Max |diff| of a vector between the two builds when its encoder batch differs (a group of 64
# entries cut at a file boundary): bf16 autocast on this CPU, f16 storage. Measured: see the test.
STRADDLE_BOUND = 2e-2


NODE_CPUS = 2
RAY_NODE_CPUS = (NODE_CPUS, NODE_CPUS)  # the nodes of the `ray_cluster` fixture (conftest.py)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """Two files: 80 documents with bad lines among them (plain JSON lines), then the rest with
    a bad line at the end (zstd)."""
    rows = corpus_slice(per_domain=28, max_chars=1500)
    assert len(rows) == 104
    d = tmp_path_factory.mktemp("dcorpus")
    lines = [json.dumps(r) for r in rows[:80]]
    lines.insert(0, '{"text": ""}')
    lines.insert(40, "not json")
    lines.insert(70, json.dumps({"text": "x" * 30_000}))  # too large
    a = d / "a.jsonl"
    a.write_text("\n".join(lines) + "\n")
    b = write_jsonl([*rows[80:], {"meta": {}}], d / "b.jsonl.zst")
    return [a, b]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, encoder) -> Path:
    """The single-process build."""
    out = tmp_path_factory.mktemp("ref") / "index"
    cfg = BuildConfig.from_flat(**SETTINGS)
    build_index(corpus, out, cfg, encoder=encoder, progress=False)
    return out


def config(**kw):
    return BuildConfig.from_flat(**{**SETTINGS, **kw}, ray=True, workers=2, cpus_per_worker=1)


def contents(path: Path) -> dict:
    s = EmbeddingStore.open(str(path))
    n = len(s)
    return {
        "records": [s.record(i) for i in range(n)],
        "texts": [s.text(i) for i in range(n)],
        "tokens": [s.tokens(i).tolist() for i in range(n)],
        "vectors": s.get_vectors(np.arange(n)),
    }


def straddling(units) -> np.ndarray:
    """Entry ids whose encoder group holds a unit boundary (entry = document here)."""
    cuts = {u.offset for u in units} - {0}
    n = max(u.offset + u.stop - u.start for u in units)
    ids = np.arange(n)
    return np.array([i for i in ids if any(i // GROUP * GROUP < c < (i // GROUP + 1) * GROUP
                                          for c in cuts)])  # fmt: skip


def assert_same_index(path: Path, reference: Path, plan) -> float:
    """Same entries as the single-process build, the same meta counts; returns the max |diff|
    of the vectors (bitwise equal outside groups cut by a unit boundary)."""
    got, want = contents(path), contents(reference)
    for key in ("records", "texts", "tokens"):
        assert got[key] == want[key], key
    doc_ids = [json.loads(r)["doc_id"] for r in got["records"]]
    assert len(doc_ids) == len(set(doc_ids))
    cut = straddling(plan)
    keep = np.setdiff1d(np.arange(len(doc_ids)), cut)
    assert np.array_equal(got["vectors"][keep], want["vectors"][keep])
    diff = float(np.abs(got["vectors"] - want["vectors"]).max())
    assert diff <= STRADDLE_BOUND
    a, b = Index.open(path).info(), Index.open(reference).info()
    for key in ("status", "documents", "entries", "domains", "corpus_stats", "hnsw", "encoder"):
        assert a[key] == b[key], key
    ma = json.loads(EmbeddingStore.open(str(path)).meta)
    mb = json.loads(EmbeddingStore.open(str(reference)).meta)
    for key in ("encoder_fingerprint", "tokenizer_sha256", "encoder_precision", "corpus"):
        assert ma[key] == mb[key], key
    EmbeddingStore.open(str(path)).verify()
    assert not (path / "units").exists()
    return diff


def the_plan(corpus) -> list:
    from tttnn.distributed.build import count_documents

    cfg = config()
    counts, starts = count_documents(corpus, cfg)
    return plan_units(counts, cfg.unit_documents, cfg.limit, starts)


def test_plan_units_cover_the_corpus_once():
    units = plan_units([100, 0, 40], 64, None)
    assert [(u.file, u.start, u.stop, u.offset, u.to_end) for u in units] == [
        (0, 0, 64, 0, False), (0, 64, 100, 64, True), (1, 0, 0, 100, True),
        (2, 0, 40, 100, True),
    ]  # fmt: skip
    # limit: in file order; the file it ends in is not read further, later files not at all
    assert [(u.file, u.start, u.stop, u.to_end) for u in plan_units([100, 0, 40], 64, 100)] == [
        (0, 0, 64, False), (0, 64, 100, False),
    ]  # fmt: skip
    assert plan_units([100, 40], 64, 0) == []


@pytest.mark.parametrize("every", [1, 7, 16])
def test_units_started_from_positions_read_what_a_skipping_read_does(corpus, every):
    """A unit starts at the position recorded by the scan (a seek, or decompression alone for
    zstd) and reads the documents and bad inputs of a unit that parses its way there."""
    import dataclasses

    from tttnn.corpus import Corpus
    from tttnn.distributed.build import count_documents, read_unit

    cfg = BuildConfig.from_flat(**{**SETTINGS, "unit_documents": every})
    counts, starts = count_documents(corpus, cfg)
    assert counts == [80, 24] and [len(s) for s in starts] == [80 // every, 24 // every]
    units = plan_units(counts, every, None, starts)
    assert all(u.at_byte is not None for u in units if u.start > 0)
    for unit in units:
        blind = dataclasses.replace(unit, at_line=None, at_byte=None)
        got, want = [], []
        for u, out in ((unit, got), (blind, want)):
            c = Corpus(corpus, max_doc_bytes=SETTINGS["max_doc_bytes"])
            docs = [(d.doc_id, d.text, d.domain) for d in read_unit(c, u)]
            out.append((docs, c.stats.to_dict()))
        assert got == want, unit


@pytest.mark.slow
def test_two_workers_build_the_single_process_index_when_one_is_killed_mid_unit(
    ray_cluster, corpus, reference, tmp_path
):
    out = tmp_path / "index"
    dispatched: list[int] = []
    killed = threading.Event()

    def kill_when_working(actor):
        while True:  # until the worker has embedded part of unit 1 (then it sleeps 10 s)
            unit, docs, _ = ray.get(actor.progress.remote())
            if unit == 1 and docs > 0:
                break
        ray.kill(actor)
        killed.set()

    def hook(event, unit, actor):
        if event == "dispatch":
            dispatched.append(unit.index)
            if unit.index == 1 and dispatched.count(1) == 1:
                threading.Thread(target=kill_when_working, args=(actor,), daemon=True).start()

    index = build_distributed(corpus, out, config(), progress=False, unit_delay={1: 10.0},
                              hook=hook)  # fmt: skip
    assert killed.is_set()
    assert sorted(dispatched) == [0, 1, 1, 2]  # unit 1 re-run, once
    plan = the_plan(corpus)
    assert len(plan) == 3 and index.meta["units"]["count"] == 3
    diff = assert_same_index(out, reference, plan)
    print(f"max |vector diff| {diff:.3g} over {len(straddling(plan))} entries in cut groups")
    assert EmbeddingStore.open(str(out)).shard_counts() == [32, 32, 16, 24]  # units' own shards
    stats = index.info()["corpus_stats"]
    assert stats["errors"] == {"empty_text": 1, "malformed_json": 1, "too_large": 1,
                               "missing_text": 1}  # fmt: skip


@pytest.mark.slow
def test_a_lost_node_s_unit_is_rerun_elsewhere(
    ray_cluster, corpus, reference, tmp_path, monkeypatch
):
    """A third node joins; 3 workers of 2 CPUs fill the 3 nodes; the node of one busy worker is
    lost mid-unit. Its replacement cannot be placed (the other nodes are full), so it is given
    up, and its unit is re-run by a surviving worker: the index is the single-process one."""
    import time

    import tttnn.distributed.cluster as dc

    monkeypatch.setattr(dc, "SCHEDULE_TIMEOUT", 20.0)
    wait_for_free_cpus(2 * NODE_CPUS)
    node = ray_cluster.add_node(num_cpus=NODE_CPUS, num_gpus=0)
    ray_cluster.wait_for_nodes()
    wait_for_free_cpus(3 * NODE_CPUS)
    dispatched: list[int] = []
    lost: dict = {}

    def lose_its_node(actor, unit):
        if ray.get(actor.placed.remote())["node_id"] != node.node_id:
            return
        while ray.get(actor.progress.remote())[1] == 0:  # until it has embedded part of it
            time.sleep(0.05)
        lost["unit"] = unit.index
        ray_cluster.remove_node(node, allow_graceful=False)

    def hook(event, unit, actor):
        if event == "dispatch":
            dispatched.append(unit.index)
            if len(dispatched) <= 3:  # the first round: one worker per node
                threading.Thread(target=lose_its_node, args=(actor, unit), daemon=True).start()

    out = tmp_path / "index"
    cfg = BuildConfig.from_flat(**SETTINGS, ray=True, workers=3, cpus_per_worker=NODE_CPUS)
    build_distributed(corpus, out, cfg, progress=False, unit_delay=10.0, hook=hook)
    assert "unit" in lost, "no worker was placed on the node to lose"
    # the lost unit re-run (sent to the replacement too, if no survivor was free at that time)
    again = dispatched.count(lost["unit"])
    assert sorted(set(dispatched)) == [0, 1, 2] and again in (2, 3)
    assert len(dispatched) == 2 + again
    assert_same_index(out, reference, the_plan(corpus))


class Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_skips_committed_units(ray_cluster, corpus, reference, tmp_path):
    out = tmp_path / "index"

    def stop_at_commit_of_2(event, unit, actor):
        if event == "commit" and unit.index == 2:
            raise Stop

    # unit 1 stalls (its worker sleeps 10 min after its first encoder batch): unit 2 runs after
    # unit 0 on the other worker and commits, and the build stops there (its workers killed)
    with pytest.raises(Stop):
        build_distributed(corpus, out, config(), progress=False, unit_delay={1: 600.0},
                          hook=stop_at_commit_of_2)  # fmt: skip
    meta = json.loads(EmbeddingStore.open(str(out)).meta)
    assert meta["status"] == "building" and meta["units"]["adopted"] == 1
    assert meta["documents_so_far"] == 64
    assert (out / "units" / "00002").is_dir()  # committed, not adopted
    assert len(EmbeddingStore.open(str(out))) == 64

    from tttnn.index import InvalidIndexError

    with pytest.raises(InvalidIndexError, match="work units differ"):
        build_distributed(corpus, out, config(unit_documents=32), resume=True, progress=False)
    dispatched: list[int] = []

    def record(event, unit, actor):
        if event == "dispatch":
            dispatched.append(unit.index)

    build_distributed(corpus, out, config(), resume=True, progress=False, hook=record)
    assert dispatched == [1]
    assert_same_index(out, reference, the_plan(corpus))
    # a resumed complete build has nothing left to do
    dispatched.clear()
    build_distributed(corpus, out, config(), resume=True, progress=False, hook=record)
    assert dispatched == []
    assert_same_index(out, reference, the_plan(corpus))


@pytest.mark.slow
def test_a_worker_the_cluster_cannot_place_is_given_up(
    ray_cluster, corpus, reference, tmp_path, monkeypatch
):
    import tttnn.distributed.cluster as dc

    # two nodes of 2 CPUs: two workers of 2 CPUs start, the third can never be placed; once it
    # is given up, its unit (sent to it while it waited, unless it was given up before the first
    # dispatch) goes to the others
    wait_for_free_cpus(2 * NODE_CPUS)  # the actors the tests before killed
    monkeypatch.setattr(dc, "SCHEDULE_TIMEOUT", 30.0)
    dispatched: list[int] = []

    def record(event, unit, actor):
        if event == "dispatch":
            dispatched.append(unit.index)

    out = tmp_path / "index"
    cfg = BuildConfig.from_flat(**SETTINGS, ray=True, workers=3, cpus_per_worker=NODE_CPUS)
    build_distributed(corpus, out, cfg, progress=False, hook=record)
    assert sorted(set(dispatched)) == [0, 1, 2] and len(dispatched) in (3, 4)
    assert_same_index(out, reference, the_plan(corpus))
    # a worker larger than every node: an error before placement (its kind and text: waiting
    # out the placement timeout raises another), naming what it asks for and what nodes have
    big = BuildConfig.from_flat(**SETTINGS, ray=True, workers=1, cpus_per_worker=8)
    with pytest.raises(ClusterSettingError, match=r"each build worker asks for 8 CPU and no node "
                       r"of the cluster has that much: the largest .* has 2 CPU"):  # fmt: skip
        build_distributed(corpus, tmp_path / "none", big, progress=False)
    # workers that fit a node, on a cluster whose nodes are busy (a node full, the other with the
    # 1 CPU of the corpus scan free): no worker starts, and the build stops with an error once
    # the placement timeout is over, not a wait forever
    wait_for_free_cpus(2 * NODE_CPUS)
    holders = []
    for cpus in (NODE_CPUS, NODE_CPUS - 1):  # one after the other: one on each node
        holders.append(ray.remote(num_cpus=cpus)(PoolWorker).remote())
        ray.get(holders[-1].placed.remote())
    monkeypatch.setattr(dc, "SCHEDULE_TIMEOUT", 3.0)
    fits = BuildConfig.from_flat(**SETTINGS, ray=True, workers=1, cpus_per_worker=NODE_CPUS)
    try:
        with pytest.raises(RuntimeError, match=r"no build worker could be started within 3 s: "
                           r"each needs 2 CPU"):  # fmt: skip
            build_distributed(corpus, tmp_path / "busy", fits, progress=False)
    finally:
        for h in holders:
            ray.kill(h)


def wait_for_free_cpus(n: float, timeout: float = 120.0) -> None:
    """Until the cluster has `n` CPUs free (Ray frees a killed actor's CPUs asynchronously)."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < n:
        assert time.monotonic() < deadline, f"CPUs still held: {ray.available_resources()}"
        time.sleep(0.2)
