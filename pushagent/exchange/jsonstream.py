"""A JSON array read one element at a time from a stream of text.

The list answer for 20,000 waiting jobs is several megabytes: held whole, as bytes and again as
text, it doubled the agent's memory at every poll. Read this way, only one chunk and one element
are held at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

_SPACE = " \t\r\n"
_AFTER_VALUE = _SPACE + ",]"
HEAD_CHARS = 2000  # kept for the error message when the answer is not JSON


class JsonArrayStream:
    """``opens_array()`` first; then iterate for the elements, or ``whole()`` for a document
    that is not an array. Invalid JSON raises ``ValueError``."""

    def __init__(self, chunks: Iterable[str]) -> None:
        self._chunks = iter(chunks)
        self._buffer = ""
        self._position = 0
        self._ended = False
        self._decoder = json.JSONDecoder(parse_float=Decimal)
        self.head = ""

    def opens_array(self) -> bool:
        if not self._skip_space():
            return False
        if self._buffer[self._position] != "[":
            return False
        self._position += 1
        return True

    def whole(self) -> Any:
        """The rest of the document as one value (None when it is empty)."""
        while self._more():
            pass
        rest = self._buffer[self._position:]
        return json.loads(rest, parse_float=Decimal) if rest.strip() else None

    def __iter__(self) -> Iterator[Any]:
        if not self._skip_space():
            raise ValueError("the array is not closed")
        if self._buffer[self._position] == "]":
            return
        while True:
            yield self._element()
            if not self._skip_space():
                raise ValueError("the array is not closed")
            separator = self._buffer[self._position]
            self._position += 1
            if separator == "]":
                return
            if separator != ",":
                raise ValueError(f"expected ',' or ']', found {separator!r}")
            if not self._skip_space():
                raise ValueError("the array is not closed")

    def _element(self) -> Any:
        while True:
            try:
                item, end = self._decoder.raw_decode(self._buffer, self._position)
            except ValueError:
                if self._more():
                    continue
                raise
            # A number cut by a chunk end parses as a shorter one ("1" of "1.5"): only a value
            # followed by what may follow a value is whole.
            if (end == len(self._buffer) or self._buffer[end] not in _AFTER_VALUE) \
                    and self._more():
                continue
            self._position = end
            return item

    def _skip_space(self) -> bool:
        """Past white space; False at the end of the document."""
        while True:
            while self._position < len(self._buffer) and self._buffer[self._position] in _SPACE:
                self._position += 1
            if self._position < len(self._buffer):
                return True
            if not self._more():
                return False

    def _more(self) -> bool:
        """The next chunk appended (what was read already is dropped); False at the end."""
        if self._ended:
            return False
        for chunk in self._chunks:
            if not chunk:
                continue
            if len(self.head) < HEAD_CHARS:
                self.head += chunk[: HEAD_CHARS - len(self.head)]
            self._buffer = self._buffer[self._position:] + chunk
            self._position = 0
            return True
        self._ended = True
        return False
