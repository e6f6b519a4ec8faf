"""Showing names that came from outside (dropped files, server text) safely on one line.

A file name may hold any byte but ``/`` and NUL: a newline in it would forge a log line, an
escape sequence would recolour a terminal, a right-to-left override would reorder what a person
reads. ``printable`` shows such characters as escapes and leaves every other character as it is.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0, DEL and C1 controls; line and paragraph separators (str.splitlines and some viewers break
# lines there); bidirectional overrides and isolates; every surrogate (never valid in text).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# os.fsdecode maps an undecodable byte 0xNN to the lone surrogate U+DCNN.
_ESCAPED_BYTES = range(0xDC80, 0xDD00)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control characters, separators, bidi overrides and lone surrogates escaped
    (``\\n``, ``\\x1b``, ``\\u202e``; an undecodable byte as ``\\xNN``), all else unchanged."""
    return _UNSAFE.sub(_escape, text)
