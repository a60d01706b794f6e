"""Scale on one machine: a 10M x 384 f16 index served by 4 and 8 Ray shard actors, against the
single-process index over the same shards, in the same run.

    python benches/bench_distributed_search.py make --dir DIR   # once
    python benches/bench_distributed_search.py run  --dir DIR [--json OUT]

`make` writes two vectors-only stores (no text, no encoder): `DIR/exact` with --n clustered
synthetic vectors (f16, cosine, 16 shards), appended through `EmbeddingStore` a shard at a time,
and `DIR/hnsw`, the first --hnsw-n of them (all by default) with HNSW graphs (10M: 29 min on 2
cores at --ef-add 64). It resumes where it stopped. The stores are the input; they are not in
the repository.

`run` measures, per query batch: exact search over `DIR/exact` and HNSW search over `DIR/hnsw`,
first with the single-process `Index` (the store searched in this process), then with a
`RayStore` of 4 and of 8 shard actors (`tttnn.distributed.index`), each warmed first. Reported:
queries/s, p50/p99 latency per batch, the Ray overhead ratio (Ray p50 / local p50), peak RSS
(VmHWM) of the driver and each actor (mapped pages of the shards count in RSS: they are shared
page cache, not copies), and a check that every Ray answer equals the local one.

On a machine shared with other work, absolute figures are a floor; ratios are what carries
over.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 384


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int) -> np.ndarray:
    """`n` unit vectors around random `centers` (noise about as large as the center)."""
    c = centers[rng.integers(0, len(centers), n)]
    x = c + rng.standard_normal((n, centers.shape[1]), dtype=np.float32) * 0.05
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make(args: argparse.Namespace) -> None:
    """Write both stores a shard at a time; a shard's vectors come from its own seeded generator,
    so an interrupted `make` resumes where it stopped (a store's sealed shards are kept)."""
    from tttnn import EmbeddingStore

    args.dir.mkdir(parents=True, exist_ok=True)
    centers_file = args.dir / "centers.npy"
    if not centers_file.exists():
        rng = np.random.default_rng(0)
        centers = rng.standard_normal((2000, DIM), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        np.save(centers_file, centers)
    centers = np.load(centers_file)
    shard = args.n // 16

    def store(name: str, **kw: Any) -> Any:
        path = args.dir / name
        if (path / "manifest.json").exists():
            return EmbeddingStore.open(path)
        return EmbeddingStore.create(path, DIM, dtype="f16", shard_size=shard, **kw)

    stores = {
        "exact": (store("exact"), args.n),
        "hnsw": (store("hnsw", hnsw=True, hnsw_expansion_add=args.ef_add), args.hnsw_n),
    }
    t0 = time.perf_counter()
    for i in range(0, args.n, shard):
        x = None
        for name, (st, n) in stores.items():
            if len(st) > i or i >= n:
                continue  # written by an earlier run, or beyond this store's size
            if x is None:
                x = clustered(np.random.default_rng([0, i]), centers, min(shard, args.n - i))
            t = time.perf_counter()
            st.append(x[: n - i])
            print(f"  {name}: {len(st)} vectors, shard in {time.perf_counter() - t:.0f} s",
                  flush=True)  # fmt: skip
        print(f"{min(i + shard, args.n)} vectors, {time.perf_counter() - t0:.0f} s", flush=True)


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of process `pid`, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn: Any, batches: list[np.ndarray]) -> tuple[list[float], list[Any]]:
    secs, outs = [], []
    for q in batches:
        t = time.perf_counter()
        outs.append(fn(q))
        secs.append(time.perf_counter() - t)
    return secs, outs


def summary(secs: list[float], per_batch: int) -> dict[str, float]:
    a = np.asarray(secs)
    return {
        "batches": len(a),
        "queries_per_s": per_batch * len(a) / a.sum(),
        "p50_ms": float(np.percentile(a, 50) * 1e3),
        "p99_ms": float(np.percentile(a, 99) * 1e3),
    }


def run(args: argparse.Namespace) -> None:
    import ray

    from tttnn import EmbeddingStore
    from tttnn.distributed import connect
    from tttnn.distributed.index import RayStore

    centers = np.load(args.dir / "centers.npy")
    rng = np.random.default_rng(1)
    modes = {
        "exact": (args.dir / "exact", True, args.exact_batch, args.exact_batches),
        "hnsw": (args.dir / "hnsw", False, args.hnsw_batch, args.hnsw_batches),
    }
    out: dict[str, Any] = {"cores": os.cpu_count(), "k": args.k,
                           "load_avg_at_start": os.getloadavg()}  # fmt: skip
    cores = os.cpu_count() or 1
    connect(num_cpus=cores)  # a local cluster, token authentication on
    try:
        for mode, (path, exact, bs, nb) in modes.items():
            if mode not in args.modes:
                continue
            store = EmbeddingStore.open(path)
            batches = [clustered(rng, centers, bs) for _ in range(nb)]
            res: dict[str, Any] = {"entries": len(store), "shards": store.num_shards,
                                   "batch": bs}  # fmt: skip

            def local(q: np.ndarray, store: Any = store, exact: bool = exact) -> Any:
                return store.search(q, args.k, exact=exact)

            local(batches[0])  # first search: the once-per-process checks
            secs, want = timed(local, batches)
            res["local"] = summary(secs, bs)
            print(mode, "local", res["local"], flush=True)
            for w in args.workers:
                # the actors share the machine's cores (each searches with one thread)
                index = RayStore.open(path, workers=w, cpus_per_worker=cores / w)
                index.search(batches[0], args.k, exact=exact)  # warm every actor
                secs, got = timed(
                    lambda q, index=index, exact=exact: index.search(q, args.k, exact=exact),
                    batches,
                )
                same = all(
                    np.array_equal(g[0], x[0]) and np.array_equal(g[1], x[1])
                    for g, x in zip(got, want)
                )
                r = summary(secs, bs)
                r["overhead_p50"] = r["p50_ms"] / res["local"]["p50_ms"]
                r["overhead_p50_ms"] = r["p50_ms"] - res["local"]["p50_ms"]
                r["equal_to_local"] = same
                r["actor_peak_rss_mb"] = [round(s["peak_rss_mb"]) for s in index.actor_stats()]
                res[f"ray_{w}"] = r
                print(mode, f"ray x{w}", r, flush=True)
                index.close()
            # again after the actors: the same page cache and machine load as theirs
            secs, _ = timed(local, batches)
            res["local_again"] = summary(secs, bs)
            print(mode, "local again", res["local_again"], flush=True)
            out[mode] = res
            del store
    finally:
        ray.shutdown()
    out["driver_peak_rss_mb"] = round(vm_hwm_mb(os.getpid()))
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=("make", "run"))
    ap.add_argument("--dir", type=Path, required=True, help="where `make` writes the stores")
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--hnsw-n", type=int, default=10_000_000)
    ap.add_argument("--ef-add", type=int, default=64, help="HNSW expansion_add of `make`")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--exact-batch", type=int, default=16)
    ap.add_argument("--exact-batches", type=int, default=10)
    ap.add_argument("--hnsw-batch", type=int, default=16)
    ap.add_argument("--hnsw-batches", type=int, default=100)
    ap.add_argument("--modes", nargs="+", default=["exact", "hnsw"], choices=["exact", "hnsw"])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    make(args) if args.what == "make" else run(args)


if __name__ == "__main__":
    main()
