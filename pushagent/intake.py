"""What a dropped file holds, and the one form the Exchange takes: UTF-8 without a byte order
mark, comma-separated, RFC 4180 quoting.

``prepare`` looks at the start of a claimed file. One already in that form (a UTF-8 byte order
mark aside: the upload starts after it) is sent as it is, with no copy. Any other one (another
encoding, another delimiter or quote character, ``.csv.gz``, ``.zip``) is converted, streamed,
into a staged copy beside it in the claim folder; the copy is then validated, hashed and sent like
any file, and the dropped original goes to done/ untouched.

The conversion keeps the values exactly as Python's ``csv`` module reads the original with the
file's dialect, and keeps its physical lines (so a problem found in the copy names the original's
line). Speed: most blocks of lines are rewritten whole with ``str`` operations in C (the
delimiter replaced by a comma, a field holding a comma put in quotes); only records with odd
quoting, quoted line breaks or a quoted delimiter go through ``csv.reader`` and ``csv.writer``.
A file whose only difference is its encoding (or its compression) is transcoded (or copied) as is.

``auto`` reads UTF-8 and, by their byte order mark, UTF-8 and UTF-16; it never guesses a
single-byte code page: a file that is not UTF-8 fails with the line and byte, saying how to set
``input.encoding``.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pushagent.config import AUTO, DELIMITERS, InputDialect
from pushagent.outcomes import fit_name, name_limit
from pushagent.output import format_bytes
from pushagent.validator import CHUNK_SIZE, HEADER_LIMIT, file_change

# A CRM's notes field may run past csv's default of 128 Ki characters; the validator takes any
# length, so the conversion takes what fits the header limit.
csv.field_size_limit(max(csv.field_size_limit(), HEADER_LIMIT))

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_LABELS = {"utf-8": "UTF-8", "utf-16-le": "UTF-16LE", "utf-16-be": "UTF-16BE"}
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)")
_BARE_CR = re.compile(r"\r(?!\n)")
# Inside a quoted field: up to its closing quote, doubled quotes read as one (as csv does).
_QUOTED_BODY = re.compile(r'(?:[^"]+|"")*+')
_SMALL_PIECE = 2048  # characters: a failed piece this small goes line by line
_STAGED_SUFFIX = ".staged.csv"
_SNIFF_LIMIT = 1024 * 1024  # the delimiter is sniffed from a header line within this


@dataclass(frozen=True)
class Source:
    """What ``prepare`` made of a dropped file. ``send`` is the file to validate and upload: the
    dropped one, or its staged copy (then ``converted_from`` says what the original was).
    ``problem`` is why it cannot be read as CSV (nothing to send). ``size`` and ``mtime_ns``
    are the dropped file's at open; ``changed`` a sentence when it changed while it was read."""

    send: Path
    converted_from: str | None
    problem: str | None
    size: int
    mtime_ns: int
    changed: str | None = None


class _Refused(Exception):
    """The file cannot be read as CSV in its dialect; the message says why and what to do."""


def staged_path(claimed: str | os.PathLike[str]) -> Path:
    """The staged copy of the claimed file at ``claimed``: its name (which starts with the
    file's id) cut so that the copy's name, ``.tmp`` added, fits the folder's limit."""
    return Path(_staged(os.fspath(claimed)))


def _staged(claimed: str) -> str:
    # In strings: every file placed asks for it (``remove_staged``), converted or not.
    folder, name = os.path.split(claimed)
    budget = name_limit(folder) - len(_STAGED_SUFFIX) - len(".tmp")
    return os.path.join(folder, fit_name(name, budget) + _STAGED_SUFFIX)


def remove_staged(claimed: str | os.PathLike[str]) -> None:
    """Remove the staged copy of ``claimed`` and any half-written one; missing is fine."""
    staged = _staged(os.fspath(claimed))
    for path in (staged, staged + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def prepare(
    path: Path,
    *,
    dialect: InputDialect,
    max_bytes: int | None,
    staged: Path | None = None,
    chunk_size: int = CHUNK_SIZE,
    fstat: Callable[[int], os.stat_result] = os.fstat,
) -> Source:
    """Look at ``path`` and, unless it is sent as it is, convert it into ``staged`` (default
    ``staged_path(path)``), written under a temporary name, then renamed: a copy under the final
    name is whole.
    OSError from the dropped file or the claim folder propagates; a file that cannot be read
    in its dialect comes back with ``problem`` set."""
    staged = staged or staged_path(path)
    # An explicit buffer size spares open() its isatty() (an ioctl) for every file claimed.
    with open(path, "rb", buffering=io.DEFAULT_BUFFER_SIZE) as stream:
        opened = fstat(stream.fileno())
        if max_bytes and opened.st_size > max_bytes:  # the validator refuses it unread
            return Source(path, None, None, opened.st_size, opened.st_mtime_ns)
        try:
            converted_from = _prepare(path, stream, staged, dialect=dialect, max_bytes=max_bytes,
                                      chunk_size=chunk_size)
        except _Refused as refused:
            # Bytes that do not decode may be a dropper still writing: that is said first.
            changed = file_change(opened, fstat(stream.fileno()), read=None)
            return Source(path, None, None if changed else str(refused), opened.st_size,
                          opened.st_mtime_ns, changed)
        changed = file_change(opened, fstat(stream.fileno()), read=None)
    if converted_from is None:
        return Source(path, None, None, opened.st_size, opened.st_mtime_ns)
    return Source(staged, converted_from, None, opened.st_size, opened.st_mtime_ns, changed)


def _prepare(
    path: Path, stream: BinaryIO, staged: Path, *, dialect: InputDialect, max_bytes: int | None,
    chunk_size: int,
) -> str | None:
    """None when the file is sent as it is; else the staged copy is written and what the
    original was is returned."""
    name = path.name.lower()
    with _content(stream, name, max_bytes=max_bytes) as (content, container):
        head = _read(content, chunk_size)
        codec, bom = _encoding(head, dialect.encoding)
        delimiter = dialect.delimiter
        if delimiter == AUTO:
            delimiter = sniff_delimiter(head[bom:], codec, dialect.quotechar)
        plain = delimiter == "," and dialect.quotechar == '"'
        if container is None and codec == "utf-8" and plain:
            return None
        partial = staged.with_name(staged.name + ".tmp")
        with open(partial, "wb") as out:
            if codec == "utf-8" and plain:
                # Only compressed: the bytes go as they are, and the validator checks them.
                _copy(content, out, head[bom:], chunk_size)
            else:
                _convert(content, out, head[bom:], codec=codec, delimiter=delimiter,
                         quotechar=dialect.quotechar, chunk_size=chunk_size,
                         auto=dialect.encoding == AUTO)
        os.replace(partial, staged)
    return _describe(container, codec, bom, delimiter, dialect.quotechar)


def sniff_delimiter(head: bytes, codec: str, quotechar: str = '"') -> str:
    """The delimiter of the header line at the start of ``head``: the one of ``DELIMITERS``
    found most often outside quotes (ties go to the first listed); a comma when none is."""
    text = codecs.decode(head, codec, "replace")
    line = re.split(r"[\r\n]", text, maxsplit=1)[0]
    q = re.escape(quotechar)
    outside = re.sub(f"{q}[^{q}]*{q}", "", line)
    counts = [outside.count(candidate) for candidate in DELIMITERS]
    best = max(counts)
    return DELIMITERS[counts.index(best)] if best else ","


def _read(content: _Limited, size: int) -> bytes:
    """The start of the file: its header line, up to ``_SNIFF_LIMIT``, for the delimiter to be
    sniffed, and at least a whole character of any encoding."""
    head = content.read(max(size, 4))
    while b"\n" not in head and len(head) < _SNIFF_LIMIT:
        more = content.read(size)
        if not more:
            break
        head += more
    return head


def _encoding(head: bytes, setting: str) -> tuple[str, int]:
    """The codec to decode with and the length of the byte order mark to skip."""
    if setting == AUTO:
        for bom, codec in _BOMS:
            if head.startswith(bom):
                return codec, len(bom)
        return "utf-8", 0
    if setting in ("utf-8", "utf-8-sig"):
        return "utf-8", 3 if head.startswith(codecs.BOM_UTF8) else 0
    if setting in ("utf-16", "utf-32"):
        # These codecs read the order from a byte order mark; without one, little-endian (the
        # order Windows writes). Named explicitly, so that a bad byte's line can be counted.
        for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
                           (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
            if head.startswith(bom) and codec.startswith(setting):
                return codec, len(bom)
        return f"{setting}-le", 0
    return setting, 0


def _describe(container: str | None, codec: str, bom: int, delimiter: str, quotechar: str) -> str:
    parts = [_LABELS.get(codec, codec) + (" with a byte order mark" if bom else "")]
    parts.append(_DELIMITER_NAMES.get(delimiter, repr(delimiter)) + "-separated")
    if quotechar != '"':
        parts.append(f"quoted with {quotechar!r}")
    text = ", ".join(parts)
    return f"{container} of {text}" if container else text


# --- compressed drops -----------------------------------------------------------------------------


class _Limited:
    """A binary stream that refuses to yield more than ``limit`` bytes: the size cap applies to
    what a compressed file holds, so a small zip bomb is refused after ``limit`` bytes."""

    def __init__(self, inner: BinaryIO, limit: int | None, container: str) -> None:
        self._inner = inner
        self._limit = limit
        self._container = container
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.total += len(data)
        if self._limit is not None and self.total > self._limit:
            raise _Refused(f"the {self._container} holds more than the size limit of "
                           f"{_size(self._limit)} (validation.max_bytes) once decompressed")
        return data


@contextlib.contextmanager
def _content(
    stream: BinaryIO, name: str, *, max_bytes: int | None
) -> Iterator[tuple[_Limited, str | None]]:
    """The CSV bytes of the dropped file, decompressed as they are read, and the container
    (None, ``gzip`` or ``zip``). Errors of the container become ``_Refused``."""
    if name.endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=stream, mode="rb") as inner:
                yield _Limited(inner, max_bytes, "gzip"), "gzip"  # type: ignore[arg-type]
        except (OSError, EOFError, zlib.error) as error:
            if isinstance(error, OSError) and not isinstance(error, gzip.BadGzipFile) \
                    and error.errno is not None:
                raise
            raise _Refused(f"not a valid gzip file ({error}); compress it again with gzip") \
                from error
    elif name.endswith(".zip"):
        try:
            archive = zipfile.ZipFile(stream)
        except zipfile.BadZipFile as error:
            raise _Refused(f"not a valid zip file ({error}); create it again") from error
        with archive:
            member = _only_member(archive, max_bytes)
            try:
                with archive.open(member) as inner:
                    yield _Limited(inner, max_bytes, "zip"), "zip"  # type: ignore[arg-type]
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                    RuntimeError) as error:
                raise _Refused(f"cannot read {member.filename!r} in the zip ({error}); create "
                               "the zip again with a plain deflated CSV") from error
    else:
        yield _Limited(stream, None, "file"), None


def _only_member(archive: zipfile.ZipFile, max_bytes: int | None) -> zipfile.ZipInfo:
    files = [info for info in archive.infolist() if not info.is_dir()]
    if len(files) != 1:
        shown = ", ".join(repr(info.filename) for info in files[:5])
        more = f" and {len(files) - 5} more" if len(files) > 5 else ""
        holds = f"{len(files)} files ({shown}{more})" if files else "no file"
        raise _Refused(f"the zip holds {holds}; it must hold exactly one CSV file")
    member = files[0]
    if not member.filename.lower().endswith(".csv"):
        raise _Refused(f"the zip's one file {member.filename!r} is not a .csv file; it must hold "
                       "exactly one CSV file")
    if max_bytes is not None and member.file_size > max_bytes:
        raise _Refused(f"{member.filename!r} in the zip is {_size(member.file_size)} once "
                       f"decompressed, over the size limit of {_size(max_bytes)} "
                       "(validation.max_bytes)")
    return member


def _size(count: int) -> str:
    return f"{count} bytes" if count < 1024 else f"{count} bytes ({format_bytes(count)})"


def _copy(content: _Limited, out: BinaryIO, head: bytes, chunk_size: int) -> None:
    chunk = head
    while chunk:
        out.write(chunk)
        chunk = content.read(chunk_size)


# --- conversion -----------------------------------------------------------------------------------


def _convert(
    content: _Limited, out: BinaryIO, head: bytes, *, codec: str, delimiter: str,
    quotechar: str, chunk_size: int, auto: bool,
) -> None:
    decoder = _Decoder(codec, auto=auto)
    text_out = open(out.fileno(), "w", encoding="utf-8", newline="",  # noqa: SIM115
                    buffering=chunk_size, closefd=False)
    with text_out:
        if delimiter == "," and quotechar == '"':
            write = text_out.write
            for block in decoder.blocks(content, head, chunk_size):
                write(block)
            return
        rewriter = Rewriter(text_out.write, delimiter=delimiter, quotechar=quotechar)
        rewriter.run(decoder.blocks(content, head, chunk_size))


class _Decoder:
    """Decodes chunk by chunk into blocks of whole lines (the last one may lack its line break),
    counting lines so that a byte that does not decode is named by its line."""

    def __init__(self, codec: str, *, auto: bool) -> None:
        self._codec = codec
        self._auto = auto
        self._decoder = codecs.getincrementaldecoder(codec)("strict")
        self._line = 1  # of the start of the text not yet given out

    def blocks(self, content: _Limited, head: bytes, chunk_size: int) -> Iterator[str]:
        carry = ""
        chunk = head
        first = True
        while True:
            final = not chunk
            text = self._decode(chunk, final=final)
            if first and text.startswith("\ufeff"):
                text = text[1:]  # a byte order mark the codec named in the config kept
            first = False
            text = carry + text if carry else text
            cut = text.rfind("\n") + 1
            if final:
                if text:
                    yield text
                return
            carry = text[cut:]
            if cut:
                self._line += text.count("\n", 0, cut)
                yield text[:cut]
            chunk = content.read(chunk_size)

    def _decode(self, data: bytes, *, final: bool) -> str:
        try:
            return str(self._decoder.decode(data, final))
        except UnicodeDecodeError as error:
            raise _Refused(self._bad_bytes(error, final=final)) from error

    def _bad_bytes(self, error: UnicodeDecodeError, *, final: bool) -> str:
        good = error.object[: error.start]
        line = self._line + codecs.decode(good, self._codec, "replace").count("\n")
        bad = bytes(error.object[error.start : error.end])
        shown = " ".join(f"0x{byte:02X}" for byte in bad[:4])
        label = _LABELS.get(self._codec, self._codec)
        if final and error.end >= len(error.object) and self._codec.startswith("utf-"):
            return (f"line {line}: the file ends in the middle of a {label} character "
                    f"({shown}); it looks cut short: export it again")
        if self._auto:
            return (f"line {line}: byte {shown} is not {label}; if your exporter writes "
                    "Windows-1252, set input.encoding: cp1252 (or the code page it writes)")
        return (f"line {line}: byte {shown} is not valid {label}; set input.encoding to the "
                "encoding the exporter writes")


class Rewriter:
    """Rewrites CSV text of one dialect as comma-separated RFC 4180 text with CRLF line ends,
    block by block. ``run`` takes blocks of whole lines (only the last may lack its break).

    A block that starts a record and whose fields are all unquoted, or quoted within one line
    without the delimiter inside, is rewritten whole in C (``_fast``). Any other line goes to
    ``csv.reader``, which asks for lines until its record ends; the rows it makes go out through
    ``csv.writer``. Both write in order: the reader asks for a line only after the row before
    was written."""

    def __init__(self, write: Callable[[str], object], *, delimiter: str, quotechar: str) -> None:
        self._write = write
        self._d = delimiter
        self._q = quotechar
        # What _fast keeps of a block to see where its quotes are: quotes, delimiters, LF.
        self._structure: bytes | None = None
        if quotechar == '"' and delimiter.isascii():
            self._structure = bytes(set(range(256)) - set(f'"{delimiter}\n'.encode()))
        self._boundary = True  # the reader is between records
        self.unterminated_at: int | None = None  # the line of a quoted field never closed
        self.line = 1
        self._record_line = 1

    def run(self, blocks: Iterator[str]) -> None:
        writer = csv.writer(_Sink(self._write), lineterminator="\r\n")
        reader = csv.reader(self._lines(blocks), delimiter=self._d, quotechar=self._q,
                            doublequote=True, strict=False)
        try:
            for row in reader:
                writer.writerow(row)
                self._boundary = True
        except csv.Error as error:
            raise _Refused(f"line {self._record_line}: {error}") from error
        if self.unterminated_at is not None:
            raise _Refused(f"line {self.unterminated_at}: a quoted field starts here and is "
                           "never closed (unterminated quote)")

    def _lines(self, blocks: Iterator[str]) -> Iterator[str]:
        for block in blocks:
            if not block.endswith(("\n", "\r")):
                block += "\n"  # the last line: ended, so that a quote left open shows
            yield from self._piece(block)
        if not self._boundary:
            self.unterminated_at = self._record_line

    def _piece(self, text: str) -> Iterator[str]:
        """Rewrite the whole lines of ``text``, giving the reader those that need it. The lines
        before the first one that needs it are rewritten in one go; when that line cannot be
        told, the piece is halved: the few lines that need the reader are found in a few
        passes, not line by line."""
        while text:
            if self._boundary:
                done = self._fast(text)
                if done == len(text):
                    self.line += text.count("\n")
                    return
                if done:
                    self.line += text.count("\n", 0, done)
                    text = text[done:]
                elif len(text) > _SMALL_PIECE:
                    cut = text.find("\n", len(text) // 2) + 1
                    if 0 < cut < len(text):
                        yield from self._piece(text[:cut])
                        text = text[cut:]
                        continue
            match = _LINE.match(text)
            assert match is not None, "every piece ends in a line break"
            line, text = match.group(), text[match.end():]
            if self._boundary:
                self._record_line = self.line
                if self._fast(line) == len(line):
                    self.line += line.endswith("\n")
                    continue
                self._boundary = False
            self.line += line.endswith("\n")
            yield line

    def _fast(self, text: str) -> int:
        """Rewrite the whole lines at the start of ``text`` that are whole records needing no
        parsing, up to the first line that may need it; returns how many characters were
        rewritten (0: none).

        Where quotes are, the text is reduced to its quotes, delimiters and line feeds, and
        doubled quotes are dropped (``bytes`` operations, in C). A quoted field holding a
        delimiter or a line break leaves a quote there: its opening quote and the escaped pairs
        before the delimiter are an odd run. So where none is left, every delimiter and line
        feed is outside quotes, and replacing the delimiter by a comma keeps every field as csv
        reads it; commas in quoted fields stay quoted, and fields with bare ones are quoted."""
        d, q = self._d, self._q
        trouble: list[int] = []  # lines (from 0) that may need the reader
        bare = _BARE_CR.search(text) if "\r" in text else None
        if bare is not None:  # a carriage return alone ends a record for csv
            trouble.append(text.count("\n", 0, bare.start()))
        if q in text or '"' in text:
            if self._structure is None:  # a quotechar other than '"' or a delimiter not ASCII
                first = min(at for at in (text.find(q), text.find('"')) if at >= 0)
                trouble.append(text.count("\n", 0, first))
            else:
                reduced = text.encode("utf-8", "surrogatepass").translate(
                    None, self._structure).replace(b'""', b"")
                left = reduced.find(b'"')
                if left >= 0:
                    trouble.append(reduced.count(b"\n", 0, left))
        if trouble:
            lines = min(trouble)
            if not lines:
                return 0
            text = text[: _after_lines(text, lines)]
        done = len(text)
        if d != "," and "," in text:
            text, done = self._quote_commas(text)
            if not done:
                return 0
        if d != ",":
            text = text.replace(d, ",")
        if "\r" not in text:
            text = text.replace("\n", "\r\n")
        elif text.count("\n") != text.count("\r\n"):
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        self._write(text)
        return done

    def _quote_commas(self, text: str) -> tuple[str, int]:
        """``text`` with every field that holds a comma outside quotes put in quotes, and how
        much of ``text`` that covers: all of it, or up to the line of a field that is quoted
        and then goes on (``"a"b,c``), which only csv reads right. Only for text whose fields
        all end at a delimiter or a line end (``_fast`` checked it): each comma's field is found
        around it. Commas are few, so this is a handful of ``str.find`` calls."""
        d = self._d
        parts: list[str] = []
        done = 0
        comma = text.find(",")
        while comma >= 0:
            start = max(text.rfind(d, 0, comma), text.rfind("\n", 0, comma)) + 1
            line_end = text.find("\n", comma)
            line_end = len(text) if line_end < 0 else line_end - (text[line_end - 1] == "\r")
            next_d = text.find(d, comma, line_end)
            end = line_end if next_d < 0 else next_d
            if text[start] != '"':  # quotes inside an unquoted field are data
                field = text[start:end]
                parts += (text[done:start], '"', field.replace('"', '""'), '"')
                done = end
                comma = text.find(",", end)
                continue
            closing = _closing_quote(text, start + 1, end)
            if closing == end or text.find(",", closing, end) >= 0:
                # A comma after the closing quote, which csv reads on as data. Only the lines
                # before this one are covered: a field of this line quoted above must not go
                # out too, or the line would be written twice. They are rewritten again on
                # their own (they hold no such field), once per such line at most.
                line_start = text.rfind("\n", 0, start) + 1
                return self._quote_commas(text[:line_start])[0], line_start
            comma = text.find(",", end)
        parts.append(text[done:])
        return "".join(parts), len(text)


def _closing_quote(text: str, at: int, end: int) -> int:
    """Where csv closes a quoted field read from ``at`` (inside its quotes) that ends at
    ``end``: its first quote that is not half of a doubled pair (``end`` if none). Counting the
    quotes is not enough: in ``""x"y,`` the field closes at the second quote, and ``x"y,`` is
    data read on after it."""
    match = _QUOTED_BODY.match(text, at, end)
    assert match is not None, "the pattern matches the empty string"
    return match.end()


def _after_lines(text: str, count: int) -> int:
    """Where the ``count`` first lines (ended by LF) of ``text`` end."""
    return sum(map(len, text.split("\n", count)[:count])) + count


class _Sink:
    """What ``csv.writer`` writes to."""

    def __init__(self, write: Callable[[str], object]) -> None:
        self.write = write
