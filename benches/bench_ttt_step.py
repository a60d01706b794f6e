"""Cost of the pieces of test-time training on SmolLM2-135M (benchmark, not a test).

One full fine-tuning step (forward, backward, clip, fused AdamW) at 512 and 1024 tokens under bf16
autocast and fp32, scoring throughput (tokens/s, lm-eval rolling windows of 1024), and the weight
reset against one training step (target: reset < 1% of a step). The reset re-points the parameters
at θ0, and the first step after it does AdamW's weight decay out of place from θ0 (see
`tttnn/ttt.py`). So the peer measured here is the in-place copy of θ0 that it replaces. The
benchmark also checks that a first step after a reset costs no more than a later step.

    python benches/bench_ttt_step.py [--reps 2] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tttnn.models import DEFAULT_LM, load_causal_lm
from tttnn.ttt import TestTimeTrainer, TTTConfig


def timed(fn, reps: int) -> float:
    fn()  # warm-up (allocates AdamW state, autotunes kernels)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_LM)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()

    model, tok = load_causal_lm(args.model)
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
          f"device {next(model.parameters()).device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    rng = np.random.default_rng(0)
    text = Path(__file__).read_text(encoding="utf-8") * 3  # real text, ~2k tokens
    n_text = len(tok(text, add_special_tokens=False)["input_ids"])

    rows = []
    step_s: dict[tuple[str, int], float] = {}
    for dtype in ("bf16", "fp32"):
        trainer = TestTimeTrainer(model, tok, TTTConfig(max_length=1024, autocast_dtype=dtype))
        opt = trainer._new_optimizer()
        model.train()
        for n in (512, 1024):
            ids = torch.from_numpy(rng.integers(0, len(tok), size=(1, n))).to(trainer.device)
            step_s[dtype, n] = timed(functools.partial(trainer._train_step, opt, ids), args.reps)
            rows.append((f"train step {n} tok", dtype, f"{step_s[dtype, n]:.2f} s",
                         f"{n / step_s[dtype, n]:.0f} tok/s"))  # fmt: skip
        model.eval()
        trainer.reset()
        del opt
        score_s = timed(functools.partial(trainer.score, text), max(1, args.reps - 1))
        rows.append((f"score {n_text} tok (L=1024)", dtype, f"{score_s:.2f} s",
                     f"{n_text / score_s:.0f} tok/s"))  # fmt: skip
        reset_s = timed(trainer.reset, 5)
        rows.append(("reset (re-point at θ0)", dtype, f"{reset_s * 1e3:.3f} ms",
                     f"{reset_s / step_s[dtype, 1024]:.3%} of a 1024 step"))  # fmt: skip

        def copy_theta0(t: TestTimeTrainer = trainer) -> None:
            with torch.no_grad():
                for work, theta0 in zip(t._work, t._theta0):
                    work.copy_(theta0)

        copy_s = timed(copy_theta0, 5)
        rows.append(("peer: in-place copy of θ0", dtype, f"{copy_s * 1e3:.1f} ms",
                     f"{copy_s / step_s[dtype, 1024]:.2%} of a 1024 step"))  # fmt: skip
        # First step after a reset (decay fused with the restore) vs a later step, same window.
        ids = torch.from_numpy(rng.integers(0, len(tok), size=(1, 1024))).to(trainer.device)
        model.train()
        first, later = [], []
        for _ in range(args.reps):
            opt = trainer._new_optimizer()
            trainer._train_step(opt, ids)  # allocates AdamW state: not timed
            trainer.reset()
            for bucket in (first, later):
                t0 = time.perf_counter()
                trainer._train_step(opt, ids)
                bucket.append(time.perf_counter() - t0)
            trainer.reset()
        model.eval()
        f, lt = statistics.median(first), statistics.median(later)
        rows.append(("first step after reset", dtype, f"{f:.2f} s",
                     f"{(f - lt) / lt:+.2%} vs a later step ({lt:.2f} s)"))  # fmt: skip
        del trainer

    print(f"\n{'what':<26} {'dtype':<6} {'time':>10}  rate")
    for what, dtype, t, rate in rows:
        print(f"{what:<26} {dtype:<6} {t:>10}  {rate}")
    for n in (512, 1024):
        print(f"fp32/bf16 step time at {n}: {step_s['fp32', n] / step_s['bf16', n]:.2f}x")


if __name__ == "__main__":
    main()
