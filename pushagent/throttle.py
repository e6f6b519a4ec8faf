"""One upload bandwidth cap shared by every upload worker (``upload.max_bytes_per_second``).

A virtual clock: each chunk read for an upload books ``len / rate`` seconds after the bytes booked
before it, whichever worker read them, and the reader sleeps until its booking starts being due.
So the bytes of all workers together leave at the cap, whatever their number, and a worker that
was idle gets no saved-up burst beyond ``BURST_SECONDS``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["Throttle", "throttled"]

BURST_SECONDS = 0.1


class Throttle:
    def __init__(
        self,
        bytes_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if bytes_per_second <= 0:
            raise ValueError(f"bytes_per_second must be above 0, not {bytes_per_second}")
        self.rate = float(bytes_per_second)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._free_at = clock()

    def take(self, count: int) -> None:
        """Wait until ``count`` more bytes may leave; never holds the lock while sleeping."""
        if count <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(self._free_at, now - BURST_SECONDS)
            self._free_at = start + count / self.rate
            wait = self._free_at - now
        if wait > 0:
            self._sleep(wait)


def throttled(
    progress: Callable[[int], None] | None, throttle: Throttle | None
) -> Callable[[int], None] | None:
    """A progress callback (bytes sent so far, per attempt) that also waits on ``throttle``."""
    if throttle is None:
        return progress
    last = 0

    def report(sent: int) -> None:
        nonlocal last
        throttle.take(sent - last if sent >= last else sent)  # a new attempt starts from 0
        last = sent
        if progress is not None:
            progress(sent)

    return report
