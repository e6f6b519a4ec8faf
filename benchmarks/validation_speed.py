"""How fast are validation and conversion next to the csv module, and how much memory do they take?

    python benchmarks/validation_speed.py                    # every shape, 100 MB each: one table
    python benchmarks/validation_speed.py --megabytes 30 --shapes unquoted,utf16 --keep

Writes a CSV of realistic segment rows per shape (ids, emails, names, some quoted fields with
commas, doubled quotes and, rarely, line breaks), then times each reader in a fresh process, so
the memory printed is that reader's own: its peak RSS over the RSS of the process once the
interpreter and the imports (pushagent's take requests and loguru) are loaded, best of
``--repeat`` runs.

Validation shapes are timed against a bare ``csv.reader`` loop over the same file, and next to
the floor: the three passes over the bytes that validation cannot skip, timed alone (SHA-256,
UTF-8 decoding, ``bytes.translate`` down to the structure), no CSV logic at all. No validator
written in Python on this interpreter can beat that column. Conversion
shapes (another encoding or delimiter) are timed as the agent handles them, conversion into a
staged copy and validation of that copy, against a ``csv.reader`` + ``csv.writer`` round trip
into a UTF-8 file.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
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
    bom: bool = False
    encoding: str = "utf-8"
    delimiter: str = ","


@dataclass(frozen=True)
class Shape:
    name: str
    label: str
    mix: Mix
    target: float  # speed over the csv module's
    conversion: bool = False


SHAPES = [
    Shape("unquoted", "mostly unquoted rows, LF", Mix(0.1, 0.001, False, "\n"), 3.0),
    Shape("quoted-crlf-bom", "every field quoted, CRLF, BOM",
          Mix(0.1, 0.001, True, "\r\n", bom=True), 3.0),
    Shape("half-quoted", "half the rows quoted", Mix(0.5, 0.001, False, "\n"), 3.0),
    Shape("utf16", "convert: UTF-16LE, tab, CRLF, BOM (Excel)",
          Mix(0.1, 0.001, False, "\r\n", bom=True, encoding="utf-16-le", delimiter="\t"), 1.0,
          conversion=True),
    Shape("cp1252", "convert: cp1252, ';'", Mix(0.1, 0.001, False, "\r\n", encoding="cp1252",
                                                delimiter=";"), 1.0, conversion=True),
    Shape("semicolon-quoted", "convert: UTF-8, ';', every field quoted",
          Mix(0.1, 0.001, True, "\r\n", delimiter=";"), 1.0, conversion=True),
]


def _fields(rng: random.Random, number: int, mix: Mix) -> list[str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    fields = [
        str(8000000000000000000 + number), f"{first.lower()}.{last.lower()}{number}@example.com",
        first, last, rng.choice(CITIES), f"{rng.randint(1, 999)} {rng.choice(STREETS)}",
        f"{rng.random() * 100:.2f}", f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "returning customer",
    ]
    if rng.random() < mix.quoted_share:
        fields[5] = f"{fields[5]}, apt {rng.randint(1, 90)}"
        fields[8] = rng.choice(['said "hi", twice', "vip, gold"])
    if rng.random() < mix.multiline_share:
        fields[8] = "line one\nline two"
    return fields


def _row(rng: random.Random, number: int, mix: Mix) -> str:
    """One row as comma-separated UTF-8 text (for benchmarks/bench.py)."""
    out = io.StringIO()
    quoting = csv.QUOTE_ALL if mix.quote_all else csv.QUOTE_MINIMAL
    csv.writer(out, quoting=quoting, lineterminator=mix.eol).writerow(_fields(rng, number, mix))
    return out.getvalue()


def write_sample(path: Path, *, megabytes: float, mix: Mix, seed: int = 7) -> int:
    rng = random.Random(seed)
    target = int(megabytes * 1024 * 1024)
    number = 0
    quoting = csv.QUOTE_ALL if mix.quote_all else csv.QUOTE_MINIMAL
    with open(path, "w", encoding=mix.encoding, newline="") as out:
        if mix.bom:
            out.write("\ufeff")
        writer = csv.writer(out, delimiter=mix.delimiter, quoting=quoting,
                            lineterminator=mix.eol)
        writer.writerow(HEADER.strip().split(","))
        while out.tell() < target:
            writer.writerows(_fields(rng, number + i, mix) for i in range(10_000))
            number += 10_000
    return number


def _measure(kind: str, path: Path, encoding: str, delimiter: str) -> None:
    """Runs in the child: time one reader, print seconds and its own peak memory in MiB."""
    from pushagent.config import InputDialect
    from pushagent.intake import prepare, remove_staged
    from pushagent.validator import validate_csv

    # The peak from here on is the reader's own; the imports' is not counted.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    loaded = _status_mib("VmRSS")
    started = time.perf_counter()
    detail = ""
    if kind == "csv":
        with open(path, newline="", encoding=encoding) as stream:
            for _row in csv.reader(stream, delimiter=delimiter):
                pass
    elif kind == "roundtrip":
        out = path.with_name(path.name + ".roundtrip")
        with open(path, newline="", encoding=encoding) as stream, \
                open(out, "w", newline="", encoding="utf-8") as sink:
            csv.writer(sink).writerows(csv.reader(stream, delimiter=delimiter))
        out.unlink()
    elif kind == "floor":
        _floor(path)
    elif kind == "validate":
        report = validate_csv(path)
        detail = f"rows={report.data_rows} problems={list(report.problems)}"
    else:
        # auto reads UTF-8 and UTF-16 with a BOM; a code page is named, as in the config.
        named = "auto" if encoding in ("utf-8-sig", "utf-16") else encoding
        source = prepare(path, dialect=InputDialect(encoding=named), max_bytes=None)
        assert source.problem is None, source.problem
        report = validate_csv(source.send)
        assert report.ok, report.problems
        remove_staged(path)
        detail = f"rows={report.data_rows}"
    seconds = time.perf_counter() - started
    print(f"{seconds:.3f} {_status_mib('VmHWM') - loaded:.1f} {detail}")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _floor(path: Path) -> None:
    """The passes validation cannot do without, in C, and nothing else."""
    import codecs
    import hashlib

    from pushagent.validator import _NOT_STRUCTURE, CHUNK_SIZE

    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
            decoder.decode(chunk)
            chunk.translate(None, _NOT_STRUCTURE)


def _run(kind: str, path: Path, encoding: str = "utf-8", delimiter: str = ","
         ) -> tuple[float, float, str]:
    """Seconds, own peak memory in MiB and a detail of ``kind`` (csv, roundtrip, validate, agent)
    over ``path``, in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure", kind, str(path), encoding, delimiter],
        check=True, capture_output=True, text=True,
    ).stdout.split(" ", 2)
    return float(out[0]), float(out[1]), out[2].strip()


def _run_shape(kind: str, path: Path, shape: Shape) -> tuple[float, float, str]:
    codec = {"utf-8": "utf-8-sig", "utf-16-le": "utf-16"}.get(shape.mix.encoding,
                                                              shape.mix.encoding)
    return _run(kind, path, codec, shape.mix.delimiter)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=100.0, help="per shape (default 100)")
    parser.add_argument("--shapes", default=",".join(s.name for s in SHAPES),
                        help="comma-separated, of: " + ", ".join(s.name for s in SHAPES))
    parser.add_argument("--repeat", type=int, default=3, help="runs of each reader; best kept")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, path, encoding, delimiter = args.measure
        _measure(kind, Path(path), encoding, delimiter)
        return 0
    wanted = args.shapes.split(",")
    folder = Path(tempfile.mkdtemp(prefix="pushagent-bench-"))
    print(f"{'shape':44} | {'csv module':>10} | {'pushagent':>10} | {'speed':>6} | target | "
          f"{'memory':>9} | result | floor")
    print("-" * 114)
    missed = 0
    for shape in SHAPES:
        if shape.name not in wanted:
            continue
        path = folder / f"{shape.name}.csv"
        write_sample(path, megabytes=args.megabytes, mix=shape.mix)
        baseline = "roundtrip" if shape.conversion else "csv"
        theirs = min(_run_shape(baseline, path, shape) for _ in range(args.repeat))
        ours = min(_run_shape("agent", path, shape) for _ in range(args.repeat))
        speed = theirs[0] / ours[0]
        floor = ""
        if not shape.conversion:
            passes = min(_run_shape("floor", path, shape) for _ in range(args.repeat))
            floor = f"{theirs[0] / passes[0]:5.2f}x"
        size = path.stat().st_size
        ok = speed >= shape.target
        missed += not ok
        print(f"{shape.label:44} | {size / theirs[0] / 1e6:6.0f} MB/s | "
              f"{size / ours[0] / 1e6:6.0f} MB/s | {speed:5.2f}x | >= {shape.target:.0f}x | "
              f"{ours[1]:5.1f} MiB | {'PASS' if ok else 'MISS':6} | {floor}")
        if not args.keep:
            path.unlink()
    print(f"({args.megabytes:g} MB per shape; the csv module: a bare csv.reader loop for "
          "validation, csv.reader + csv.writer into UTF-8 for conversion; floor: SHA-256 + UTF-8 "
          f"decoding + bytes.translate alone, no CSV logic; best of {args.repeat})")
    if not args.keep:
        folder.rmdir()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
