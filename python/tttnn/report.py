"""Reports of an evaluation run: per-domain bits per byte at each k, relative change, plots.

A report is the comparison (`tttnn.compare`) of one run at each of its k, and with its in-context
baseline where recorded, read as one row per domain: the same averages, paired bootstrap and table
writer as `tttnn compare`. The change at the largest k comes with its 95% interval and the count
of documents that improved. A k that some documents of a domain did not reach is left out of that
domain's figures and of the averages, so each figure compares the same documents.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from tttnn.compare import (
    BOOTSTRAP_REPS,
    CI_LEVEL,
    DocScore,
    Group,
    Side,
    aggregate,
    format_change,
    format_interval,
    format_number,
    load_results,
    save_figure,
    write_table,
)

__all__ = [
    "BOOTSTRAP_REPS",
    "DomainRow",
    "Report",
    "load_results",
    "make_report",
    "plot_report",
    "render",
]


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
    skipped: list[str] = field(default_factory=list)  # damaged rows left out (`load_results`)

    @property
    def k_max(self) -> int:
        return max(self.ks)


def _columns(run: str, ok: list[dict[str, Any]], ks: list[int]) -> list[Side]:
    """The run at each k (the first, k = 0, is what `improved` counts against), then its
    in-context baseline if a document has it; NaN where a document has no score."""

    def side(label: str, k: int, field: Optional[str] = None) -> Side:  # None: bpb at k
        docs = {}
        for r in ok:
            score = r["bpb"].get(str(k)) if field is None else r.get(field)
            b0 = float(r["bpb"].get("0", math.nan))
            bk = math.nan if score is None else float(score)
            # steps, tokens and seconds: a report does not show them
            docs[str(r["doc_id"])] = DocScore(
                r["domain"], int(r["bytes"]), b0, bk, None, None, None, k
            )
        return Side(label, run, "in-context" if field else None, k, docs)

    sides = [side(f"k={k}", k) for k in ks]
    if any("bpb_in_context" in r for r in ok):
        sides.append(side("in-context", ks[-1], "bpb_in_context"))
    return sides


def _row(name: str, group: Optional[Group], n_ks: int, failed: int) -> DomainRow:
    """A report row from the group of the comparison (None: no document scored)."""
    if group is None:
        return DomainRow(name, 0, 0, {}, failed=failed)
    at_k, in_context = group.entries[:n_ks], group.entries[n_ks:]
    last = at_k[-1]
    return DomainRow(
        name, group.documents, group.bytes,
        {e.k: e.bpbk for e in at_k if e.bpbk is not None}, failed,
        in_context[0].bpbk if in_context else None,
        (last.better or 0) if last.change is not None else 0, last.change_ci,
    )  # fmt: skip


def make_report(run_dir: str | Path) -> Report:
    skipped: list[str] = []
    results = load_results(run_dir, skipped)
    ok = [r for r in results if r.get("status") == "ok"]
    ks = sorted({int(k) for r in ok for k in r["bpb"]})
    ids = [str(r["doc_id"]) for r in ok]
    groups = aggregate(_columns(str(run_dir), ok, ks), ids, BOOTSTRAP_REPS, seed=0) if ks else []
    domains = {g.name: g for g in groups[:-2]}
    weighted, macro = groups[-2:] if groups else (None, None)
    failed = [
        {"doc_id": r.get("doc_id"), "domain": r.get("domain"), "error": r.get("error")}
        for r in results
        if r.get("status") != "ok"
    ]
    rows = [
        _row(d, domains.get(d), len(ks), sum(f["domain"] == d for f in failed))
        for d in sorted({r["domain"] for r in results})
    ]
    average = _row("macro", macro, len(ks), 0)
    return Report(
        str(run_dir), ks, rows, _row("weighted", weighted, len(ks), len(failed)), average.bpb,
        failed, average.change_ci, environments(results), skipped,
    )  # fmt: skip


def environments(results: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The places the ok rows were computed (their `env`: device, hardware, threads, versions),
    with how many rows each, most first; rows written before rows recorded it count as
    `unrecorded`."""
    counts: dict[str, int] = {}
    for r in results:
        if r.get("status") != "ok":
            continue
        env = r.get("env")
        where = (
            "unrecorded" if env is None else
            f"{env.get('hardware')}, {env.get('device')}, {env.get('threads')} thread(s), "
            f"torch {env.get('torch')}, transformers {env.get('transformers')}"
        )  # fmt: skip
        counts[where] = counts.get(where, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


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
                "skipped": report.skipped,
            },
            indent=2,
        )
    if fmt not in ("md", "csv"):
        raise ValueError(f"unknown format {fmt!r}; expected md, csv or json")
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
                *[format_number(row.bpb.get(k)) for k in ks],
                format_change(row.change(kmax)),
                format_interval(row.change_ci),
                f"{row.improved}/{row.documents}" if kmax in row.bpb else "–",
                *([format_number(row.in_context)] if with_ic else []),
            ]
        )
    if report.macro:
        m0, mk = report.macro.get(0), report.macro.get(kmax)
        change = (mk / m0 - 1.0) if m0 and mk is not None else None
        body.append(
            [
                "average (domains equal)" if fmt != "md" else "*average (domains equal)*",
                "",
                *[format_number(report.macro.get(k)) for k in ks],
                format_change(change),
                format_interval(report.macro_change_ci),
                "",
                *([""] if with_ic else []),
            ]
        )
    if fmt == "csv":
        return write_table(header, body, "csv")
    lines = [write_table(header, body, "markdown")]
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
    the per-domain relative change at the largest k. Returns the paths written. Each replaces
    its file by the core's `atomic_write` (`save_figure`): a symbolic link there is refused,
    never written through."""
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
    try:
        save_figure(fig, curve)
    finally:
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
    try:
        save_figure(fig, change)
    finally:
        plt.close(fig)
    return [curve, change]
