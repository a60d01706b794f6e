"""The `tttnn` command line. Commands only parse options and call the library; errors become a
one-line message and exit code 1 (bad usage: 2), never a traceback.

The options of `tttnn eval`, `tttnn index build`, `tttnn search` and `tttnn demo` are made from
the fields of the config tree (`config_options`): one place maps it to the command line, so every
setting is an option named after its field, with the field's default, and its text is read by the
config's parser (`parse_setting`), as lm-eval model_args are. Where a command's default differs
from the tree's, `config_options` is told so and the option's help says why.

Exit codes: 0 done; 1 an error, or an evaluation in which every document failed; 2 bad usage;
3 an evaluation in which some documents failed (their rows say why; rerun to retry them);
130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
import typing
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, TextIO, TypeVar

import click

from tttnn import __version__, jobs
from tttnn.compare import MAX_REPS
from tttnn.config import (
    BASELINES,
    DEMO_SETTINGS,
    BuildConfig,
    Config,
    EvalConfig,
    RayConfig,
    RetrievalConfig,
    SettingError,
    int_limits,
    leaf_fields,
    none_word,
    parse_setting,
)
from tttnn.corpus import Corpus
from tttnn.distributed.cluster import ClusterSettingError
from tttnn.index import Index, PartialIndexWarning, SearchResult, search_texts

_QUERY_BATCH = 256  # queries embedded and searched at a time from a --queries file
EXIT_PARTIAL = 3
C = TypeVar("C", bound=Config)


class _SettingUsageError(click.ClickException):
    """A setting that cannot work: exit 2, as click's own bad option."""

    exit_code = 2


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Library errors as a clean `Error: ...` line and exit code 1 (2 for a setting that cannot
    work with the index, the model or the Ray cluster, as for a bad option)."""
    try:
        yield
    except (ClusterSettingError, SettingError) as e:
        raise _SettingUsageError(str(e)) from None
    except (ValueError, OSError, RuntimeError, TypeError, IndexError) as e:
        raise click.ClickException(str(e) or type(e).__name__) from None


def _warn(skipped: list[str]) -> None:
    """The damaged rows a report or comparison left out, one line each on stderr."""
    for problem in skipped:
        click.echo(f"warning: {problem}", err=True)


def _quiet_transformers() -> None:
    """No per-load "Loading weights" bars from transformers in a command's output."""
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


class _Setting(click.ParamType):
    """The text of a config field of type `tp`, read by the config's parser (`parse_setting`);
    an int outside `limits` is bad usage, as a word is where a number belongs."""

    def __init__(self, tp: Any, none: str, name: str, limits: tuple[int, int]) -> None:
        self.tp, self.none, self.name, self.limits = tp, none, name, limits

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        try:
            return parse_setting(value, self.tp, self.none, self.limits)
        except ValueError as e:
            self.fail(f"{value!r}: {e}", param, ctx)


_TYPE_NAMES = {int: "integer", float: "float", str: "text", bool: "boolean"}


def _click_type(tp: Any, fld: dataclasses.Field[Any]) -> click.ParamType:
    """The click type of a field; its name (`INTEGER|NONE`) shows the word for None where None
    is not the default, or the word is not `none`."""
    meta = fld.metadata
    if meta.get("choices"):
        return click.Choice(list(meta["choices"]))
    if meta.get("exists"):
        return click.Path(exists=True)
    optional = typing.get_origin(tp) is typing.Union
    inner = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
    if meta.get("multiple"):  # one item per option
        item = typing.get_args(inner)[0]
        return _Setting(item, none_word(fld), _TYPE_NAMES[item], int_limits(fld))
    name = "list" if typing.get_origin(inner) is tuple else _TYPE_NAMES[inner]
    if optional and (fld.default is not None or "none" in meta):
        name += f"|{none_word(fld)}"
    return _Setting(tp, none_word(fld), name, int_limits(fld))


def config_options(
    cls: type, skip: tuple[str, ...] = (), *, only: tuple[str, ...] | None = None,
    defaults: Mapping[str, Any] | None = None, notes: Mapping[str, str] | None = None,
    flags: Mapping[str, tuple[str, ...]] | None = None,
) -> Callable[[Any], Any]:  # fmt: skip
    """Click options for the leaf fields of the config tree `cls`, all but `skip` (or `only`
    these, in this order): flat names (`--lr`, `--weight-decay`), the field's default, and its
    metadata's help, flags, choices, repeatable. A command that differs from the tree says so
    here: `defaults` it sets otherwise (with `notes` appended to the help to say why), `flags`
    it names otherwise."""
    leaves = leaf_fields(cls)
    names = list(only) if only is not None else [n for n in leaves if n not in skip]
    defaults, notes, flags = defaults or {}, notes or {}, flags or {}
    unknown = sorted({*names, *defaults, *notes, *flags} - set(leaves))
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(unknown)}")

    def decorate(f: Any) -> Any:
        for name in reversed(names):
            _, fld, tp = leaves[name]
            meta = fld.metadata
            opts = list(flags.get(name) or meta.get("flags") or (f"--{name.replace('_', '-')}",))
            required = fld.default is dataclasses.MISSING and name not in defaults
            default = defaults.get(name, None if required else fld.default)
            kind = _click_type(tp, fld)
            help_text = " ".join(x for x in (meta.get("help", ""), notes.get(name)) if x)
            kw: dict[str, Any] = {"help": help_text, "required": required}
            if tp is bool:
                long = next(x for x in opts if x.startswith("--"))
                opts = [f"{long}/--no-{long[2:]}", *[x for x in opts if x != long]]
                kw.update(default=default, show_default=True)
            elif meta.get("multiple"):
                kw.update(multiple=True, type=kind, default=default or ())
            else:
                show: Any = default is not None  # a tuple is shown as the list one types
                if isinstance(default, tuple):
                    show = ",".join(map(str, default))
                kw.update(type=kind, default=default, show_default=show)
            f = click.option(*opts, name, **kw)(f)
        return f

    return decorate


def _take(cls: type[C], settings: dict[str, Any]) -> C:
    """The config `cls` from those of a command's `settings` that are its leaves (taken out)."""
    return cls.from_flat(**{n: settings.pop(n) for n in leaf_fields(cls) if n in settings})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tttnn")
def main() -> None:
    """tttnn: test-time training on nearest neighbors for language models."""


@main.group("index")
def index_group() -> None:
    """Build, inspect and verify an index of a corpus."""


@index_group.command("build")
@click.argument(
    "corpus", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)  # fmt: skip
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Index directory.")
@config_options(BuildConfig, skip=("shard_actors",))
@click.option("--resume", is_flag=True, help="Continue an interrupted build in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index_build(
    corpus: tuple[Path, ...], out: Path, resume: bool, quiet: bool, **settings: Any
) -> None:
    """Embed and store the documents of CORPUS... (.jsonl, .jsonl.zst, .parquet, .txt folders)."""
    _quiet_transformers()
    start = time.perf_counter()
    try:
        with _errors():
            cfg = BuildConfig.from_flat(**settings)  # --ray: on Ray workers, the same index
            index = jobs.build(list(corpus), out, cfg, resume=resume, progress=not quiet)
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
        parts = ", ".join(f"{k} {v}" for k, v in stats["errors"].items() if v)
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


@index_group.command("verify")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index_verify(index_dir: Path, quiet: bool) -> None:
    """Read every file of the index in INDEX_DIR and check it: checksums, norms, offsets, every
    link of the HNSW graphs, and every record. Exit code 1 on the first problem, naming it."""
    from tqdm.auto import tqdm

    with _errors():
        index = Index.open(index_dir)
        store = index.store
        start = time.perf_counter()
        for i in tqdm(range(store.num_shards), desc="verifying", unit="shard", disable=quiet):
            index.verify_shard(i)
        click.echo(
            f"{index_dir}: {store.num_shards} shards, {len(store)} entries, "
            f"{_size(index.info()['size_bytes'])} verified in {time.perf_counter() - start:.1f} s"
        )


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _format_info(info: dict[str, Any]) -> str:
    so_far = "" if info["status"] == "complete" else " so far (the build has not finished)"
    documents = "not yet known" if info["documents"] is None else info["documents"]
    lines = [
        f"index       {info['path']} ({info['status']})",
        f"documents   {documents}{so_far} ({info['entries']} entries in {info['shards']} shards"
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
        f"tokenizer   {info['tokenizer']}"
        + (f" ({info['token_bits']}-bit ids)" if info["tokenizer"] is not None else ""),
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


SELECTION = ("select", "candidates", "sift_lambda", "sift_alpha")
"""The retrieval settings that choose which neighbors to train on: `tttnn eval`'s, not search's."""


@main.command("search")
@click.argument("index_dir", type=click.Path(path_type=Path))
@click.argument("query", nargs=-1)
@config_options(
    RetrievalConfig, skip=SELECTION, defaults={"guard": False},
    notes={"guard": "Off here, on in `tttnn eval`: search shows what the index holds, a query's "
                    "own copy included."},
)  # fmt: skip
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(exists=True, path_type=Path),
    help="Corpus file of queries (.jsonl, .jsonl.zst, .parquet, .txt folder).",
)
@click.option("--out", type=click.Path(path_type=Path), help="Write JSON lines to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@config_options(RayConfig, skip=("gpus_per_worker", "shard_actors"))
def search(
    index_dir: Path,
    query: tuple[str, ...],
    queries_file: Path | None,
    out: Path | None,
    as_json: bool,
    **settings: Any,
) -> None:
    """Nearest neighbors of QUERY texts (or of every document of --queries) in INDEX_DIR.
    With --ray its shards are served by Ray actors (same neighbors)."""
    if bool(query) == bool(queries_file):
        raise click.UsageError("give query texts or --queries FILE (one of them)")
    _quiet_transformers()
    with _errors(), contextlib.ExitStack() as closing:
        r = _take(RetrievalConfig, settings)
        ray_cfg = _take(RayConfig, settings)
        index = closing.enter_context(jobs.open_index(index_dir, ray_cfg))
        if index.meta.get("status") != "complete":
            click.echo(
                f"warning: the index at {index_dir} is {index.meta.get('status')}: searching the "
                f"{len(index)} entries stored so far",
                err=True,
            )
        warnings.simplefilter("ignore", PartialIndexWarning)
        sink: TextIO
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(out.open("w", encoding="utf-8")) if out else sys.stdout
            json_out = as_json or out is not None
            n = 0
            for batch in _query_batches(query, queries_file):
                texts = [t for _, _, t in batch]
                results, _, _ = search_texts(
                    index, texts, r.neighbors, span=r.query_span,
                    guard=texts if r.guard else None, exact=r.exact, ef=r.ef,
                    threshold=r.guard_threshold, shards=r.shards,
                )  # fmt: skip
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


@main.command("eval")
@config_options(EvalConfig, skip=("progress",))
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def eval_cmd(quiet: bool, **settings: Any) -> None:
    """Test-time train on each test document's neighbors and score it (resumable)."""
    from tttnn.report import make_report, render

    _quiet_transformers()
    with _errors():
        cfg = EvalConfig.from_flat(progress=not quiet, **settings)
        try:
            summary = jobs.evaluate(cfg)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: rerun the same command to resume ({cfg.run.out})", err=True)
            sys.exit(130)
        if summary.ok + summary.resumed == 0:
            raise click.ClickException(
                f"every document failed ({summary.failed}); the rows of "
                f"{summary.run_dir / 'results.jsonl'} say why"
            )
        click.echo(render(make_report(summary.run_dir), "md"))
    if summary.failed:
        click.echo(
            f"{summary.failed} of {summary.total} documents failed; their rows in "
            f"{summary.run_dir / 'results.jsonl'} say why (rerun the command to retry them)",
            err=True,
        )
        sys.exit(EXIT_PARTIAL)


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
        _warn(rep.skipped)
        click.echo(render(rep, fmt))
        if not no_plot:
            for p in plot_report(rep):
                click.echo(f"wrote {p}", err=True)


@main.command("compare")
@click.argument("sides", nargs=-1, required=True, metavar="RUN[:BASELINE][@K]...")
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(list(BASELINES)),
              help="Also compare this baseline, from the first run that recorded it (repeatable).")  # fmt: skip
@click.option("-k", "--at", "at", type=click.IntRange(min=0), default=None,
              help="Compare every side at this k (default: each side's largest; RUN@K for one).")  # fmt: skip
@click.option("--intersect", is_flag=True,
              help="Compare the documents all sides scored when their test sets differ.")  # fmt: skip
@click.option("--match-steps", is_flag=True,
              help="Equal compute: read each side after the first, per document, at its largest "
                   "k whose optimizer steps do not exceed the first side's there.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text",
              show_default=True)  # fmt: skip
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of each side's change per domain, with intervals.")  # fmt: skip
@click.option("--reps", type=click.IntRange(min=100, max=MAX_REPS), default=None,
              help="Bootstrap replicates (default: tttnn report's, 4000).")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bootstrap seed.")  # fmt: skip
def compare_cmd(
    sides: tuple[str, ...], baselines: tuple[str, ...], at: int | None, intersect: bool,
    match_steps: bool, fmt: str, plot: Path | None, reps: int | None, seed: int,
) -> None:  # fmt: skip
    """Runs (and their baselines: RUN:in-context, RUN:dynamic-eval) on the same test documents:
    per domain and on average, each one's change in bits per byte and its difference to the
    first, with paired bootstrap intervals; steps, tokens trained and seconds per document."""
    from tttnn import compare as cmp
    from tttnn.report import BOOTSTRAP_REPS

    with _errors():
        specs = []
        for spec in sides:
            run, baseline, k = cmp.parse_side(spec)
            if k is None and baseline != "in-context":  # in-context: the run's neighbors
                k = at
            specs.append((run, baseline, k))
        runs = [run for run, _, _ in specs]
        for name in baselines:
            source = next((r for r in runs if name in cmp.recorded_baselines(r)), None)
            if source is None:
                raise ValueError(
                    f"no run recorded the {name} baseline (tttnn eval --baseline {name})"
                )
            specs.append((source, name, None if name == "in-context" else at))
        first = cmp.load_side(*specs[0])
        rest = specs[1:]
        loaded = [first] + (
            cmp.match_steps(first, rest) if match_steps else [cmp.load_side(*s) for s in rest]
        )
        _warn(list(dict.fromkeys(p for side in loaded for p in side.skipped)))
        c = cmp.compare(loaded, intersect=intersect, reps=reps or BOOTSTRAP_REPS, seed=seed)
        click.echo(cmp.render_comparison(c, fmt))
        if plot is not None:
            click.echo(f"wrote {cmp.plot_comparison(c, plot)}", err=True)


@main.command("sample")
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--per-domain", type=click.IntRange(min=1), required=True,
              help="Documents drawn from each domain.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Which documents.")
@click.option("--max-chars", type=click.IntRange(min=1), default=None,
              help="Only documents at most this long.")  # fmt: skip
@click.option("--domain", "domains", multiple=True, help="Only these domains (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .jsonl (or .jsonl.zst), Pile format.")  # fmt: skip
def sample_cmd(
    corpus: tuple[Path, ...], per_domain: int, seed: int, max_chars: int | None,
    domains: tuple[str, ...], out: Path,
) -> None:  # fmt: skip
    """Draw a validation set from a (training) CORPUS: --per-domain documents of each domain,
    picked by --seed (the same on every machine), for `tttnn eval --data`."""
    from tttnn.validation import check_output, sample_documents, write_documents

    try:
        check_output(out, corpus)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--out") from None
    with _errors():
        docs = sample_documents(
            list(corpus), per_domain, seed, max_chars=max_chars, domains=domains
        )
        write_documents(docs, out)
    counts: dict[str, int] = {}
    for d in docs:
        counts[d.domain] = counts.get(d.domain, 0) + 1
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    click.echo(f"wrote {len(docs)} documents to {out} ({parts})")


DEMO_OPTIONS = ("neighbors", "limit_per_domain", "max_length", "lr", "model")
"""The settings `tttnn demo` takes; the others are `DEMO_SETTINGS` or `EvalConfig`'s defaults."""


@main.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Index and runs (default: demo/ in tttnn's cache folder, ~/.cache/tttnn "
                   "unless $TTTNN_CACHE says otherwise).")  # fmt: skip
@config_options(EvalConfig, only=DEMO_OPTIONS, defaults=DEMO_SETTINGS,
                flags={"limit_per_domain": ("--docs-per-domain",)})  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo_cmd(workdir: Path | None, quiet: bool, **settings: Any) -> None:
    """The whole job on the built-in sample corpus and default models, offline."""
    from tttnn.demo import default_workdir, run_demo

    _quiet_transformers()
    with _errors():
        try:
            text = run_demo(
                workdir or default_workdir(), settings, progress=not quiet, echo=click.echo
            )
        except KeyboardInterrupt:
            click.echo("\ninterrupted: run `tttnn demo` again to resume", err=True)
            sys.exit(130)
    click.echo(text)


# --- tttnn lm-eval: lm-evaluation-harness with the model `tttnn` registered --------------------
@main.command(
    "lm-eval",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                      "help_option_names": []},
    add_help_option=False,
)  # fmt: skip
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lm_eval_cmd(args: tuple[str, ...]) -> None:
    """lm-evaluation-harness with the model `tttnn` (ARGS go to `lm_eval`; `tttnn lm-eval -h`
    for its help): `tttnn lm-eval --model tttnn --model_args pretrained=smollm2-135m,index=DIR,
    neighbors=20 --tasks wikitext`."""
    try:
        from tttnn.lm_eval import run_harness_cli
    except ImportError as e:
        raise click.ClickException(
            f"lm-eval is not installed ({e}): pip install 'tttnn[lm-eval]'"
        ) from None
    _quiet_transformers()
    with _errors():
        run_harness_cli(args)


if __name__ == "__main__":  # `python -m tttnn.cli` as well as `python -m tttnn`
    main()
