"""validate_csv and missing_columns: exact problem texts; field counts as csv.reader sees them."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest

from pushagent import validator
from pushagent.validator import CSVReport, missing_columns, validate_csv

# The first byte that is not UTF-8 says what to do.
HINT = ("; if your exporter writes Windows-1252, set input.encoding: cp1252 (or the code page "
        "it writes)")
# Chunk sizes that put a chunk boundary inside every kind of token (BOM, CRLF, quotes, UTF-8).
CHUNK_SIZES = (1, 2, 3, 7, 64, 4 * 1024 * 1024)


def check(
    tmp_path: Path, data: bytes, *, max_bytes: int | None = None, max_problems: int = 10
) -> CSVReport:
    """Validate ``data`` at every chunk size; all must agree (but on how much was read before
    stopping early), and the first report is returned."""
    path = tmp_path / "segment.csv"
    path.write_bytes(data)
    reports = [
        validate_csv(path, chunk_size=size, max_bytes=max_bytes, max_problems=max_problems)
        for size in CHUNK_SIZES
    ]
    stopped_early = reports[0].problems[-1:] == ("... and more",)
    for report in reports[1:]:
        assert (report.header, report.problems) == (reports[0].header, reports[0].problems)
        assert stopped_early or report.data_rows == reports[0].data_rows
    return reports[0]


# --- valid files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "header", "rows"),
    [
        pytest.param(b"Email,name\na@x.com,Ann\nb@x.com,Bob\n", ("Email", "name"), 2, id="plain"),
        pytest.param(b'Email,note\na@x.com,"two\nlines"\nb@x.com,"x, ""y"""\n',
                     ("Email", "note"), 2, id="quoted-newline-comma-doubled-quote"),
        pytest.param(b"\xef\xbb\xbfEmail,name\na@x.com,Ann\n", ("Email", "name"), 1, id="bom"),
        pytest.param(b"Email,name\r\na@x.com,Ann\r\nb@x.com,Bob\r\n", ("Email", "name"), 2,
                     id="crlf"),
        pytest.param(b"Email,name\na@x.com,Ann", ("Email", "name"), 1, id="no-trailing-newline"),
        pytest.param("Émail,名前\nzoë@x.com,日本\n".encode(), ("Émail", "名前"), 1, id="unicode"),
        pytest.param(b'"Email","the, name"\n"a@x.com","Ann"\n', ("Email", "the, name"), 1,
                     id="quoted-header"),
        pytest.param(b'Email\n""\na@x.com\n', ("Email",), 2, id="one-column-empty-value"),
        pytest.param(b'id,size\n1,5\'11"\n2,"a"b\n', ("id", "size"), 2,
                     id="stray-quotes-kept-as-data-like-csv"),
        pytest.param(b'id,note\n1,"a\r\nb"\r\n2,"c\rd"\r\n', ("id", "note"), 2,
                     id="line-breaks-inside-quotes"),
    ],
)
def test_valid_files_pass(tmp_path: Path, data: bytes, header: tuple[str, ...], rows: int) -> None:
    report = check(tmp_path, data)
    assert report.problems == ()
    assert report.ok
    assert report.header == header
    assert report.data_rows == rows
    assert report.bytes == len(data)
    assert report.path == tmp_path / "segment.csv"


def test_a_ten_megabyte_line_validates(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    long_value = b"x" * (10 * 1024 * 1024)
    path.write_bytes(b"id,blob\n1," + long_value + b"\n2,\"" + long_value + b'"\n')
    report = validate_csv(path)
    assert report.problems == ()
    assert report.data_rows == 2


# --- invalid files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        pytest.param(b"", ("the file is empty; it needs a header row and at least one data row",),
                     id="empty"),
        pytest.param(b"\xef\xbb\xbf",
                     ("the file is empty; it needs a header row and at least one data row",),
                     id="bom-only"),
        pytest.param(b"Email,name\n",
                     ("line 2: no data rows after the header (at least one is needed)",),
                     id="header-only"),
        pytest.param(b"Email,name",
                     ("line 2: no data rows after the header (at least one is needed)",),
                     id="header-only-no-newline"),
        pytest.param(b"a,b,c\n1,2,3\n1,2\n1,2,3,4\n",
                     ("line 3: expected 3 fields, found 2", "line 4: expected 3 fields, found 4"),
                     id="ragged"),
        pytest.param(b'a,b\n"x\ny",1,2\n3,4\n', ("line 2: expected 2 fields, found 3",),
                     id="ragged-record-names-its-first-line"),
        pytest.param(b"a,b\n1,2\nM\xfcller,3\n",
                     ("line 3: not valid UTF-8 (byte 0xfc at column 2)" + HINT,), id="latin-1"),
        pytest.param(b"a,b\n1,2\nzo\xc3\xab,\xe6\x97\xa5\xff\n",
                     ("line 3: not valid UTF-8 (byte 0xff at column 6)" + HINT,),
                     id="bad-utf8-column-counts-characters"),
        pytest.param(b"a,b\n1,2\n3,\xe6\x97\n",
                     ("line 3: not valid UTF-8 (byte 0xe6 at column 3)" + HINT,),
                     id="truncated-character"),
        pytest.param(b"a,b\n1,2\n3,4\x00\n",
                     ("line 3: NUL byte at column 4: this looks like a binary file, not CSV text",),
                     id="nul"),
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
                     ("line 1: not valid UTF-8 (byte 0x89 at column 1)" + HINT,
                      "line 3: NUL byte at column 1: this looks like a binary file, not CSV text"),
                     id="binary"),
        pytest.param(b"Email,name,Email\n1,2,3\n",
                     ("line 1: column name 'Email' is used more than once (columns 1 and 3)",),
                     id="duplicate-header"),
        pytest.param(b"a,b,a,a\n1,2,3,4\n",
                     ("line 1: column name 'a' is used more than once (columns 1, 3 and 4)",),
                     id="duplicate-header-thrice"),
        pytest.param(b"a,,b, \n1,2,3,4\n",
                     ("line 1: column 2 has an empty name", "line 1: column 4 has an empty name"),
                     id="empty-header-names"),
        pytest.param(b"\na,b\n1,2\n",
                     ("line 1: the header row is empty; the first line must name the columns",),
                     id="blank-header"),
        pytest.param(b'a,b\n1,2\n3,"four\n5,6\n',
                     ("line 3: a quoted field starts here and is never closed "
                      "(unterminated quote)",),
                     id="unterminated-quote"),
        pytest.param(b"a,b\n1,2\n\n3,4\n", ("line 3: empty line (expected 2 fields)",),
                     id="empty-line-in-the-middle"),
        pytest.param(b"a,b\n1,2\n\n", ("line 3: empty line (expected 2 fields)",),
                     id="empty-line-at-the-end"),
        pytest.param(b"Email\na@x.com\n\nb@x.com\n",
                     ('line 3: empty line (a one-column file writes an empty value as "")',),
                     id="empty-line-one-column"),
        pytest.param(b"a,b\r1,2\r",
                     ("line 1: carriage return (\\r) without a line feed; save the file with LF or "
                      "CRLF line endings",
                      "line 2: no data rows after the header (at least one is needed)"),
                     id="old-mac-line-endings"),
        pytest.param(b"a,b\n1,2\r3\n4,5\n",
                     ("line 2: carriage return (\\r) without a line feed; save the file with LF or "
                      "CRLF line endings",),
                     id="bare-cr-inside-a-field"),
    ],
)
def test_invalid_files_name_their_lines(
    tmp_path: Path, data: bytes, problems: tuple[str, ...]
) -> None:
    report = check(tmp_path, data)
    assert report.problems == problems
    assert not report.ok


def test_a_header_only_ten_megabyte_line_has_no_data_rows(tmp_path: Path) -> None:
    path = tmp_path / "one-line.csv"
    path.write_bytes(b"x" * (10 * 1024 * 1024))
    report = validate_csv(path)
    assert report.problems == ("line 2: no data rows after the header (at least one is needed)",)
    assert report.header == ("x" * (10 * 1024 * 1024),)


def test_a_header_past_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge-header.csv"
    path.write_bytes(b"x" * (validator.HEADER_LIMIT + 1) + b"\n1\n")
    report = validate_csv(path)
    assert report.problems == (
        "line 1: the header row is longer than 16777216 bytes (16.0 MiB); the first line must "
        "name the columns",
    )


def test_a_name_used_many_times_is_listed_briefly(tmp_path: Path) -> None:
    report = check(tmp_path, b"a,a,b,a,a,a,a,a\n" + b"1,2,3,4,5,6,7,8\n")
    assert report.problems == (
        "line 1: column name 'a' is used more than once (columns 1, 2, 4, 5 and 3 more)",
    )


def test_problems_stop_after_the_limit(tmp_path: Path) -> None:
    report = check(tmp_path, b"a,b\n" + b"1\n" * 50, max_problems=3)
    assert report.problems == (
        "line 2: expected 2 fields, found 1",
        "line 3: expected 2 fields, found 1",
        "line 4: expected 2 fields, found 1",
        "... and more",
    )


def test_exactly_the_limit_says_no_more(tmp_path: Path) -> None:
    report = check(tmp_path, b"a,b\n1\n2\n3,4\n", max_problems=2)
    assert report.problems == (
        "line 2: expected 2 fields, found 1",
        "line 3: expected 2 fields, found 1",
    )


def test_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    report = check(tmp_path, b"a,b\n1,2\n" * 200, max_bytes=1024)
    assert report.problems == (
        "the file is 1600 bytes (1.6 KiB), over the size limit of 1024 bytes (1.0 KiB)",
    )
    assert report.bytes == 0


def test_zero_means_no_size_limit(tmp_path: Path) -> None:
    assert check(tmp_path, b"a,b\n1,2\n", max_bytes=0).ok


def test_size_limit_is_checked_while_reading() -> None:
    """A file that grew after it was measured: the bytes fed count, not the size first seen."""
    check = validator.CSVCheck(max_bytes=64)
    data = b"a,b\n1,2\n" * 100
    fed = 0
    while fed < len(data) and check.feed(data[fed:fed + 16]):
        fed += 16
    assert check.bytes > 64
    report = check.finish(Path("grown.csv"), size=len(data), mtime_ns=0)
    assert report.sha256 is None
    assert report.problems == (
        "the file grew past the size limit of 64 bytes while it was being read",
    )


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"a\n1\n")
    with pytest.raises(ValueError, match="max_problems"):
        validate_csv(path, max_problems=0)
    with pytest.raises(ValueError, match="max_bytes"):
        validate_csv(path, max_bytes=-1)


def test_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        validate_csv(tmp_path / "gone.csv")


# --- agreement with csv.reader on random files -------------------------------------------------

TEXT = "abz019 é日-_."
ODDITIES = ['""', '""""', '"""x"', '"x"""', 'a""b', '","', '",a"', '"a,"', '"",""', 'x"',
            '"a"b', '"a"b"c', '"x\ny"z']


def _random_field(rng: random.Random, *, quote_all: bool) -> str:
    chars = TEXT + (',"' if rng.random() < 0.3 else "")
    if quote_all:
        return '"' + "".join(rng.choice(chars) for _ in range(rng.randint(0, 5))).replace(
            '"', '""') + '"'
    roll = rng.random()
    if roll < 0.05:
        return rng.choice(ODDITIES)
    if roll < 0.55:
        return "".join(rng.choice(TEXT) for _ in range(rng.randint(0, 6)))
    inner = "".join(rng.choice(TEXT + ',""\n') for _ in range(rng.randint(0, 8)))
    if rng.random() < 0.1:
        inner += "\r\n"
    return '"' + inner.replace('"', '""') + '"'


def _random_csv(rng: random.Random) -> str:
    columns = rng.randint(1, 5)
    eol = rng.choice(["\n", "\r\n"])
    rows = [",".join(f"h{i}" for i in range(columns))]
    for _ in range(rng.randint(1, 25)):
        count = columns if rng.random() < 0.8 else rng.randint(1, 7)
        quote_all = rng.random() < 0.3
        fields = [_random_field(rng, quote_all=quote_all) for _ in range(count)]
        rows.append(",".join(fields) or '""')
    return eol.join(rows) + (eol if rng.random() < 0.7 else "")


def _csv_reader_problems(text: str) -> tuple[int, list[str], bool]:
    """Data rows, field-count problems as csv.reader sees them, and whether the text ends inside
    a quoted field (csv.reader then quietly returns what it has)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    problems: list[str] = []
    rows = 0
    start = reader.line_num + 1
    for row in reader:
        rows += 1
        if not row:
            problems.append(f"line {start}: empty line (expected {len(header)} fields)"
                            if len(header) > 1 else
                            f'line {start}: empty line (a one-column file writes an empty value '
                            f'as "")')
        elif len(row) != len(header):
            noun = "field" if len(header) == 1 else "fields"
            problems.append(f"line {start}: expected {len(header)} {noun}, found {len(row)}")
        start = reader.line_num + 1
    probe = list(csv.reader(io.StringIO(text + "\nEND\n", newline="")))
    unterminated = probe[-1] != ["END"]
    return rows, problems, unterminated


def test_field_counts_agree_with_csv_reader(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    path = tmp_path / "random.csv"
    compared = 0
    for _ in range(400):
        text = _random_csv(rng)
        rows, expected, unterminated = _csv_reader_problems(text)
        path.write_bytes(text.encode())
        for size in (1, 5, 64, 1 << 20):
            report = validate_csv(path, max_problems=1000, chunk_size=size)
            if unterminated:
                # csv.reader returns the unclosed record as a row; validation reports it instead.
                assert report.problems[-1].endswith("(unterminated quote)")
                assert report.data_rows == rows - 1
                continue
            assert list(report.problems) == expected, (size, text)
            assert report.data_rows == rows
            compared += 1
    assert compared > 1000


# --- missing_columns --------------------------------------------------------------------------


def test_missing_columns_names_each_missing_column_once() -> None:
    problems = missing_columns(
        ("email", "First Name"), ["Email", "First Name", "Email", "zip"],
        source="the job's identityMappings",
    )
    assert problems == [
        "line 1: column 'Email' not found; the header has 'email' (names must match exactly, "
        "case and spaces included: rename the column, or the name in the job's "
        "identityMappings)",
        "line 1: column 'zip' required by the job's identityMappings is missing from the header",
    ]


def test_missing_columns_is_empty_when_all_are_present() -> None:
    assert missing_columns(("Email", "x"), ("Email",)) == []
    assert missing_columns(("a",), ("b",)) == [
        "line 1: column 'b' required by the job's mappings is missing from the header"
    ]


# --- the snapshot an upload must match ------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xef\xbb\xbfEmail,name\na@x.com,Ann\n", id="bom-is-left-out"),
        pytest.param(b"Email,name\na@x.com\nb@x.com,Bob\n", id="invalid-but-read-to-the-end"),
        pytest.param(b"", id="empty"),
    ],
)
def test_report_holds_the_digest_size_and_mtime_of_the_bytes_read(
    tmp_path: Path, data: bytes, chunk_size: int
) -> None:
    path = tmp_path / "segment.csv"
    path.write_bytes(data)
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))

    report = validate_csv(path, chunk_size=chunk_size)

    offset = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    assert report.sha256 == sha256(data[offset:]), "the upload starts after a byte order mark"
    assert report.offset == offset
    assert (report.size, report.bytes) == (len(data), len(data))
    assert report.mtime_ns == path.stat().st_mtime_ns
    assert report.changed is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"Email\na@x.com\0\nb@x.com\n", id="nul"),
        pytest.param(b"a,b\n" + b"1\n" * 20, id="too-many-problems"),
    ],
)
def test_validation_that_stopped_early_has_no_digest(tmp_path: Path, data: bytes) -> None:
    report = check(tmp_path, data, max_problems=3)

    assert not report.ok
    assert report.sha256 is None
    assert report.size == len(data)
    assert report.changed is None


def test_a_file_refused_by_its_size_has_no_digest(tmp_path: Path) -> None:
    report = check(tmp_path, b"a,b\n1,2\n" * 200, max_bytes=1024)

    assert (report.sha256, report.bytes, report.size, report.changed) == (None, 0, 1600, None)


class DropperStillWriting:
    """os.fstat for validate_csv, calling ``write`` right after the first answer (at open), as a
    dropper that renamed the file before it finished writing it."""

    def __init__(self, write: Callable[[], None]) -> None:
        self._write = write
        self.calls = 0

    def __call__(self, fd: int) -> os.stat_result:
        answer = os.fstat(fd)
        self.calls += 1
        if self.calls == 1:
            self._write()
        return answer


def test_a_file_that_grew_while_read_is_reported_changed(tmp_path: Path) -> None:
    path = tmp_path / "segment.csv"
    path.write_bytes(b"Email\na@x.com\n")

    def append() -> None:
        with path.open("ab") as out:
            out.write(b"b@x.com\n\0")

    fstat = DropperStillWriting(append)
    report = validate_csv(path, chunk_size=4, fstat=fstat)

    assert fstat.calls == 2
    assert report.size == 14
    assert report.sha256 is None  # the NUL written late stopped it
    assert report.changed == (
        "the file changed while it was read (size 14 -> 23 bytes); the dropper must finish "
        "writing before renaming it into the drop folder"
    )


def test_a_file_rewritten_at_the_same_size_is_reported_changed(tmp_path: Path) -> None:
    path = tmp_path / "segment.csv"
    path.write_bytes(b"Email\na@x.com\n")
    opened_at = path.stat().st_mtime_ns

    def rewrite() -> None:
        path.write_bytes(b"Email\nb@x.com\n")
        os.utime(path, ns=(opened_at + 10**9, opened_at + 10**9))

    report = validate_csv(path, fstat=DropperStillWriting(rewrite))

    assert report.mtime_ns == opened_at
    assert report.changed is not None
    assert "(rewritten at the same size of 14 bytes)" in report.changed


@dataclass(frozen=True)
class Stat:
    st_size: int
    st_mtime_ns: int


def test_more_bytes_read_than_the_size_at_open_is_reported_changed(tmp_path: Path) -> None:
    """Size and mtime alike before and after, yet the read found other bytes than measured."""
    path = tmp_path / "segment.csv"
    path.write_bytes(b"Email\na@x.com\n")

    def fstat(fd: int) -> os.stat_result:
        return cast(os.stat_result, Stat(st_size=10, st_mtime_ns=os.fstat(fd).st_mtime_ns))

    report = validate_csv(path, fstat=fstat)

    assert report.changed is not None
    assert "(14 bytes read from a file of 10 bytes)" in report.changed


@pytest.mark.parametrize("content", [
    b"a,b\n1,2\n",
    b"\xef\xbb\xbfa,b\r\n\"x,\ny\",2\r\n3,4",
    b"a,b\n1\n2,3,4\n\n5,\xe9\n",
    b"a,b\n1,\"open\n",
    b"a,a\n1,2\n",
    b"\xef\xbb",
    b"\xef",
    b"a",
    b"",
    b"a,b\n1,2\0\n",
])
def test_fed_in_any_pieces_the_check_reports_as_validate_csv(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "fed.csv"
    path.write_bytes(content)
    whole = validator.validate_csv(path)
    for seed in range(5):
        rng = random.Random(seed)
        check = validator.CSVCheck()
        at = 0
        while at < len(content):
            step = rng.randint(1, 7)
            check.feed(content[at:at + step])
            at += step
        fed = check.finish(path, size=whole.size, mtime_ns=whole.mtime_ns)
        assert fed == whole, f"pieces from seed {seed}"
