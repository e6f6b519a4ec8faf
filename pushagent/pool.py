"""A fixed set of daemon worker threads: at most ``size`` uploads (and connections) at once.

Daemon threads, unlike ``concurrent.futures``, let a cold stop end the process while an upload
is still blocked in a socket; the journal makes that safe.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from loguru import logger

T = TypeVar("T")


@dataclass(frozen=True)
class Finished(Generic[T]):
    key: int
    result: T | None
    error: BaseException | None


class WorkerPool(Generic[T]):
    def __init__(self, *, size: int, report: Callable[[Finished[T]], None], name: str) -> None:
        self._tasks: queue.Queue[tuple[int, Callable[[], T]] | None] = queue.Queue()
        self._report = report
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: int, task: Callable[[], T]) -> None:
        with self._busy_lock:
            self._busy += 1
        self._tasks.put((key, task))

    @property
    def busy(self) -> int:
        with self._busy_lock:
            return self._busy

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)

    def _work(self) -> None:
        while (item := self._tasks.get()) is not None:
            key, task = item
            try:
                finished: Finished[T] = Finished(key, task(), None)
            except Exception as error:  # reported to the loop, which keeps the agent running
                logger.opt(exception=error).error("worker task {} crashed", key)
                finished = Finished(key, None, error)
            with self._busy_lock:
                self._busy -= 1
            self._report(finished)
