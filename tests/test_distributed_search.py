"""Search over Ray: shard actors (`tttnn.distributed.index`) against the single-process index.

One local Ray cluster of two nodes for the module (`ray_cluster`, logical CPUs given); the
worker node is removed at the end to simulate a lost machine.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from tttnn import EmbeddingStore, jobs  # noqa: E402
from tttnn.config import RayConfig  # noqa: E402
from tttnn.distributed import cluster  # noqa: E402
from tttnn.distributed.cluster import ClusterSettingError, token_mode  # noqa: E402
from tttnn.distributed.index import RayIndex, merge_parts, shard_groups  # noqa: E402
from tttnn.index import INDEX_FORMAT, INDEX_KIND, Index  # noqa: E402

DIM = 16
RAY_NODE_CPUS = (2, 2)  # the nodes of the `ray_cluster` fixture (conftest.py)


@pytest.fixture(scope="module")
def tie_store(tmp_path_factory):
    """A small index, vectors given: rows 0..9 repeated as rows 20..29 and 40..49 (shards 0, 2
    and 4: scores tie across shards and actors), 6 shards (the last of 4 rows), texts, tokens
    and records."""
    path = tmp_path_factory.mktemp("ties") / "index"
    meta = {"kind": INDEX_KIND, "format": INDEX_FORMAT, "dim": DIM, "status": "complete",
            "encoder": "none", "tokenizer": None}  # fmt: skip
    store = EmbeddingStore.create(path, DIM, dtype="f16", shard_size=10, with_text=True,
                                  with_tokens=True, with_records=True, hnsw=True,
                                  meta=json.dumps(meta))  # fmt: skip
    rng = np.random.default_rng(3)
    base = rng.standard_normal((10, DIM)).astype(np.float32)
    blocks = [base, rng.standard_normal((10, DIM)), base, rng.standard_normal((10, DIM)), base,
              rng.standard_normal((4, DIM))]  # fmt: skip
    for i, x in enumerate(blocks):
        n = len(x)
        start = len(store)
        store.append(
            np.asarray(x, dtype=np.float32),
            texts=[f"entry {start + j} of shard {i}" for j in range(n)],
            tokens=[np.arange(start + j, dtype=np.uint32) % 50 for j in range(n)],
            records=[
                json.dumps({"doc_id": f"d{start + j}", "domain": f"s{i}", "chunk": 0})
                for j in range(n)
            ],
        )
    del store
    return path


@pytest.fixture(scope="module")
def ray_ties(ray_cluster, tie_store):
    index = RayIndex.open(tie_store, ray=RayConfig(ray=True, workers=3, cpus_per_worker=0.25))
    yield index
    index.close()


def _queries(store_path, n=6, seed=9):
    local = EmbeddingStore.open(store_path)
    q = local.get_vectors(np.arange(3))  # exact copies of rows in three shards each
    return np.concatenate([q, np.random.default_rng(seed).standard_normal((n, DIM))]).astype(
        np.float32
    )


def test_shard_groups_are_contiguous_balanced_and_cover():
    assert shard_groups([10, 10, 10, 10], 2) == [[0, 1], [2, 3]]
    assert shard_groups([30, 1, 1, 1, 27], 2) == [[0], [1, 2, 3, 4]]
    assert shard_groups([5, 5], 8) == [[0], [1]]
    for counts in ([7, 1, 9, 3, 3, 12, 1], [1] * 9):
        for w in range(1, 9):
            groups = shard_groups(counts, w)
            assert [s for g in groups for s in g] == list(range(len(counts)))
            assert len(groups) == min(w, len(counts)) and all(groups)


def test_merge_parts_orders_like_the_core():
    parts = [
        (np.array([[30, 12, 5]]), np.array([[0.9, 0.5, 0.5]], dtype=np.float32)),
        (np.array([[2, 40, -1]]), np.array([[0.9, 0.5, np.nan]], dtype=np.float32)),
    ]
    ids, scores = merge_parts(parts, 6)
    assert ids.tolist() == [[2, 30, 5, 12, 40, -1]]
    assert np.isnan(scores[0, 5]) and scores[0, :5].tolist() == pytest.approx(
        [0.9, 0.9, 0.5, 0.5, 0.5]
    )
    ids, _ = merge_parts(parts, 2, higher_is_better=False)
    assert ids.tolist() == [[5, 12]]


@pytest.mark.slow
@pytest.mark.parametrize("exact", [True, False])
def test_ray_search_is_bitwise_the_local_search(ray_ties, tie_store, exact):
    local = EmbeddingStore.open(tie_store)
    q = _queries(tie_store)
    assert ray_ties.groups() == [[0, 1], [2, 3], [4, 5]]
    for k in (1, 3, 7, 41):
        want = local.search(q, k, exact=exact)
        got = ray_ties.store.search(q, k, exact=exact)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1].tobytes() == want[1].tobytes()
    # the ties of the first query: rows 0, 20, 40 (shards 0, 2, 4, three different actors)
    assert local.search(q, 3, exact=exact)[0][0].tolist() == [0, 20, 40]
    # through the Index surface too
    res = ray_ties.search(q, k=5, exact=exact)
    loc = Index.open(tie_store).search(q, k=5, exact=exact)
    assert [r.ids for r in res] == [r.ids for r in loc]
    assert [r.scores for r in res] == [r.scores for r in loc]
    assert [[n.doc_id for n in r.neighbors] for r in res] == [
        [n.doc_id for n in r.neighbors] for r in loc
    ]


@pytest.mark.slow
def test_shards_subset_over_ray(ray_ties, tie_store):
    local = Index.open(tie_store)
    q = _queries(tie_store)
    for subset in ([1], [4, 0], [2, 3, 5], [5]):
        want = local.search(q, k=4, exact=True, shards=subset)
        got = ray_ties.search(q, k=4, exact=True, shards=subset)
        assert [r.ids for r in got] == [r.ids for r in want]
        assert [r.scores for r in got] == [r.scores for r in want]
        assert {n.domain for r in got for n in r.neighbors} <= {f"s{s}" for s in subset}
    with pytest.raises(IndexError, match="shard 6 out of range"):
        ray_ties.search(q, k=2, shards=[0, 6])
    with pytest.raises(IndexError, match="shard 6 out of range"):
        local.search(q, k=2, shards=[6])
    # actors for a subset only: searched by default, and nothing else is served
    cfg = RayConfig(ray=True, workers=2, cpus_per_worker=0.1)
    with RayIndex.open(tie_store, cfg, shards=(4, 1)) as part:
        assert part.groups() == [[1], [4]]
        want = local.search(q, k=4, exact=True, shards=[1, 4])
        assert [r.ids for r in part.search(q, k=4, exact=True)] == [r.ids for r in want]
        with pytest.raises(IndexError, match="not served"):
            part.record(0)
        with pytest.raises(IndexError, match="not served"):
            part.search(q, k=2, shards=[0])


@pytest.mark.slow
def test_a_node_needs_only_its_shards(ray_cluster, tie_store, tmp_path):
    """Serving shards 1 and 4 from a copy of the index that holds only their directories and
    the manifest (what a node with those shards on its local disk has): same answers and reads
    as the whole index."""
    import shutil

    part_dir = tmp_path / "index"
    shutil.copytree(tie_store, part_dir)
    for d in (part_dir / "shards").iterdir():
        if int(d.name) not in (1, 4):
            shutil.rmtree(d)
    with pytest.raises(OSError, match="No such file"):
        EmbeddingStore.open(part_dir)  # the whole store is not there
    local = Index.open(tie_store)
    q = _queries(tie_store)
    cfg = RayConfig(ray=True, workers=2, cpus_per_worker=0.1)
    with RayIndex.open(part_dir, cfg, shards=(4, 1)) as part:
        assert part.groups() == [[1], [4]]
        for exact in (True, False):
            want = local.search(q, k=5, exact=exact, shards=[1, 4])
            got = part.search(q, k=5, exact=exact)
            assert [r.ids for r in got] == [r.ids for r in want]
            assert [r.scores for r in got] == [r.scores for r in want]
        ids = [12, 45, 19, 40]
        assert [part.store.text(i) for i in ids] == [local.store.text(i) for i in ids]
        with pytest.raises(IndexError, match="not served"):
            part.record(0)
    one = EmbeddingStore.open(part_dir, shards=[4])
    assert one.opened_shards() == [4] and one.num_shards == 6 and len(one) == 54
    with pytest.raises(ValueError, match="not opened"):
        one.text(12)
    with pytest.raises(ValueError, match="some shards only"):
        one.set_meta("{}")


@pytest.mark.slow
def test_reads_come_from_the_owning_actors(ray_ties, tie_store):
    local = EmbeddingStore.open(tie_store)
    ids = [44, 0, 17, 25, 9, 44, 50]
    rs = ray_ties.store
    assert rs.texts_bytes(ids) == [local.text_bytes(i) for i in ids]
    assert [rs.text(i) for i in ids] == [local.text(i) for i in ids]
    for a, b in zip(rs.tokens_many(ids), [local.tokens(i) for i in ids]):
        np.testing.assert_array_equal(a, b)
    assert [rs.record(i) for i in ids] == [local.record(i) for i in ids]
    assert ray_ties.record(17) == Index.open(tie_store).record(17)
    np.testing.assert_array_equal(rs.get_vectors(ids), local.get_vectors(ids))
    for kw in ({}, {"max_windows_per_doc": 1}, {"pack_short": True, "eos_id": 2}):
        want = local.pack_windows(ids, 8, **kw)
        got = rs.pack_windows(ids, 8, **kw)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert (len(rs), rs.dim, rs.num_shards, rs.shard_counts()) == (
        len(local), local.dim, local.num_shards, local.shard_counts(),
    )  # fmt: skip
    with pytest.raises(IndexError):
        rs.text(len(local))


@pytest.mark.slow
def test_a_pickled_index_searches_through_the_same_actors(ray_ties, tie_store):
    q = _queries(tie_store)
    copy = pickle.loads(pickle.dumps(ray_ties))
    assert copy.store.actors and copy.store.groups == ray_ties.store.groups

    @ray.remote(num_cpus=0.1)
    def remote_search(index, q):
        return [r.ids for r in index.search(q, k=4, exact=True)]

    want = [r.ids for r in ray_ties.search(q, k=4, exact=True)]
    assert ray.get(remote_search.remote(ray_ties, q)) == want
    copy.close()  # a copy does not own the actors
    assert [r.ids for r in ray_ties.search(q, k=4, exact=True)] == want


@pytest.mark.slow
def test_real_index_text_queries_guard_and_packing(ray_cluster, sample_index, encoder):
    local = Index.open(sample_index, encoder=encoder)
    queries = ["the history of the roman empire", "def main():\n    return 0"]
    cfg = RayConfig(ray=True, workers=2, cpus_per_worker=0.5)
    with jobs.open_index(sample_index, cfg, encoder=encoder) as index:
        assert isinstance(index, RayIndex)
        for exact in (True, False):
            want = local.search(queries, k=6, exact=exact)
            got = index.search(queries, k=6, exact=exact)
            assert [r.ids for r in got] == [r.ids for r in want]
            assert [r.scores for r in got] == [r.scores for r in want]
        # the guard drops a document's own copy, as locally
        doc = local.store.text(5)
        want = local.search([doc], k=3, exact=True, guard=True)
        got = index.search([doc], k=3, exact=True, guard=True)
        assert got[0].ids == want[0].ids and 5 not in got[0].ids
        assert got[0].dropped == want[0].dropped >= 1
        nb = got[0].neighbors[0]
        assert nb.text == local.store.text(nb.id)
        np.testing.assert_array_equal(nb.tokens, local.store.tokens(nb.id))
        ids = got[0].ids + want[0].ids[::-1]
        for a, b in zip(index.store.pack_windows(ids, 64), local.store.pack_windows(ids, 64)):
            np.testing.assert_array_equal(a, b)
        index.check_complete()
        info = index.info()
        assert info["entries"] == len(local)
        assert info["token_bits"] == local.store.token_bits == 16


@pytest.mark.slow
def test_a_killed_actor_mid_batch_still_gives_the_answer(ray_ties, tie_store):
    local = EmbeddingStore.open(tie_store)
    q = np.random.default_rng(5).standard_normal((3000, DIM)).astype(np.float32)
    want = local.search(q, 10, exact=True)
    victim = ray_ties.store.actors[1]
    pid = ray.get(victim.stats.remote())["pid"]
    got: dict = {}
    t = threading.Thread(target=lambda: got.update(r=ray_ties.store.search(q, 10, exact=True)))
    t.start()
    ray.kill(victim, no_restart=False)
    t.join()
    np.testing.assert_array_equal(got["r"][0], want[0])
    assert got["r"][1].tobytes() == want[1].tobytes()
    assert ray.get(victim.stats.remote())["pid"] != pid  # it was restarted


@pytest.mark.slow
def test_cli_search_over_ray_prints_the_local_neighbors(ray_cluster, sample_index):
    from click.testing import CliRunner

    from tttnn.cli import main

    args = ["search", str(sample_index), "roman history", "def main()", "-k", "4", "--json"]
    args += ["--exact", "--shards", "0,2"]
    local = CliRunner().invoke(main, args)
    assert local.exit_code == 0, local.output
    over_ray = ["--ray", "--workers", "2", "--cpus-per-worker", "0.25"]
    remote = CliRunner().invoke(main, args + over_ray)
    assert remote.exit_code == 0, remote.output
    rows = [json.loads(line) for line in remote.output.splitlines()]
    assert rows == [json.loads(line) for line in local.output.splitlines()]
    assert len(rows) == 2 and all(len(r["neighbors"]) == 4 for r in rows)
    bad = CliRunner().invoke(main, [*args[:-1], "0,9", *over_ray])
    assert bad.exit_code == 1 and "shard 9 out of range" in bad.output


@pytest.mark.slow
def test_a_lost_node_s_actors_restart_elsewhere(ray_cluster, ray_ties, tie_store):
    q = _queries(tie_store)
    want = EmbeddingStore.open(tie_store).search(q, 8, exact=True)
    before = ray_ties.store.actor_stats()  # SPREAD: some actors on the worker node
    (lost,) = ray_cluster.worker_nodes
    assert lost.node_id in {s["node_id"] for s in before}, "no actor on the worker node"
    ray_cluster.remove_node(lost, allow_graceful=False)
    got = ray_ties.store.search(q, 8, exact=True)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1].tobytes() == want[1].tobytes()
    after = ray_ties.store.actor_stats()
    assert lost.node_id not in {s["node_id"] for s in after}
    assert [s["shards"] for s in after] == ray_ties.groups()


# -- the cluster itself: authentication, loopback, requests that cannot be met -------------------
OFF_VALUES = ["disabled", "off", "none", "false", "0", "", " disabled", " token"]


def _tttnn(*args: str, env: dict | None = None, timeout: float = 300) -> tuple[int, str, float]:
    """`python -m tttnn ARGS` in a fresh process (no Ray started in it yet): exit code, output
    (stderr then stdout) and seconds taken."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tttnn", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stderr + proc.stdout, time.monotonic() - start


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def test_the_token_rule_is_ray_s():
    """tttnn's reading of RAY_AUTH_MODE agrees with the one Ray's core makes."""
    values = ["token", "TOKEN", "Token", *OFF_VALUES, "token "]
    script = textwrap.dedent("""
        import json, os, sys
        from ray._raylet import AuthenticationMode, Config, get_authentication_mode
        out = []
        for v in json.loads(sys.argv[1]):
            os.environ["RAY_AUTH_MODE"] = v
            Config.initialize("")
            out.append(get_authentication_mode() == AuthenticationMode.TOKEN)
        print(json.dumps(out))
    """)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(values)],
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    ray_reads = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ray_reads == [token_mode(v) for v in values]
    assert ray_reads[:3] == [True, True, True] and not any(ray_reads[3:])


@pytest.mark.parametrize("value", OFF_VALUES)
def test_ray_without_token_authentication_is_refused(tie_store, monkeypatch, value):
    """Every RAY_AUTH_MODE that Ray reads as off is a one-line usage error naming the value,
    before any cluster is started or joined."""
    from click.testing import CliRunner

    from tttnn.cli import main

    monkeypatch.setenv("RAY_AUTH_MODE", value)
    res = CliRunner().invoke(main, ["search", str(tie_store), "a query", "--ray"])
    assert res.exit_code == 2, res.output
    assert _error_lines(res.output) == [res.output.strip()]
    assert f"RAY_AUTH_MODE={value!r}" in res.output
    with pytest.raises(ClusterSettingError, match="RAY_AUTH_MODE"):
        cluster.connect(None)


@pytest.mark.slow
def test_a_local_cluster_listens_on_loopback_only():
    """Every server of the local cluster tttnn starts (GCS, raylet, object manager, workers)
    listens on 127.0.0.1, and Ray's token authentication is on."""
    pytest.importorskip("psutil")
    script = textwrap.dedent("""
        import json, os, psutil, ray
        from tttnn.distributed.cluster import connect
        assert connect(None, num_cpus=1, num_gpus=0)
        ray.get(ray.remote(num_cpus=0.5)(lambda: 1).remote())  # a worker up
        node = ray.nodes()[0]
        gcs = ray.get_runtime_context().gcs_address
        listening = {}
        for p in psutil.Process().children(recursive=True):
            try:
                conns = p.net_connections("tcp")
            except psutil.Error:
                continue
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    listening[c.laddr.port] = [p.name(), c.laddr.ip]
        print(json.dumps({"gcs": gcs, "raylet": node["NodeManagerPort"],
                          "listening": listening, "auth": os.environ.get("RAY_AUTH_MODE")}))
        ray.shutdown()
    """)  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    host, port = got["gcs"].rsplit(":", 1)
    listening = {int(k): v for k, v in got["listening"].items()}
    assert host == "127.0.0.1" and token_mode(got["auth"])
    assert listening[int(port)][0] == "gcs_server" and got["raylet"] in listening
    loopback = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    assert {ip for _, ip in listening.values()} <= loopback, listening


@pytest.mark.slow
def test_an_address_where_nothing_answers_fails_in_seconds(tie_store):
    code, out, _ = _tttnn("search", str(tie_store), "a query", "--ray", "--address",
                             "127.0.0.1:1", timeout=240)  # fmt: skip
    assert code == 2, out
    (line,) = _error_lines(out)
    # tttnn's own check answered (Ray alone retries for minutes, then says something else)
    assert "127.0.0.1:1" in line and "no Ray cluster answers" in line


@pytest.mark.slow
def test_a_local_cluster_too_small_for_one_shard_actor_fails_at_once(sample_index):
    """The local cluster tttnn starts has this machine's CPUs: an actor asking for more is an
    error naming both, before any waiting (the placement timeout is cut to 60 s here, so that
    waiting for it fails the test)."""
    cpus = os.cpu_count() or 1
    ask = str(cpus + 62)
    script = ("import sys; from tttnn.distributed import cluster; cluster.SCHEDULE_TIMEOUT = 60; "
              "from tttnn.cli import main; sys.argv[0] = 'tttnn'; main()")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", script, "search", str(sample_index), "a query", "--ray",
         "--cpus-per-worker", ask], capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    out = proc.stderr + proc.stdout
    assert proc.returncode == 2, out
    (line,) = _error_lines(out)
    # the up-front check answered: waiting out the placement timeout raises another error
    assert f"asks for {ask} CPU" in line and f"has {cpus} CPU" in line, line


def test_a_shard_actor_larger_than_every_node_fails_at_once(ray_cluster, tie_store, monkeypatch):
    """A joined cluster of nodes of 2 CPUs (4 in all) cannot hold an actor of 3 CPUs, nor one
    asking for a resource no node declares: an error at once, naming what was asked and what
    the nodes have, instead of waiting for SCHEDULE_TIMEOUT (cut to 30 s here, so that waiting
    fails the test)."""
    monkeypatch.setattr(cluster, "SCHEDULE_TIMEOUT", 30.0)
    with pytest.raises(ClusterSettingError, match=r"asks for 3 CPU .* has 2 CPU"):
        RayIndex.open(tie_store, RayConfig(ray=True, workers=1, cpus_per_worker=3))
    with pytest.raises(ClusterSettingError, match="tttnn_shards_0"):
        RayIndex.open(tie_store, RayConfig(ray=True, workers=2, cpus_per_worker=0.1),
                      pin="resources")  # fmt: skip
