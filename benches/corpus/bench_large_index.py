"""Build (or resume) the index of the large corpus, then measure what a user of it waits for.

    python benches/corpus/bench_large_index.py --corpus DIR/corpus.jsonl.zst --out IDX \\
        [--limit N] [--json FILE]

The build is the CLI's (`tttnn index build CORPUS --out IDX --shard-size 5180 --resume`), run
as a child process so that its peak memory is its own; rerun the same command after an
interruption and it goes on where it stopped (documents/s counts only this run's documents).
Shards hold 5,180 entries, the shared train split's size: the corpus starts with that split, so
shard 0 is today's index and the first S shards are the size-S·5,180 subset (`--shards`).

Then, with the shared test split's 160 documents as queries:
- bytes on disk per document, by kind of file;
- `Index.open` time, in a fresh process (the page cache is what the build left);
- the first search (graphs mapped on first use) and the median of the following ones, per query;
- exact against HNSW recall@k and time at each ef;
- the own-domain share of the top k (exact), per domain, at each subset size (`--sizes`), for
  queries of each span (`--spans`: the opening, and the whole text as `--query-span whole`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "corpus"
SHARD_SIZE = 5180


def file_kind(name: str) -> str:
    """`vectors`, `hnsw`, `text`, `tokens`, `records` (with their offsets), `manifest`, ..."""
    return name.split(".", 1)[0].lstrip(".") or name


def disk_by_kind(index_dir: Path) -> dict[str, int]:
    sizes: dict[str, int] = defaultdict(int)
    for path in index_dir.rglob("*"):
        if path.is_file():
            sizes[file_kind(path.name)] += path.stat().st_size
    return dict(sorted(sizes.items()))


def build(args: argparse.Namespace) -> dict[str, Any]:
    from tttnn.index import Index

    before = 0
    if (args.out / "manifest.json").is_file():
        with Index.open(args.out) as idx:  # a build in progress opens: what it has stored
            before = len(idx)  # entries are documents (no --chunk-tokens)
    cmd = [
        sys.executable,
        "-m",
        "tttnn",
        "index",
        "build",
        str(args.corpus),
        "--out",
        str(args.out),
    ]
    cmd += ["--shard-size", str(SHARD_SIZE)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.out.exists():
        cmd += ["--resume"]
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t
    with Index.open(args.out) as idx:
        info = idx.info()
    new = info["documents"] - before
    return {
        "command": " ".join(["tttnn", *cmd[3:]]),
        "documents": info["documents"],
        "documents_this_run": new,
        "wall_s": round(wall, 1),
        "docs_per_s": round(new / wall, 2) if wall > 0 else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def open_time(index_dir: Path, repeats: int = 5) -> list[float]:
    code = (
        "import time,sys; t=time.perf_counter(); from tttnn.index import Index; "
        "i=Index.open(sys.argv[1]); len(i); print(time.perf_counter()-t)"
    )
    return [
        float(
            subprocess.run(
                [sys.executable, "-c", code, str(index_dir)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        for _ in range(repeats)
    ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from tttnn.corpus import Corpus
    from tttnn.index import Index

    out: dict[str, Any] = {}
    docs = list(Corpus(args.test))
    with Index.open(args.out) as index:
        info = index.info()
        n = info["documents"]
        shards = len(info["shards"]) if isinstance(info.get("shards"), list) else info["shards"]
        own_domain(index, args, docs, shards, n, out)
        if args.own_domain_only:
            return out
        disk = disk_by_kind(args.out)
        out["disk"] = {
            "bytes_by_kind": disk,
            "bytes_per_document_by_kind": {k: round(v / n, 1) for k, v in disk.items()},
            "total_bytes": sum(disk.values()),
        }
        vecs = index.encoder.encode([d.text for d in docs], progress=False)
        t = time.perf_counter()
        index.search(vecs[:1], k=args.k)
        first = time.perf_counter() - t
        times = []
        for i in range(1, len(vecs)):
            t = time.perf_counter()
            index.search(vecs[i : i + 1], k=args.k)
            times.append(time.perf_counter() - t)
        out["search"] = {
            "first_s": round(first, 4),
            "following_median_s": round(statistics.median(times), 5),
        }
        exact_t = time.perf_counter()
        exact = index.search(vecs, k=args.k, exact=True)
        exact_t = time.perf_counter() - exact_t
        out["exact"] = {"batch_s": round(exact_t, 3), "queries": len(vecs)}
        out["hnsw"] = {}
        for ef in args.ef:
            index.search(vecs, k=args.k, ef=ef)  # warm
            t = time.perf_counter()
            approx = index.search(vecs, k=args.k, ef=ef)
            dt = time.perf_counter() - t
            rec = np.mean([len(set(e.ids) & set(a.ids)) / args.k for e, a in zip(exact, approx)])
            out["hnsw"][str(ef)] = {"recall": round(float(rec), 4), "batch_s": round(dt, 4)}
    opens = open_time(args.out)
    out["open_s"] = {
        "median": round(statistics.median(opens), 4),
        "runs": [round(x, 4) for x in opens],
    }
    return out


def own_domain(
    index: Any, args: argparse.Namespace, docs: list[Any], shards: int, n: int,
    out: dict[str, Any],
) -> None:  # fmt: skip
    """The own-domain share of the top k (exact) of each test document, per domain, at each
    subset size, for each query span."""
    from tttnn.index import embed_texts, search_queries

    texts = [d.text for d in docs]
    for span in args.spans:  # the queries as `tttnn eval --query-span SPAN` searches them
        key = "own_domain" if span == "opening" else f"own_domain_{span}"
        out[key] = {}
        queries = embed_texts(index.encoder, texts, span)  # once, searched at every size
        pieces = queries.counts
        for size in args.sizes:
            s = min(size, shards)
            res, _ = search_queries(index, queries, args.k, exact=True, shards=list(range(s)))
            share: dict[str, list[float]] = defaultdict(list)
            for d, r in zip(docs, res):
                own = [x.domain == d.domain for x in r.neighbors]
                share[d.domain].append(float(np.mean(own)))
            out[key][str(min(s * SHARD_SIZE, n))] = {
                dom: round(float(np.mean(v)), 4) for dom, v in sorted(share.items())
            }
        if span == "whole":
            out["query_pieces"] = {
                "median": statistics.median(pieces), "max": max(pieces),
                "total": sum(pieces), "queries": len(pieces),
            }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the index directory")
    ap.add_argument("--test", type=Path, default=SHARED / "test.jsonl.zst")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument(
        "--batch-size", type=int, default=None, help="encoder batch (the CLI's default)"
    )
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1, 4, 16, 10**9],
        help="subset sizes in shards (of 5,180 entries); more than there are: all",
    )
    ap.add_argument(
        "--spans",
        nargs="+",
        default=["opening", "whole"],
        choices=["opening", "whole"],
        help="query spans of the own-domain shares (`tttnn eval --query-span`)",
    )
    ap.add_argument(
        "--no-build",
        action="store_true",
        help="measure the index as it is (an earlier --json keeps what is not measured again)",
    )
    ap.add_argument(
        "--own-domain-only",
        action="store_true",
        help="with --no-build: measure only the own-domain shares (timings need a quiet machine)",
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from tttnn.evaluate import cpu_description  # what results rows record

    result: dict[str, Any] = {"cpu": cpu_description(), "cores": os.cpu_count()}
    if args.no_build and args.json is not None and args.json.is_file():
        result = {**json.loads(args.json.read_text()), **result}  # what is not measured again
    if not args.no_build:
        result["build"] = build(args)
        print(json.dumps(result["build"], indent=1), flush=True)
    result.update(measure(args))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
