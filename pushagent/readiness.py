"""When a file in the drop folder is completely written, and so may be read.

A file is ready when:
- it was renamed into place (a move event, or a create with no open for writing following it:
  an open-for-write always follows a create, a rename never does), and has not changed since;
- or its size and mtime have not changed for ``settle_seconds``;
- and, when ``trigger_suffix`` is set, only once ``<name><suffix>`` exists beside it.

Any open or modify event on a tracked file puts it back under the settle rule.
"""

from __future__ import annotations

import fnmatch
import os
import stat as stat_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

# How long a create event waits for the open-for-write that tells a writer from a rename.
RENAME_GRACE_SECONDS = 0.1


@dataclass
class _Tracked:
    size: int
    mtime_ns: int
    stable_since: float
    renamed_at: float | None


@dataclass(frozen=True)
class Candidate:
    """A ready path; ``odd`` names why it must be moved aside unread (symlink, directory...)."""

    path: Path
    size: int
    mtime: float
    odd: str | None = None


def describe_odd(mode: int) -> str | None:
    if stat_module.S_ISREG(mode):
        return None
    if stat_module.S_ISLNK(mode):
        return "a symbolic link (never followed: the agent reads only regular files)"
    if stat_module.S_ISDIR(mode):
        return "a directory named like a CSV file"
    return "not a regular file (device, socket or pipe)"


class ReadinessTracker:
    def __init__(
        self,
        *,
        settle_seconds: float,
        ignore: Sequence[str],
        trigger_suffix: str | None,
        clock: Callable[[], float],
        lstat: Callable[[Path], os.stat_result] = os.lstat,
    ) -> None:
        self._settle = settle_seconds
        self._ignore = tuple(ignore)
        self._trigger = trigger_suffix
        self._clock = clock
        self._lstat = lstat
        self._tracked: dict[Path, _Tracked] = {}

    def ignored(self, relative: PurePath) -> bool:
        """Hidden, temporary and trigger names, in the file name or any folder above it."""
        if self._trigger and relative.name.endswith(self._trigger):
            return True
        return any(
            fnmatch.fnmatchcase(part, pattern)
            for part in relative.parts
            for pattern in self._ignore
        )

    def observe(self, path: Path, *, event: str = "scan") -> None:
        """``event``: "moved" (renamed in), "created", "written" (opened or modified) or "scan"."""
        now = self._clock()
        try:
            st = self._lstat(path)
        except FileNotFoundError:
            self._tracked.pop(path, None)
            return
        previous = self._tracked.get(path)
        unchanged = previous is not None and (previous.size, previous.mtime_ns) == (
            st.st_size,
            st.st_mtime_ns,
        )
        renamed_at: float | None
        if event == "moved":
            renamed_at = now - RENAME_GRACE_SECONDS
        elif event == "created" and previous is None:
            renamed_at = now
        elif event == "written" or not unchanged or previous is None:
            renamed_at = None
        else:
            renamed_at = previous.renamed_at
        if previous is not None and unchanged and event not in ("written", "moved"):
            stable_since = previous.stable_since
        else:
            stable_since = now
        self._tracked[path] = _Tracked(st.st_size, st.st_mtime_ns, stable_since, renamed_at)

    def forget(self, path: Path) -> None:
        self._tracked.pop(path, None)

    def tracked(self) -> list[Path]:
        return list(self._tracked)

    def mtimes(self) -> dict[Path, float]:
        """Last-write times of the files still settling."""
        return {path: t.mtime_ns / 1e9 for path, t in self._tracked.items()}

    def next_deadline(self) -> float | None:
        """The earliest time a tracked file could become ready, for the loop's wait."""
        times = [
            t.renamed_at + RENAME_GRACE_SECONDS
            if t.renamed_at is not None
            else t.stable_since + self._settle
            for t in self._tracked.values()
        ]
        return min(times) if times else None

    def take_ready(self) -> list[Candidate]:
        """Ready files (no longer tracked afterwards); odd entries come back at once, unread."""
        now = self._clock()
        ready: list[Candidate] = []
        for path, seen in list(self._tracked.items()):
            try:
                st = self._lstat(path)
            except FileNotFoundError:
                del self._tracked[path]
                continue
            odd = describe_odd(st.st_mode)
            if odd is None and (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                self.observe(path, event="written")
                continue
            settled = now - seen.stable_since >= self._settle
            renamed = seen.renamed_at is not None and now - seen.renamed_at >= RENAME_GRACE_SECONDS
            if odd is None and not (settled or renamed):
                continue
            if odd is None and self._trigger and not self._trigger_exists(path):
                continue
            del self._tracked[path]
            ready.append(Candidate(path=path, size=st.st_size, mtime=st.st_mtime, odd=odd))
        return ready

    def _trigger_exists(self, path: Path) -> bool:
        try:
            self._lstat(path.with_name(path.name + (self._trigger or "")))
        except FileNotFoundError:
            return False
        return True
