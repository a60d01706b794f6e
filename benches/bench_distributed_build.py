"""The index build on Ray against one process, same run, same corpus slice; then the two indexes
compared entry by entry.

    python benches/bench_distributed_build.py [--train ../shared/corpus/train.jsonl.zst]
        [--limit 2048] [--workers 2] [--unit-documents 256]

- one process: `build_index` with torch at `--threads` threads (2: the machine's cores); the
  encoder and the LM tokenizer are loaded before the clock starts.
- Ray: a local cluster with `workers x cpus-per-worker` logical CPUs, `build_distributed` with
  `--workers` actors of 1 CPU (1 torch thread) each. Two times: the whole call (reading the
  corpus to plan the units, starting the workers, which load their models, and the build), and
  from the first unit dispatched to the end (the work on the documents, comparable to the
  single-process time).
- the indexes: ids, records, text and token ids must be equal; vectors: max |diff| and the
  number of rows not bitwise equal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from tttnn._tttnn import EmbeddingStore
from tttnn.build import build_index
from tttnn.config import BuildConfig
from tttnn.distributed.build import build_distributed
from tttnn.distributed.cluster import connect
from tttnn.embed import Encoder

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpus"


def compare(a: Path, b: Path) -> dict:
    sa, sb = EmbeddingStore.open(str(a)), EmbeddingStore.open(str(b))
    n = len(sa)
    same = n == len(sb) and all(
        sa.record(i) == sb.record(i)
        and sa.text_bytes(i) == sb.text_bytes(i)
        and np.array_equal(sa.tokens(i), sb.tokens(i))
        for i in range(n)
    )
    va, vb = sa.get_vectors(np.arange(n)), sb.get_vectors(np.arange(n))
    rows_differ = int((va != vb).any(axis=1).sum())
    return {
        "entries": n,
        "same_records_text_tokens": bool(same),
        "max_abs_vector_diff": float(np.abs(va - vb).max()) if n else 0.0,
        "rows_not_bitwise_equal": rows_differ,
        "shards": [sa.num_shards, sb.num_shards],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", type=Path, default=SHARED / "train.jsonl.zst")
    ap.add_argument("--limit", type=int, default=2048, help="first N documents (0: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the one process")
    ap.add_argument("--unit-documents", type=int, default=256)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    limit = args.limit or None
    settings = {"shard_size": args.shard_size, "limit": limit,
                "unit_documents": args.unit_documents}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="tttnn-bench-dbuild-"))
    numbers: dict = {"limit": limit, "workers": args.workers, "threads": args.threads,
                     "cpus_per_worker": args.cpus_per_worker, **settings}  # fmt: skip
    try:
        import torch

        torch.set_num_threads(args.threads)
        encoder = Encoder(progress=False)
        encoder.fingerprint  # noqa: B018 (computed once per encoder: not document work)
        cfg = BuildConfig.from_flat(**settings)
        start = time.perf_counter()
        index = build_index([args.train], tmp / "one", cfg, encoder=encoder, tokenizer="config")
        one = time.perf_counter() - start
        docs = index.info()["documents"]
        numbers["one_process"] = {"seconds": one, "docs_per_s": docs / one, "documents": docs}
        del index, encoder

        connect(num_cpus=args.workers * args.cpus_per_worker)
        rcfg = BuildConfig.from_flat(**settings, ray=True, workers=args.workers,
                                     cpus_per_worker=args.cpus_per_worker)  # fmt: skip
        first: list[float] = []

        def hook(event, unit, actor) -> None:
            if event == "dispatch" and not first:
                first.append(time.perf_counter())

        start = time.perf_counter()
        rindex = build_distributed([args.train], tmp / "ray", rcfg, hook=hook)
        end = time.perf_counter()
        assert rindex.info()["documents"] == docs
        work = end - first[0]
        numbers["ray"] = {"seconds_total": end - start, "seconds_from_first_unit": work,
                          "docs_per_s_total": docs / (end - start), "docs_per_s": docs / work,
                          "units": rindex.meta["units"]["count"]}  # fmt: skip
        numbers["ratio_docs_per_s"] = (
            numbers["ray"]["docs_per_s"] / numbers["one_process"]["docs_per_s"]
        )
        numbers["ratio_docs_per_s_total"] = (
            numbers["ray"]["docs_per_s_total"] / numbers["one_process"]["docs_per_s"]
        )
        numbers["compare"] = compare(tmp / "one", tmp / "ray")
        ma = json.loads(EmbeddingStore.open(str(tmp / "one")).meta)
        mb = json.loads(EmbeddingStore.open(str(tmp / "ray")).meta)
        numbers["compare"]["same_meta_counts"] = all(
            ma[k] == mb[k] for k in ("documents", "entries", "domains", "corpus_stats")
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(numbers, indent=2))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
