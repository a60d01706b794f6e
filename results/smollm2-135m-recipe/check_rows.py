"""What the committed rows show about themselves, recomputed from the rows alone.

    python3 results/smollm2-135m-recipe/check_rows.py

A document's bits per byte at k = 0 (the untouched model on the same text) is the same number in
two runs when both rows were computed in the same environment, and differs in its last digits
when not (bf16 kernels differ between CPUs and torch builds). Rows written by newer versions
record their environment (`env`); older rows do not, so k = 0 is the evidence every row has.

1. For each pair of the test runs that score whole documents: on how many documents the k = 0
   scores differ, and by how much at most; how many rows of each run record `env.hardware`.
2. Paper's recipe against the tuned recipe (test, k = 20): the documents whose k = 0 scores
   differ, and the comparison on all documents and on those whose k = 0 scores are equal.
3. The stage-3 rule (validation, k = 20: every window at lr 5e-5 against one window at lr 1e-4,
   both 1024 tokens): the same split by k = 0, and the 95% interval of the difference over all
   16 documents resampling within each domain (what `tttnn compare` does) and without strata, at
   seed 0 and over seeds 0-199 (whether the answer depends on the draws).

Only numpy and the rows: the byte-weighted change and the paired bootstrap are written out here
the way `tttnn compare` computes them (4000 replicates, seed 0, percentile interval, documents in
the first run's row order), so the figures over all documents equal those `tttnn compare` prints
for the same pairs (`test/final_whole.md`; the stage-3 table of the README).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPS = 4000
WHOLE = [  # the test runs that score whole documents
    "paper",
    "tuned,nearest,wpn=all,L=1024,lr=5e-5",
    "tuned,sift,lambda=1,wpn=all,L=1024,lr=5e-5",
    "nearest,wpn=1,L=1024,lr=1e-4",
    "sift,lambda=1,wpn=1,L=1024,lr=1e-4",
]


def rows(run: Path) -> dict[str, dict]:
    """doc_id -> row, in the file's order."""
    out = {}
    for line in (run / "results.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("status") == "ok":
            out[r["doc_id"]] = r
    return out


def scores(run: dict[str, dict], ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Bits per byte at k = 0 and at k of documents `ids`."""
    return (
        np.array([run[d]["bpb"]["0"] for d in ids]),
        np.array([run[d]["bpb"][str(k)] for d in ids]),
    )


def change(nbytes: np.ndarray, b0: np.ndarray, bk: np.ndarray) -> float:
    """Byte-weighted relative change: Σ bytes·bpb(k) / Σ bytes·bpb(0) − 1."""
    return float((nbytes * bk).sum() / (nbytes * b0).sum() - 1.0)


def diff_interval(
    first: dict[str, dict],
    other: dict[str, dict],
    ids: list[str],
    k: int,
    strata: bool,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of change(other) − change(first) over documents `ids`, from a
    paired bootstrap: each replicate draws documents with replacement (within each domain, in
    sorted domain order, with `strata`; else from all of `ids`) and keeps both runs' scores of
    a drawn document together."""
    groups: dict[str, list[str]] = {}
    for d in ids:
        groups.setdefault(first[d]["domain"] if strata else "", []).append(d)
    rng = np.random.default_rng(seed)
    num = np.zeros((REPS, 2))
    den = np.zeros((REPS, 2))
    for name in sorted(groups):
        g = groups[name]
        nbytes = np.array([float(first[d]["bytes"]) for d in g])
        idx = rng.integers(0, len(g), (REPS, len(g)))
        for s, run in enumerate((first, other)):
            b0, bk = scores(run, g, k)
            den[:, s] += (nbytes * b0)[idx].sum(axis=1)
            num[:, s] += (nbytes * bk)[idx].sum(axis=1)
    reps = num / den - 1.0
    lo, hi = np.quantile(reps[:, 1] - reps[:, 0], [0.025, 0.975])
    return float(lo), float(hi)


def pts(x: float) -> str:
    return f"{x * 100:+.2f}"


def same_k0(a: dict[str, dict], b: dict[str, dict]) -> tuple[list[str], list[str], float]:
    """Documents of both runs whose k = 0 scores are equal, those whose scores differ, and the
    largest relative difference |a / b - 1|."""
    ids = [d for d in a if d in b]
    rel = {d: abs(a[d]["bpb"]["0"] / b[d]["bpb"]["0"] - 1.0) for d in ids}
    return [d for d in ids if rel[d] == 0.0], [d for d in ids if rel[d] != 0.0], max(rel.values())


def environments() -> None:
    runs = {name: rows(HERE / "test" / name) for name in WHOLE}
    print("test runs, pairs of rows whose k = 0 scores differ:")
    for i, a in enumerate(WHOLE):
        for b in WHOLE[i + 1 :]:
            same, apart, largest = same_k0(runs[a], runs[b])
            print(f"  {a} / {b}: {len(apart)} of {len(same) + len(apart)} (up to {largest:.2%})")
    for name, run in runs.items():
        hw = sorted({str((r.get("env") or {}).get("hardware")) for r in run.values()})
        n = sum(1 for r in run.values() if (r.get("env") or {}).get("hardware"))
        print(f"  {name}: {n} of {len(run)} rows record env.hardware {hw}")


def paired(
    label: str, first: dict[str, dict], other: dict[str, dict], ids: list[str], k: int
) -> None:
    """change(other) - change(first) over `ids`, its interval within domains, and how many
    documents are better under `other`."""
    nbytes = np.array([float(first[d]["bytes"]) for d in ids])
    c1 = change(nbytes, *scores(first, ids, k))
    c2 = change(nbytes, *scores(other, ids, k))
    better = sum(
        other[d]["bpb"][str(k)] / other[d]["bpb"]["0"]
        < first[d]["bpb"][str(k)] / first[d]["bpb"]["0"]
        for d in ids
    )
    lo, hi = diff_interval(first, other, ids, k, strata=True)
    print(
        f"  {label} ({len(ids)} documents): {c1:.2%} -> {c2:.2%}, Δ {pts(c2 - c1)} points "
        f"[{pts(lo)}, {pts(hi)}], better on {better} of {len(ids)}"
    )


def paper_against_tuned() -> None:
    paper = rows(HERE / "test" / "paper")
    tuned = rows(HERE / "test" / "tuned,nearest,wpn=all,L=1024,lr=5e-5")
    same, apart, largest = same_k0(paper, tuned)
    print(
        f"paper -> tuned (test, k = 20): k = 0 scores differ on {len(apart)} of "
        f"{len(same) + len(apart)} (up to {largest:.2%}): "
        + ", ".join(f"{d} ({paper[d]['domain']})" for d in apart)
    )
    paired("all", paper, tuned, [d for d in paper if d in tuned], 20)
    paired("equal k = 0", paper, tuned, same, 20)


def stage3_rule() -> None:
    one = rows(HERE / "validation" / "L=1024,lr=1e-4")
    every = rows(HERE / "validation" / "wpn=all,L=1024,lr=5e-5")
    same, apart, largest = same_k0(one, every)
    ids = [d for d in one if d in every]
    print(
        f"stage-3 rule, one window lr 1e-4 -> every window lr 5e-5 (validation, k = 20): k = 0 "
        f"scores differ on {len(apart)} of {len(ids)} (up to {largest:.2%})"
    )
    paired("all", one, every, ids, 20)
    paired("equal k = 0", one, every, [d for d in ids if d in same], 20)
    for strata, how in ((True, "within domains"), (False, "over all documents, no strata")):
        lo, hi = diff_interval(one, every, ids, 20, strata)
        ends = np.array([diff_interval(one, every, ids, 20, strata, seed) for seed in range(200)])
        excludes = int(((ends[:, 1] < 0) | (ends[:, 0] > 0)).sum())
        print(
            f"  all 16, resampling {how}: [{pts(lo)}, {pts(hi)}] at seed 0; over seeds 0-199 the "
            f"upper end is {pts(ends[:, 1].min())} to {pts(ends[:, 1].max())}, 0 excluded at "
            f"{excludes} of 200"
        )


if __name__ == "__main__":
    environments()
    paper_against_tuned()
    stage3_rule()
