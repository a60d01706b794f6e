"""Full index build over the shared benchmark corpus, then retrieval quality on its test split.

    python benches/bench_index.py [--train ../shared/corpus/train.jsonl.zst] [--out DIR]

Reports: documents/s, wall time, peak RSS (ru_maxrss of this process, models included), size on
disk, the `tttnn index info` view; then, with the test documents as queries, for each domain the
share of the top-k neighbors from the query's own domain, and HNSW recall@k against exact search.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from tttnn.build import build_index
from tttnn.cli import _format_info, _size
from tttnn.corpus import Corpus
from tttnn.embed import Encoder
from tttnn.index import Index
from tttnn.models import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "corpus"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", type=Path, default=SHARED / "train.jsonl.zst")
    ap.add_argument("--test", type=Path, default=SHARED / "test.jsonl.zst")
    ap.add_argument("--out", type=Path, default=None, help="index directory (default: a temp dir)")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--dtype", default="f16")
    ap.add_argument("--tokenizer", default="smollm2-135m")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--reuse", action="store_true", help="open --out instead of building")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    tmp = None
    out = args.out
    if out is None:
        tmp = Path(tempfile.mkdtemp(prefix="tttnn-bench-index-"))
        out = tmp / "index"
    numbers: dict = {}
    try:
        if args.reuse:
            index = Index.open(out)
        else:
            # models are loaded first, so the ratio below compares the work on the documents
            encoder, tokenizer = Encoder(), load_tokenizer(args.tokenizer)
            encoder.fingerprint  # noqa: B018 (computed once per encoder; not document work)
            start = time.perf_counter()
            index = build_index(
                [args.train],
                out,
                encoder=encoder,
                tokenizer=tokenizer,
                vector_dtype=args.dtype,
                shard_size=args.shard_size,
                limit=args.limit,
            )
            wall = time.perf_counter() - start
            # the peer: the same encoder alone on the same texts (what a build cannot beat)
            texts = [d.text for d in itertools.islice(Corpus(args.train), args.limit)]
            t = time.perf_counter()
            index.encoder.encode(texts, progress=False)
            encoder_only = time.perf_counter() - t
            info = index.info()
            numbers["build"] = {
                "documents": info["documents"],
                "entries": info["entries"],
                "wall_s": round(wall, 1),
                "docs_per_s": round(info["documents"] / wall, 2),
                "encoder_alone_docs_per_s": round(len(texts) / encoder_only, 2),
                "ratio_to_encoder_alone": round(encoder_only / wall, 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "size_bytes": info["size_bytes"],
            }
            b = numbers["build"]
            print(
                f"\nbuild: {b['docs_per_s']} docs/s; the encoder alone on the same documents: "
                f"{b['encoder_alone_docs_per_s']} docs/s; ratio {b['ratio_to_encoder_alone']:.3f}"
            )
            print(
                f"build: {b['documents']} documents in {wall:.1f} s = {b['docs_per_s']} docs/s; "
                f"peak RSS {b['peak_rss_mb']:.0f} MB; size on disk {_size(b['size_bytes'])}"
            )
        print("\n$ tttnn index info " + str(out))
        print(_format_info(index.info()))

        queries = list(Corpus(args.test))
        texts = [d.text for d in queries]
        t = time.perf_counter()
        vecs = index.encoder.encode(texts, progress=False)
        t_embed = time.perf_counter() - t
        t = time.perf_counter()
        exact = index.search(vecs, k=args.k, exact=True)
        t_exact = time.perf_counter() - t
        t = time.perf_counter()
        approx = index.search(vecs, k=args.k, exact=False)
        t_hnsw = time.perf_counter() - t
        own: dict[str, list[float]] = defaultdict(list)
        recall: dict[str, list[float]] = defaultdict(list)
        for doc, e, a in zip(queries, exact, approx):
            own[doc.domain].append(np.mean([n.domain == doc.domain for n in e.neighbors]))
            recall[doc.domain].append(len(set(e.ids) & set(a.ids)) / max(len(e.ids), 1))
        print(
            f"\nretrieval: {len(queries)} test documents as queries, k={args.k} "
            f"(embed {t_embed:.1f} s, exact {t_exact * 1000:.0f} ms, HNSW {t_hnsw * 1000:.0f} ms)"
        )
        print(
            f"| domain | queries | own-domain share of top-{args.k} (exact) | HNSW recall@{args.k} |"
        )
        print("|---|---|---|---|")
        rows = {}
        for d in sorted(own):
            rows[d] = {
                "queries": len(own[d]),
                "own": float(np.mean(own[d])),
                "recall": float(np.mean(recall[d])),
            }
            print(f"| {d} | {len(own[d])} | {rows[d]['own']:.3f} | {rows[d]['recall']:.3f} |")
        all_own = float(np.mean([x for v in own.values() for x in v]))
        all_rec = float(np.mean([x for v in recall.values() for x in v]))
        print(f"| **all** | {len(queries)} | {all_own:.3f} | {all_rec:.3f} |")
        numbers["retrieval"] = {
            "k": args.k,
            "domains": rows,
            "own_all": all_own,
            "recall_all": all_rec,
        }
        if args.json:
            args.json.write_text(json.dumps(numbers, indent=2))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
