"""Request bodies read as a stream: Content-Length or chunked framing, never held whole in memory.

A body that ends before its framing says it should (the sender died or the socket was cut)
raises ``ConnectionAbortedError``, so an incomplete body is never stored as an upload; socket
timeouts and resets surface as the ``OSError`` they are. A ``ReceiveLimit`` reads bodies no
faster than a set rate, so the simulator can stand in for a slow link.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from pushagent.throttle import Throttle

CHUNK_SIZE = 1024 * 1024
# Under a receive limit, bodies are read this much at a time, so the rate is smooth.
LIMITED_CHUNK = 64 * 1024
_MAX_LINE = 8192


def _truncated(what: str) -> ConnectionAbortedError:
    return ConnectionAbortedError(f"the request body ended early ({what})")


class ReceiveLimit:
    """All request bodies together are read at most ``rate`` bytes per second (0: no limit).
    The sender's socket fills and it waits, as it would on a link of that speed."""

    def __init__(self, rate: int = 0) -> None:
        self._throttle: Throttle | None = None
        self.rate = 0
        self.set(rate)

    def set(self, rate: int) -> None:
        if rate < 0:
            raise ValueError(f"the receive limit must be 0 (none) or more bytes per second, "
                             f"not {rate}")
        self.rate = rate
        self._throttle = Throttle(rate) if rate else None

    def piece(self, size: int) -> int:
        """How much to read at a time."""
        return min(size, LIMITED_CHUNK) if self._throttle is not None else size

    def take(self, count: int) -> None:
        throttle = self._throttle
        if throttle is not None:
            throttle.take(count)


class RequestBody:
    """One request's body, read once: by ``chunks``, ``read_all``, ``read_some`` or ``drain``."""

    def __init__(
        self, rfile: io.BufferedIOBase, headers: Message, *, limit: ReceiveLimit | None = None
    ) -> None:
        self._limit = limit or ReceiveLimit()
        self._rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.length: int | None = None
        if not self.chunked:
            text = headers.get("Content-Length")
            try:
                self.length = int(text) if text is not None else 0
            except ValueError as error:
                raise ValueError(f"Content-Length {text!r} is not a number") from error
            if self.length < 0:
                raise ValueError(f"Content-Length {self.length} is negative")
        self.received = 0
        self.finished = not self.chunked and self.length == 0

    @property
    def present(self) -> bool:
        return self.chunked or bool(self.length)

    def chunks(self, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        if self.finished:
            return
        if self.chunked:
            yield from self._chunked_pieces(size)
        else:
            yield from self._counted_pieces(size)
        self.finished = True

    def _counted_pieces(self, size: int) -> Iterator[bytes]:
        assert self.length is not None
        size = self._limit.piece(size)
        while self.received < self.length:
            piece = self._rfile.read(min(size, self.length - self.received))
            if not piece:
                raise _truncated(f"{self.received} of {self.length} bytes")
            self.received += len(piece)
            self._limit.take(len(piece))
            yield piece

    def _chunked_pieces(self, size: int) -> Iterator[bytes]:
        size = self._limit.piece(size)
        while True:
            line = self._rfile.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise _truncated("in a chunk size line")
            try:
                chunk_length = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError as error:
                raise ConnectionAbortedError(f"malformed chunk size line {line[:40]!r}") from error
            if chunk_length == 0:
                self._skip_trailers()
                return
            left = chunk_length
            while left:
                piece = self._rfile.read(min(size, left))
                if not piece:
                    raise _truncated("inside a chunk")
                left -= len(piece)
                self.received += len(piece)
                self._limit.take(len(piece))
                yield piece
            if self._rfile.readline(_MAX_LINE).strip():
                raise ConnectionAbortedError("a chunk was longer than its size line said")

    def _skip_trailers(self) -> None:
        while True:
            line = self._rfile.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise _truncated("in the chunked trailer")
            if not line.strip():
                return

    def read_all(self, *, limit: int) -> bytes | None:
        """The whole body, or None (the rest drained) if it is longer than ``limit`` bytes."""
        parts: list[bytes] = []
        kept = 0
        for piece in self.chunks():
            kept += len(piece)
            if kept > limit:
                self.drain()
                return None
            parts.append(piece)
        return b"".join(parts)

    def read_some(self, limit: int) -> int:
        """Read part of the body (at most half of a counted one) and leave the rest unread."""
        if self.finished:
            return 0
        if self.chunked:
            # read1: whatever has arrived, without waiting for a length a short body never reaches
            got = len(self._rfile.read1(limit))
        else:
            assert self.length is not None
            got = len(self._rfile.read(min(limit, self.length // 2)))
        self.received += got
        return got

    def drain(self) -> None:
        for _ in self.chunks():
            pass


@dataclass(frozen=True)
class Received:
    size: int
    records: int
    sha256: str


def receive_to_file(body: RequestBody, path: Path) -> Received:
    """Stream the body into ``path``; ``records`` counts the lines after the header line."""
    digest = hashlib.sha256()
    newlines = 0
    size = 0
    last = b""
    with path.open("wb") as out:
        for piece in body.chunks():
            out.write(piece)
            digest.update(piece)
            newlines += piece.count(b"\n")
            size += len(piece)
            last = piece[-1:]
    lines = newlines + (1 if size and last != b"\n" else 0)
    return Received(size=size, records=max(lines - 1, 0), sha256=digest.hexdigest())
