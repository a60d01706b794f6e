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
                results = index.search(texts, k=k, exact=exact, guard=guard or None)
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
