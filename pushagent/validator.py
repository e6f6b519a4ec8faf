"""Streaming CSV validation, run on every file before any byte of it is uploaded.

A file passes when it is UTF-8 text (a byte order mark is allowed and is not part of the first
column's name) with a header row of unique, non-empty column names, at least one data row, and
the same number of fields in every record. Quoting follows RFC 4180 as Python's ``csv`` module
reads it: a quoted field may hold commas, doubled quotes and line breaks, so one record may span
several physical lines; a quote inside an unquoted field, or text after a closing quote, is kept
as data, as ``csv`` keeps it. Lines end in LF or CRLF; a carriage return not followed by a line
feed (old Mac line endings) is a problem. Empty lines are problems anywhere but at the very end
(the file's final line break), even in a one-column file, where ``csv.writer`` writes an empty
value as ``""``.

Every problem names the physical line its record starts on (the byte order mark aside, columns
count characters). Speed and memory: the file is read in binary chunks of ``CHUNK_SIZE``; a
chunk's complete lines are checked with whole-chunk ``bytes`` operations (see
``_Scanner._whole_lines``), so validation runs faster than a bare ``csv.reader`` loop over the
same file on typical exports (``benchmarks/validation_speed.py`` measures it); only records that
span lines or hold odd quoting go through a small state machine modelled on CPython's
``_csv.c``. Memory stays flat whatever the size of the file or of one line: a few times the
chunk size, and the header row, up to ``HEADER_LIMIT``.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import ne
from pathlib import Path

from pushagent.units import format_bytes

# Small enough to stay in the CPU cache: 256 KiB validates ~1.4x faster than 4 MiB, and each
# validation in progress holds ~1 MiB instead of ~20 MiB (four workers: 48 MiB RSS, not 134).
CHUNK_SIZE = 256 * 1024
HEADER_LIMIT = 16 * 1024 * 1024

_LF = ord("\n")
_CR = ord("\r")
_QUOTE = ord('"')
_COMMA = ord(",")
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))

# A quoted field that csv reads as one field within one line: it starts a field, holds no line
# break, and is followed by the end of the field.
# Every byte that is not structure becomes x (then, where it does not touch a quote, nothing).
_TO_DATA = bytes(byte if byte in b',"\r\n' else ord("x") for byte in range(256))
_SHAPES_KEPT = 4096
_NOT_STRUCTURE = bytes(set(range(256)) - set(b',"\r\n'))
_BARE_CR = re.compile(rb"\r(?!\n)")
_SPECIAL = re.compile(rb'["\r\n]')
_HEADER_QUOTED = re.compile(r'"([^"]*(?:""[^"]*)*)"')

# The state machine's modes, named as in CPython's _csv.c.
_START_RECORD = 0
_START_FIELD = 1
_IN_FIELD = 2
_IN_QUOTED_FIELD = 3
_QUOTE_IN_QUOTED_FIELD = 4


@dataclass(frozen=True)
class CSVReport:
    """What validation found. ``data_rows`` counts records after the header, blank ones too;
    when validation stopped early (too many problems, a NUL byte) it counts what was read.
    ``bytes`` is the number of bytes read: 0 when the file was refused by its size unread.

    The snapshot the upload must match: ``sha256`` is the hex digest of exactly the bytes read
    after the first ``offset`` (a UTF-8 byte order mark, which is not sent: the upload starts
    after it), None when validation stopped early or refused the file unread; ``size`` and
    ``mtime_ns`` are the file's at open. ``changed`` is a sentence when the
    file changed while it was read (then the bytes checked are no one state of the file), else
    None."""

    path: Path
    header: tuple[str, ...]
    data_rows: int
    bytes: int
    problems: tuple[str, ...]
    sha256: str | None
    size: int
    mtime_ns: int
    changed: str | None
    offset: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_csv(
    path: str | os.PathLike[str],
    *,
    max_bytes: int | None = None,
    max_problems: int = 10,
    chunk_size: int = CHUNK_SIZE,
    fstat: Callable[[int], os.stat_result] = os.fstat,
) -> CSVReport:
    """Check the CSV file at ``path``; the report lists every problem up to ``max_problems``,
    then "... and more". ``max_bytes`` of None or 0 means no size limit. ``chunk_size`` is the
    read size (tests use tiny chunks to cross every boundary). OSError from opening or reading
    propagates: the caller tells a vanished file from an unreadable one. ``fstat`` is asked at
    open and after the read (tests pass one that shows a file changing meanwhile)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    file_path = Path(path)
    check = CSVCheck(max_bytes=max_bytes, max_problems=max_problems)
    # An explicit buffer size spares open() its isatty() (an ioctl) for every file.
    with open(file_path, "rb", buffering=io.DEFAULT_BUFFER_SIZE) as stream:
        opened = fstat(stream.fileno())
        refused = check.refuse_size(opened.st_size)
        if not refused:
            # The first read takes a byte order mark on top, so what follows it is never
            # empty by chance.
            chunk = stream.read(chunk_size + len(codecs.BOM_UTF8))
            while chunk and check.feed(chunk):
                chunk = stream.read(chunk_size)
        report = check.finish(file_path, size=opened.st_size, mtime_ns=opened.st_mtime_ns)
        if not refused:
            changed = file_change(opened, fstat(stream.fileno()),
                                  read=check.bytes if report.sha256 is not None else None)
            if changed is not None:
                report = dataclasses.replace(report, changed=changed)
    return report


class CSVCheck:
    """``validate_csv`` fed by the caller, block by block, so the bytes can be checked, hashed
    and sent in one pass (the agent's ``upload.validate_while_sending``). ``feed`` returns
    False once validation has stopped early (too many problems, a NUL byte, over the size
    limit); ``problems`` tells at once whether any was found so far. ``finish`` gives the report
    of what was fed: ``sha256`` only when validation went to the end."""

    def __init__(self, *, max_bytes: int | None = None, max_problems: int = 10) -> None:
        if max_problems < 1:
            raise ValueError(f"max_problems must be at least 1, got {max_problems}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 (no limit) or more, got {max_bytes}")
        self._limit = max_bytes or None
        self._problems = _Problems(max_problems)
        self._scanner = _Scanner(self._problems)
        self._text = _TextCheck(self._problems)
        self._digest = hashlib.sha256()
        self._head: bytes | None = b""  # bytes kept until a byte order mark can be told
        self._carry = b""
        self._empty = True
        self.stopped = False
        self.bytes = 0

    @property
    def problems(self) -> bool:
        return bool(self._problems.found)

    @property
    def header(self) -> tuple[str, ...] | None:
        return self._scanner.header

    @property
    def bom(self) -> bool:
        return self._scanner.bom

    def refuse_size(self, size: int) -> bool:
        """True (and the problem noted) when a file of ``size`` bytes is over the limit: it is
        refused unread."""
        if self._limit is None or size <= self._limit:
            return False
        self._problems.add(0, f"the file is {_size(size)}, over the size limit of "
                              f"{_size(self._limit)}")
        self.stopped = True
        return True

    def feed(self, data: bytes) -> bool:
        if self.stopped or not data:
            return not self.stopped
        self.bytes += len(data)
        if self._head is not None:
            data = self._head + data
            if len(data) < len(codecs.BOM_UTF8) and codecs.BOM_UTF8.startswith(data):
                self._head = data
                return True
            self._head = None
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8):]
                self._scanner.bom = True
        self._digest.update(data)
        if data:
            self._empty = False
            self._chunk(data)
        return not self.stopped

    def _chunk(self, chunk: bytes) -> None:
        problems, scanner = self._problems, self._scanner
        if self._limit is not None and self.bytes > self._limit:
            problems.add(0, f"the file grew past the size limit of {_size(self._limit)} while "
                            "it was being read")
            self.stopped = True
            return
        line = scanner.line
        nul = chunk.find(b"\0")
        if nul >= 0:
            problem_line, column = self._text.where(chunk, nul, line=line)
            self._text.feed(chunk[:nul], line=line, final=False)
            buf = self._carry + chunk[:nul]
            scanner.feed(buf[: buf.rfind(b"\n") + 1], final=False)
            problems.add(problem_line, f"NUL byte at column {column}: this looks like a binary "
                                       "file, not CSV text")
            self.stopped = True
            return
        self._text.feed(chunk, line=line, final=False)
        buf = self._carry + chunk if self._carry else chunk
        self._carry = buf[scanner.feed(buf, final=False):]
        if problems.full or scanner.stopped:
            self.stopped = True

    def finish(self, path: Path, *, size: int, mtime_ns: int) -> CSVReport:
        """The report of everything fed; ``size`` and ``mtime_ns`` are the file's at open."""
        whole = not self.stopped
        if whole:
            head, self._head = self._head, None
            if head:  # a file shorter than a byte order mark
                self._digest.update(head)
                self._empty = False
                self._chunk(head)
            self._text.feed(b"", line=self._scanner.line, final=True)
            if self._carry:
                self._scanner.feed(self._carry, final=True)
                self._carry = b""
            self._scanner.finish(empty=self._empty)
            self.stopped = True
        return CSVReport(
            path=path,
            header=self._scanner.header or (),
            data_rows=self._scanner.data_rows,
            bytes=self.bytes,
            problems=self._problems.render(),
            sha256=self._digest.hexdigest() if whole else None,
            size=size,
            mtime_ns=mtime_ns,
            changed=None,
            offset=len(codecs.BOM_UTF8) if self._scanner.bom else 0,
        )


def sha256_of(path: Path) -> str:
    """The SHA-256 of the whole file, read a chunk at a time; OSError when it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def file_change(opened: os.stat_result, after: os.stat_result, *, read: int | None) -> str | None:
    """Why the bytes read may not be the file at open (``read``: all bytes to the end, or None
    when the read stopped early), or None."""
    what: str | None = None
    if after.st_size != opened.st_size:
        what = f"size {opened.st_size} -> {after.st_size} bytes"
    elif after.st_mtime_ns != opened.st_mtime_ns:
        what = f"rewritten at the same size of {opened.st_size} bytes"
    elif read is not None and read != opened.st_size:
        what = f"{read} bytes read from a file of {opened.st_size} bytes"
    if what is None:
        return None
    return (f"the file changed while it was read ({what}); the dropper must finish writing "
            "before renaming it into the drop folder")


def missing_columns(
    header: Sequence[str], required: Iterable[str], *, source: str = "the job's mappings"
) -> list[str]:
    """One problem per required column absent from ``header`` (names match exactly); a column
    that differs only in case or surrounding spaces is pointed out."""
    present = set(header)
    loose = {name.strip().casefold(): name for name in header}
    problems: list[str] = []
    seen: set[str] = set()
    for column in required:
        if column in present or column in seen:
            continue
        seen.add(column)
        near = loose.get(column.strip().casefold())
        if near is None:
            text = f"line 1: column {column!r} required by {source} is missing from the header"
        else:  # Salesforce writes EMAIL; a spreadsheet may keep a space
            text = (f"line 1: column {column!r} not found; the header has {near!r} (names must "
                    f"match exactly, case and spaces included: rename the column, or the name in "
                    f"{source})")
        problems.append(text)
    return problems


def _size(count: int) -> str:
    return f"{count} bytes" if count < 1024 else f"{count} bytes ({format_bytes(count)})"


def _plural(count: int) -> str:
    return f"{count} field" if count == 1 else f"{count} fields"


def _reduce(data: bytes) -> bytes:
    """Each line's commas, quotes and line ending, less the quotes that pair up in a field."""
    marks = data.translate(None, _NOT_STRUCTURE)
    return marks.replace(b'""', b"") if b'"' in marks else marks


def _quoted_lines(
    lines: list[bytes], fields: dict[int, int], quoted: list[int], shapes: dict[bytes, int]
) -> list[int]:
    """Correct ``fields`` for the ``quoted`` lines, whose reduced form has quotes left; returns
    those that need the state machine (a record going on to the next line).

    Each line is reduced to its shape: its commas, quotes and line end, and one mark where data
    touches a quote (``x"`` or ``"x``). csv's reading of a line depends on nothing else: data
    changes its state only at the start of a field (where it makes a later quote in the field
    data, a quote it touches) or right after a quote. The lines of one export share few
    shapes, so each shape is read once (``_shape_fields``) and kept in ``shapes``."""
    joined = b"\n".join([lines[i] for i in quoted]).translate(_TO_DATA)
    joined = joined.replace(b'x"', b'X"').replace(b'"x', b'"X').translate(None, b"x")
    odd: list[int] = []
    if len(shapes) > _SHAPES_KEPT:  # a file of ever new shapes: memory stays flat
        shapes.clear()
    for index, shape in zip(quoted, joined.split(b"\n"), strict=True):
        count = shapes.get(shape)
        if count is None:
            count = shapes[shape] = _shape_fields(shape)
        if count < 0:
            odd.append(index)
        else:
            fields[index] = count
    return odd


def _shape_fields(shape: bytes) -> int:
    """The fields csv reads in a line of this shape, or -1 when its record goes on (a quoted
    field is still open at its end)."""
    if shape.endswith(b"\r"):
        shape = shape[:-1]  # CRLF; a carriage return alone sends its line to the state machine
    mode = _START_FIELD
    count = 1
    for byte in shape:
        if mode == _IN_QUOTED_FIELD:
            if byte == _QUOTE:
                mode = _QUOTE_IN_QUOTED_FIELD
        elif byte == _COMMA:
            count += 1
            mode = _START_FIELD
        elif byte == _QUOTE:
            if mode == _START_FIELD:
                mode = _IN_QUOTED_FIELD
            elif mode == _QUOTE_IN_QUOTED_FIELD:
                mode = _IN_QUOTED_FIELD  # a doubled quote
        elif mode != _IN_FIELD:
            mode = _IN_FIELD  # data at a field's start, or after its closing quote
    return -1 if mode == _IN_QUOTED_FIELD else count


def _has_blank_line(data: bytes) -> bool:
    return data.startswith((b"\n", b"\r\n")) or b"\n\n" in data or b"\n\r\n" in data


def _bare_cr_lines(data: bytes) -> list[int]:
    """Indexes of the lines (split at LF) that hold a carriage return not followed by LF."""
    found: list[int] = []
    line = 0
    at = 0
    for match in _BARE_CR.finditer(data):
        line += data.count(b"\n", at, match.start())
        at = match.start()
        found.append(line)
    return found


def _chars(data: bytes) -> int:
    """How many characters the UTF-8 bytes hold (continuation bytes do not start one)."""
    return len(data) if data.isascii() else len(data.translate(None, _CONTINUATION_BYTES))


class _Problems:
    """Problems keyed by line (0: the whole file), shown in line order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.found: list[tuple[int, str]] = []

    def add(self, line: int, text: str) -> None:
        self.found.append((line, text))

    @property
    def full(self) -> bool:
        """One more than can be shown was found: enough to say "... and more" and stop."""
        return len(self.found) > self.limit

    def render(self) -> tuple[str, ...]:
        ordered = sorted(self.found, key=lambda item: item[0])
        shown = [f"line {line}: {text}" if line else text for line, text in ordered[: self.limit]]
        if len(ordered) > self.limit:
            shown.append("... and more")
        return tuple(shown)


class _TextCheck:
    """UTF-8 validity, chunk by chunk; the first bad byte of each line is reported. The caller
    says which line each chunk starts on (the scanner counts lines anyway)."""

    def __init__(self, problems: _Problems) -> None:
        self._problems = problems
        self._column = 0  # characters between the last line break and the pending data
        self._carry = b""  # an incomplete character at the end of the last chunk
        self._reported_line = 0

    def where(self, chunk: bytes, offset: int, *, line: int) -> tuple[int, int]:
        """Line and 1-based character column of ``chunk[offset]``; ``chunk`` is the next chunk
        and starts on ``line``."""
        return self._locate(self._carry + chunk, len(self._carry) + offset, line)

    def _locate(self, data: bytes, offset: int, line: int) -> tuple[int, int]:
        line_start = data.rfind(b"\n", 0, offset) + 1
        before = self._column if line_start == 0 else 0
        return line + data.count(b"\n", 0, line_start), before + _chars(data[line_start:offset]) + 1

    def feed(self, chunk: bytes, *, line: int, final: bool) -> None:
        data = self._carry + chunk if self._carry else chunk
        done = len(data)
        if not data.isascii():
            view = memoryview(data)
            done = 0
            while done < len(data) and not self._problems.full:
                try:
                    done += codecs.utf_8_decode(view[done:], "strict", final)[1]
                    break
                except UnicodeDecodeError as error:
                    bad = done + error.start
                    where, column = self._locate(data, bad, line)
                    if where != self._reported_line:
                        text = f"not valid UTF-8 (byte 0x{data[bad]:02x} at column {column})"
                        if not self._reported_line:
                            text += ("; if your exporter writes Windows-1252, set "
                                     "input.encoding: cp1252 (or the code page it writes)")
                        self._reported_line = where
                        self._problems.add(where, text)
                    # The rest of a line with one bad byte is not worth a byte-by-byte look.
                    next_line = data.find(b"\n", bad)
                    done = len(data) if next_line < 0 else next_line + 1
        self._carry = data[done:]
        last_break = data.rfind(b"\n", 0, done)
        if last_break < 0:
            self._column += _chars(data[:done])
        else:
            self._column = _chars(data[last_break + 1:done])


class _Scanner:
    """Records and field counts over a stream of buffers; see the module docstring."""

    def __init__(self, problems: _Problems) -> None:
        self._problems = problems
        self.header: tuple[str, ...] | None = None
        self.data_rows = 0
        self.stopped = False
        self.bom = False
        self._shapes: dict[bytes, int] = {}  # line shape -> fields (``_quoted_lines``)
        self._expected = 0
        self.line = 1  # of the next byte to scan (a carriage return kept back holds no break)
        self._record_line = 1
        self._quote_line = 0
        self._cr_line = 0
        self._mode = _START_RECORD
        self._commas = 0
        self._header_bytes: list[bytes] = []
        self._header_size = 0

    def feed(self, buf: bytes, *, final: bool) -> int:
        """Scan ``buf``; returns how much was consumed (the rest, at most a trailing carriage
        return, must come again at the start of the next buffer)."""
        pos = 0
        size = len(buf)
        while pos < size and not (self.stopped or self._problems.full):
            if self._mode == _START_RECORD and self.header is not None:
                end = buf.rfind(b"\n", pos) + 1
                if end > pos:
                    pos = self._whole_lines(buf, pos, end, final)
                    continue
            after = self._record(buf, pos, final)
            if after == pos:
                break
            pos = after
        return pos

    def finish(self, *, empty: bool) -> None:
        """The end of the file: the last record may lack its line break, or its closing quote
        (then the rows it swallowed are not counted, and not missed either)."""
        if self._mode == _IN_QUOTED_FIELD:
            self._problems.add(self._quote_line, "a quoted field starts here and is never "
                                                 "closed (unterminated quote)")
            return
        if self._mode != _START_RECORD:
            self.line += 1
            self._end_record(False)
        if self.stopped:
            return
        if empty:
            self._problems.add(0, "the file is empty; it needs a header row and at least one "
                                  "data row")
        elif self.header is not None and self.data_rows == 0:
            self._problems.add(self.line, "no data rows after the header (at least one "
                                           "is needed)")

    # --- whole lines ------------------------------------------------------------------------------

    def _whole_lines(self, buf: bytes, start: int, end: int, final: bool) -> int:
        """Check the complete lines in ``buf[start:end]``, which starts a record. Returns where
        scanning stopped: ``end``, or further on when a record that began here ran past it.

        Every line is first reduced to its commas, quotes and line ending, and the quotes of
        each field removed in pairs. Where no quote is left, every field held an even number of
        quotes, so csv ends each field at the next comma and each record at the line's end (a
        field opened by a quote ends at the quote that closes it, or holds the quotes as text):
        the field count is the commas plus one, and most chunks pass one comparison. Lines
        with quotes left (a comma in a quoted field, a field going on to the next line, odd
        quoting) are looked at again by their shape (``_quoted_lines``); lines whose record goes
        on, or with a lone carriage return, go to the state machine.
        """
        seg = buf[start:end]
        marks = _reduce(seg)
        # Reduced, a carriage return followed by text and a line feed looks like CRLF.
        bare_cr = b"\r" in marks and _BARE_CR.search(seg) is not None
        if not bare_cr and self._all_plain(seg, marks):
            return end
        lines = seg.split(b"\n")
        lines.pop()
        if b"\r" in marks:
            marks = marks.replace(b"\r\n", b"\n")
        reduced = marks.split(b"\n")
        reduced.pop()
        # The field counts of the lines that do not look like the header.
        unit = b"," * (self._expected - 1)
        differ = compress(range(len(reduced)), map(ne, reduced, repeat(unit)))
        fields = {index: len(reduced[index]) + 1 for index in differ}
        if not unit and _has_blank_line(seg):
            fields.update((index, 0) for index, line in enumerate(lines) if line in (b"", b"\r"))
        quoted = [index for index in fields if b'"' in reduced[index]]
        odd = _quoted_lines(lines, fields, quoted, self._shapes) if quoted else []
        if bare_cr:  # in a field or not: the state machine tells
            odd = sorted({*odd, *_bare_cr_lines(seg)})
        first = self.line
        skip: list[int] = []
        after = self._odd_records(buf, start, end, final, lines, odd, skip) if odd else end
        if self.stopped or self._problems.full:
            return after
        self._check_lines(first, lines, fields, skip)
        if after == end:
            self.line = first + len(lines)
        return after

    def _all_plain(self, seg: bytes, marks: bytes) -> bool:
        """Whether every line of ``seg`` has the header's field count by its reduced form
        ``marks``; if so, they are counted."""
        eol = b"\r\n" if marks.endswith(b"\r\n") else b"\n"
        unit = b"," * (self._expected - 1) + eol
        rows = len(marks) // len(unit)
        if marks != unit * rows or (len(unit) == len(eol) and _has_blank_line(seg)):
            return False
        self.line += rows
        self.data_rows += rows
        return True

    def _odd_records(
        self, buf: bytes, start: int, end: int, final: bool, lines: list[bytes],
        odd: list[int], skip: list[int],
    ) -> int:
        """Run the state machine over the record starting on each line in ``odd`` (ascending);
        appends every line it read to ``skip``."""
        first = self.line
        index = 0  # the next line not yet read, at ``buf[at]``
        at = start
        for line in odd:
            if line < index:  # read already, as part of an earlier record
                continue
            at += sum(map(len, lines[index:line])) + line - index
            self.line = first + line
            after = self._record(buf, at, final)
            if self._mode != _START_RECORD or after >= end:
                skip.extend(range(line, len(lines)))
                return after
            if self.stopped or self._problems.full:
                return after
            index = line + buf.count(b"\n", at, after)
            skip.extend(range(line, index))
            at = after
        return end

    def _check_lines(
        self, first: int, lines: list[bytes], fields: dict[int, int], skip: list[int]
    ) -> None:
        """Count the rows among ``lines`` (numbered from ``first``) that are not in ``skip``,
        and check the field counts in ``fields``: the other lines have the header's."""
        self.data_rows += len(lines) - len(skip)
        skipped = set(skip)
        wanted = self._expected
        for index in sorted(i for i, count in fields.items() if count != wanted):
            if index not in skipped:
                blank = lines[index] in (b"", b"\r")
                self._check(first + index, 0 if blank else fields[index])
                if self._problems.full:
                    return

    # --- one record, byte by byte where it matters ------------------------------------------------

    def _record(self, buf: bytes, pos: int, final: bool) -> int:
        """Scan from ``pos`` to the end of the current record, or of ``buf``; returns the
        position after the record's line break, or where ``buf`` ran out."""
        begin = pos
        size = len(buf)
        if self._mode == _START_RECORD:
            self._record_line = self.line
        while pos < size:
            mode = self._mode
            if mode == _IN_QUOTED_FIELD:
                quote = buf.find(b'"', pos)
                if quote < 0:
                    self.line += buf.count(b"\n", pos)
                    pos = size
                    break
                self.line += buf.count(b"\n", pos, quote)
                pos = quote + 1
                self._mode = _QUOTE_IN_QUOTED_FIELD
                continue
            byte = buf[pos]
            if mode == _QUOTE_IN_QUOTED_FIELD:
                if byte == _QUOTE:
                    self._mode = _IN_QUOTED_FIELD
                    pos += 1
                    continue
                if byte == _COMMA:
                    self._commas += 1
                    self._mode = _START_FIELD
                    pos += 1
                    continue
                # A line break ends the record below; anything else is kept as data.
                self._mode = mode = _IN_FIELD
            if byte == _QUOTE:
                pos += 1
                if mode == _IN_FIELD:
                    continue
                self._quote_line = self.line
                self._mode = _IN_QUOTED_FIELD
                continue
            if byte == _LF:
                return self._close(buf, begin, pos + 1)
            if byte == _CR:
                if pos + 1 < size:
                    if buf[pos + 1] == _LF:
                        return self._close(buf, begin, pos + 2)
                    if self._cr_line != self.line:
                        self._cr_line = self.line
                        self._problems.add(self.line, "carriage return (\\r) without a line "
                                                       "feed; save the file with LF or CRLF "
                                                       "line endings")
                    self._mode = _IN_FIELD
                    pos += 1
                    continue
                if final:
                    return self._close(buf, begin, pos + 1)
                break  # is the next byte a line feed? The caller keeps this one for later.
            special = _SPECIAL.search(buf, pos)
            stop = size if special is None else special.start()
            self._commas += buf.count(b",", pos, stop)
            self._mode = _START_FIELD if buf[stop - 1] == _COMMA else _IN_FIELD
            pos = stop
        self._keep_header(buf, begin, pos)
        return pos

    def _close(self, buf: bytes, begin: int, after: int) -> int:
        self._keep_header(buf, begin, after)
        self.line += 1
        self._end_record(self._mode == _START_RECORD)
        return after

    def _keep_header(self, buf: bytes, begin: int, end: int) -> None:
        if self.header is not None or self.stopped:
            return
        self._header_size += end - begin
        if self._header_size > HEADER_LIMIT:
            self._problems.add(1, f"the header row is longer than {_size(HEADER_LIMIT)}; the "
                                  "first line must name the columns")
            self.stopped = True
            return
        self._header_bytes.append(buf[begin:end])

    def _end_record(self, blank: bool) -> None:
        fields = 0 if blank else self._commas + 1
        self._commas = 0
        self._mode = _START_RECORD
        if self.header is None:
            self._take_header(blank)
        else:
            self.data_rows += 1
            self._check(self._record_line, fields)

    def _check(self, line: int, fields: int) -> None:
        if fields == self._expected:
            return
        if fields == 0:
            wanted = (f"expected {_plural(self._expected)}" if self._expected > 1 else
                      'a one-column file writes an empty value as ""')
            self._problems.add(line, f"empty line ({wanted})")
        else:
            self._problems.add(line, f"expected {_plural(self._expected)}, found "
                                     f"{fields}")

    def _take_header(self, blank: bool) -> None:
        raw = b"".join(self._header_bytes)
        self._header_bytes = []
        if blank:
            self._problems.add(1, "the header row is empty; the first line must name the "
                                  "columns")
            self.stopped = True
            return
        for ending in (b"\r\n", b"\n", b"\r"):
            if raw.endswith(ending):
                raw = raw[: -len(ending)]
                break
        names = _split_record(raw.decode("utf-8", "replace"))
        self.header = tuple(names)
        self._expected = len(names)
        columns: dict[str, list[int]] = {}
        for number, name in enumerate(names, start=1):
            if not name.strip():
                self._problems.add(1, f"column {number} has an empty name")
            else:
                columns.setdefault(name, []).append(number)
        for name, numbers in columns.items():
            if len(numbers) > 1:
                if len(numbers) <= 5:
                    listed = ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"
                else:
                    listed = ", ".join(map(str, numbers[:4])) + f" and {len(numbers) - 4} more"
                self._problems.add(1, f"column name {name!r} is used more than once "
                                      f"(columns {listed})")


def _split_record(text: str) -> list[str]:
    """The values of one complete record, read as ``csv.reader`` reads them."""
    values: list[str] = []
    pos = 0
    while True:
        value = ""
        if text.startswith('"', pos):
            quoted = _HEADER_QUOTED.match(text, pos)
            # The scanner ended this record outside quotes, so every quoted field closes.
            assert quoted is not None
            value, pos = quoted.group(1).replace('""', '"'), quoted.end()
        comma = text.find(",", pos)
        stop = len(text) if comma < 0 else comma
        values.append(value + text[pos:stop])
        if comma < 0:
            return values
        pos = comma + 1
