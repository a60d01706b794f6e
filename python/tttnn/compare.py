"""Runs and baselines compared on the same test documents: the one aggregation behind
`tttnn compare` and `tttnn report`.

A *side* is one thing compared: a run's test-time training (`RUN`), or a baseline the run
recorded (`RUN:in-context`, `RUN:dynamic-eval`), at one k (`RUN@20`, `RUN:dynamic-eval@5`;
default: the largest k every document of that side reached). The same side may come at several
k (`RUN:dynamic-eval@5 RUN:dynamic-eval@20`: a baseline at its best k and at the run's); each is
then labelled with its k. The in-context baseline has one k, the run's number of neighbors (all
of them are in the context). Every side has the same two numbers per document: bits per byte at
k = 0 (θ0) and at its k. `tttnn report` is the comparison of one run at each of its k (and its
in-context baseline), read as one row per domain.

Aggregation follows lm-evaluation-harness: bits per byte over a set of documents is the
byte-weighted mean (`tttnn.metrics.byte_weighted_bpb`: Σ bytes·bpb / Σ bytes, which is
Σ nll / Σ bytes / ln 2), so a domain's figure is not moved by how many short documents it has. A
side's change is its bits per byte at k against k = 0 over the same documents. The overall
average is given two ways: byte-weighted over all documents (what one bits per byte over all of
them would be, the Pile paper's "weighted by size") and the plain mean over domains (each domain
counts once).

Documents are paired by `doc_id`. Sides over different documents are refused (unless
`intersect`: then the documents all sides share), and so is a document that was scored on other
text in one side than in another (its scored bytes differ: `--split-text` on one side only).

Each side's change and its difference to the first side (change − change of the first, negative:
better than the first) come with 95% intervals from one paired bootstrap over documents: each
replicate draws documents with replacement and takes all sides' scores of each drawn document, so
what the documents share cancels out of the difference. Per domain the documents of the domain
are drawn; for the averages, the documents of every domain (stratified: the domain mix stays the
test set's). The draws depend on the documents only, never on the sides, so a side's interval is
the same in every comparison of the same documents (and the one `tttnn report` prints for that
run). `better`: documents whose relative change is below the first side's.

Compute, side by side, per document: optimizer steps and tokens trained up to the side's k (rows
record them by k: `steps`, `tokens_trained_at`; older rows only the totals, used at the largest
k) and seconds (a run: its whole row's time except its baselines'; a baseline: its own time).

**Equal compute** (`match_steps`, `tttnn compare --match-steps`): with every window of each
neighbor, the steps a run takes for k neighbors depend on which neighbors it picked, so two runs
at the same k are not at the same compute. Matched, each side after the first is read, document
by document, at the largest of its recorded k (up to its own k) whose optimizer steps do not
exceed the first side's steps on that document: never more compute than the first side, often a
little less (the recorded k are a grid, `--eval-at`). Its k is then the mean k read, and its
seconds are not shown (rows time the whole run, not each k).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tttnn._tttnn import atomic_write
from tttnn.config import BASELINES
from tttnn.metrics import byte_weighted_bpb

__all__ = [
    "BOOTSTRAP_REPS",
    "CI_LEVEL",
    "MAX_REPS",
    "Comparison",
    "DocScore",
    "Side",
    "aggregate",
    "bootstrap_sides",
    "compare",
    "format_change",
    "format_interval",
    "format_number",
    "interval",
    "load_results",
    "load_side",
    "match_steps",
    "parse_row",
    "parse_side",
    "plot_comparison",
    "recorded_baselines",
    "render_comparison",
    "row_problem",
    "write_table",
]

log = logging.getLogger(__name__)

BOOTSTRAP_REPS = 4000
MAX_REPS = 100_000
"""The most bootstrap replicates: the draws of one stratum take replicates × documents × 8
bytes, and the intervals do not move by more than their rounding beyond a few thousand."""
CI_LEVEL = 0.95
WEIGHTED = "average (byte-weighted)"
MACRO = "average (domains equal)"
_BASELINE_SECONDS = ("in_context_s", "dynamic_eval_s")
# Where a row keeps each side's scores (None: the run's TTT), and for the sides that train, its
# steps and tokens trained by k (the in-context baseline trains nothing and has one score).
_SCORES: dict[Optional[str], str] = {
    None: "bpb", "in-context": "bpb_in_context", "dynamic-eval": "bpb_dynamic_eval",
}  # fmt: skip
_TRAINED: dict[Optional[str], tuple[str, str]] = {
    None: ("steps", "tokens_trained_at"),
    "dynamic-eval": ("dynamic_eval_steps", "dynamic_eval_tokens_trained"),
}


def load_results(run_dir: str | Path, skipped: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """Rows of `RUN/results.jsonl`. A damaged row (a torn last line from an interrupted write,
    a line that is not a JSON object or not UTF-8, a row without the fields a report reads or
    with a score that is not a finite number: `row_problem`) is left out, and described as
    `RUN/results.jsonl:LINE: why` in `skipped` when given (else logged as a warning). A missing
    or empty file, or one of damaged rows only, is an error, and so is a document with two rows
    (two writers)."""
    path = Path(run_dir) / "results.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results; run `tttnn eval ... --out {run_dir}` first")
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise ValueError(f"{path}: empty: no document was scored yet")
    lines = data.split(b"\n")
    torn = bool(lines[-1].strip())  # no newline at the end: the last write was interrupted
    rows, lines_of, problems = [], [], []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        problem, row = parse_row(raw)
        if problem is not None and torn and i == len(lines) - 1:
            problem = "a torn last row (an interrupted write; resuming `tttnn eval` redoes it)"
        if problem is not None:
            problems.append(f"{path}:{i + 1}: left out: {problem}")
            continue
        rows.append(row)
        lines_of.append(i + 1)
    if skipped is None:
        for problem in problems:
            log.warning("%s", problem)
    else:
        skipped.extend(problems)
    if not rows:
        raise ValueError(f"{path}: no readable row ({len(problems)} damaged: {problems[0]})")
    seen: dict[str, int] = {}
    for line, r in zip(lines_of, rows):
        doc = str(r["doc_id"])
        if doc in seen:
            raise ValueError(
                f"{path}: document {doc!r} has two rows (lines {seen[doc]} and {line}); "
                "was the run written by two processes at once?"
            )
        seen[doc] = line
    return rows


def parse_row(raw: bytes) -> tuple[Optional[str], Any]:
    """A line of results.jsonl: `(None, row)`, or what is wrong with it and the value it holds
    (None where the line is not JSON, as a torn last row from an interrupted write is not)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 (byte {e.start})", None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return f"not JSON at column {e.colno}: {e.msg}", None
    return row_problem(row), row


# The numbers of a scored row that a report or comparison reads: single ones, and ones by k.
_NUMBERS = ("bytes", "bpb_in_context", "total_s", "in_context_s", "dynamic_eval_s",
            "windows_trained", "tokens_trained")  # fmt: skip
_BY_K = ("bpb", "bpb_dynamic_eval", "steps", "tokens_trained_at", "dynamic_eval_steps",
         "dynamic_eval_tokens_trained")  # fmt: skip
_JSON_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}  # fmt: skip


def row_problem(row: Any) -> Optional[str]:
    """What makes `row` unusable as a row of results.jsonl (None: nothing): every row is an
    object with a `doc_id`, a `domain` and a `status` ("ok" or "failed"); a scored row has its
    `bytes` and bits per byte by k (`bpb`, with k = 0), and every score, step or second it holds
    is a finite number."""
    if not isinstance(row, dict):
        return f"a JSON {_JSON_NAMES.get(type(row), 'value')}, not an object"
    for key in ("doc_id", "domain", "status"):
        if key not in row:
            return f"no {key}"
    if not isinstance(row["doc_id"], (str, int)) or isinstance(row["doc_id"], bool):
        return f"doc_id is {_show(row['doc_id'])}, not a name"
    if not isinstance(row["domain"], str):
        return f"domain is {_show(row['domain'])}, not a name"
    if row["status"] not in ("ok", "failed"):
        return f"status is {_show(row['status'])}, not 'ok' or 'failed'"
    if row["status"] != "ok":
        return None
    if not isinstance(row.get("env", {}), (dict, type(None))):
        return f"env is {_show(row['env'])}, not an object"
    if "bpb" not in row or "bytes" not in row:
        return f"a scored row without {'bpb' if 'bpb' not in row else 'bytes'}"
    for key in _NUMBERS:
        if key in row and not _finite(row[key]):
            return f"{key} is {_show(row[key])}, not a finite number"
    if not isinstance(row["bytes"], int) or row["bytes"] < 1:
        return f"bytes is {_show(row['bytes'])}, not a positive count"
    for key in _BY_K:
        if key not in row:
            continue
        by_k = row[key]
        if not isinstance(by_k, dict) or not by_k:
            return f"{key} is {_show(by_k)}, not numbers by k"
        for k, v in by_k.items():
            if not (k.isascii() and k.isdigit()):
                return f"{key} has the key {_show(k)}, not a k"
            if not _finite(v):
                return f"{key} at k = {k} is {_show(v)}, not a finite number"
    if "0" not in row["bpb"]:
        return "bpb has no score at k = 0"
    return None


def _show(x: Any) -> str:
    """A value in a message: its repr, cut short."""
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class DocScore:
    """One document of a side: bits per byte at k = 0 and at the side's k (NaN where the
    document was not scored there: a k it did not reach, in `tttnn report`)."""

    domain: str
    bytes: int
    bpb0: float
    bpbk: float
    steps: Optional[float]
    tokens: Optional[float]
    seconds: Optional[float]
    k: int


@dataclass
class Side:
    """One side of a comparison: its label, run directory, baseline (None: the run's TTT), k and
    the scores of its documents by doc_id; `matched`: read at the steps of another side
    (`match_steps`), each document at its own k; `skipped`: the damaged rows of the run left
    out (`load_results`)."""

    label: str
    run: str
    baseline: Optional[str]
    k: int
    docs: dict[str, DocScore] = field(repr=False)
    matched: bool = False
    skipped: list[str] = field(default_factory=list)


def parse_side(spec: str) -> tuple[str, Optional[str], Optional[int]]:
    """`RUN[:BASELINE][@K]` -> (run, baseline, k)."""
    run, k = spec, None
    head, at, tail = spec.rpartition("@")
    if at and tail.isdigit() and head:
        run, k = head, int(tail)
    baseline = None
    head, colon, tail = run.rpartition(":")
    if colon and tail in BASELINES and head:
        run, baseline = head, tail
    elif colon and head and not Path(run).exists():
        raise ValueError(f"{spec}: unknown baseline {tail!r}; choose from {', '.join(BASELINES)}")
    return run, baseline, k


def recorded_baselines(run: str | Path) -> set[str]:
    """The baselines every scored document of `run` has (its damaged rows left out: `load_side`
    reports them)."""
    rows = [r for r in load_results(run, []) if r.get("status") == "ok"]
    return {b for b in BASELINES if rows and all(_SCORES[b] in r for r in rows)}


def _neighbors_of(run: str, rows: list[dict[str, Any]]) -> int:
    """The run's number of neighbors (config.json; else the largest k its rows reached)."""
    path = Path(run) / "config.json"
    if not path.exists():
        return max(int(k) for r in rows for k in r["bpb"])
    try:
        with open(path, encoding="utf-8") as f:
            neighbors = json.load(f)["config"]["retrieval"]["neighbors"]
        if not isinstance(neighbors, int) or isinstance(neighbors, bool):
            raise TypeError(neighbors)
        return neighbors
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: no number of neighbors in config.retrieval ({e!r})") from None


def _at(d: Any, k: int) -> Optional[float]:
    return None if not isinstance(d, dict) or str(k) not in d else float(d[str(k)])


def load_side(
    run: str | Path, baseline: Optional[str] = None, k: Optional[int] = None,
    label: Optional[str] = None, budget: Optional[dict[str, Optional[float]]] = None,
) -> Side:  # fmt: skip
    """The side `run` (its TTT, or `baseline`) at `k` (default: its largest k) from the run's
    `results.jsonl` (`load_results`: damaged rows are left out and listed in `skipped`, a
    document with two rows is refused). With `budget` (steps by doc_id), each document at the
    largest k up to `k` within its budget (`match_steps`)."""
    run = str(run)
    label = label or run + (f":{baseline}" if baseline else "")
    skipped: list[str] = []
    rows = [r for r in load_results(run, skipped) if r.get("status") == "ok"]
    if not rows:
        raise ValueError(
            f"{Path(run) / 'results.jsonl'}: no document was scored (every row failed)"
        )
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}")
    key = _SCORES[baseline]
    missing = [r["doc_id"] for r in rows if key not in r]
    if missing:
        raise ValueError(
            f"{run}: {len(missing)} of {len(rows)} documents have no {baseline} scores "
            f"(e.g. {missing[0]}); run it with --baseline {baseline}"
        )
    if baseline == "in-context":
        own = _neighbors_of(run, rows)
        if k is not None and k != own:
            raise ValueError(f"{label}: the in-context baseline has k = {own} only, not {k}")
        k = own
    elif k is None:  # the largest k every document reached
        k = min(max(int(x) for x in r[key]) for r in rows)
    docs: dict[str, DocScore] = {}
    for r in rows:
        b0 = float(r["bpb"]["0"])
        steps: Optional[float]
        tokens: Optional[float]
        secs: Optional[float]
        kd = k
        if baseline == "in-context":
            bk: Optional[float] = float(r[key])
            steps, tokens, secs = 0.0, 0.0, r.get("in_context_s")
        else:
            steps_key, tokens_key = _TRAINED[baseline]
            doc = str(r["doc_id"])  # not in the first side: never paired, left at k
            if budget is not None and doc in budget:
                kd = _within(r, key, steps_key, k, budget[doc], label)
            bk = _at(r[key], kd)
            steps, tokens = _at(r.get(steps_key), kd), _at(r.get(tokens_key), kd)
        if baseline == "dynamic-eval":
            secs = r.get("dynamic_eval_s")
        elif baseline is None:
            if steps is None and kd == max(int(x) for x in r["bpb"]):  # rows before `steps`
                steps, tokens = r.get("windows_trained"), r.get("tokens_trained")
            secs = r.get("total_s")
            if secs is not None:
                secs -= sum(r.get(s, 0.0) for s in _BASELINE_SECONDS)
        if bk is None:
            raise ValueError(f"{label}: document {r['doc_id']} was not scored at k = {kd}")
        docs[str(r["doc_id"])] = DocScore(
            str(r["domain"]), int(r["bytes"]), b0, bk,
            None if steps is None else float(steps), None if tokens is None else float(tokens),
            None if secs is None or budget is not None else float(secs), kd,
        )  # fmt: skip
    return Side(label, run, baseline, k, docs, matched=budget is not None, skipped=skipped)


def _within(
    r: dict[str, Any], key: str, steps_key: str, k: int, budget: Optional[float],
    label: str,
) -> int:  # fmt: skip
    """The largest k (up to `k`) at which row `r` scored `key` within `budget` steps (its steps
    by k are at `steps_key`)."""
    if budget is None:
        raise ValueError(
            f"{label}: document {r['doc_id']} has no steps to match in the first side "
            "(its rows are from before steps were recorded per k)"
        )
    steps = r.get(steps_key)
    if not isinstance(steps, dict):
        raise ValueError(
            f"{label}: document {r['doc_id']} records no steps per k; its steps cannot be matched"
        )
    ok = [int(x) for x in r[key] if int(x) <= k and str(x) in steps and steps[str(x)] <= budget]
    return max(ok, default=0)


def match_steps(first: Side, others: list[tuple[str, Optional[str], Optional[int]]]) -> list[Side]:
    """The sides `others` (run, baseline, k) read at the steps of `first`, each document at the
    largest of its k whose steps do not exceed the first side's on that document (module doc)."""
    budget = {d: s.steps for d, s in first.docs.items()}
    return [load_side(run, b, k, budget=budget) for run, b, k in others]


# --- the aggregation -------------------------------------------------------------------------

# per document: bytes (n,), bpb at k = 0 and bpb at k, (n,) for one side or (n, S) for S sides
Stratum = tuple[np.ndarray, np.ndarray, np.ndarray]


def bootstrap_sides(
    strata: list[Stratum], reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Replicates of the relative change bpb(k) / bpb(0) - 1 of S sides scored on the same
    documents (a stratum's two score arrays are `(n,)` for one side or `(n, S)`), byte-weighted
    over all documents and with strata (domains) weighted equally: two `(reps, S)` arrays. A
    paired bootstrap: each replicate resamples the documents of every stratum with replacement,
    keeping each document's scores together. `None` where nothing varies (fewer than two
    documents in every stratum)."""
    strata = [s for s in strata if len(s[0])]
    if not strata or all(len(s[0]) < 2 for s in strata):
        return None, None
    n_sides = np.asarray(strata[0][1]).reshape(len(strata[0][0]), -1).shape[1]
    rng = np.random.default_rng(seed)
    nll0 = np.zeros((reps, n_sides))
    nllk = np.zeros((reps, n_sides))
    macro0 = np.zeros((reps, n_sides))
    macrok = np.zeros((reps, n_sides))
    for nbytes, b0, bk in strata:
        b0, bk = (np.asarray(b).reshape(len(nbytes), -1) for b in (b0, bk))
        idx = rng.integers(0, len(nbytes), (reps, len(nbytes)))
        tot = nbytes[idx].sum(axis=1)
        for s in range(n_sides):
            s0 = (nbytes * b0[:, s])[idx].sum(axis=1)
            sk = (nbytes * bk[:, s])[idx].sum(axis=1)
            nll0[:, s] += s0
            nllk[:, s] += sk
            macro0[:, s] += s0 / tot
            macrok[:, s] += sk / tot
    return nllk / nll0 - 1.0, macrok / macro0 - 1.0


def interval(replicates: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates."""
    lo, hi = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class Entry:
    """One side's figures over one group of documents; a figure over documents of which one was
    not scored there is None."""

    side: str
    k: int
    k_mean: float  # the mean k its documents were read at (k, unless matched)
    bpb0: Optional[float]
    bpbk: Optional[float]
    change: Optional[float]
    change_ci: Optional[tuple[float, float]]
    diff: Optional[float]  # change − the first side's change (None for the first side)
    diff_ci: Optional[tuple[float, float]]
    better: Optional[int]  # documents whose change is below the first side's
    steps: Optional[float]  # per document
    tokens: Optional[float]
    seconds: Optional[float]


@dataclass
class Group:
    name: str  # a domain, WEIGHTED or MACRO
    documents: int
    bytes: int
    entries: list[Entry]


@dataclass
class Comparison:
    sides: list[dict[str, Any]]  # label, run, baseline, k
    documents: int
    dropped: dict[str, int]  # with intersect: documents of each side left out
    groups: list[Group]
    reps: int
    seed: int
    skipped: list[str] = field(default_factory=list)  # damaged rows of the runs, left out


def _pair(sides: list[Side], intersect: bool) -> tuple[list[str], dict[str, int]]:
    """The doc_ids every side scored, and how many each side had beyond them."""
    sets = [set(s.docs) for s in sides]
    common = set.intersection(*sets)
    if any(len(x) != len(common) for x in sets) and not intersect:
        counts = ", ".join(f"{s.label}: {len(x)}" for s, x in zip(sides, sets))
        raise ValueError(
            f"the sides scored different test documents ({counts}; {len(common)} in common); "
            "compare the same test set, or pass --intersect to compare the documents they share"
        )
    if not common:
        raise ValueError("the sides have no test document in common")
    ref = sides[0]
    for s in sides[1:]:
        for d in common:
            a, b = ref.docs[d], s.docs[d]
            if a.bytes != b.bytes or a.domain != b.domain:
                raise ValueError(
                    f"document {d} is {a.domain}, {a.bytes} bytes scored in {ref.label} but "
                    f"{b.domain}, {b.bytes} bytes in {s.label}: not the same text (was "
                    "--split-text given to one run only?)"
                )
    # In the first side's row order: the bootstrap's draws follow the documents' order.
    ids = [d for d in sides[0].docs if d in common]
    return ids, {s.label: len(x) - len(common) for s, x in zip(sides, sets)}


def _stratum(sides: list[Side], ids: list[str]) -> Stratum:
    return (
        np.array([float(sides[0].docs[d].bytes) for d in ids]),
        np.array([[s.docs[d].bpb0 for s in sides] for d in ids]),
        np.array([[s.docs[d].bpbk for s in sides] for d in ids]),
    )


def _byte_weighted(nbytes: np.ndarray, scores: np.ndarray) -> list[Optional[float]]:
    """Each side's (column's) byte-weighted bits per byte; None where a document has none."""
    return [
        None if np.isnan(col).any() else float(byte_weighted_bpb(col.tolist(), nbytes.tolist()))
        for col in scores.T
    ]


def _mean(xs: list[Optional[float]]) -> Optional[float]:
    return None if not xs or any(x is None for x in xs) else float(np.mean(xs))  # type: ignore[arg-type]


def _entries(
    sides: list[Side], ids: list[str], bpb0: list[Optional[float]],
    bpbk: list[Optional[float]], reps: Optional[np.ndarray],
) -> list[Entry]:  # fmt: skip
    """Entries of every side over documents `ids` whose group figures are bpb0, bpbk (one per
    side) and bootstrap replicates `reps` (R, S) of the changes."""
    changes = [None if a is None or b is None else b / a - 1.0 for a, b in zip(bpb0, bpbk)]
    ref = np.array([sides[0].docs[d].bpbk / sides[0].docs[d].bpb0 for d in ids])
    out = []
    for s, (side, change) in enumerate(zip(sides, changes)):
        docs = [side.docs[d] for d in ids]
        rel = np.array([d.bpbk / d.bpb0 for d in docs])
        paired = s > 0 and change is not None and changes[0] is not None
        out.append(
            Entry(
                side.label, side.k, float(np.mean([d.k for d in docs])), bpb0[s], bpbk[s], change,
                None if reps is None or change is None else interval(reps[:, s]),
                change - changes[0] if paired else None,  # type: ignore[operator]
                interval(reps[:, s] - reps[:, 0]) if paired and reps is not None else None,
                int((rel < ref).sum()) if s > 0 else None,
                _mean([d.steps for d in docs]), _mean([d.tokens for d in docs]),
                _mean([d.seconds for d in docs]),
            )
        )  # fmt: skip
    return out


def aggregate(
    sides: list[Side], ids: list[str], reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> list[Group]:
    """The groups of a comparison of `sides` over documents `ids` (each side has them all): one
    per domain (sorted), then the byte-weighted average over all documents and the mean over
    domains, each with every side's entry (module doc)."""
    by_domain: dict[str, list[str]] = {}
    for d in ids:
        by_domain.setdefault(sides[0].docs[d].domain, []).append(d)
    groups, strata = [], []
    for domain in sorted(by_domain):
        nbytes, b0, bk = st = _stratum(sides, by_domain[domain])
        strata.append(st)
        rep, _ = bootstrap_sides([st], reps, seed)
        g0, gk = _byte_weighted(nbytes, b0), _byte_weighted(nbytes, bk)
        entries = _entries(sides, by_domain[domain], g0, gk, rep)
        groups.append(Group(domain, len(nbytes), int(nbytes.sum()), entries))
    rep_w, rep_m = bootstrap_sides(strata, reps, seed)
    nbytes, b0, bk = _stratum(sides, ids)
    total = int(nbytes.sum())
    w0, wk = _byte_weighted(nbytes, b0), _byte_weighted(nbytes, bk)
    groups.append(Group(WEIGHTED, len(ids), total, _entries(sides, ids, w0, wk, rep_w)))

    def domains_equal(of: str) -> list[Optional[float]]:
        per_side = zip(*[[getattr(e, of) for e in g.entries] for g in groups[:-1]])
        return [None if None in xs else sum(xs) / len(xs) for xs in per_side]  # type: ignore[arg-type]

    m0, mk = domains_equal("bpb0"), domains_equal("bpbk")
    groups.append(Group(MACRO, len(ids), total, _entries(sides, ids, m0, mk, rep_m)))
    return groups


def compare(
    sides: list[Side], *, intersect: bool = False, reps: int = BOOTSTRAP_REPS, seed: int = 0
) -> Comparison:
    """Per domain and on average, each side's change and its difference to the first side, with
    paired bootstrap intervals (see the module doc)."""
    if len(sides) < 2:
        raise ValueError("nothing to compare: give two sides or more (runs or RUN:baseline)")
    if not 1 <= reps <= MAX_REPS:
        raise ValueError(f"reps must be from 1 to {MAX_REPS}, got {reps}")
    keys = [(s.label, s.k) for s in sides]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a side is given twice: {', '.join(s.label for s in sides)}")
    labels = [s.label for s in sides]  # the same run (or baseline) at two k: named by its k
    sides = [
        replace(s, label=f"{s.label}@{s.k}") if labels.count(s.label) > 1 else s for s in sides
    ]
    ids, dropped = _pair(sides, intersect)
    side_info = [
        {"label": s.label, "run": s.run, "baseline": s.baseline, "k": s.k, "matched": s.matched}
        for s in sides
    ]
    skipped = list(dict.fromkeys(p for s in sides for p in s.skipped))  # a run read twice: once
    groups = aggregate(sides, ids, reps, seed)
    return Comparison(side_info, len(ids), dropped, groups, reps, seed, skipped)


# --- output ----------------------------------------------------------------------------------


def save_figure(fig: Any, path: Path, **kw: Any) -> None:
    """`fig.savefig(path)` (the format from the name's suffix, PNG without one), written by the
    core's `atomic_write`: a fresh file renamed over `path`, never through a symbolic link (one
    at `path` is an OSError naming it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix[1:].lower() or None, **kw)
    atomic_write(path, buf.getvalue())


def format_number(x: Optional[float], digits: int = 4) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def format_change(x: Optional[float]) -> str:
    """A relative change (or a difference of two) in percent: `-13.3%`."""
    return "–" if x is None or math.isnan(x) else f"{x * 100:+.1f}%"


def format_interval(ci: Optional[tuple[float, float]]) -> str:
    """An interval of changes, in the notation of the change: `[-19.0%, -9.3%]`."""
    return "–" if ci is None else f"[{format_change(ci[0])}, {format_change(ci[1])}]"


def _count(x: Optional[float]) -> str:
    return "–" if x is None else (f"{x:.0f}" if x >= 100 or x == int(x) else f"{x:.1f}")


def write_table(header: list[str], body: list[list[str]], fmt: str) -> str:
    """A table as Markdown (`markdown`; the first two columns to the left, the rest, numbers, to
    the right), CSV (`csv`) or aligned text (`text`; a blank line before each row that opens a
    group: a row whose first cell is not empty)."""
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
        ]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(body)
        return buf.getvalue()
    if fmt != "text":
        raise ValueError(f"unknown table format {fmt!r}; expected markdown, csv or text")
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths))
        ).rstrip()

    lines = [line(header)]
    for r in body:
        if r[0] and len(lines) > 1:
            lines.append("")
        lines.append(line(r))
    return "\n".join(lines)


def render_comparison(c: Comparison, fmt: str = "text") -> str:
    """The comparison as an aligned text table, Markdown or JSON."""
    if fmt == "json":
        d = asdict(c)
        d["ci_level"] = CI_LEVEL
        return json.dumps(d, indent=2)
    if fmt not in ("text", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; expected text, markdown or json")
    ref = c.sides[0]["label"]
    header = [
        "group", "side", "k", "docs", "bpb@0", "bpb@k", "change", f"{CI_LEVEL:.0%} CI",
        "Δ vs first", f"{CI_LEVEL:.0%} CI", "better", "steps/doc", "tokens/doc", "s/doc",
    ]  # fmt: skip
    body = []
    for g in c.groups:
        for i, e in enumerate(g.entries):
            body.append([
                g.name if i == 0 else "", e.side,
                f"{e.k_mean:.1f}" if c.sides[i]["matched"] else str(e.k),
                str(g.documents) if i == 0 else "",
                format_number(e.bpb0), format_number(e.bpbk), format_change(e.change),
                format_interval(e.change_ci), format_change(e.diff), format_interval(e.diff_ci),
                "–" if e.better is None else f"{e.better}/{g.documents}",
                _count(e.steps), _count(e.tokens), format_number(e.seconds, 1),
            ])  # fmt: skip
    notes = [
        f"change: bits per byte at k vs k = 0, byte-weighted. Δ vs first: change minus that of "
        f"{ref}, in points (negative: better). {CI_LEVEL:.0%} CI: paired bootstrap over "
        f"documents ({c.reps} replicates, seed {c.seed}; the averages resample within each "
        f"domain). better: documents whose change is below {ref}'s. {c.documents} documents."
    ]
    if any(s["matched"] for s in c.sides):
        notes.append(
            f"Matched steps: each side after the first is read per document at its largest k "
            f"whose steps do not exceed {ref}'s there; its k is the mean k read."
        )
    if any(c.dropped.values()):
        left = ", ".join(f"{k}: {v}" for k, v in c.dropped.items() if v)
        notes.append(f"--intersect: documents left out ({left}).")
    return "\n".join([write_table(header, body, fmt), "", *notes])


def plot_comparison(c: Comparison, path: str | Path) -> Path:
    """Horizontal bars: each side's change per domain and on average, with its interval (a PNG
    at `path`, written by `save_figure`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n_sides = len(c.sides)
    height = 0.8 / n_sides
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(c.groups) * n_sides + 1.8), dpi=120,
                           layout="constrained")  # fmt: skip
    cmap = plt.get_cmap("tab10")
    for s, info in enumerate(c.sides):
        ys = [g_i + (s - (n_sides - 1) / 2) * height for g_i in range(len(c.groups))]
        vals = [(g.entries[s].change or 0.0) * 100 for g in c.groups]
        at = "steps matched" if info["matched"] else f"k={info['k']}"
        ax.barh(ys, vals, height=height * 0.9, color=cmap(s % 10), alpha=0.85,
                label=f"{info['label']} ({at})")  # fmt: skip
        for y, v, g in zip(ys, vals, c.groups):
            ci = g.entries[s].change_ci
            if ci is not None:
                # a percentile interval of a ratio may leave out its point: bars from the point
                lo, hi = max(v - ci[0] * 100, 0.0), max(ci[1] * 100 - v, 0.0)
                ax.errorbar(v, y, xerr=[[lo], [hi]], fmt="none",
                            ecolor="black", elinewidth=0.8, capsize=2)  # fmt: skip
    ax.set_yticks(range(len(c.groups)), [g.name for g in c.groups])
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(f"relative change in bits per byte vs k = 0 (%), {CI_LEVEL:.0%} paired bootstrap")
    ax.set_title(f"Comparison on {c.documents} test documents")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", frameon=False, ncol=1)
    try:
        save_figure(fig, path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
