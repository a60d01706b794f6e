"""Embedding throughput: our `Encoder` (fp32, and bf16 autocast) against sentence-transformers'
own `encode` on the same texts, in the same run.

    python benches/bench_embed.py [--docs 128] [--short 512] [--batch-size 32]

Two workloads from the shared train split: whole documents (truncated by both at 256 tokens) and
short texts (each document's first line). Prints texts/s, the ratio to sentence-transformers, and
the cosine agreement (min and mean) of each variant with sentence-transformers' vectors.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tttnn.corpus import Corpus
from tttnn.embed import Encoder, default_encoder_path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def timed(fn, repeat: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    assert out is not None
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=SHARED / "train.jsonl.zst")
    ap.add_argument("--docs", type=int, default=128)
    ap.add_argument("--short", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    all_docs = [d.text for d in Corpus(args.corpus)]
    step = max(1, len(all_docs) // args.docs)
    docs = all_docs[::step][: args.docs]
    step = max(1, len(all_docs) // args.short)
    short = [next((ln for ln in t.splitlines() if ln.strip()), t)[:200] for t in all_docs[::step]]
    short = short[: args.short]

    ours = Encoder(progress=False, precision="fp32")
    ours_bf16 = Encoder(progress=False, precision="bf16")
    st = SentenceTransformer(str(default_encoder_path()), device="cpu")
    bs = args.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch size {bs}")
    print("| texts | n | s-t encode texts/s | ours fp32 texts/s (ratio) | ours bf16 texts/s (ratio) "
          "| cos fp32 vs s-t min | cos bf16 vs s-t min / mean |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, texts in (("documents (256 tok)", docs), ("short texts", short)):
        t_st, ref = timed(
            lambda texts=texts: st.encode(
                texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True
            ),
            args.repeat,
        )
        t_ours, a = timed(lambda texts=texts: ours.encode(texts, batch_size=bs), args.repeat)
        t_bf, b = timed(lambda texts=texts: ours_bf16.encode(texts, batch_size=bs), args.repeat)
        n = len(texts)
        ca, cb = (a * ref).sum(1), (b * ref).sum(1)
        print(
            f"| {name} | {n} | {n / t_st:.1f} | {n / t_ours:.1f} ({t_st / t_ours:.2f}x) "
            f"| {n / t_bf:.1f} ({t_st / t_bf:.2f}x) | {ca.min():.6f} | {cb.min():.5f} / {cb.mean():.5f} |"
        )


if __name__ == "__main__":
    main()
