"""Sweep of the TTT recipe on a validation set: each setting a `tttnn eval` run in its own
directory of SWEEP, then one table of all settings (`tttnn.compare`: byte-weighted bits per byte,
its change with a paired bootstrap interval, the difference to the first setting, steps, tokens
and seconds per document).

Resumable: rerun the same command and each setting's run resumes where it stopped (a finished
one is not redone: `tttnn eval` finds every document scored). Tune on a validation split drawn
from the training corpus (`tttnn sample`), never on the test split.

    tttnn sample ../shared/corpus/train.jsonl.zst --per-domain 5 --seed 0 --out val.jsonl
    python3 benches/sweep.py --index IDX --data val.jsonl --out sweep            # the built-in plan
    python3 benches/sweep.py --index IDX --data val.jsonl --out sweep --plan my_plan.json
    python3 benches/sweep.py --out sweep --table-only                             # table so far
    python3 benches/sweep.py ... --jobs 2       # two settings at once, one torch thread each
    python3 benches/sweep.py ... --only B A --ray --workers 2   # B then A, each over 2 Ray workers

A plan is a JSON list of settings: `{"name": "lr=1e-4", "args": {"lr": 1e-4, "lora": 16}}`;
each key of `args` is a `tttnn eval` option without its dashes (`true` for a flag alone, a list
for a repeatable option); the first setting is the reference of the table's differences. Options
sweep.py does not know go to every `tttnn eval` (`--ray --workers 2`: one setting over two TTT
workers, the same rows as a single process, so a run can switch between the two on resume). The
built-in plan (`--plan recipe`, the default) varies one factor at a time around the paper's recipe
(`BASE`, k = 20): learning rate, windows per neighbor, window length, k, selection, LoRA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tttnn.compare import compare, load_side

BASE: dict[str, Any] = {
    "neighbors": 20,
    "lr": 2e-5,
    "windows-per-neighbor": "all",
    "max-length": 1024,
}
"""The paper's recipe at k = 20, every value explicit (the defaults have since been tuned)."""

RECIPE_PLAN: list[dict[str, Any]] = [
    {"name": "paper", "args": {}},
    *({"name": f"lr={lr:g}", "args": {"lr": lr}} for lr in (5e-5, 1e-4, 2e-4)),
    {"name": "wpn=1", "args": {"windows-per-neighbor": 1}},
    {"name": "L=512", "args": {"max-length": 512}},
    {"name": "k=50", "args": {"neighbors": 50}},
    *(
        {"name": f"sift,lambda={lam:g}", "args": {"select": "sift", "sift-lambda": lam}}
        for lam in (0.01, 0.1, 1.0)
    ),
    *(
        {"name": f"lora={r},lr={lr:g}", "args": {"lora": r, "lr": lr}}
        for r, lr in ((16, 1e-4), (16, 1e-3))
    ),
]


def eval_args(args: dict[str, Any]) -> list[str]:
    """`{"lr": 1e-4, "exact": True, "baseline": ["in-context"]}` -> ["--lr", "0.0001", ...]."""
    out: list[str] = []
    for key, value in args.items():
        flag = key if key.startswith("-") else f"--{key}"
        if value is True:
            out.append(flag)
        elif value is False:
            out.append(f"--no-{flag.lstrip('-')}")
        elif isinstance(value, list):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def by_name(settings: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The setting called `name`, or an error that lists the plan's names."""
    for s in settings:
        if s["name"] == name:
            return s
    raise SystemExit(f"no setting {name!r} in the plan: {'; '.join(s['name'] for s in settings)}")


def load_plan(plan: str) -> list[dict[str, Any]]:
    settings = RECIPE_PLAN if plan == "recipe" else json.loads(Path(plan).read_text())
    names = [s["name"] for s in settings]
    if len(set(names)) != len(names):
        raise SystemExit(f"setting names must be unique: {names}")
    for s in settings:
        if "/" in s["name"] or s["name"].startswith("."):
            raise SystemExit(f"{s['name']!r}: a setting name is a directory name")
    return settings


STOP = threading.Event()
"""Set by an interrupted run: no further setting starts."""


def run_setting(
    setting: dict[str, Any], opts: argparse.Namespace, extra: list[str]
) -> tuple[int, float]:
    """Run (or resume) one setting's `tttnn eval`: its exit code and seconds. With `--jobs N`,
    torch in each run gets `cores // N` threads (`OMP_NUM_THREADS`). After an interrupted
    setting (exit 130: Ctrl-C reaches every run), the settings not yet started are skipped."""
    if STOP.is_set():
        return 130, 0.0
    out = Path(opts.out) / setting["name"]
    args = {**BASE, **setting["args"]} if opts.plan == "recipe" else dict(setting["args"])
    cmd = [sys.executable, "-m", "tttnn", "eval", "--index", opts.index,
           *[x for d in opts.data for x in ("--data", d)], "--out", str(out), "--model",
           opts.model, "-q", *eval_args(args), *extra]  # fmt: skip
    print(f"[{setting['name']}] {' '.join(cmd[3:])}", flush=True)
    t0 = time.perf_counter()
    with open(Path(opts.out) / f"{setting['name']}.log", "a", encoding="utf-8") as log:
        env = dict(os.environ)
        if opts.jobs > 1:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // opts.jobs))
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    secs = time.perf_counter() - t0
    if code == 130:
        STOP.set()
    print(f"[{setting['name']}] exit {code} after {secs:.0f} s", flush=True)
    return code, secs


def table(sweep: Path, settings: list[dict[str, Any]], at: int | None, reps: int) -> str:
    """The averages of every setting with results, as Markdown, and table.json beside it."""
    sides, missing = [], []
    for s in settings:
        run = sweep / s["name"]
        try:
            sides.append(load_side(run, k=at, label=s["name"]))
        except (FileNotFoundError, ValueError) as err:
            missing.append(f"{s['name']} ({err})")
    lines = []
    if len(sides) >= 2:
        c = compare(sides, intersect=True, reps=reps)
        header = ["setting", "k", "docs", "bpb@0", "bpb@k", "change", "95% CI", "Δ vs first",
                  "95% CI", "domains equal", "steps/doc", "tokens/doc", "s/doc"]  # fmt: skip
        lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        weighted, macro = c.groups[-2], c.groups[-1]
        for e, m in zip(weighted.entries, macro.entries):
            lines.append("| " + " | ".join([
                e.side, str(e.k), str(weighted.documents), f"{e.bpb0:.4f}", f"{e.bpbk:.4f}",
                f"{e.change * 100:+.1f}%", _ci(e.change_ci),
                "–" if e.diff is None else f"{e.diff * 100:+.1f}", _ci(e.diff_ci),
                f"{m.change * 100:+.1f}%", _n(e.steps), _n(e.tokens), _n(e.seconds, 1),
            ]) + " |")  # fmt: skip
        lines.append("")
        lines.append(
            f"change: byte-weighted bits per byte at k vs k = 0 over the {c.documents} documents "
            "every setting scored; domains equal: the same with each domain counted once; Δ vs "
            f"first: change minus {sides[0].label}'s, in points; 95% CI: paired bootstrap over "
            f"documents within domains ({reps} replicates)."
        )
        groups = [dataclasses.asdict(g) for g in c.groups]
        (sweep / "table.json").write_text(
            json.dumps({"settings": settings, "groups": groups}, indent=2)
        )
    elif sides:
        lines.append(f"only {sides[0].label} has results so far")
    if missing:
        lines.append("no results: " + "; ".join(missing))
    text = "\n".join(lines)
    (sweep / "table.md").write_text(text + "\n")
    return text


def _ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]"


def _n(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", help="Index of the training corpus.")
    p.add_argument("--data", nargs="+", default=[], help="Validation documents (tttnn sample).")
    p.add_argument("--out", required=True, help="Sweep directory: a run directory per setting.")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--plan", default="recipe", help="'recipe' or a JSON file of settings.")
    p.add_argument(
        "--only", nargs="+", default=None, help="Run only these settings, in this order."
    )
    p.add_argument("--table-only", action="store_true", help="Print the table of what is done.")
    p.add_argument("--at", type=int, default=None, help="Compare at this k (default: largest).")
    p.add_argument("--reps", type=int, default=2000, help="Bootstrap replicates.")
    p.add_argument("--jobs", type=int, default=1,
                   help="Settings run at once, each with cores/jobs torch threads (on 2 cores, "
                        "2 jobs of 1 thread finish more documents per hour than 1 of 2).")  # fmt: skip
    opts, extra = p.parse_known_args()  # the rest goes to every `tttnn eval`
    settings = load_plan(opts.plan)
    sweep = Path(opts.out)
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "plan.json").write_text(json.dumps(settings, indent=2))
    if not opts.table_only:
        if not opts.index or not opts.data:
            p.error("--index and --data are needed to run settings")
        todo = settings if not opts.only else [by_name(settings, n) for n in opts.only]
        with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
            try:
                codes = [c for c, _ in pool.map(lambda s: run_setting(s, opts, extra), todo)]
            except KeyboardInterrupt:  # the running settings stop on the same Ctrl-C
                STOP.set()
                codes = [130]
        if 130 in codes:
            sys.exit(130)
    print(table(sweep, settings, opts.at, opts.reps))


if __name__ == "__main__":
    main()
