"""What the ops commands print: aligned tables for people, JSON for scripts.

JSON keeps IDs exact: the client parses integers as ``int`` (never through a float), and they are
written back as the same digits. Tables never wrap: unless the whole table fits the terminal
(or ``--wide`` asks), a cell is cut with an ellipsis at ``MAX_CELL`` characters so one long error
message cannot push every other column off screen.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any, TextIO

from pushagent.units import format_bytes

MAX_CELL = 60
ELLIPSIS = "…"
NONE = "-"

__all__ = [
    "add_json_flag", "cell", "format_age", "format_bytes", "format_time", "print_fields",
    "print_json", "print_table", "terminal_width", "to_json",
]


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: absent here, the value given before the command (``pushagent --json ...``) stays.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS,
        help="print JSON on stdout instead of a table (for scripts)",
    )
    parser.set_defaults(takes_json=True)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # The API sends no fractional numbers today; an integral Decimal stays an exact int.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (PurePath, datetime.datetime)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=_default)


def print_json(value: Any, out: TextIO) -> None:
    print(to_json(value), file=out)


def cell(value: Any, *, limit: int | None = MAX_CELL) -> str:
    """One table cell: None as ``-``, lists comma-joined, one line, at most ``limit`` chars
    (None: whole)."""
    if value is None or value == "":
        return NONE
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(item) for item in value)
    text = " ".join(str(value).split())
    return text if limit is None or len(text) <= limit else text[: limit - 1] + ELLIPSIS


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO, *,
    empty: str = "(none)", width: int | None = None,
) -> None:
    """Left-aligned columns separated by two spaces; ``empty`` when there is no row.

    ``width``: the terminal's columns. Cells are shown whole when every line fits in it (0: always
    whole, as ``--wide`` asks), else cut at ``MAX_CELL``; None always cuts.
    """
    values = [list(row) for row in rows]
    if not values:
        print(empty, file=out)
        return
    lines = _table_lines(headers, values, limit=None)
    if width is None or (width > 0 and max(len(line) for line in lines) > width):
        lines = _table_lines(headers, values, limit=MAX_CELL)
    for line in lines:
        print(line, file=out)


def _table_lines(
    headers: Sequence[str], rows: list[list[Any]], *, limit: int | None
) -> list[str]:
    cells = [[cell(value, limit=limit) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(text)) for width, text in zip(widths, row, strict=True)]
    return [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in (list(headers), *cells)
    ]


def terminal_width(environ: Mapping[str, str], out: TextIO) -> int | None:
    """``COLUMNS`` when set, else the terminal's width when ``out`` is one, else None."""
    text = environ.get("COLUMNS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    try:
        return os.get_terminal_size(out.fileno()).columns if out.isatty() else None
    except (OSError, ValueError, AttributeError):  # a StringIO, a closed or odd stream
        return None


def print_fields(pairs: Iterable[tuple[str, Any]], out: TextIO) -> None:
    """``name: value`` lines with the values aligned; pairs whose value is None are left out."""
    shown = [(name, value) for name, value in pairs if value is not None]
    width = max((len(name) for name, _ in shown), default=0)
    for name, value in shown:
        print(f"{name + ':':<{width + 1}} {cell(value, limit=1000)}", file=out)


def format_age(seconds: float) -> str:
    """A duration for people: ``4 s``, ``12 min``, ``3 h``, ``2 d``."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def format_time(unix: float) -> str:
    """A unix time as local ISO-8601 with its offset, to the second."""
    return datetime.datetime.fromtimestamp(unix).astimezone().isoformat(timespec="seconds")
