"""Corruption fuzz of the store and its HNSW graphs: random byte flips and truncations of every
file of a small index (vectors, graphs, text/tokens/records data and offsets, manifest), seeded.

Each case copies a pristine index, damages one file, then opens it, searches (exact and HNSW),
reads the text, tokens and records of the results, and verifies. Allowed outcomes:
- a clear error (CorruptIndexError, ValueError, OSError) at one of those steps;
- the pristine index's answers, bit for bit, up to that step (a flip the data does not depend
  on, e.g. in JSON whitespace of the manifest, which its checksum does not cover, or damage to a
  file the steps before `verify()` do not read, which `verify()` then reports).
A flipped value in the vectors, the graph's codes or the ragged data has no structure to check:
the checksum of each file is checked at its first use in the process (first search of a shard,
first read of a column), so it is an error there, never a different answer.
Anything else fails: another exception (a PanicException above all), or a different answer,
whatever `verify()` says. A crash would kill pytest: `python tests/test_corruption.py SEED N`
runs cases one per child process while developing.

Environment: TTTNN_FUZZ_CASES (default 400) cases, TTTNN_FUZZ_SEED (default 0) picks them.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from tttnn import CorruptIndexError, EmbeddingStore

DIM, N, SHARD, K = 16, 300, 120, 5
CLEAR = (CorruptIndexError, ValueError, OSError)


def build(path: Path) -> None:
    rng = np.random.default_rng(1234)
    store = EmbeddingStore.create(
        str(path),
        DIM,
        shard_size=SHARD,
        hnsw=True,
        with_text=True,
        with_tokens=True,
        with_records=True,
    )
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    store.append(
        x,
        texts=[f"document {i} " + "naïve 東京 " * int(rng.integers(0, 4)) for i in range(N)],
        tokens=[rng.integers(0, 50_000, int(rng.integers(0, 30))).astype(np.uint32) for _ in x],
        records=[f'{{"doc_id": {i}}}'.encode() for i in range(N)],
    )


def queries() -> np.ndarray:
    return np.random.default_rng(99).standard_normal((4, DIM)).astype(np.float32)


def answers(path: Path) -> tuple[str, object]:
    """(the step that raised or "done", the answers so far); exceptions outside CLEAR propagate."""
    step, got = "open", []
    try:
        store = EmbeddingStore.open(str(path))
        step = "exact search"
        got.append(store.search(queries(), K))
        step = "hnsw search"
        got.append(store.search(queries(), K, exact=False))
        step = "read"
        for ids, _ in list(got):
            for i in ids.ravel():
                got.append(
                    (store.text(int(i)), store.tokens(int(i)).tolist(), store.record(int(i)))
                )
        step = "verify"
        store.verify()
    except CLEAR as e:
        return f"{type(e).__name__} at {step}", got
    return "done", got


def same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, tuple) and isinstance(x[0], np.ndarray):
            if not (np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1], equal_nan=True)):
                return False
        elif x != y:
            return False
    return True


def damage(path: Path, rng: np.random.Generator) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".lock")
    f = files[int(rng.integers(len(files)))]
    data = bytearray(f.read_bytes())
    kind = rng.choice(["flip", "flip-head", "truncate"]) if data else "truncate"
    if kind == "truncate":
        del data[int(rng.integers(0, max(len(data), 1))) :]
    else:
        span = min(len(data), 160) if kind == "flip-head" else len(data)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(span))] ^= 1 << int(rng.integers(8))
    f.write_bytes(bytes(data))
    return f"{kind} {f.relative_to(path)}"


def run_case(pristine: Path, work: Path, want: list, seed: int, case: int) -> str:
    """Damage a copy, check the outcome is allowed, return its class."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    what = damage(work, np.random.default_rng([seed, case]))
    outcome, got = answers(work)
    # Every answer given before the error (or all of them) is the pristine one.
    assert same(got, want[: len(got)]), f"case {seed}/{case} ({what}): wrong answer ({outcome})"
    return "pristine answer" if outcome == "done" else outcome


def fuzz(tmp: Path, seed: int, cases: int, one_process: bool = True) -> collections.Counter:
    pristine = tmp / "pristine"
    if not pristine.exists():
        build(pristine)
    outcome, want = answers(pristine)
    assert outcome == "done"
    counts: collections.Counter = collections.Counter()
    for case in range(cases):
        if one_process:
            counts[run_case(pristine, tmp / "work", want, seed, case)] += 1
        else:  # a crash here shows as a return code instead of killing the driver
            r = subprocess.run(
                [sys.executable, __file__, str(seed), str(case), str(tmp)],
                capture_output=True,
                text=True,
            )
            assert r.returncode == 0, f"case {seed}/{case}: rc {r.returncode}\n{r.stderr[-3000:]}"
            counts[r.stdout.strip().splitlines()[-1]] += 1
    return counts


def test_corruption_fuzz(tmp_path: Path) -> None:
    seed = int(os.environ.get("TTTNN_FUZZ_SEED", "0"))
    cases = int(os.environ.get("TTTNN_FUZZ_CASES", "400"))
    counts = fuzz(tmp_path, seed, cases)
    print(f"\ncorruption fuzz, seed {seed}: {cases} cases")
    for outcome, n in counts.most_common():
        print(f"  {n:5d}  {outcome}")
    assert sum(counts.values()) == cases
    # Not vacuous: most damage is caught before verify.
    assert sum(n for o, n in counts.items() if " at " in o and "verify" not in o) > cases // 3


if __name__ == "__main__":
    seed, case, tmp = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    pristine = tmp / "pristine"
    _, want = answers(pristine)
    print(run_case(pristine, tmp / f"work{case}", want, seed, case))
    shutil.rmtree(tmp / f"work{case}")
