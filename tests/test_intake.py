"""pushagent.intake: what a dropped file holds, and its conversion to UTF-8 comma CSV.

The property tests generate CSV text of every dialect (quotes, doubled quotes, CR, CRLF, empty
fields, fields over several lines, odd quoting) and compare the rows of the converted copy with
what Python's csv module reads from the original. Small chunk sizes put a chunk boundary inside
every kind of token."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import re
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushagent import intake
from pushagent.config import DELIMITERS, InputDialect
from pushagent.intake import prepare, remove_staged, sniff_delimiter, staged_path

TOKENS = ["a", "é", " ", ",", ";", "\t", "|", '"', "'", "\r", "\n", "\r\n", '""', "\n", "\r\n",
          ";", "\t"]
PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def csv_rows(text: str, delimiter: str, quotechar: str) -> list[list[str]] | None:
    """What csv reads from ``text`` (a file opened with newline=''); None when the text ends
    inside a quoted field (csv would close it silently; the agent refuses such a file)."""
    lines = re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z", text)
    # A marker line after the end: read as its own row unless a quoted field swallows it.
    rows = list(csv.reader([*lines, "\uffff\n"], delimiter=delimiter, quotechar=quotechar))
    if rows[-1] != ["\uffff"]:
        return None
    assert rows[:-1] == list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                                        quotechar=quotechar))
    return rows[:-1]


def canonical_rows(data: bytes) -> list[list[str]]:
    assert not data.startswith(codecs.BOM_UTF8)
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def convert(tmp_path: Path, data: bytes, *, name: str = "1-seg.csv", chunk_size: int = 7,
            max_bytes: int | None = None, **dialect: str):
    path = tmp_path / name
    path.write_bytes(data)
    return prepare(path, dialect=InputDialect(**dialect), max_bytes=max_bytes,
                   chunk_size=chunk_size)


@PROPERTY
@given(
    tokens=st.lists(st.sampled_from(TOKENS), max_size=40),
    delimiter=st.sampled_from(DELIMITERS),
    quotechar=st.sampled_from(['"', "'"]),
    encoding=st.sampled_from(["utf-16", "utf-8"]),
    chunk_size=st.sampled_from([4, 7, 64, 4096]),
    small_piece=st.sampled_from([1, 8, 2048]),
)
def test_the_converted_copy_holds_the_rows_csv_reads_from_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokens: list[str], delimiter: str,
    quotechar: str, encoding: str, chunk_size: int, small_piece: int,
) -> None:
    # Small pieces: a block that cannot be rewritten whole is halved down to its lines.
    monkeypatch.setattr(intake, "_SMALL_PIECE", small_piece)
    text = "".join(tokens)
    data = text.encode(encoding)  # utf-16 writes a byte order mark, as Excel does
    source = convert(tmp_path, data, chunk_size=chunk_size, delimiter=delimiter,
                     quotechar=quotechar)
    expected = csv_rows(text, delimiter, quotechar)
    plain = delimiter == "," and quotechar == '"'
    if expected is None and not plain:
        assert source.problem is not None and "unterminated quote" in source.problem
        return
    if source.converted_from is None:  # UTF-8, comma, '"': sent as it is, and validated
        assert (encoding, delimiter, quotechar) == ("utf-8", ",", '"')
        assert source.send == tmp_path / "1-seg.csv" and source.problem is None
        return
    if plain:  # only transcoded: the text as it was, for the validator to check
        assert source.problem is None
        assert source.send.read_bytes().decode("utf-8") == text
        return
    assert source.problem is None, source.problem
    assert canonical_rows(source.send.read_bytes()) == expected


@PROPERTY
@given(
    tokens=st.lists(st.sampled_from(["a", ",", '"', "\n", "\r\n", '""', " "]), max_size=40),
    chunk_size=st.sampled_from([1, 3, 8, 4096]),
)
def test_the_validator_counts_records_and_fields_as_csv_does(
    tmp_path: Path, tokens: list[str], chunk_size: int
) -> None:
    from pushagent.validator import validate_csv

    text = "h1,h2,h3\n" + "".join(tokens)
    path = tmp_path / "v.csv"
    path.write_bytes(text.encode())
    report = validate_csv(path, chunk_size=chunk_size, max_problems=1000)
    rows = csv_rows(text, ",", '"')
    if rows is None:
        assert any("unterminated quote" in p for p in report.problems), report.problems
        return
    reader = csv.reader(io.StringIO(text, newline=""))
    wanted: list[str] = []
    line = 1
    for row in reader:
        start, line = line, reader.line_num + 1
        if start == 1:
            continue
        if not row:
            wanted.append(f"line {start}: empty line (expected 3 fields)")
        elif len(row) != 3:
            wanted.append(f"line {start}: expected 3 fields, found {len(row)}")
    if len(rows) == 1:
        wanted.append(f"line {line}: no data rows after the header (at least one is needed)")
    else:
        assert report.data_rows == len(rows) - 1
    assert list(report.problems) == wanted


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("Email,Name", ","),
        ("Email;Name;Vorname", ";"),
        ("Email\tName", "\t"),
        ("Email|Name", "|"),
        ('"Last, First";Email', ";"),  # a comma inside quotes does not count
        ("Email", ","),  # one column
        ("a;b,c;d", ";"),  # the most frequent
        ("a;b,c", ","),  # a tie goes to the first listed
    ],
)
def test_the_delimiter_is_sniffed_from_the_header(header: str, delimiter: str) -> None:
    assert sniff_delimiter((header + "\r\nx;y,z\tw|v\n").encode(), "utf-8") == delimiter


def test_a_utf8_comma_file_is_sent_as_it_is_with_no_copy(tmp_path: Path) -> None:
    for data in (b"Email,Name\na@x,A\n", b"\xef\xbb\xbfEmail,Name\r\n\"a@x\",\"A\"\r\n"):
        source = convert(tmp_path, data)
        assert (source.send, source.converted_from, source.problem) == (
            tmp_path / "1-seg.csv", None, None)
        assert not staged_path(tmp_path / "1-seg.csv").exists()


def test_excel_unicode_text_becomes_utf8_comma_csv(tmp_path: Path) -> None:
    text = 'Email\tName\r\na@x\t"Bo, Jr."\r\nb@x\t"tab\there"\r\n'
    source = convert(tmp_path, codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    assert source.converted_from == "UTF-16LE with a byte order mark, tab-separated"
    assert source.send == staged_path(tmp_path / "1-seg.csv")
    assert source.send.read_bytes() == b'Email,Name\r\na@x,"Bo, Jr."\r\nb@x,tab\there\r\n'
    assert not source.send.with_name(source.send.name + ".tmp").exists()


def test_a_decimal_comma_export_quotes_the_fields_with_commas(tmp_path: Path) -> None:
    source = convert(tmp_path, "Email;Preis\nä@x;1,5\n".encode("cp1252"),
                     encoding="cp1252", delimiter=";")
    assert source.converted_from == "cp1252, semicolon-separated"
    assert source.send.read_bytes() == 'Email,Preis\r\nä@x,"1,5"\r\n'.encode()


@pytest.mark.parametrize("text", [
    'h1;h2;h3;h4\nx;a"b,c;"q"r,s;"t,u"\n' * 3,  # data quotes, a field going on after its quote
    '"a;b";"c""d,e";f,g\r\n"h\ni";j;k\r\n' * 3,  # a delimiter and a line break in quotes
    # A comma in a plain field, then one after a closing quote in the same line: the line went
    # out twice, its start merged into the first field ('Müller, Hans"Müller, Hans').
    'name;Email;title\nMüller, Hans;hans@example.com;"Dr." Med, PhD\n' * 3,
    # A comma inside the quotes, then one after them, in one field: csv reads ',,'.
    'a;b\n",",;x\n' * 3,
    # '""' right after the opening quote closes the field: the comma after it is data.
    'a;b;c\n"";;""x"y,x"y\n' * 3,
])
def test_commas_beside_quotes_keep_csvs_values(tmp_path: Path, text: str) -> None:
    source = convert(tmp_path, text.encode(), chunk_size=4096, delimiter=";")
    assert canonical_rows(source.send.read_bytes()) == csv_rows(text, ";", '"')


# Whole fields, as exporters and hand edits write them, beside commas and quotes: tokens rarely
# line up into these shapes (the fast path's mistakes above were each one of them).
FIELD_SHAPES = ["", "a", "a,b", '"a,b"', '"a"b,c', '""x"y,z', '","', '",",', 'a"b,c', '""',
                '""""', '"a""b,c"', '"a;b"', '"a\nb"', "é"]


@PROPERTY
@given(
    lines=st.lists(st.lists(st.sampled_from(FIELD_SHAPES), min_size=1, max_size=4),
                   min_size=1, max_size=6),
    delimiter=st.sampled_from([";", "\t", "|"]),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_fields_of_every_shape_keep_csvs_values(
    tmp_path: Path, lines: list[list[str]], delimiter: str, newline: str
) -> None:
    text = "".join(delimiter.join(fields) + newline for fields in lines)
    source = convert(tmp_path, text.encode(), chunk_size=4096, delimiter=delimiter)
    assert source.problem is None, source.problem
    assert canonical_rows(source.send.read_bytes()) == csv_rows(text, delimiter, '"')


@pytest.mark.parametrize(
    ("data", "dialect", "problem"),
    [
        pytest.param(b"Email;Name\na@x;A\nb@x;Ren\xe9e\n", {},
                     "line 3: byte 0xE9 is not UTF-8; if your exporter writes Windows-1252, set "
                     "input.encoding: cp1252", id="auto-never-guesses-a-code-page"),
        pytest.param(b"Email;Name\na@x;\x81\n", {"encoding": "cp1252"},
                     "line 2: byte 0x81 is not valid cp1252; set input.encoding to the encoding",
                     id="undefined-in-the-code-page"),
        pytest.param(codecs.BOM_UTF16_LE + "Email\tName\na\tb\n".encode("utf-16-le")[:-1], {},
                     "line 2: the file ends in the middle of a UTF-16LE character (0x0A); it "
                     "looks cut short", id="truncated-utf16"),
        pytest.param(b"Email;Name\na@x;\"open\nb@x;B\n", {},
                     "line 2: a quoted field starts here and is never closed", id="unterminated"),
    ],
)
def test_files_that_cannot_be_read_say_where_and_what_to_do(
    tmp_path: Path, data: bytes, dialect: dict[str, str], problem: str
) -> None:
    source = convert(tmp_path, data, **dialect)
    assert source.problem is not None and problem in source.problem, source.problem
    assert "\n" not in source.problem


def test_a_csv_gz_is_decompressed_while_read(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbfEmail,Name\na@x,A\n"
    source = convert(tmp_path, gzip.compress(data), name="1-seg.csv.gz")
    assert source.converted_from == "gzip of UTF-8 with a byte order mark, comma-separated"
    assert source.send.read_bytes() == data[3:]


def zipped(members: dict[str, bytes], *, directories: tuple[str, ...] = ()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in directories:
            archive.writestr(zipfile.ZipInfo(name + "/"), b"")
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_a_zip_with_one_csv_member_among_folders_is_read(tmp_path: Path) -> None:
    data = zipped({"out/Contacts.CSV": "Email;Name\na@x;Ä\n".encode("utf-16")},
                  directories=("out",))
    source = convert(tmp_path, data, name="1-seg.zip")
    assert source.converted_from == ("zip of UTF-16LE with a byte order mark, "
                                     "semicolon-separated")
    assert canonical_rows(source.send.read_bytes()) == [["Email", "Name"], ["a@x", "Ä"]]


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("1-s.zip", zipped({"a.csv": b"a\n1\n", "b.csv": b"a\n2\n"}),
         "the zip holds 2 files ('a.csv', 'b.csv'); it must hold exactly one CSV file"),
        ("1-s.zip", zipped({}), "the zip holds no file; it must hold exactly one CSV file"),
        ("1-s.zip", zipped({"a.xlsx": b"PK"}), "the zip's one file 'a.xlsx' is not a .csv file"),
        ("1-s.zip", b"PK\x03\x04 not really", "not a valid zip file"),
        ("1-s.csv.gz", gzip.compress(b"a\n1\n" * 100)[:-20], "not a valid gzip file"),
        ("1-s.csv.gz", b"a,b\n1,2\n", "not a valid gzip file"),
    ],
    # Named, because archives hold the time they were made: ids must be the same in every
    # process that collects them (pytest-xdist compares them).
    ids=["zip-two-members", "zip-empty", "zip-not-csv", "zip-corrupt", "gzip-truncated",
         "gzip-not-gzip"],
)
def test_compressed_files_that_cannot_be_read_are_refused_with_the_reason(
    tmp_path: Path, name: str, data: bytes, problem: str
) -> None:
    source = convert(tmp_path, data, name=name)
    assert source.problem is not None and problem in source.problem, source.problem


def test_the_size_cap_applies_to_the_decompressed_size(tmp_path: Path) -> None:
    big = b"Email\n" + b"a@example.com\n" * 100_000  # 1.4 MB that compresses to a few KB
    declared = convert(tmp_path, zipped({"a.csv": big}), name="1-s.zip", max_bytes=1_000_000)
    assert declared.problem is not None
    assert "'a.csv' in the zip is 1400006 bytes (1.3 MiB) once decompressed, over the size " \
           "limit of 1000000 bytes" in declared.problem
    streamed = convert(tmp_path, gzip.compress(big), name="1-s.csv.gz", max_bytes=1_000_000)
    assert streamed.problem is not None
    assert "the gzip holds more than the size limit of 1000000 bytes" in streamed.problem


def test_the_staged_copy_and_a_half_written_one_are_removed(tmp_path: Path) -> None:
    claimed = tmp_path / "1-seg.csv"
    staged = staged_path(claimed)
    staged.write_bytes(b"x")
    staged.with_name(staged.name + ".tmp").write_bytes(b"x")
    remove_staged(claimed)
    remove_staged(claimed)  # nothing left: no error
    assert list(tmp_path.iterdir()) == []


def test_a_claim_name_at_the_limit_gets_a_staged_copy_within_it(tmp_path: Path) -> None:
    name = "12-" + "é" * 124 + ".csv"  # 255 bytes, as a claim name cut to fit
    assert len(name.encode()) == 255
    source = convert(tmp_path, b"Email;Name\na@x;A\n", name=name)
    assert source.problem is None
    assert source.send.name.startswith("12-é") and source.send.name.endswith(".staged.csv")
    assert len(os.fsencode(source.send.name + ".tmp")) <= 255
    assert canonical_rows(source.send.read_bytes()) == [["Email", "Name"], ["a@x", "A"]]
    remove_staged(tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_file_over_the_size_limit_is_left_to_the_validator_unconverted(tmp_path: Path) -> None:
    data = "Email\tName\r\na@x\tA\r\n".encode("utf-16")
    source = convert(tmp_path, data, max_bytes=len(data) - 1)
    assert (source.send, source.converted_from, source.problem) == (
        tmp_path / "1-seg.csv", None, None)
    assert [p.name for p in tmp_path.iterdir()] == ["1-seg.csv"]


def test_bytes_that_do_not_decode_in_a_file_being_written_say_it_changed(
    tmp_path: Path
) -> None:
    path = tmp_path / "1-seg.csv"
    path.write_bytes(b"Email;Name\na@x;\xe9\n")
    real = os.fstat
    calls: list[int] = []

    def growing(fd: int) -> os.stat_result:
        calls.append(fd)
        result = real(fd)
        if len(calls) == 1:
            return result
        fields = list(result)
        fields[6] = result.st_size + 10
        return os.stat_result(fields)

    source = prepare(path, dialect=InputDialect(), max_bytes=None, fstat=growing)
    assert source.problem is None
    assert source.changed is not None and "the file changed while it was read" in source.changed
