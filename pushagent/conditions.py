"""Degraded states the agent waits out instead of dying: a full or read-only state_dir, a done/
or failed/ folder it cannot write, a key the Exchange refuses, an Exchange it cannot reach.

Each cause is raised and cleared by the loop; ERROR lines are limited to one per minute per cause,
so an outage of a week does not fill the disk that it may be the cause of.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from loguru import logger

LOG_EVERY_SECONDS = 60.0


class Cause(Enum):
    STATE_DIR = "state_dir"  # the journal cannot be written: nothing new is claimed
    FINAL_FOLDER = "final_folder"  # done/ or failed/ cannot be written: nothing new is claimed
    KEY_REFUSED = "key_refused"  # 401/403: files wait, no job is failed
    UNREACHABLE = "unreachable"  # no answer from the Exchange: files wait
    CATEGORY_UNLISTED = "category_unlisted"  # one category's list call fails: its files wait
    OUTBOX = "outbox"  # the pull side cannot write its outbox: jobs wait, untouched

    @property
    def blocks_claims(self) -> bool:
        return self in (Cause.STATE_DIR, Cause.FINAL_FOLDER)


@dataclass
class _Active:
    reason: str
    since: float
    logged_at: float


class Conditions:
    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._active: dict[Cause, _Active] = {}

    def raise_(self, cause: Cause, reason: str, *, log: bool = True) -> None:
        """``log=False``: the caller logs each occurrence itself."""
        now = self._clock()
        active = self._active.get(cause)
        if log and (active is None or now - active.logged_at >= LOG_EVERY_SECONDS):
            logger.error("{}", reason)
            logged_at = now
        else:
            logged_at = active.logged_at if active else float("-inf")
        since = active.since if active else now
        self._active[cause] = _Active(reason, since, logged_at)

    def clear(self, cause: Cause) -> None:
        active = self._active.pop(cause, None)
        if active is not None:
            logger.info("recovered after {:.0f} s: {}", self._clock() - active.since,
                        active.reason)

    def __contains__(self, cause: Cause) -> bool:
        return cause in self._active

    @property
    def blocks_claims(self) -> bool:
        return any(cause.blocks_claims for cause in self._active)

    def reasons(self) -> list[str]:
        return [active.reason for active in self._active.values()]
