"""Cost of the pieces of test-time training on SmolLM2-135M (benchmark, not a test).

One full fine-tuning step (forward, backward, clip, fused AdamW) at 512 and 1024 tokens under bf16
autocast and fp32, scoring throughput (tokens/s, lm-eval rolling windows of 1024), and the weight
reset (an in-place copy of θ0) against one training step (target: reset < 1% of a step).

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
    tokens = tok(text, add_special_tokens=False)["input_ids"]
    for dtype in ("bf16", "fp32"):
        trainer = TestTimeTrainer(model, tok, TTTConfig(max_length=1024, autocast_dtype=dtype))
        for n in (512, 1024):
            # one neighbor of `reps` random windows of n tokens: the run's train seconds per step
            windows = rng.integers(0, len(tok), size=(args.reps, n))
            out = trainer.run("x", windows, np.full(args.reps, n), np.zeros(args.reps, np.int64))
            step_s[dtype, n] = out.seconds["train"] / out.windows_trained
            rows.append((f"train step {n} tok", dtype, f"{step_s[dtype, n]:.2f} s",
                         f"{n / step_s[dtype, n]:.0f} tok/s"))  # fmt: skip
        score_s = timed(functools.partial(trainer.score, tokens), max(1, args.reps - 1))
        rows.append((f"score {n_text} tok (L=1024)", dtype, f"{score_s:.2f} s",
                     f"{n_text / score_s:.0f} tok/s"))  # fmt: skip
        reset_s = timed(trainer.reset, 5)
        rows.append(("reset (in-place copy of θ0)", dtype, f"{reset_s * 1e3:.1f} ms",
                     f"{reset_s / step_s[dtype, 1024]:.2%} of a 1024 step"))  # fmt: skip
        del trainer

    print(f"\n{'what':<26} {'dtype':<6} {'time':>10}  rate")
    for what, dtype, t, rate in rows:
        print(f"{what:<26} {dtype:<6} {t:>10}  {rate}")
    for n in (512, 1024):
        print(f"fp32/bf16 step time at {n}: {step_s['fp32', n] / step_s['bf16', n]:.2f}x")


if __name__ == "__main__":
    main()
