"""The pull side's records in the agent's journal: each job taken on, and each of its files.

The tables are the journal's (``journal.PULL_SCHEMA``, schema version 3); this class writes them
through the journal's own connection and transactions, so a full state_dir is the same
``JournalUnavailable`` condition on both sides. Every state change checks the pull tables of
``pushagent.lifecycle`` in the UPDATE's WHERE clause, as the push side's do.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pushagent.journal import Journal, in_marks, move_row
from pushagent.lifecycle import (
    PullFileState,
    PullJobState,
    pull_file_sources_of,
    pull_job_sources_of,
)


@dataclass(frozen=True, slots=True)
class PullJobRow:
    job_id: str
    state: PullJobState
    folder: str
    job_json: str
    seen_at: float
    finished_at: float | None
    reason: str | None
    attempts: int
    next_attempt_at: float | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> PullJobRow:
        values = dict(row)
        values["state"] = PullJobState(values["state"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class PullFileRow:
    job_id: str
    name: str
    local_name: str
    state: PullFileState
    size: int | None
    sha256: str | None
    problems: str | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> PullFileRow:
        values = dict(row)
        values["state"] = PullFileState(values["state"])
        return cls(**values)


class PullJournal:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    # --- writing ---------------------------------------------------------------------------

    def take_on(self, job_id: str, *, folder: str, job_json: str,
                files: Iterable[tuple[str, str]]) -> None:
        """Record a job listed as ready, with its files (name, local name), before any byte is
        fetched; a job seen before keeps its state and gains only names it did not have. A GONE
        job listed as ready again is DOWNLOADING again."""
        with self._journal._tx() as db:
            db.execute(
                "INSERT INTO pull_jobs (job_id, state, folder, job_json, seen_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                (job_id, PullJobState.DOWNLOADING.value, folder, job_json,
                 self._journal._clock()),
            )
            row = db.execute("SELECT state FROM pull_jobs WHERE job_id = ?", (job_id,)).fetchone()
            state = PullJobState(row["state"])
            if state is PullJobState.GONE:
                self._move_job(db, job_id, PullJobState.DOWNLOADING, "reason = NULL", ())
                state = PullJobState.DOWNLOADING
            if state is PullJobState.DOWNLOADING:
                db.execute("UPDATE pull_jobs SET job_json = ? WHERE job_id = ?",
                           (job_json, job_id))
                db.executemany(
                    "INSERT INTO pull_files (job_id, name, local_name, state) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (job_id, name) DO NOTHING",
                    [(job_id, name, local, PullFileState.PENDING.value) for name, local in files],
                )

    def downloaded(self, job_id: str, name: str, *, size: int, sha256: str,
                   problems: str | None) -> None:
        """The file is fsynced under its final name: written only after the rename."""
        with self._journal._statement() as db:
            self._move_file(db, job_id, name, PullFileState.DOWNLOADED,
                            "size = ?, sha256 = ?, problems = ?", (size, sha256, problems))

    def missing_again(self, job_id: str, name: str) -> None:
        with self._journal._statement() as db:
            self._move_file(db, job_id, name, PullFileState.PENDING,
                            "size = NULL, sha256 = NULL, problems = NULL", ())

    def deleted(self, job_id: str, name: str) -> None:
        with self._journal._statement() as db:
            self._move_file(db, job_id, name, PullFileState.DELETED, "", ())

    def on_disk(self, job_id: str) -> None:
        """job.json is written: the consumer may take the folder."""
        with self._journal._statement() as db:
            self._move_job(db, job_id, PullJobState.ON_DISK,
                           "reason = NULL, next_attempt_at = NULL", ())

    def finish(self, job_id: str, to: PullJobState, *, reason: str | None = None) -> None:
        """DONE (every configured step taken) or GONE (it stopped being ready)."""
        with self._journal._statement() as db:
            self._move_job(db, job_id, to, "finished_at = ?, reason = ?, next_attempt_at = NULL",
                           (self._journal._clock(), reason))

    def failed_attempt(self, job_id: str, reason: str, *, next_attempt_at: float) -> None:
        with self._journal._statement() as db:
            db.execute(
                "UPDATE pull_jobs SET attempts = attempts + 1, reason = ?, next_attempt_at = ? "
                "WHERE job_id = ?",
                (reason, next_attempt_at, job_id),
            )

    def succeeded_attempt(self, job_id: str) -> None:
        with self._journal._statement() as db:
            db.execute(
                "UPDATE pull_jobs SET attempts = 0, reason = NULL, next_attempt_at = NULL "
                "WHERE job_id = ? AND (attempts != 0 OR reason IS NOT NULL)",
                (job_id,),
            )

    def reached(self, when: float) -> None:
        """The Exchange answered: ``pushagent status`` shows it whichever side asked."""
        self._journal.set_meta("last_contact", str(when))

    def _move_job(self, db: sqlite3.Connection, job_id: str, to: PullJobState, sets: str,
                  params: tuple[Any, ...]) -> None:
        move_row(db, table="pull_jobs", where={"job_id": job_id}, to=to,
                 sources=pull_job_sources_of(to), sets=sets, params=params,
                 what=f"pull job {job_id}")

    def _move_file(self, db: sqlite3.Connection, job_id: str, name: str, to: PullFileState,
                   sets: str, params: tuple[Any, ...]) -> None:
        move_row(db, table="pull_files", where={"job_id": job_id, "name": name}, to=to,
                 sources=pull_file_sources_of(to), sets=sets, params=params,
                 what=f"file {name!r} of pull job {job_id}")

    # --- reading ---------------------------------------------------------------------------

    def job(self, job_id: str) -> PullJobRow | None:
        rows = self._journal._read("SELECT * FROM pull_jobs WHERE job_id = ?", (job_id,))
        return PullJobRow.of(rows[0]) if rows else None

    def jobs(self, *states: PullJobState) -> list[PullJobRow]:
        """Jobs in ``states``, first seen first."""
        marks, values = in_marks(states)
        rows = self._journal._read(
            f"SELECT * FROM pull_jobs WHERE state IN ({marks}) ORDER BY seen_at, job_id", values)
        return [PullJobRow.of(row) for row in rows]

    def recently_finished(self, *, limit: int) -> list[PullJobRow]:
        marks, values = in_marks((PullJobState.DONE, PullJobState.GONE))
        rows = self._journal._read(
            f"SELECT * FROM pull_jobs WHERE state IN ({marks}) ORDER BY finished_at DESC LIMIT ?",
            (*values, limit))
        return [PullJobRow.of(row) for row in rows]

    def known(self, job_ids: Iterable[str]) -> dict[str, PullJobState]:
        """The state of each of ``job_ids`` the journal holds (one query per poll)."""
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ", ".join("?" for _ in ids)
        rows = self._journal._read(
            f"SELECT job_id, state FROM pull_jobs WHERE job_id IN ({marks})", tuple(ids))
        return {row["job_id"]: PullJobState(row["state"]) for row in rows}

    def files(self, job_id: str) -> list[PullFileRow]:
        rows = self._journal._read(
            "SELECT * FROM pull_files WHERE job_id = ? ORDER BY rowid", (job_id,))
        return [PullFileRow.of(row) for row in rows]
