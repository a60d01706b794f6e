"""TTT-NN on the benchmark corpus: bits per byte before/after per domain, overhead, full vs LoRA.

    python benches/bench_ttt.py --index bench_out/index --docs-per-domain 5 -k 20

Builds the index of `../shared/corpus/train.jsonl.zst` first when `--index` does not exist (or
resumes its build). Runs `tttnn eval` with full fine-tuning (and, with `--lora R`, a second run
with LoRA) on the test split, then prints:
- the per-domain table (and writes curve.png / change.png in the run directory);
- the overhead: the share of wall time per document outside forward/backward passes (retrieval,
  packing, reset, bookkeeping), against the 5% target, and reset time against one training step
  (target < 1%);
- full fine-tuning vs LoRA: bits per byte at the largest k and seconds per document, with ratios.
Both runs resume if interrupted. Nothing here is tuned on the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from tttnn.build import build_index
from tttnn.config import EvalConfig, PackConfig, TTTConfig
from tttnn.evaluate import run_eval
from tttnn.index import Index
from tttnn.report import make_report, plot_report, render

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def overhead(rows: list[dict]) -> dict[str, float]:
    ok = [r for r in rows if r["status"] == "ok"]
    total = sum(r["total_s"] for r in ok)
    # forward/backward passes: training, scoring, and the in-context baseline's scoring
    compute = sum(r["train_s"] + r["score_s"] + r.get("in_context_s", 0.0) for r in ok)
    steps = sum(r["windows_trained"] for r in ok)
    step_s = sum(r["train_s"] for r in ok) / max(steps, 1)
    return {
        "documents": len(ok),
        "seconds_per_doc": total / max(len(ok), 1),
        "overhead_share": (total - compute) / total if total else float("nan"),
        "retrieve_s_median": statistics.median(r["retrieve_s"] for r in ok) if ok else 0.0,
        "reset_s_median": statistics.median(r["reset_s"] for r in ok) if ok else 0.0,
        "step_s_mean": step_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--index", type=Path, default=Path("bench_out/index"))
    ap.add_argument("--train", type=Path, default=SHARED / "train.jsonl.zst")
    ap.add_argument("--test", type=Path, default=SHARED / "test.jsonl.zst")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--docs-per-domain", type=int, default=5)
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--eval-at", default="0,1,2,5,10,20")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument(
        "--windows-per-neighbor", type=lambda v: None if v == "all" else int(v),
        default=PackConfig().windows_per_neighbor, help="a number, or 'all'",
    )  # fmt: skip
    ap.add_argument("--lr", type=float, default=TTTConfig().lr)
    ap.add_argument("--lora", type=int, default=None, help="also run LoRA of this rank")
    ap.add_argument("--lora-lr", type=float, default=None, help="LoRA lr (default: --lr)")
    ap.add_argument("--lora-docs-per-domain", type=int, default=None)
    ap.add_argument(
        "--baseline-in-context",
        action="store_true",
        help="also score the paper's in-context baseline (full fine-tuning run)",
    )
    args = ap.parse_args()

    if not (args.index / "manifest.json").exists() or not _complete(args.index):
        resume = (args.index / "manifest.json").exists()
        print(f"building the index of {args.train} in {args.index} (resume={resume})")
        build_index([args.train], args.index, resume=resume, shard_size=1000)
    eval_at = tuple(int(x) for x in args.eval_at.split(","))
    tag = f"k{args.k}-L{args.max_length}-w{args.windows_per_neighbor or 'all'}-lr{args.lr:g}"
    runs = {"full": args.out / f"ttt-full-{tag}"}
    if args.lora:
        lr = args.lora_lr or args.lr
        runs[f"lora{args.lora}"] = args.out / f"ttt-lora{args.lora}-{tag}-lr{lr:g}"
    summary = {}
    for name, run in runs.items():
        lora = name != "full"
        cfg = EvalConfig.from_flat(
            index=str(args.index),
            data=[str(args.test)],
            out=str(run),
            model=args.model,
            neighbors=args.k,
            eval_at=eval_at,
            max_length=args.max_length,
            lr=(args.lora_lr or args.lr) if lora else args.lr,
            windows_per_neighbor=args.windows_per_neighbor,
            lora_r=args.lora if lora else None,
            baselines=("in-context",) if args.baseline_in_context and not lora else (),
            limit_per_domain=(args.lora_docs_per_domain or args.docs_per_domain)
            if lora
            else args.docs_per_domain,
        )
        print(f"\n== {name}: {run}")
        run_eval(cfg)
        rep = make_report(run)
        print(render(rep, "md"))
        print("plots:", ", ".join(str(p) for p in plot_report(rep)))
        rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
        ov = overhead(rows)
        kmax = rep.k_max
        ov["bpb_k0"] = rep.weighted.bpb.get(0, float("nan"))
        ov["bpb_kmax"] = rep.weighted.bpb.get(kmax, float("nan"))
        summary[name] = (ov, {r["doc_id"] for r in rows if r["status"] == "ok"})
        print(
            f"overhead: {ov['overhead_share'] * 100:.2f}% of wall time outside forward/backward "
            f"(target < 5%); reset {ov['reset_s_median'] * 1000:.1f} ms = "
            f"{ov['reset_s_median'] / ov['step_s_mean'] * 100:.2f}% of one training step "
            f"({ov['step_s_mean']:.2f} s; target < 1%); retrieval "
            f"{ov['retrieve_s_median'] * 1000:.0f} ms; {ov['seconds_per_doc']:.1f} s per document"
        )
    if len(summary) == 2:
        (full, _), (lora, _) = summary["full"], summary[next(n for n in summary if n != "full")]
        print("\n| | bpb k=0 | bpb k=max | change | s/doc |")
        print("|---|---:|---:|---:|---:|")
        for name, (ov, _) in summary.items():
            ch = ov["bpb_kmax"] / ov["bpb_k0"] - 1
            print(
                f"| {name} | {ov['bpb_k0']:.4f} | {ov['bpb_kmax']:.4f} | {ch * 100:+.1f}% "
                f"| {ov['seconds_per_doc']:.1f} |"
            )
        print(
            f"LoRA / full time per document: {lora['seconds_per_doc'] / full['seconds_per_doc']:.2f}x"
        )
        if args.lora_docs_per_domain and args.lora_docs_per_domain != args.docs_per_domain:
            print("(LoRA ran on fewer documents: compare per-domain tables, not the averages)")


def _complete(path: Path) -> bool:
    try:
        return Index.open(path).meta.get("status") == "complete"
    except Exception:
        return False


if __name__ == "__main__":
    main()
