"""The `tttnn` command line. Commands only parse options and call the library; errors become a
one-line message and exit code 1 (bad usage: 2), never a traceback."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import click

from tttnn import __version__
from tttnn.corpus import DEFAULT_MAX_DOC_BYTES, Corpus
from tttnn.embed import DEFAULT_ENCODER
from tttnn.index import DEFAULT_SHARD_SIZE, DEFAULT_TOKENIZER, Index, SearchResult

_QUERY_BATCH = 256  # queries embedded and searched at a time from a --queries file


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Library errors as a clean `Error: ...` line and exit code 1."""
    try:
        yield
    except (ValueError, OSError, RuntimeError, TypeError) as e:
        raise click.ClickException(str(e) or type(e).__name__) from None


def _quiet_transformers() -> None:
    """No per-load "Loading weights" bars from transformers in a command's output."""
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tttnn")
def main() -> None:
    """tttnn: test-time training on nearest neighbors for language models."""


@main.group("index")
def index_group() -> None:
    """Build and inspect an index of a corpus."""


@index_group.command("build")
@click.argument(
    "corpus", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)  # fmt: skip
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Index directory.")
@click.option(
    "--encoder",
    default=DEFAULT_ENCODER,
    show_default=True,
    help="Sentence encoder: HF id or local path.",
)
@click.option(
    "--tokenizer",
    default=DEFAULT_TOKENIZER,
    show_default=True,
    help="LM tokenizer whose token ids are stored ('none' to store no tokens).",
)
@click.option(
    "--dtype", type=click.Choice(["f32", "f16", "i8"]), default="f16", show_default=True
)  # fmt: skip
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=DEFAULT_SHARD_SIZE,
    show_default=True,
    help="Entries per shard (the unit of --resume).",
)
@click.option("--hnsw/--no-hnsw", default=True, show_default=True, help="Build HNSW graphs.")
@click.option(
    "--chunk-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Index chunks of N LM tokens instead of whole documents.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted build in --out.")
@click.option(
    "--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True
)  # fmt: skip
@click.option(
    "--limit", type=click.IntRange(min=0), default=None, help="Index at most N documents."
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--max-doc-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_DOC_BYTES, show_default=True
)  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index_build(
    corpus: tuple[Path, ...],
    out: Path,
    encoder: str,
    tokenizer: str,
    dtype: str,
    shard_size: int,
    hnsw: bool,
    chunk_tokens: int | None,
    resume: bool,
    on_error: str,
    limit: int | None,
    batch_size: int,
    max_doc_bytes: int,
    quiet: bool,
) -> None:
    """Embed and store the documents of CORPUS... (.jsonl, .jsonl.zst, .parquet, .txt folders)."""
    _quiet_transformers()
    start = time.perf_counter()
    try:
        with _errors():
            index = Index.build(
                list(corpus),
                out,
                encoder=encoder,
                tokenizer=None if tokenizer.lower() == "none" else tokenizer,
                dtype=dtype,
                shard_size=shard_size,
                hnsw=hnsw,
                chunk_tokens=chunk_tokens,
                resume=resume,
                on_error=on_error,
                max_doc_bytes=max_doc_bytes,
                batch_size=batch_size,
                limit=limit,
                progress=not quiet,
            )
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: the sealed shards in {out} are kept; continue with --resume",
            err=True,
        )
        sys.exit(130)
    secs = time.perf_counter() - start
    info = index.info()
    stats = info["corpus_stats"]
    click.echo(
        f"indexed {info['documents']} documents ({info['entries']} entries, {info['shards']} "
        f"shards) into {out} in {secs:.1f} s ({info['documents'] / max(secs, 1e-9):.1f} docs/s), "
        f"{_size(info['size_bytes'])}"
    )
    if stats.get("skipped"):
        parts = ", ".join(f"{k} {v}" for k, v in stats["errors"].items())
        click.echo(f"skipped {stats['skipped']} bad inputs: {parts}", err=True)
        for kind, examples in stats.get("examples", {}).items():
            click.echo(f"  {kind}: {examples[0]}", err=True)


@index_group.command("info")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def index_info(index_dir: Path, as_json: bool) -> None:
    """Describe the index in INDEX_DIR."""
    with _errors():
        info = Index.open(index_dir).info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(_format_info(info))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _format_info(info: dict[str, Any]) -> str:
    lines = [
        f"index       {info['path']} ({info['status']})",
        f"documents   {info['documents']} ({info['entries']} entries in {info['shards']} shards"
        + (f", chunks of {info['chunk_tokens']} tokens" if info.get("chunk_tokens") else "")
        + ")",
        f"encoder     {info['encoder']} ({info['dim']}-d, {info['dtype']}, {info['metric']}"
        + (", HNSW" if info["hnsw"] else "")
        + (
            f" with {info['hnsw_stranded']} rows outside the graph, scored exactly"
            if info.get("hnsw_stranded")
            else ""
        )
        + ")",
        f"tokenizer   {info['tokenizer']}",
        f"size        {_size(info['size_bytes'])}",
        "domains",
    ]
    width = max((len(d) for d in info["domains"]), default=0)
    for d, c in info["domains"].items():
        extra = f" ({c['entries']} entries)" if c["entries"] != c["documents"] else ""
        lines.append(f"  {d:<{width}}  {c['documents']:>8}{extra}")
    stats = info.get("corpus_stats") or {}
    if stats:
        bad = ", ".join(f"{k} {v}" for k, v in stats.get("errors", {}).items()) or "none"
        lines.append(f"corpus      {', '.join(info['corpus'])} (bad inputs skipped: {bad})")
    return "\n".join(lines)


@main.command("search")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("query", nargs=-1)
@click.option("-k", "k", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--exact", is_flag=True, help="Exact search instead of HNSW.")
@click.option(
    "--ef",
    type=click.IntRange(min=1),
    default=None,
    help="HNSW beam width: candidates walked and re-ranked exactly (default: the index's, 64).",
)
@click.option(
    "--guard/--no-guard",
    default=False,
    show_default=True,
    help="Leakage guard: drop neighbors (nearly) identical to the query.",
)
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(exists=True, path_type=Path),
    help="Corpus file of queries (.jsonl, .jsonl.zst, .parquet, .txt folder).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Write JSON lines to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def search(
    index_dir: Path,
    query: tuple[str, ...],
    k: int,
    exact: bool,
    ef: int | None,
    guard: bool,
    queries_file: Path | None,
    out: Path | None,
    as_json: bool,
) -> None:
    """Nearest neighbors of QUERY texts (or of every document of --queries) in INDEX_DIR."""
    if bool(query) == bool(queries_file):
        raise click.UsageError("give query texts or --queries FILE (one of them)")
    _quiet_transformers()
    with _errors():
        index = Index.open(index_dir)
        sink: TextIO
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(out.open("w", encoding="utf-8")) if out else sys.stdout
            json_out = as_json or out is not None
            n = 0
            for batch in _query_batches(query, queries_file):
                texts = [t for _, _, t in batch]
                results = index.search(texts, k=k, exact=exact, ef=ef, guard=guard or None)
                for (qid, domain, text), res in zip(batch, results):
                    res.query_index = n
                    n += 1
                    if json_out:
                        sink.write(json.dumps(_result_row(res, qid, domain)) + "\n")
                    else:
                        sink.write(_format_result(res, text) + "\n")
        if out is not None:
            click.echo(f"wrote neighbors of {n} queries to {out}", err=True)


def _query_batches(
    query: tuple[str, ...], queries_file: Path | None
) -> Iterator[list[tuple[str | None, str | None, str]]]:
    if queries_file is None:
        yield [(None, None, q) for q in query]
        return
    batch: list[tuple[str | None, str | None, str]] = []
    for doc in Corpus(queries_file):
        batch.append((doc.doc_id, doc.domain, doc.text))
        if len(batch) >= _QUERY_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _result_row(res: SearchResult, qid: str | None, domain: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {"query_index": res.query_index}
    if qid is not None:
        row["query_id"] = qid
        row["query_domain"] = domain
    row["dropped"] = res.dropped
    row["neighbors"] = [
        {
            "rank": r + 1,
            "id": nb.id,
            "score": round(nb.score, 6),
            "doc_id": nb.doc_id,
            "domain": nb.domain,
            "chunk": nb.chunk,
        }
        for r, nb in enumerate(res.neighbors)
    ]
    return row


def _snippet(text: str, n: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1] + "…"


def _format_result(res: SearchResult, text: str) -> str:
    head = f"query {res.query_index}: {_snippet(text)}"
    if res.dropped:
        head += f"  [{res.dropped} dropped by the leakage guard]"
    lines = [head]
    for r, nb in enumerate(res.neighbors):
        chunk = f"#{nb.chunk}" if nb.chunk else ""
        lines.append(
            f"  {r + 1:>3}. {nb.score:.4f}  {nb.domain}  {nb.doc_id}{chunk}  {_snippet(nb.text, 60)}"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    main()


def _int_list(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: expected comma-separated integers, e.g. 0,1,2,5"
        ) from None
    if not ks or ks[0] < 0:
        raise click.BadParameter(f"{value!r}: expected non-negative integers")
    return ks


@main.command("eval")
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--data", required=True, multiple=True, type=click.Path(exists=True, path_type=Path),
    help="Test corpus (jsonl, jsonl.zst, parquet, txt folder); repeatable.",
)  # fmt: skip
@click.option("--model", default="smollm2-135m", show_default=True, help="HF causal LM id or path.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("-k", "--neighbors", type=click.IntRange(min=0), default=20, show_default=True)
@click.option(
    "--eval-at", default="0,1,2,5,10,20,50", show_default=True, help="Score after k neighbors."
)
@click.option("--max-length", type=click.IntRange(min=2), default=1024, show_default=True)
@click.option("--lr", type=float, default=2e-5, show_default=True)
@click.option(
    "--windows-per-neighbor", type=click.IntRange(min=1), default=None, help="Cap (paper: none)."
)
@click.option(
    "--pack-short", is_flag=True, help="Pack short neighbors into shared windows (EOS-separated)."
)
@click.option(
    "--lora",
    "lora_r",
    type=click.IntRange(min=1),
    default=None,
    help="LoRA rank instead of full fine-tuning.",
)
@click.option("--split-text", is_flag=True, help="Query = first half, score the rest (no overlap).")
@click.option("--dtype", type=click.Choice(["bf16", "fp32"]), default="bf16", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit-per-domain", type=click.IntRange(min=1), default=None)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="At most this many documents."
)
@click.option("--domain", "domains", multiple=True, help="Only these domains (repeatable).")
@click.option("--exact", is_flag=True, help="Exact kNN instead of HNSW.")
@click.option(
    "--guard/--no-guard",
    default=True,
    show_default=True,
    help="Drop neighbors that copy the test text.",
)
@click.option(
    "--baseline",
    "baselines",
    type=click.Choice(["in-context"]),
    multiple=True,
    help="Also score with the neighbors prepended to the context (the paper's baseline).",
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def eval_cmd(
    index_dir: Path, data: tuple[Path, ...], model: str, out: Path, neighbors: int, eval_at: str,
    max_length: int, lr: float, windows_per_neighbor: int | None, pack_short: bool,
    lora_r: int | None, split_text: bool, dtype: str, seed: int, limit_per_domain: int | None,
    limit: int | None, domains: tuple[str, ...], exact: bool, guard: bool,
    baselines: tuple[str, ...], device: str | None,
    quiet: bool,
) -> None:  # fmt: skip
    """Test-time train on each test document's neighbors and score it (resumable)."""
    from tttnn.evaluate import EvalConfig, run_eval
    from tttnn.report import make_report, render

    _quiet_transformers()
    with _errors():
        cfg = EvalConfig(
            index=str(index_dir), data=[str(d) for d in data], out=str(out), model=model,
            neighbors=neighbors, eval_at=_int_list(eval_at), max_length=max_length, lr=lr,
            windows_per_neighbor=windows_per_neighbor, pack_short=pack_short, lora_r=lora_r,
            split_text=split_text, dtype=dtype, seed=seed, limit_per_domain=limit_per_domain,
            limit=limit, exact=exact, guard=guard, device=device, progress=not quiet,
            domains=list(domains), baseline_in_context="in-context" in baselines,
        )  # fmt: skip
        try:
            run_dir = run_eval(cfg)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: rerun the same command to resume ({out})", err=True)
            sys.exit(130)
        click.echo(render(make_report(run_dir), "md"))


@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True
)
@click.option("--no-plot", is_flag=True, help="Do not write curve.png / change.png.")
def report_cmd(run_dir: Path, fmt: str, no_plot: bool) -> None:
    """Per-domain bits per byte at each k, relative change, weighted average, plots."""
    from tttnn.report import make_report, plot_report, render

    with _errors():
        rep = make_report(run_dir)
        click.echo(render(rep, fmt))
        if not no_plot:
            for p in plot_report(rep):
                click.echo(f"wrote {p}", err=True)


@main.command("demo")
@click.option(
    "--workdir", type=click.Path(path_type=Path), default=None, help="Default: ~/.cache/tttnn/demo."
)
@click.option("-k", "--neighbors", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--docs-per-domain", type=click.IntRange(min=1, max=3), default=2, show_default=True)
@click.option("--max-length", type=click.IntRange(min=16), default=512, show_default=True)
@click.option("--lr", type=float, default=2e-5, show_default=True)
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo_cmd(
    workdir: Path | None, neighbors: int, docs_per_domain: int, max_length: int, lr: float,
    model: str, quiet: bool,
) -> None:  # fmt: skip
    """The whole job on the built-in sample corpus and default models, offline."""
    from tttnn.demo import DemoConfig, default_workdir, run_demo

    _quiet_transformers()
    eval_at = tuple(k for k in (0, 1, 2, 5, 10, 20, 50) if k <= neighbors)
    if neighbors not in eval_at:
        eval_at = (*eval_at, neighbors)
    with _errors():
        cfg = DemoConfig(
            workdir=workdir or default_workdir(), model=model, neighbors=neighbors,
            eval_at=eval_at, max_length=max_length, docs_per_domain=docs_per_domain, lr=lr,
            progress=not quiet,
        )  # fmt: skip
        try:
            click.echo(run_demo(cfg, echo=click.echo))
        except KeyboardInterrupt:
            click.echo("\ninterrupted: run `tttnn demo` again to resume", err=True)
            sys.exit(130)
