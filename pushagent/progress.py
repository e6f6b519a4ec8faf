"""A one-line progress bar on stderr for uploads and downloads, drawn only on a terminal.

The client calls ``progress(bytes_so_far)`` per block; a retry starts again from 0, and the bar
simply follows. Redrawn at most every ``MIN_REDRAW_SECONDS`` (a 1 GiB upload is a thousand
calls) and always at the end. When stderr is not a terminal (a pipe, a file, journald) nothing
is drawn at all: ``\\r`` lines would only clutter a log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from pushagent.env import Environment
from pushagent.output import format_bytes

MIN_REDRAW_SECONDS = 0.1
BAR_WIDTH = 24


class ProgressBar:
    """``label [#########...............]  37%  1.2 MiB / 3.3 MiB  850.0 KiB/s``.

    ``total`` None (a download of unknown size) draws no bar and no percent, only bytes and rate.
    """

    def __init__(
        self, *, stream: TextIO, label: str, total: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self._clock = clock
        self._started = clock()
        self._last_draw = float("-inf")
        self._width = 0
        self._done = 0

    def __call__(self, done: int) -> None:
        self._done = done
        now = self._clock()
        if now - self._last_draw >= MIN_REDRAW_SECONDS:
            self._draw(now)

    def finish(self) -> None:
        """Draw the final state and end the line, so the next output starts on its own line."""
        self._draw(self._clock())
        self._stream.write("\n")
        self._stream.flush()

    def render(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        amount = format_bytes(done)
        parts = [self._label]
        if self._total:
            fraction = min(1.0, done / self._total)
            filled = int(fraction * BAR_WIDTH)
            parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
            parts.append(f"{fraction * 100:3.0f}%")
            amount += f" / {format_bytes(self._total)}"
        parts.append(amount)
        parts.append(f"{format_bytes(rate)}/s")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        self._last_draw = now
        line = self.render(self._done, now - self._started)
        # Pad over the previous line: a retry can make the text shorter.
        padded = line.ljust(self._width)
        self._width = len(line)
        self._stream.write("\r" + padded)
        self._stream.flush()


def progress_bar(env: Environment, *, label: str, total: int | None) -> ProgressBar | None:
    """A bar on ``env.stderr`` when it is a terminal, else None (then nothing is reported)."""
    if not env.stderr_isatty:
        return None
    return ProgressBar(stream=env.stderr, label=label, total=total)
