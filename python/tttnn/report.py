"""Reports of an evaluation run: per-domain bits per byte at each k, relative change, plots.

Aggregation follows lm-evaluation-harness: bits per byte over a set of documents is the
byte-weighted mean (Σ nll / Σ bytes / ln 2), so a domain's figure is not moved by how many short
documents it has. The overall average is reported two ways: weighted by each domain's test bytes
(what one bpb over all documents would be, as the Pile paper's "weighted by size") and the plain
mean over domains (each domain counts once).

Uncertainty: a handful of test documents per domain is the usual budget for TTT-NN, so every
change at the largest k comes with a 95% interval from a paired bootstrap over documents (the same
resampled documents at k = 0 and at k; for the averages, resampled within each domain so the
domain mix stays that of the test set) and the count of documents that improved.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tttnn.metrics import byte_weighted_bpb

__all__ = [
    "DomainRow",
    "Report",
    "bootstrap_change",
    "bootstrap_sides",
    "load_results",
    "make_report",
    "plot_report",
    "render",
]

BOOTSTRAP_REPS = 4000
CI_LEVEL = 0.95


@dataclass
class DomainRow:
    domain: str
    documents: int
    bytes: int
    bpb: dict[int, float]
    failed: int = 0
    in_context: float | None = None  # the in-context baseline (neighbors in the context, θ0)
    improved: int = 0  # documents whose bits per byte at the largest k is below that at k = 0
    change_ci: tuple[float, float] | None = None  # 95% bootstrap interval of the change there

    def change(self, k: int) -> float | None:
        """Relative change of bits per byte at k against k = 0 (negative is better)."""
        if 0 not in self.bpb or k not in self.bpb or self.bpb[0] == 0:
            return None
        return self.bpb[k] / self.bpb[0] - 1.0


@dataclass
class Report:
    run: str
    ks: list[int]
    rows: list[DomainRow]
    weighted: DomainRow
    macro: dict[int, float]
    failed_docs: list[dict[str, Any]] = field(default_factory=list)
    macro_change_ci: tuple[float, float] | None = None
    environments: list[tuple[str, int]] = field(default_factory=list)  # (where, rows), by rows

    @property
    def k_max(self) -> int:
        return max(self.ks)


def load_results(run_dir: str | Path) -> list[dict[str, Any]]:
    """Rows of `RUN/results.jsonl`; a torn last line (interrupted write) is ignored."""
    path = Path(run_dir) / "results.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results; run `tttnn eval ... --out {run_dir}` first")
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # torn final write; evaluate rewrites it on resume
            raise ValueError(f"{path}:{i + 1}: not a JSON row") from None
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        doc = str(r.get("doc_id"))
        if doc in seen:
            raise ValueError(
                f"{path}: document {doc!r} has two rows ({seen[doc] + 1} and {i + 1}); "
                "was the run written by two processes at once?"
            )
        seen[doc] = i
    return rows


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


def bootstrap_change(
    strata: list[Stratum], reps: int = BOOTSTRAP_REPS, level: float = CI_LEVEL, seed: int = 0
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Percentile intervals of one run's relative change bpb(k) / bpb(0) - 1, byte-weighted over
    all documents and averaged over strata (domains equal), by the paired bootstrap of
    `bootstrap_sides`. `None` where nothing varies."""
    weighted, macro = bootstrap_sides(strata, reps, seed)
    if weighted is None or macro is None:
        return None, None
    return interval(weighted[:, 0], level), interval(macro[:, 0], level)


def _stratum(ok: list[dict[str, Any]], k: int) -> Stratum:
    return (
        np.array([float(r["bytes"]) for r in ok]),
        np.array([float(r["bpb"]["0"]) for r in ok]),
        np.array([float(r["bpb"][str(k)]) for r in ok]),
    )


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("status") == "ok"]


def _aggregate(
    domain: str, rows: list[dict[str, Any]], ks: list[int], interval: bool = True
) -> DomainRow:
    """Byte-weighted figures of `rows`; `interval=False` leaves `change_ci` to the caller (the
    overall row, whose interval resamples within domains)."""
    ok = _ok(rows)
    total_bytes = sum(int(r["bytes"]) for r in ok)
    bpb: dict[int, float] = {}
    for k in ks:
        have = [r for r in ok if str(k) in r["bpb"]]
        # Only report k where every document of the domain reached it (k is cut at the number
        # of neighbors actually retrieved), so the figures compare the same documents.
        if have and len(have) == len(ok):
            bpb[k] = byte_weighted_bpb([r["bpb"][str(k)] for r in have], [r["bytes"] for r in have])
    in_context = None
    if ok and all("bpb_in_context" in r for r in ok):
        in_context = byte_weighted_bpb([r["bpb_in_context"] for r in ok], [r["bytes"] for r in ok])
    row = DomainRow(
        domain, len(ok), total_bytes, bpb, failed=len(rows) - len(ok), in_context=in_context
    )
    kmax = max(ks) if ks else 0
    if kmax in bpb and 0 in bpb:
        sizes, b0, bk = _stratum(ok, kmax)
        row.improved = int((bk < b0).sum())
        if interval:
            row.change_ci, _ = bootstrap_change([(sizes, b0, bk)])
    return row


def make_report(run_dir: str | Path) -> Report:
    results = load_results(run_dir)
    ks = sorted({int(k) for r in results if r.get("status") == "ok" for k in r["bpb"]})
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_domain.setdefault(r["domain"], []).append(r)
    rows = [_aggregate(d, by_domain[d], ks) for d in sorted(by_domain)]
    weighted = _aggregate("weighted", results, ks, interval=False)
    macro: dict[int, float] = {}
    for k in ks:
        vals = [row.bpb[k] for row in rows if k in row.bpb]
        if vals and len(vals) == len([row for row in rows if row.documents]):
            macro[k] = sum(vals) / len(vals)
    macro_ci = None
    if ks and 0 in weighted.bpb and max(ks) in weighted.bpb:
        # The averages resample within each domain: the test set's domain mix is fixed.
        strata = [_stratum(_ok(by_domain[d]), max(ks)) for d in sorted(by_domain)]
        weighted.change_ci, macro_ci = bootstrap_change(strata)
    failed = [
        {"doc_id": r.get("doc_id"), "domain": r.get("domain"), "error": r.get("error")}
        for r in results
        if r.get("status") != "ok"
    ]
    return Report(str(run_dir), ks, rows, weighted, macro, failed, macro_ci, environments(results))


def environments(results: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The places the ok rows were computed (their `env`: device, hardware, threads, versions),
    with how many rows each, most first; rows written before rows recorded it count as
    `unrecorded`."""
    counts: dict[str, int] = {}
    for r in _ok(results):
        env = r.get("env")
        where = (
            "unrecorded" if env is None else
            f"{env.get('hardware')}, {env.get('device')}, {env.get('threads')} thread(s), "
            f"torch {env.get('torch')}, transformers {env.get('transformers')}"
        )  # fmt: skip
        counts[where] = counts.get(where, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * 100:+.1f}%" if pct else f"{x:.4f}"


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{ci[0] * 100:+.1f}%, {ci[1] * 100:+.1f}%]"


def render(report: Report, fmt: str = "md") -> str:
    """The per-domain table as Markdown, CSV or JSON."""
    ks = report.ks
    kmax = report.k_max if ks else 0
    if fmt == "json":
        return json.dumps(
            {
                "run": report.run,
                "ks": ks,
                "domains": [asdict(r) for r in report.rows],
                "weighted": asdict(report.weighted),
                "macro": report.macro,
                "macro_change_ci": report.macro_change_ci,
                "ci_level": CI_LEVEL,
                "failed": report.failed_docs,
                "environments": [{"where": w, "rows": n} for w, n in report.environments],
            },
            indent=2,
        )
    with_ic = report.weighted.in_context is not None
    header = [
        "domain", "docs", *[f"k={k}" for k in ks], f"change@{kmax}",
        f"{CI_LEVEL:.0%} CI", "improved",
    ]  # fmt: skip
    if with_ic:
        header.append("in-context")
    body: list[list[str]] = []
    for row in [*report.rows, report.weighted]:
        name = (
            "**average (byte-weighted)**" if row is report.weighted and fmt == "md" else row.domain
        )
        body.append(
            [
                name,
                str(row.documents) + (f" (+{row.failed} failed)" if row.failed else ""),
                *[_fmt(row.bpb.get(k)) for k in ks],
                _fmt(row.change(kmax), pct=True),
                _fmt_ci(row.change_ci),
                f"{row.improved}/{row.documents}" if kmax in row.bpb else "–",
                *([_fmt(row.in_context)] if with_ic else []),
            ]
        )
    if report.macro:
        m0, mk = report.macro.get(0), report.macro.get(kmax)
        change = (mk / m0 - 1.0) if m0 and mk is not None else None
        body.append(
            [
                "average (domains equal)" if fmt != "md" else "*average (domains equal)*",
                "",
                *[_fmt(report.macro.get(k)) for k in ks],
                _fmt(change, pct=True),
                _fmt_ci(report.macro_change_ci),
                "",
                *([""] if with_ic else []),
            ]
        )
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(body)
        return buf.getvalue()
    if fmt != "md":
        raise ValueError(f"unknown format {fmt!r}; expected md, csv or json")
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    if report.failed_docs:
        lines.append("")
        lines.append(f"{len(report.failed_docs)} document(s) failed:")
        lines += [f"- {f['doc_id']} ({f['domain']}): {f['error']}" for f in report.failed_docs]
    if len(report.environments) > 1:
        lines.append("")
        lines.append(
            f"The rows were computed in {len(report.environments)} environments (bf16 rounding "
            "differs between CPUs; each change is against its own row's k = 0):"
        )
        lines += [f"- {where}: {n} row(s)" for where, n in report.environments]
    lines.append("")
    lines.append(
        f"{CI_LEVEL:.0%} CI: paired bootstrap over documents ({BOOTSTRAP_REPS} replicates; "
        "the averages resample within each domain). improved: documents whose bits per byte "
        f"at k = {kmax} is below k = 0."
    )
    return "\n".join(lines)


def plot_report(report: Report, out_dir: str | Path | None = None) -> list[Path]:
    """`curve.png`: bits per byte against k, a line per domain and the average; `change.png`:
    the per-domain relative change at the largest k. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir or report.run)
    ks = report.ks
    if not ks:
        return []
    xs = {k: i for i, k in enumerate(ks)}  # categorical x: k = 0, 1, 2, 5, ... evenly spaced
    fig, ax = plt.subplots(figsize=(10, 5), dpi=120)
    cmap = plt.get_cmap("tab10")
    for i, row in enumerate(report.rows):
        pts = [(xs[k], v) for k, v in sorted(row.bpb.items())]
        if pts:
            ax.plot(*zip(*pts), marker="o", lw=1.5, color=cmap(i % 10), label=row.domain)
    pts = [(xs[k], v) for k, v in sorted(report.weighted.bpb.items())]
    if pts:
        ax.plot(*zip(*pts), marker="s", lw=3, color="black", label="average (byte-weighted)")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("neighbors trained on (k)")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Test-time training on nearest neighbors")
    ax.grid(alpha=0.3)
    # Outside the axes: lines of many domains leave no free corner inside.
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    curve = out / "curve.png"
    fig.savefig(curve)
    plt.close(fig)

    kmax = report.k_max
    rows = [r for r in report.rows if r.change(kmax) is not None]
    fig, ax = plt.subplots(figsize=(8, 0.45 * (len(rows) + 1) + 1.2), dpi=120)
    names = [r.domain for r in rows] + ["average (byte-weighted)"]
    vals = [(r.change(kmax) or 0.0) * 100 for r in rows] + [
        (report.weighted.change(kmax) or 0.0) * 100
    ]
    cis = [r.change_ci for r in rows] + [report.weighted.change_ci]
    colors = ["tab:green" if v < 0 else "tab:red" for v in vals]
    ax.barh(names, vals, color=colors, alpha=0.85)
    for y, (v, ci) in enumerate(zip(vals, cis)):
        if ci is not None:
            ax.errorbar(v, y, xerr=[[v - ci[0] * 100], [ci[1] * 100 - v]], fmt="none",
                        ecolor="black", elinewidth=1, capsize=3)  # fmt: skip
    ends = [(ci[0] * 100, ci[1] * 100) if ci else (v, v) for v, ci in zip(vals, cis)]
    for y, (v, (e0, e1)) in enumerate(zip(vals, ends)):
        x = min(v, e0) if v < 0 else max(v, e1)
        ax.text(x, y, f" {v:+.1f}% ", va="center", ha="right" if v < 0 else "left", fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    # Room for the value labels beyond the longest bars and intervals on either side.
    lo = min(0.0, *vals, *(e[0] for e in ends))
    hi = max(0.0, *vals, *(e[1] for e in ends))
    pad = 0.2 * max(hi - lo, 1e-9)
    ax.set_xlim(lo - (pad if lo < 0 else 0), hi + (pad if hi > 0 else pad / 4))
    ax.invert_yaxis()
    ax.set_xlabel(
        f"relative change in bits per byte at k = {kmax} vs k = 0 (%), "
        f"{CI_LEVEL:.0%} bootstrap interval"
    )
    ax.set_title("Per-domain change from test-time training")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    change = out / "change.png"
    fig.savefig(change)
    plt.close(fig)
    return [curve, change]
