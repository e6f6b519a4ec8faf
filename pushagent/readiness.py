"""When a file in the drop folder is completely written, and so may be read.

A file is ready when:
- it was renamed into place (a move event, or a create with no open for writing following it:
  an open-for-write always follows a create, a rename never does), and has not changed since;
- or its size and mtime have not changed for ``settle_seconds`` (for a file found by a scan, such
  as one present at start, its mtime counts toward that time);
- and no process holds it open for writing, for the paths ``being_written`` is asked about
  (the agent asks in its claim area, where opening a file to ask raises no event; see
  ``open_for_writing``);
- and, when ``trigger_suffix`` is set, only once ``<name><suffix>`` exists beside it.

Any open or modify event on a tracked file puts it back under the settle rule.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import heapq
import itertools
import os
import stat as stat_module
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# How long a create event waits for the open-for-write that tells a writer from a rename.
RENAME_GRACE_SECONDS = 0.1


@dataclass(slots=True)
class _Tracked:
    size: int
    mtime_ns: int
    stable_since: float
    rename_due: float | None  # when the rename rule makes it ready (None: written in place)
    due: float  # the earliest time it may be ready, whichever rule comes first
    # Its live heap entry (sequence number, due time), None while it has none: not yet pushed
    # back after being looked at, or waiting for its trigger.
    entry: tuple[int, float] | None = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A ready path; ``odd`` names why it must be moved aside unread (symlink, directory...)."""

    path: Path
    size: int
    mtime: float
    odd: str | None = None


def open_for_writing(path: Path) -> bool:
    """True when some process holds ``path`` open for writing: Linux refuses a read lease
    (``F_SETLEASE``) with EAGAIN then. False when it is not, and when this cannot be told (not
    Linux; not the file's owner and without CAP_LEASE; a filesystem without leases, such as NFS):
    the settle rules then decide alone."""
    set_lease = getattr(fcntl, "F_SETLEASE", None)
    if set_lease is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, set_lease, fcntl.F_RDLCK)
    except OSError as error:
        return error.errno == errno.EAGAIN
    else:
        fcntl.fcntl(fd, set_lease, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def describe_odd(mode: int) -> str | None:
    if stat_module.S_ISREG(mode):
        return None
    if stat_module.S_ISLNK(mode):
        return "a symbolic link (never followed: the agent reads only regular files)"
    if stat_module.S_ISDIR(mode):
        return "a directory named like a CSV file"
    return "not a regular file (device, socket or pipe)"


class ReadinessTracker:
    """Files settling in the drop folder, each with the time it may next be ready.

    A heap of (due, sequence, path) entries keeps the passes cheap: :meth:`take_ready` and
    :meth:`next_deadline` look only at entries already due, so with thousands of files settling
    a pass costs O(ready + log n) and no ``lstat`` for the files not yet due. Entries are
    invalidated lazily: an entry counts only while its sequence number is the one its file
    records. A file whose due time moved later (a write restarted its settle time) keeps its
    old entry, which is pushed again at the new time when it comes up, so a file being
    written holds one entry, not one per write event.

    With ``trigger_suffix`` set, a settled file whose ``<name><suffix>`` is missing has no due
    time at all: it waits, costing nothing, until it is observed again. The agent calls
    ``observe(data_path, event="scan")`` when it sees the trigger created or moved in (and may
    do so for :meth:`paths_waiting_for_trigger` at its periodic rescan, in case an event was
    missed): the file is then due at once, and the next :meth:`take_ready` looks for the trigger
    again. :meth:`waiting_for_trigger` counts the waiting files, so a one-shot run can tell them
    from files still settling.
    """

    def __init__(
        self,
        *,
        settle_seconds: float,
        ignore: Sequence[str],
        trigger_suffix: str | None,
        clock: Callable[[], float],
        lstat: Callable[[Path], os.stat_result] = os.lstat,
        being_written: Callable[[Path], bool] = open_for_writing,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._wall = wall
        self._settle = settle_seconds
        self._being_written = being_written
        self._ignore = tuple(ignore)
        self._trigger = trigger_suffix
        self._clock = clock
        self._lstat = lstat
        self._tracked: dict[Path, _Tracked] = {}
        self._heap: list[tuple[float, int, Path]] = []
        self._sequence = itertools.count()
        self._awaiting_trigger: set[Path] = set()

    def __contains__(self, path: object) -> bool:
        return path in self._tracked

    def __len__(self) -> int:
        return len(self._tracked)

    def ignored(self, relative: str) -> bool:
        """Hidden, temporary and trigger names, in the file name or any folder above it
        (``relative``: the path under the drop folder, ``/``-separated)."""
        if self._trigger and relative.endswith(self._trigger):
            return True
        return any(
            fnmatch.fnmatchcase(part, pattern)
            for part in relative.split("/")
            for pattern in self._ignore
        )

    def observe(self, path: Path, *, event: str = "scan") -> None:
        """``event``: "moved" (renamed in), "created", "opened", "written" (modified or closed
        after writing) or "scan". An open only matters within a create's grace: it is the
        creating writer's, so the file is not a rename.

        One ``lstat``; a vanished file is forgotten. A file waiting for its trigger is due again
        at once: the next :meth:`take_ready` looks for the trigger (one more ``lstat``).
        """
        try:
            st = self._lstat(path)
        except FileNotFoundError:
            self._forget(path)
            return
        self._record(path, st, event, self._clock())

    def _forget(self, path: Path) -> None:
        self._tracked.pop(path, None)
        self._awaiting_trigger.discard(path)

    def oldest_mtime_by(self, key: Callable[[Path], str | None]) -> dict[str, float]:
        """The oldest last-write time of the tracked files under each ``key(path)`` (for example
        their segment; None leaves a file out): one O(n) pass, ``key`` called once per file."""
        oldest: dict[str, float] = {}
        for path, seen in self._tracked.items():
            group = key(path)
            if group is not None:
                mtime = seen.mtime_ns / 1e9
                if mtime < oldest.get(group, float("inf")):
                    oldest[group] = mtime
        return oldest

    def waiting_for_trigger(self) -> int:
        """Tracked files settled but for their trigger: they have no deadline."""
        return len(self._awaiting_trigger)

    def paths_waiting_for_trigger(self) -> list[Path]:
        """Those files, sorted: for a one-shot run to leave them pending with a reason."""
        return sorted(self._awaiting_trigger)

    def next_deadline(self) -> float | None:
        """The earliest time a tracked file may become ready, for the loop's wait.

        A time already passed means a file is due now (the next :meth:`take_ready` takes it or
        re-arms it later); a file waiting for its trigger has no deadline.
        """
        while self._heap:
            due, sequence, path = self._heap[0]
            seen = self._live(path, sequence)
            if seen is None:
                heapq.heappop(self._heap)
            elif seen.due > due:
                heapq.heappop(self._heap)
                self._push(path, seen, seen.due)
            else:
                return due
        return None

    def take_ready(self) -> list[Candidate]:
        """Ready files, earliest due first (no longer tracked afterwards); odd entries come back
        at once, unread. Only files already due are looked at (one ``lstat`` each)."""
        now = self._clock()
        ready: list[Candidate] = []
        rearm: list[tuple[Path, _Tracked]] = []
        while self._heap and self._heap[0][0] <= now:
            _, sequence, path = heapq.heappop(self._heap)
            seen = self._live(path, sequence)
            if seen is None:
                continue
            seen.entry = None
            candidate = None if seen.due > now else self._check_due(path, seen, now)
            if candidate is not None:
                ready.append(candidate)
            elif self._tracked.get(path) is seen and path not in self._awaiting_trigger:
                rearm.append((path, seen))
        # Pushed after the loop: a file re-armed with a due time already passed (a zero settle
        # time) is looked at by the next pass, never twice in this one.
        for path, seen in rearm:
            self._push(path, seen, seen.due)
        return ready

    def _check_due(self, path: Path, seen: _Tracked, now: float) -> Candidate | None:
        """Ready, or else forgotten (vanished), re-armed (changed) or set waiting for a trigger."""
        try:
            st = self._lstat(path)
        except FileNotFoundError:
            self._forget(path)
            return None
        odd = describe_odd(st.st_mode)
        if odd is None and (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
            self._record(path, st, "written", now, push=False)
            return None
        if odd is None and self._being_written(path):
            # Still held open by its writer: what it writes next must not miss the upload. Its
            # close is a "written" event (in a watched folder); else the settle time decides.
            self._record(path, st, "written", now)
            return None
        if odd is None and self._trigger and not self._trigger_exists(path):
            self._awaiting_trigger.add(path)
            return None
        self._forget(path)
        return Candidate(path=path, size=st.st_size, mtime=st.st_mtime, odd=odd)

    def _record(
        self, path: Path, st: os.stat_result, event: str, now: float, *, push: bool = True
    ) -> None:
        previous = self._tracked.get(path)
        unchanged = previous is not None and (previous.size, previous.mtime_ns) == (
            st.st_size,
            st.st_mtime_ns,
        )
        odd = describe_odd(st.st_mode)
        keeps_times = unchanged and event not in ("written", "moved")
        if event == "opened" and previous is not None and keeps_times:
            # Nothing changed, and the agent's own look at the file opens it too: only a
            # create's pending rename guess is undone, so opening never re-arms a file.
            if previous.rename_due is not None and previous.rename_due > now:
                previous.rename_due = None
                previous.due = previous.stable_since + self._settle
            return
        self._awaiting_trigger.discard(path)  # settled already, so due again at once
        rename_due: float | None
        if event == "moved":
            rename_due = now
        elif event == "created" and previous is None:
            rename_due = now + RENAME_GRACE_SECONDS
        elif previous is not None and keeps_times:
            rename_due = previous.rename_due
        else:
            rename_due = None
        if previous is not None and keeps_times:
            stable_since = previous.stable_since
        elif previous is None and event == "scan":
            # Found by a scan (files present at start): its mtime says how long it has been
            # still already, so a file untouched for the settle time is ready at once.
            still_for = max(0.0, self._wall() - st.st_mtime)
            stable_since = now - min(self._settle, still_for)
        else:
            stable_since = now
        due = stable_since + self._settle
        if rename_due is not None:
            due = min(due, rename_due)
        if odd is not None:
            due = now  # never read, so nothing to wait for
        if previous is None:
            seen = _Tracked(st.st_size, st.st_mtime_ns, stable_since, rename_due, due)
            self._tracked[path] = seen
        else:
            seen = previous
            seen.size, seen.mtime_ns = st.st_size, st.st_mtime_ns
            seen.stable_since, seen.rename_due, seen.due = stable_since, rename_due, due
        # A live entry due no later stays: when it comes up, it is pushed again at the new time.
        if push and (seen.entry is None or due < seen.entry[1]):
            self._push(path, seen, due)

    def _push(self, path: Path, seen: _Tracked, due: float) -> None:
        sequence = next(self._sequence)
        seen.entry = (sequence, due)
        heapq.heappush(self._heap, (due, sequence, path))
        if len(self._heap) > 2 * len(self._tracked) + 64:
            # Entries of forgotten files and of files re-armed earlier would otherwise pile up.
            self._heap = [e for e in self._heap if self._live(e[2], e[1]) is not None]
            heapq.heapify(self._heap)

    def _live(self, path: Path, sequence: int) -> _Tracked | None:
        seen = self._tracked.get(path)
        if seen is None or seen.entry is None or seen.entry[0] != sequence:
            return None
        return seen

    def _trigger_exists(self, path: Path) -> bool:
        try:
            self._lstat(path.with_name(path.name + (self._trigger or "")))
        except FileNotFoundError:
            return False
        return True
