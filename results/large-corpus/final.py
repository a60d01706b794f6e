"""The result (decision rule 3 of `README.md`): the best index and retrieval of the curve and the
quality runs, with today's default training recipe, on all 40 documents of the shared test split
at k = 20, paired against today's default on today's index.

    python3 results/large-corpus/final.py               # run (or resume) on Ray, then compare
    python3 results/large-corpus/final.py --table-only  # the comparison of the rows so far
    python3 results/large-corpus/final.py --print       # only print the commands

The baseline is the committed run of today's default on today's index,
`results/smollm2-135m-recipe/test/tuned,nearest,wpn=all,L=1024,lr=5e-5` (8.4 hours of CPU in
its rows); it is paired with, not rerun (README: one of its documents recomputed here gives the
same neighbors and bits per byte to every digit). The run lives in `final/run` and resumes from
its committed rows; `final.md` and `final.png` are `tttnn compare` of the two.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quality import sh

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASELINE = "results/smollm2-135m-recipe/test/tuned,nearest,wpn=all,L=1024,lr=5e-5"
RECIPE = [
    "--data", "../shared/corpus/test.jsonl.zst", "--limit-per-domain", "5",
    "-k", "20", "--lr", "5e-5", "--max-length", "1024", "--eval-at", "0,5,10,20",
]  # fmt: skip
"""Today's default training recipe, as the baseline ran it: every window of each neighbor,
AdamW lr 5e-5, 1024 tokens, k = 20, all 40 test documents."""
RETRIEVAL: list[str] | None = None
"""The best index and retrieval of rules 1 and 2, chosen on validation (`quality/validation/`):
today's documents were the best size, and no variant was kept (whole-document queries, chunked
entries, all-mpnet-base-v2). So the best is today's default on today's index, the baseline
itself, and there is nothing to run: None. A variant kept later goes here as `tttnn eval`
options, e.g. `["--index", "runs/corpus-index-VARIANT", "--exact"]`."""
OUT = HERE / "final" / "run"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--print", dest="dry", action="store_true", help="only print the commands")
    args = ap.parse_args()
    if RETRIEVAL is None:
        sys.exit("no retrieval variant was kept on validation: the best is today's default on "
                 f"today's index, whose rows are the baseline ({BASELINE})")  # fmt: skip
    run = str(OUT.relative_to(ROOT))
    if not args.table_only:
        sh(["tttnn", "eval", *RETRIEVAL, *RECIPE, "--out", run, "--ray"], args.dry)
    plot = str((HERE / "final.png").relative_to(ROOT))
    sh(["tttnn", "compare", f"{BASELINE}@20", f"{run}@20", "--intersect", "--format", "markdown",
        "--plot", plot], args.dry, HERE / "final.md")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
