"""Where a finished file goes: ``done/``, or ``failed/`` beside its report, never overwriting.

The target is written to the journal before the move (``target``, then ``place``), so a crash
inside the move is finished at the next start, not redone. A report is written before its file
arrives, so a file is never in ``failed/`` without its reason; a report that cannot be written
keeps its file in the claim area. A converted file's staged copy (``pushagent.intake``) is
removed once the original is in place.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path, PurePath

from pushagent.intake import remove_staged
from pushagent.journal import FileRow, Journal
from pushagent.lifecycle import DeliveryState
from pushagent.names import printable
from pushagent.outcomes import (
    fit_name,
    move_to,
    name_limit,
    same_entry,
    sync_folders,
    unique_name,
    unique_target,
    write_error_report,
)


class Placer:
    def __init__(
        self,
        *,
        journal: Journal,
        done: Path,
        failed: Path,
        claimed: Path,
        trigger_suffix: str | None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._claimed = claimed
        self._claimed_text = str(claimed)
        self.unsynced: set[str] = set()  # folders with moves not yet fsynced
        self._done = done
        self._failed = failed
        self._trigger = trigger_suffix
        self._wall = wall

    def folder(self, *, delivered: bool) -> Path:
        return self._done if delivered else self._failed

    def target(self, row: FileRow, *, delivered: bool) -> str | None:
        """Where ``row``'s file is to go, when the journal does not say yet (None: its
        ``final_path``, still free or already this file's, from a move a stop cut short). The
        caller journals it before ``place``, with the verdict when that is new too."""
        intended = row.final_path
        if intended is not None and (
            not os.path.lexists(intended) or same_entry(row.path, intended)
        ):
            return None
        return unique_name(self.folder(delivered=delivered), row.rel_path,
                           with_report=not delivered)

    def place(self, row: FileRow, *, delivered: bool, reason: str | None) -> Path | None:
        """Move ``row``'s file to its journalled ``final_path``; returns its report, if any.
        Paths are plain strings here, as in the journal: Path objects made per file placed
        cost more than the moves."""
        source, intended = row.path, row.final_path
        assert intended is not None, "the target is journalled before the move"
        report = None
        if not delivered:  # the report goes first, so its folder must be there
            os.makedirs(os.path.dirname(intended), exist_ok=True)
            report = write_error_report(Path(intended), self.report(row, reason))
        # Moved first, asked after: the names are looked at only when the move finds the target
        # taken, or the file gone (three lstat calls per file otherwise).
        try:
            _move_making_folder(source, intended)
        except FileExistsError:
            if not same_entry(source, intended):
                raise
            os.unlink(source)  # the last run stopped between the link and the unlink
        except FileNotFoundError:
            pass  # the last run moved it already
        else:
            self.unsynced.add(os.path.dirname(intended))
        self.carry_trigger(source, intended)
        if row.in_claim_area:
            # After the original is in place (a crash between the two redoes only this).
            remove_staged(source)
        if row.in_claim_area and os.path.dirname(source) != self._claimed_text:
            with contextlib.suppress(OSError):  # a claim folder of the first release, if empty
                os.rmdir(os.path.dirname(source))
        return report

    def claim_path(self, file_id: int, name: str) -> str:
        """``claimed/<id>-<name>``: flat (no folder to make and remove per file), unique by
        id, and still readable by a person; the name is cut to fit the folder's limit."""
        return os.path.join(self._claimed_text,
                            fit_name(f"{file_id}-{name}", name_limit(self._claimed)))

    def claim(self, dropped: str, target: str) -> None:
        _move_making_folder(dropped, target)
        self.unsynced.add(os.path.dirname(target))
        self.unsynced.add(os.path.dirname(dropped))

    def sync(self) -> None:
        """One fsync per folder for all the moves since the last call."""
        folders, self.unsynced = self.unsynced, set()
        sync_folders(folder for folder in folders if os.path.isdir(folder))

    def move_aside_unjournaled(self, path: Path) -> tuple[str, str]:
        """A name that is not UTF-8 cannot enter the journal: straight to failed/, with its
        report. Returns the name as shown and the reason; raises OSError when it cannot."""
        shown = printable(os.fsencode(path.name).decode("utf-8", "surrogateescape"))
        reason = "the file name is not valid UTF-8; rename it and drop it again"
        target = unique_target(self._failed, PurePath(path.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_error_report(target, {"file": shown, "reason": reason, "time": self._now_iso()})
        move_to(path, target)
        return shown, reason

    def carry_trigger(self, old: str | os.PathLike[str], new: str | os.PathLike[str]) -> None:
        """The ``<name><trigger_suffix>`` marker travels with its file, so it never lingers."""
        if self._trigger:
            with contextlib.suppress(OSError):  # a marker: losing it loses no data
                os.replace(os.fspath(old) + self._trigger, os.fspath(new) + self._trigger)

    def report(self, row: FileRow, reason: str | None) -> dict[str, object]:
        deliveries = self._journal.deliveries(row.id)
        return {
            "file": row.rel_path,
            "segment": row.segment,
            "job_ids": [d.job_id for d in deliveries],
            "uploaded_to": [d.job_id for d in deliveries if d.state is DeliveryState.UPLOADED],
            "failed_jobs": [d.job_id for d in deliveries if d.state is DeliveryState.REJECTED],
            "jobs": [
                {"job_id": d.job_id, "category": d.category or "SEGMENT_EXPORT",
                 "state": d.state.value}
                for d in deliveries
            ],
            "reason": reason or "failed",
            "time": self._now_iso(),
        }

    def _now_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall()))


def _move_making_folder(source: str, target: str) -> None:
    """``move_to`` (fsync left to ``Placer.sync``), making the target's folder only when the
    move finds it missing: a mkdir before every move cost more than the move itself."""
    try:
        move_to(source, target, durable=False)
    except FileNotFoundError:
        if not os.path.lexists(source):
            raise  # the file is gone, not the folder
        os.makedirs(os.path.dirname(target), exist_ok=True)
        move_to(source, target, durable=False)
