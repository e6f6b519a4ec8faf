"""How fast is validate_csv next to a bare csv.reader loop, and how much memory does it take?

    python benchmarks/validation_speed.py                # ~200 MB file in a temporary folder
    python benchmarks/validation_speed.py --megabytes 50 --quoted-share 0.5 --keep

Writes a CSV of realistic segment rows (ids, emails, names, some quoted fields with commas,
doubled quotes and, rarely, line breaks), then times each reader in a fresh process so the
peak RSS printed is that reader's own.
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HEADER = "customer_id,Email,first_name,last_name,city,address,score,signup_date,note\n"
FIRST = ["Ana", "Bo", "Chen", "Dmitri", "Émilie", "Farah", "Günter", "Hiro", "Ines", "José"]
LAST = ["Smith", "O'Brien", "Müller", "Nguyen", "García", "Kowalski", "Tanaka", "Dubois"]
CITIES = ["Paris", "New York", "São Paulo", "Zürich", "Tokyo", "Lagos", "Mumbai", "Austin"]
STREETS = ["Main St", "Rue de Rivoli", "Baker Street", "Avenida Paulista", "Ginza"]


@dataclass(frozen=True)
class Mix:
    quoted_share: float  # rows whose address and note are quoted (commas, doubled quotes)
    multiline_share: float  # rows whose note holds a line break
    quote_all: bool  # every field quoted, as some exporters write
    eol: str


def _row(rng: random.Random, number: int, mix: Mix) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    fields = [
        str(8000000000000000000 + number), f"{first.lower()}.{last.lower()}{number}@example.com",
        first, last, rng.choice(CITIES), f"{rng.randint(1, 999)} {rng.choice(STREETS)}",
        f"{rng.random() * 100:.2f}", f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "returning customer",
    ]
    if rng.random() < mix.quoted_share:
        fields[5] = f'"{fields[5]}, apt {rng.randint(1, 90)}"'
        fields[8] = rng.choice(['"said ""hi"", twice"', '"vip, gold"'])
    if rng.random() < mix.multiline_share:
        fields[8] = '"line one\nline two"'
    if mix.quote_all:
        fields = [f if f.startswith('"') else f'"{f}"' for f in fields]
    return ",".join(fields) + mix.eol


def write_sample(path: Path, *, megabytes: float, mix: Mix, seed: int = 7) -> int:
    rng = random.Random(seed)
    target = int(megabytes * 1024 * 1024)
    written = 0
    number = 0
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(HEADER.replace("\n", mix.eol))
        while written < target:
            batch = "".join(_row(rng, number + i, mix) for i in range(10_000))
            number += 10_000
            out.write(batch)
            written += len(batch.encode("utf-8"))
    return number


def _measure(kind: str, path: Path) -> None:
    """Runs in the child: time one reader, print seconds and peak RSS in MiB."""
    started = time.perf_counter()
    if kind == "csv":
        with open(path, newline="", encoding="utf-8") as stream:
            for _row in csv.reader(stream):
                pass
        detail = ""
    else:
        from pushagent.validator import validate_csv

        report = validate_csv(path)
        detail = f"rows={report.data_rows} problems={list(report.problems)}"
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{seconds:.3f} {peak:.1f} {detail}")


def _run(kind: str, path: Path) -> tuple[float, float, str]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", kind, str(path)],
        check=True, capture_output=True, text=True,
    ).stdout.split(" ", 2)
    return float(out[0]), float(out[1]), out[2].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=200.0)
    parser.add_argument("--quoted-share", type=float, default=0.1,
                        help="share of rows with quoted fields (default 0.1)")
    parser.add_argument("--multiline-share", type=float, default=0.001,
                        help="share of rows with a line break in a quoted field (default 0.001)")
    parser.add_argument("--quote-all", action="store_true", help="quote every field")
    parser.add_argument("--crlf", action="store_true", help="end lines with CRLF")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each reader; best kept")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        _measure(args.measure[0], Path(args.measure[1]))
        return 0
    folder = Path(tempfile.mkdtemp(prefix="pushagent-bench-"))
    path = folder / "segment.csv"
    mix = Mix(quoted_share=args.quoted_share, multiline_share=args.multiline_share,
              quote_all=args.quote_all, eol="\r\n" if args.crlf else "\n")
    rows = write_sample(path, megabytes=args.megabytes, mix=mix)
    size = path.stat().st_size
    print(f"file: {path} ({size / 1024 / 1024:.1f} MiB, {rows} rows; {mix})")
    results = {}
    for kind in ("csv", "validate"):
        runs = [_run(kind, path) for _ in range(args.repeat)]
        results[kind] = min(runs)
        seconds, peak, detail = results[kind]
        label = "bare csv.reader loop" if kind == "csv" else "validate_csv"
        print(f"{label:22} {seconds:7.3f} s  {size / seconds / 1e6:7.1f} MB/s  "
              f"peak RSS {peak:6.1f} MiB  {detail}")
    ratio = results["csv"][0] / results["validate"][0]
    print(f"validate_csv is {ratio:.2f}x the speed of the bare csv.reader loop")
    if not args.keep:
        path.unlink()
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
