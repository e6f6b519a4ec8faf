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

from pushagent.errors import PushAgentError

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
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: int, task: Callable[[], T]) -> None:
        self._tasks.put((key, task))

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)

    def _work(self) -> None:
        while (item := self._tasks.get()) is not None:
            key, task = item
            try:
                finished: Finished[T] = Finished(key, task(), None)
            except PushAgentError as error:  # expected: the loop names it in its own words
                finished = Finished(key, None, error)
            except Exception as error:  # a bug: reported to the loop, which keeps running
                logger.opt(exception=error).error("worker task {} crashed", key)
                finished = Finished(key, None, error)
            self._report(finished)
