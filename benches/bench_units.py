"""Reading the work units of a distributed build (`tttnn.distributed.build.read_unit`): each unit
started at the position the scan noted (a seek in `.jsonl`, decompression without parsing in
`.jsonl.zst`) against parsing every document up to its start, in the same run.

    python benches/bench_units.py [FILE ...] [--unit-documents 256]

Default inputs: `../shared/corpus/train.jsonl.zst` and a decompressed copy of it in a temporary
folder. Prints the scan time and, per file, both reading times and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from tttnn.config import BuildConfig
from tttnn.corpus import Corpus
from tttnn.distributed.build import count_documents, plan_units, read_unit

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "train.jsonl.zst"


def measure(path: Path, unit_documents: int) -> None:
    cfg = BuildConfig.from_flat(unit_documents=unit_documents)
    t = time.perf_counter()
    counts, starts = count_documents([path], cfg)
    scan = time.perf_counter() - t
    units = plan_units(counts, unit_documents, None, starts)
    secs = {}
    for label, blind in (("positions", False), ("parse to start", True)):
        t = time.perf_counter()
        for u in units:
            if blind:
                u = dataclasses.replace(u, at_line=None, at_byte=None)
            for _ in read_unit(Corpus([path]), u):
                pass
        secs[label] = time.perf_counter() - t
    print(f"{path.name}: {counts[0]} documents, scan {scan:.2f} s; {len(units)} units of "
          f"{unit_documents}: from positions {secs['positions']:.2f} s, parsing to each start "
          f"{secs['parse to start']:.2f} s, ratio {secs['parse to start'] / secs['positions']:.1f}x")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--unit-documents", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = args.files
        if not files:
            import zstandard

            plain = Path(tmp) / "train.jsonl"
            with open(SHARED, "rb") as src, open(plain, "wb") as dst:
                zstandard.ZstdDecompressor().copy_stream(src, dst)
            files = [plain, SHARED]
        for f in files:
            measure(f, args.unit_documents)


if __name__ == "__main__":
    main()
