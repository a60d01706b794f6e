"""What whole-document queries (`--query-span whole`) cost against opening queries (the paper's),
and what searching all pieces at once saves against one document at a time, in the same run.

    python benches/bench_query_span.py --index INDEX [--docs 160] [--repeat 5] [--json OUT]

INDEX is any tttnn index (`tttnn index build ../shared/corpus/train.jsonl.zst --out INDEX`
builds today's). The queries are the documents of the shared test split. Three ways, each
repeated, the median reported:

- opening: each document's opening embedded and searched (`embed_texts` + `search_queries`);
- whole: every piece of each document embedded, all searched at once, hits merged per document;
- whole, one document at a time: the same, one `search_texts` call per document (the peer: what
  a loop over documents would do).

Embedding and search are timed apart, exact and HNSW (ef 64); each repeat runs every way once,
in turn, so that a drift of the machine's speed weighs on all ways alike. Printed: seconds per query
document, pieces, and the ratios whole / opening and one-at-a-time / batched. The results of the
two whole ways are checked equal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from tttnn.corpus import Corpus
from tttnn.evaluate import cpu_description
from tttnn.index import Index, embed_texts, search_queries, search_texts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--test", type=Path, default=SHARED / "test.jsonl.zst")
    ap.add_argument("--docs", type=int, default=160)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    index = Index.open(args.index)
    texts = [d.text for d in Corpus(args.test)][: args.docs]
    n = len(texts)
    index.search(index.encoder.encode_queries(texts[:2]), k=args.k, exact=True)  # warm
    out: dict[str, Any] = {
        "cpu": cpu_description(),  # with its AVX-512 features, as results rows record it
        "torch_threads": torch.get_num_threads(),
        "index_entries": len(index),
        "docs": n,
        "repeat": args.repeat,
    }  # fmt: skip
    # Every repeat times every way once, in turn, so that a machine that speeds up or slows
    # down during the run weighs on all of them alike; each way's median over the repeats.
    settings = (("exact", {"exact": True}), ("hnsw ef 64", {"ef": 64}))
    times: dict[tuple[str, str], list[float]] = {}
    queries: dict[str, Any] = {}
    found: dict[tuple[str, str], Any] = {}

    def timed(key: tuple[str, str], fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        result = fn()
        times.setdefault(key, []).append(time.perf_counter() - t)
        return result

    for _ in range(args.repeat):
        for span in ("opening", "whole"):
            queries[span] = timed(
                ("embed", span), lambda span=span: embed_texts(index.encoder, texts, span)
            )
        for label, setting in settings:
            for span in ("opening", "whole"):
                found[label, span] = timed(
                    (label, span),
                    lambda span=span, setting=setting: search_queries(
                        index, queries[span], args.k, guard=texts, **setting
                    ),
                )
            loop = timed(
                (label, "loop"),
                lambda setting=setting: [
                    search_texts(index, [t], args.k, span="whole", guard=[t], **setting)[0][0]
                    for t in texts
                ],
            )
            if [r.ids for r in loop] != [r.ids for r in found[label, "whole"][0]]:
                raise SystemExit(f"{label}: one document at a time found other neighbors")
    med = {key: statistics.median(v) for key, v in times.items()}
    out["pieces"] = {"opening": n, "whole": sum(queries["whole"].counts)}
    print(
        f"{out['cpu']}, {out['torch_threads']} torch threads; "
        f"{len(index):,} entries; {n} query documents, {out['pieces']['whole']} pieces; "
        f"median of {args.repeat}"
    )
    print("| way | search | embed s/doc | search s/doc | total s/doc | vs opening |")
    print("|---|---|---:|---:|---:|---:|")
    rows = []
    for label, _ in settings:
        e_open, s_open = med["embed", "opening"], med[label, "opening"]
        base = e_open + s_open
        ways = (
            ("opening", e_open, s_open),
            ("whole, all at once", med["embed", "whole"], med[label, "whole"]),
            ("whole, one document at a time", None, None),
        )
        for way, e, s in ways:
            total = med[label, "loop"] if e is None or s is None else e + s
            cells = ("–", "–") if e is None or s is None else (f"{e / n:.4f}", f"{s / n:.4f}")
            print(
                f"| {way} | {label} | {cells[0]} | {cells[1]} | {total / n:.4f} "
                f"| {total / base:.2f}x |"
            )
            rows.append(
                {
                    "way": way,
                    "search": label,
                    "embed_s": e,
                    "search_s": s,
                    "total_s": total,
                    "vs_opening": round(total / base, 3),
                }
            )
        batched = med["embed", "whole"] + med[label, "whole"]
        print(
            f"| one at a time / all at once | {label} | | | | {med[label, 'loop'] / batched:.2f}x |"
        )
    out["rows"] = rows
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
