"""The quality runs of `README.md` (planned there before they run): whole-document queries,
chunked entries and a stronger encoder, each against the opening-query retrieval of an index of
the same documents, with the curve's training recipe (`curve.TRAINING`: 20 optimizer steps for
every variant).

    python3 results/large-corpus/quality.py validation      # build what is missing, run, compare
    python3 results/large-corpus/quality.py test VARIANT... # the kept variants on the test documents
    python3 results/large-corpus/quality.py --print ...     # only print the commands

Every step is a resumable `tttnn` command (an index build resumes with `--resume`, an eval run
from its rows), so rerunning the same line goes on where it stopped. Validation: the 16
documents of `tttnn sample ../shared/corpus/train.jsonl.zst --per-domain 2 --seed 0`; test: the
curve's 16 documents (`curve.TEST`). Comparisons: `tttnn compare` of each variant against its
baseline, written to `quality/SPLIT/VARIANT.md`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from curve import SHARD, TEST, TRAINING, run_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MAIN = "runs/corpus-index"
"""The curve's index: 20 shards of 5,180 documents."""
SMALL = 4
"""Shards of the main index that hold the documents of the chunked and mpnet indexes."""
VALIDATION = "runs/large-corpus-validation.jsonl"

INDEXES = {
    "chunked": ("runs/corpus-index-chunked", SMALL, ["--chunk-tokens", "1024"]),
    "mpnet": ("runs/corpus-index-mpnet", 1, ["--encoder", "all-mpnet-base-v2"]),
}
"""Indexes built for a variant: their folder, the first N·5,180 documents of the corpus, their
options. mpnet's is today's 5,180 documents: the best size on validation (`quality/validation/
sizes.md`), known before it ran."""


def shards(n: int) -> list[str]:
    return ["--shards", ",".join(map(str, range(n)))]


VARIANTS = {
    # name: (baseline: index and its options, variant: index and its options)
    "whole": ((MAIN, shards(20)), (MAIN, [*shards(20), "--query-span", "whole"])),
    "chunked": ((MAIN, shards(SMALL)), (INDEXES["chunked"][0], [])),
    "mpnet": ((MAIN, shards(1)), (INDEXES["mpnet"][0], [])),
}
"""On the test documents, a baseline is the curve's run of its size (same command)."""


def sh(cmd: list[str], dry: bool, out: Path | None = None) -> None:
    """Print and run a command from the repository root; `out`: write its standard output
    there."""
    print("$", " ".join(cmd), *([">", str(out.relative_to(ROOT))] if out else []), flush=True)
    if dry:
        return
    done = subprocess.run(cmd, check=True, cwd=ROOT, capture_output=out is not None, text=True)
    if out is not None:
        out.write_text(done.stdout)


def run_name(index: str, options: list[str]) -> str:
    """A run's folder name from what it searches: the index's folder and its options (a shard
    list by its size)."""
    words = [Path(index).name]
    for i, o in enumerate(options):
        if options[i - 1 : i] == ["--shards"]:
            words[-1] = f"size={len(o.split(',')) * SHARD}"
        else:
            words.append(o.lstrip("-"))
    return ",".join(words)


def build(name: str, dry: bool) -> None:
    out, size, options = INDEXES[name]
    cmd = ["tttnn", "index", "build", "runs/corpus/corpus.jsonl.zst", "--out", out,
           "--limit", str(size * SHARD), "--shard-size", str(SHARD), *options]  # fmt: skip
    if (ROOT / out).exists():
        cmd.append("--resume")
    sh(cmd, dry)


def evaluate(split: str, index: str, options: list[str], dry: bool) -> str:
    data = ["--data", VALIDATION] if split == "validation" else TEST
    out = (HERE / "quality" / split / run_name(index, options)).relative_to(ROOT)
    if split == "test" and index == MAIN and options[:1] == ["--shards"] and len(options) == 2:
        out = run_dir(len(options[1].split(","))).relative_to(ROOT)  # the curve's run
    sh(["tttnn", "eval", "--index", index, *options, *data, *TRAINING, "--out", str(out),
        "--ray"], dry)  # fmt: skip
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("split", choices=["validation", "test"])
    ap.add_argument("variants", nargs="*", help=f"of {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--print", dest="dry", action="store_true", help="only print the commands")
    args = ap.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    if args.split == "validation" and not (ROOT / VALIDATION).is_file():
        sh(["tttnn", "sample", "../shared/corpus/train.jsonl.zst", "--per-domain", "2",
            "--seed", "0", "--out", VALIDATION], args.dry)  # fmt: skip
    for name in args.variants or list(VARIANTS):
        if name in INDEXES:
            build(name, args.dry)
        (base_index, base_opts), (index, opts) = VARIANTS[name]
        base = evaluate(args.split, base_index, base_opts, args.dry)
        variant = evaluate(args.split, index, opts, args.dry)
        table = HERE / "quality" / args.split / f"{name}.md"
        sh(["tttnn", "compare", base, variant, "--format", "markdown"], args.dry, table)


if __name__ == "__main__":
    sys.exit(main())
