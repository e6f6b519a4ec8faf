"""The crash-safe journal: every file's life from first sight to done/ or failed/, in SQLite.

The states and the moves allowed between them are in ``pushagent.lifecycle``; every write here
that changes a state checks that table (in the UPDATE's WHERE clause, so a row that moved on
meanwhile is refused too) and raises ``IllegalTransition`` for a move it does not allow. The
loop, the workers and the ops commands all change states through this class.

A delivery left ``uploading`` by a crash may have reached the server, so the next attempt asks the
job first. The partial unique index makes a second upload to one job impossible, whatever the
code above does. The schema is versioned with ``PRAGMA user_version``; a journal written by an
older agent is migrated in place when it is opened.

SQLite failures that are conditions of the machine (disk full, read-only, I/O errors) come out as
``JournalUnavailable``, never as a bare ``sqlite3`` error: the agent waits them out.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from pushagent.errors import JournalUnavailable, StateLockedError
from pushagent.lifecycle import (
    FILE_MOVES,
    FINISHED,
    IN_DROP_FOLDER,
    RESERVING,
    DeliveryState,
    FileState,
    IllegalTransition,
    delivery_sources_of,
    sources_of,
)

SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    rel_path TEXT NOT NULL,          -- where it was dropped, relative to the drop folder
    segment TEXT,
    state TEXT NOT NULL,             -- a lifecycle.FileState value
    path TEXT NOT NULL,              -- where it is now
    size INTEGER,
    mtime REAL,                      -- when the dropper last wrote it: oldest first
    seen_at REAL NOT NULL,
    ready_at REAL,
    claimed_at REAL,
    finished_at REAL,
    reason TEXT,                     -- why it waits, or why it failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    final_path TEXT,
    sha256 TEXT,                     -- of the bytes last validated
    report_path TEXT,                -- the failed/ report, when it has one
    converted_from TEXT              -- what a file sent as a converted copy was (intake.py)
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE INDEX IF NOT EXISTS files_finished ON files(finished_at);
CREATE TABLE IF NOT EXISTS deliveries (
    file_id INTEGER NOT NULL REFERENCES files(id),
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,             -- a lifecycle.DeliveryState value
    started_at REAL,
    ended_at REAL,
    bytes INTEGER,
    error TEXT,
    sha256 TEXT,                     -- of the bytes sent
    category TEXT,                   -- the job category, NULL (version 1 rows) for SEGMENT_EXPORT
    PRIMARY KEY (file_id, job_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_upload_per_job ON deliveries(job_id)
    WHERE state IN ('uploading', 'uploaded');
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Version 0 (the first release) kept the drop folder's names unique with an index on rel_path;
# a requeued file now waits in its claim folder while a new drop of the same name settles.
INDEXES_V1 = """
DROP INDEX IF EXISTS files_open_drop;
CREATE UNIQUE INDEX IF NOT EXISTS files_open_path ON files(path)
    WHERE state IN ('settling', 'waiting', 'resettling');
-- Lookups by path bind their states as parameters, which a partial index cannot serve.
CREATE INDEX IF NOT EXISTS files_path ON files(path);
"""

# The pull side's records (``pushagent.pulljournal``): one row per job READY_FOR_DOWNLOAD that
# the agent took on, one per file of it. Kept apart from the push side's files and deliveries.
PULL_SCHEMA = """
CREATE TABLE IF NOT EXISTS pull_jobs (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,             -- a lifecycle.PullJobState value
    folder TEXT NOT NULL,            -- outbox/<jobId>
    job_json TEXT NOT NULL,          -- the job as listed, for job.json
    seen_at REAL NOT NULL,
    finished_at REAL,
    reason TEXT,                     -- why it waits (the last failure), or why it is gone
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL
);
CREATE INDEX IF NOT EXISTS pull_jobs_state ON pull_jobs(state);
CREATE TABLE IF NOT EXISTS pull_files (
    job_id TEXT NOT NULL REFERENCES pull_jobs(job_id),
    name TEXT NOT NULL,              -- as the Exchange names it
    local_name TEXT NOT NULL,        -- the sanitized name in the job's folder
    state TEXT NOT NULL,             -- a lifecycle.PullFileState value
    size INTEGER,
    sha256 TEXT,
    problems TEXT,                   -- what validation found, kept with the file
    PRIMARY KEY (job_id, name)
);
"""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE files ADD COLUMN sha256 TEXT",
        "ALTER TABLE files ADD COLUMN report_path TEXT",
        "ALTER TABLE deliveries ADD COLUMN sha256 TEXT",
    ),
    # Jobs of every push category: a status check after a crash must ask the job's own category.
    2: ("ALTER TABLE deliveries ADD COLUMN category TEXT",),
    # The pull side: new tables only, made by PULL_SCHEMA for old and new journals alike.
    3: (),
    # What a converted file was converted from (its encoding, delimiter, compression).
    4: ("ALTER TABLE files ADD COLUMN converted_from TEXT",),
}

RESERVE_SECONDS = 7 * 86400
# Finished files stay in the journal (for ``pushagent status``) this long.
KEEP_FINISHED_SECONDS = 30 * 86400


@dataclass(frozen=True, slots=True)
class FileRow:
    id: int
    rel_path: str
    segment: str | None
    state: FileState
    path: str
    size: int | None
    mtime: float | None
    seen_at: float
    ready_at: float | None
    claimed_at: float | None
    finished_at: float | None
    reason: str | None
    attempts: int
    next_attempt_at: float | None
    final_path: str | None
    sha256: str | None
    report_path: str | None
    converted_from: str | None

    @classmethod
    def of(cls, row: sqlite3.Row) -> FileRow:
        """A row selected as ``SELECT {_FILE_COLUMNS}``: by position, in this class's order
        (three rows are read for every file)."""
        values = list(row)
        values[_FILE_STATE_AT] = FileState(values[_FILE_STATE_AT])
        return cls(*values)

    @property
    def in_claim_area(self) -> bool:
        return self.claimed_at is not None


_FILE_COLUMNS = ", ".join(field.name for field in fields(FileRow))
_FILE_STATE_AT = [field.name for field in fields(FileRow)].index("state")
_FILE_BY_ID = f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?"
_DELIVERIES_OF = "SELECT * FROM deliveries WHERE file_id = ? ORDER BY job_id"


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    file_id: int
    job_id: str
    state: DeliveryState
    started_at: float | None
    ended_at: float | None
    bytes: int | None
    error: str | None
    sha256: str | None
    category: str | None = None  # None: SEGMENT_EXPORT (written before categories were kept)

    @classmethod
    def of(cls, row: sqlite3.Row) -> DeliveryRow:
        values = dict(row)
        values["state"] = DeliveryState(values["state"])
        return cls(**values)


class StateLock:
    """Exclusive ``flock`` on ``state_dir/agent.lock``; the kernel drops it if the holder dies."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLockedError(
                f"{self.path}: another pushagent (pid {holder}) is running on this state_dir; "
                "stop it first, or give this agent its own state_dir"
            ) from error
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def in_marks(values: Iterable[Any]) -> tuple[str, tuple[str, ...]]:
    """``?, ?, ?`` for an ``IN (...)`` and the values to bind: a state's value, else its text."""
    texts = tuple(v.value if isinstance(v, Enum) else str(v) for v in values)
    return ", ".join("?" for _ in texts), texts


def move_row(
    db: sqlite3.Connection,
    *,
    table: str,
    where: Mapping[str, object],
    to: Enum,
    sources: Iterable[Enum],
    sets: str,
    params: tuple[Any, ...],
    what: str,
) -> None:
    """UPDATE the one row of ``table`` matching ``where`` to state ``to`` (and ``sets``), only
    from ``sources``, the states its lifecycle table allows; IllegalTransition naming ``what``
    otherwise. The check is in the UPDATE itself, so no other writer can slip in between."""
    update, allowed, check = _move_statements(table, tuple(where), frozenset(sources), sets)
    cursor = db.execute(update, (to.value, *params, *where.values(), *allowed))
    if cursor.rowcount != 1:
        row = db.execute(check, tuple(where.values())).fetchone()
        now = row["state"] if row else "nowhere (it is not in the journal)"
        raise IllegalTransition(f"journal: {what} cannot go from {now} to {to.value}")


@functools.lru_cache(maxsize=128)
def _move_statements(
    table: str, columns: tuple[str, ...], sources: frozenset[Enum], sets: str
) -> tuple[str, tuple[str, ...], str]:
    """``move_row``'s UPDATE, the source states it binds and its check, written once per kind
    of move: every file makes several moves."""
    marks, allowed = in_marks(sources)
    condition = " AND ".join(f"{column} = ?" for column in columns)
    update = (f"UPDATE {table} SET state = ?{', ' + sets if sets else ''} "
              f"WHERE {condition} AND state IN ({marks})")
    return update, allowed, f"SELECT state FROM {table} WHERE {condition}"


_IN_DROP_MARKS = in_marks(IN_DROP_FOLDER)  # asked twice for every file seen


class Journal:
    """Thread-safe: workers and the agent loop share one connection behind a lock."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        # False from a write the disk refused until the next write that commits: whether the
        # agent is degraded is what the journal last did, not what one pass happened to try.
        self.writable = True
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            # WAL + NORMAL survives a killed process (what the agent must survive); only an OS
            # crash may lose the last transactions, and the job-status check covers those.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # A checkpoint (the one fsync of the database in WAL mode) every ~16 MiB of WAL
            # rather than every 4 MiB: thousands of files a minute write a lot of small rows.
            self._db.execute("PRAGMA wal_autocheckpoint=4000")
            self._migrate()
        except sqlite3.Error as error:
            raise self._unavailable(error) from error

    @classmethod
    def for_state_dir(cls, state_dir: Path, *, clock: Callable[[], float] = time.time) -> Journal:
        return cls(state_dir / "journal.sqlite3", clock=clock)

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        existing = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'"
        ).fetchone()
        if version > SCHEMA_VERSION:
            raise JournalUnavailable(
                f"{self.path}: written by a newer pushagent (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade pushagent or use another state_dir"
            )
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if existing:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS.get(step, ()):
                        self._db.execute(statement)
            for statement in (SCHEMA + INDEXES_V1 + PULL_SCHEMA).split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _unavailable(self, error: sqlite3.Error) -> JournalUnavailable:
        self.writable = False
        return JournalUnavailable(
            f"journal {self.path}: {error}; free space in the state_dir or make it writable "
            "(the agent resumes by itself)"
        )

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                raise self._unavailable(error) from error
            try:
                yield self._db
                self._db.execute("COMMIT")
                self.writable = True
            except sqlite3.IntegrityError:
                self._rollback()
                raise
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as error:
                self._rollback()
                raise self._unavailable(error) from error
            except BaseException:
                self._rollback()
                raise

    @contextmanager
    def _statement(self) -> Iterator[sqlite3.Connection]:
        """For a write of one statement: SQLite makes it a transaction of its own, which saves
        the BEGIN and COMMIT round trips of ``_tx`` (thousands of files a minute add up)."""
        with self._lock:
            try:
                yield self._db
                self.writable = True
            except sqlite3.IntegrityError:
                raise
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as error:
                raise self._unavailable(error) from error

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have rolled back already
            self._db.execute("ROLLBACK")

    def _move(self, db: sqlite3.Connection, file_id: int, to: FileState, sets: str,
              params: tuple[Any, ...]) -> None:
        """UPDATE one file to ``to``, only from a state the lifecycle table allows."""
        move_row(db, table="files", where={"id": file_id}, to=to, sources=sources_of(to),
                 sets=sets, params=params, what=f"file {file_id}")

    def _move_delivery(self, db: sqlite3.Connection, file_id: int, job_id: str,
                       to: DeliveryState, sets: str, params: tuple[Any, ...]) -> None:
        move_row(db, table="deliveries", where={"file_id": file_id, "job_id": job_id}, to=to,
                 sources=delivery_sources_of(to), sets=sets, params=params,
                 what=f"delivery of file {file_id} to job {job_id}")

    # --- files in the drop folder -------------------------------------------------------------

    def _open_or_new(
        self, db: sqlite3.Connection, rel_path: str, path: Path, *, size: int,
        mtime: float | None,
    ) -> tuple[int, bool]:
        """The row of the file at ``path`` in the drop folder, or a new settling one; True when
        it is new."""
        marks, states = _IN_DROP_MARKS
        row = db.execute(
            f"SELECT id FROM files WHERE path = ? AND state IN ({marks})", (str(path), *states)
        ).fetchone()
        if row is not None:
            return int(row["id"]), False
        cursor = db.execute(
            "INSERT INTO files (rel_path, state, path, size, mtime, seen_at, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, 'settling: still being written')",
            (rel_path, FileState.SETTLING.value, str(path), size, mtime, self._clock()),
        )
        return int(cursor.lastrowid or 0), True

    def note_settling(
        self, rel_path: str, path: Path, *, size: int, mtime: float | None = None
    ) -> int:
        """Record a file seen in the drop folder; keeps its first-seen time across restarts."""
        with self._tx() as db:
            file_id, new = self._open_or_new(db, rel_path, path, size=size, mtime=mtime)
            if not new:
                db.execute(
                    "UPDATE files SET size = ?, mtime = ? WHERE id = ?", (size, mtime, file_id)
                )
            return file_id

    def note_settling_many(self, files: Iterable[tuple[str, Path]]) -> None:
        """Record files first seen (by a scan, or by the events of one pass), in one
        transaction: thousands at a start, hundreds in a storm of renames."""
        with self._tx() as db:
            for rel_path, path in files:
                self._open_or_new(db, rel_path, path, size=0, mtime=0.0)

    def admit_many(
        self, files: Iterable[tuple[str, Path, int, float, str]]
    ) -> list[FileRow]:
        """Ready files (rel_path, path, size, mtime, segment) to WAITING, in one transaction;
        a file not recorded yet is recorded first. Returns their rows."""
        now = self._clock()
        rows: list[FileRow] = []
        with self._tx() as db:
            for rel_path, path, size, mtime, segment in files:
                file_id, _ = self._open_or_new(db, rel_path, path, size=size, mtime=mtime)
                self._move(
                    db, file_id, FileState.WAITING,
                    "segment = ?, reason = ?, ready_at = COALESCE(ready_at, ?), size = ?, "
                    "mtime = ?",
                    (segment, f"waiting for a job for segment {segment}", now, size, mtime),
                )
                # Read back inside the transaction: no read transaction of its own per row.
                rows.append(FileRow.of(db.execute(_FILE_BY_ID, (file_id,)).fetchone()))
        return rows

    def mark_waiting(self, file_id: int, *, segment: str, reason: str) -> FileRow:
        """Ready (from the drop folder), or back to waiting in its claim folder (jobs gone)."""
        with self._tx() as db:
            self._move(
                db, file_id, FileState.WAITING,
                "segment = ?, reason = ?, ready_at = COALESCE(ready_at, ?)",
                (segment, reason, self._clock()),
            )
        return self.file(file_id)

    def back_to_settling(self, file_id: int) -> None:
        """A waiting file in the drop folder was written to again."""
        with self._statement() as db:
            self._move(db, file_id, FileState.SETTLING, "reason = 'settling: still being written'",
                       ())

    def set_reason(
        self, file_id: int, reason: str, *, next_attempt_at: float | None = None
    ) -> None:
        with self._statement() as db:
            db.execute(
                "UPDATE files SET reason = ?, next_attempt_at = ? WHERE id = ?",
                (reason, next_attempt_at, file_id),
            )

    def forget(self, file_id: int) -> None:
        """A settling or waiting file vanished from the drop folder before it was claimed."""
        marks, states = in_marks(IN_DROP_FOLDER)
        with self._tx() as db:
            db.execute(
                f"DELETE FROM files WHERE id = ? AND claimed_at IS NULL AND state IN ({marks})",
                (file_id, *states),
            )

    # --- claimed files and their deliveries -----------------------------------------------------

    def claim(
        self, file_id: int, *, path: str | os.PathLike[str], job_ids: Iterable[str],
        categories: Mapping[str, str] | None = None,
    ) -> FileRow:
        """``categories``: job id -> its category (a job left out is SEGMENT_EXPORT). Returns
        the claimed row."""
        return self.claim_many([(file_id, path, job_ids, categories or {})])[0][0]

    def claim_many(
        self,
        claims: Iterable[
            tuple[int, str | os.PathLike[str], Iterable[str], Mapping[str, str]]
        ],
    ) -> list[tuple[FileRow, list[DeliveryRow]]]:
        """``claim`` for each (file id, path, job ids, categories), in one transaction; each
        claimed row with its deliveries, read back inside it, in the same order (what its
        upload worker would otherwise read first)."""
        rows: list[tuple[FileRow, list[DeliveryRow]]] = []
        with self._tx() as db:
            for file_id, path, job_ids, categories in claims:
                self._move(db, file_id, FileState.CLAIMED,
                           "path = ?, claimed_at = COALESCE(claimed_at, ?), reason = 'uploading'",
                           (os.fspath(path), self._clock()))
                db.executemany(
                    "INSERT INTO deliveries (file_id, job_id, state, category) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (file_id, job_id) DO UPDATE SET "
                    "state = excluded.state, error = NULL WHERE state = ?",
                    [
                        (file_id, job_id, DeliveryState.ASSIGNED.value, categories.get(job_id),
                         DeliveryState.GONE.value)
                        for job_id in job_ids
                    ],
                )
                deliveries = db.execute(_DELIVERIES_OF, (file_id,)).fetchall()
                rows.append((FileRow.of(db.execute(_FILE_BY_ID, (file_id,)).fetchone()),
                             [DeliveryRow.of(row) for row in deliveries]))
        return rows

    def resettle(self, file_id: int, reason: str) -> None:
        """A claimed file changed under us: it must be still again before it is read again."""
        with self._statement() as db:
            self._move(db, file_id, FileState.RESETTLING, "reason = ?", (reason,))

    def reclaim(self, file_id: int) -> None:
        with self._statement() as db:
            self._move(db, file_id, FileState.CLAIMED, "reason = 'uploading'", ())

    def validated(
        self, file_id: int, *, size: int, sha256: str, converted_from: str | None = None
    ) -> None:
        with self._statement() as db:
            db.execute("UPDATE files SET size = ?, sha256 = ?, converted_from = ? WHERE id = ?",
                       (size, sha256, converted_from, file_id))

    def upload_started(self, file_id: int, job_id: str) -> None:
        with self._statement() as db:
            self._move_delivery(db, file_id, job_id, DeliveryState.UPLOADING,
                                "started_at = ?, error = NULL", (self._clock(),))

    def delivery_ended(
        self,
        file_id: int,
        job_id: str,
        state: DeliveryState,
        *,
        nbytes: int | None = None,
        sha256: str | None = None,
        error: str | None = None,
    ) -> None:
        with self._statement() as db:
            self._move_delivery(db, file_id, job_id, state,
                                "ended_at = ?, bytes = ?, sha256 = ?, error = ?",
                                (self._clock(), nbytes, sha256, error))

    def count_attempt(self, file_id: int, reason: str, *, next_attempt_at: float) -> int:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET attempts = attempts + 1, reason = ?, next_attempt_at = ? "
                "WHERE id = ?",
                (reason, next_attempt_at, file_id),
            )
            row = db.execute("SELECT attempts FROM files WHERE id = ?", (file_id,)).fetchone()
            return int(row["attempts"])

    def conclude(
        self, file_id: int, state: FileState, *, reason: str | None,
        final_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """The verdict is in (DELIVERED or REJECTED); only the move to done/ or failed/ is left.
        ``final_path``: where the file goes, recorded with it (as ``intend_final``)."""
        if state not in (FileState.DELIVERED, FileState.REJECTED):
            raise IllegalTransition(f"journal: conclude takes DELIVERED or REJECTED, not {state}")
        target = None if final_path is None else os.fspath(final_path)
        with self._statement() as db:
            self._move(db, file_id, state,
                       "reason = ?, next_attempt_at = NULL, final_path = COALESCE(?, final_path)",
                       (reason, target))

    def intend_final(self, file_id: int, target: str | os.PathLike[str]) -> None:
        """Written before the final move, so a crash inside the move can be finished, not redone."""
        with self._statement() as db:
            db.execute("UPDATE files SET final_path = ? WHERE id = ?", (str(target), file_id))

    def finish(
        self, file_id: int, *, final_path: str | os.PathLike[str],
        report_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """DELIVERED -> DONE or REJECTED -> FAILED, now that the file is in its final folder."""
        self.finish_many([(file_id, final_path, report_path)])

    def finish_many(
        self,
        placed: Iterable[tuple[int, str | os.PathLike[str], str | os.PathLike[str] | None]],
    ) -> None:
        """``finish`` for each (file id, final path, report path), in one transaction: the
        files of one pass were fsynced in place together."""
        assert FILE_MOVES[FileState.DELIVERED] == {FileState.DONE}
        assert FILE_MOVES[FileState.REJECTED] == {FileState.FAILED}
        now = self._clock()
        with self._tx() as db:
            for file_id, final_path, report_path in placed:
                final = os.fspath(final_path)
                cursor = db.execute(
                    "UPDATE files SET state = CASE state WHEN ? THEN ? ELSE ? END, "
                    "final_path = ?, path = ?, finished_at = ?, report_path = ? "
                    "WHERE id = ? AND state IN (?, ?)",
                    (FileState.DELIVERED.value, FileState.DONE.value, FileState.FAILED.value,
                     final, final, now, None if report_path is None else os.fspath(report_path),
                     file_id, FileState.DELIVERED.value, FileState.REJECTED.value),
                )
                if cursor.rowcount != 1:
                    row = db.execute("SELECT state FROM files WHERE id = ?",
                                     (file_id,)).fetchone()
                    state = row["state"] if row else "no such file"
                    raise IllegalTransition(
                        f"journal: file {file_id} cannot go from {state} to done or failed"
                    )

    def unclaim(self, file_id: int, dropped: Path) -> None:
        """The claim was journalled but the file never left the drop folder: wait again."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM deliveries WHERE file_id = ? AND state = ?",
                (file_id, DeliveryState.ASSIGNED.value),
            )
            self._move(db, file_id, FileState.WAITING, "path = ?, claimed_at = NULL",
                       (str(dropped),))

    def vanish(self, file_id: int, reason: str) -> None:
        """The file is gone (removed by someone else): nothing is left to deliver."""
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, error = ? WHERE file_id = ? AND state = ?",
                (DeliveryState.RELEASED.value, reason, file_id, DeliveryState.ASSIGNED.value),
            )
            self._move(db, file_id, FileState.VANISHED, "finished_at = ?, reason = ?",
                       (self._clock(), reason))

    def reserved_jobs(self) -> set[str]:
        """Jobs no other file may be given: assigned, being uploaded, uploaded, or failed by us.

        Finished files count for ``RESERVE_SECONDS``: long enough for any lag in the server's
        list of waiting jobs, short enough that the query stays small after months of work.
        """
        marks, states = in_marks(RESERVING)
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT d.job_id FROM deliveries d JOIN files f ON f.id = d.file_id "
                f"WHERE d.state IN ({marks}) AND (f.finished_at IS NULL OR f.finished_at > ?)",
                (*states, self._clock() - RESERVE_SECONDS),
            ).fetchall()
        return {row["job_id"] for row in rows}

    def prune(self, *, keep_seconds: float = KEEP_FINISHED_SECONDS) -> int:
        """Forget files finished longer ago than ``keep_seconds``; returns how many."""
        cutoff = self._clock() - keep_seconds
        marks, states = in_marks(FINISHED)
        old = f"SELECT id FROM files WHERE state IN ({marks}) AND finished_at < ?"
        with self._tx() as db:
            db.execute(f"DELETE FROM deliveries WHERE file_id IN ({old})", (*states, cutoff))
            return int(
                db.execute(f"DELETE FROM files WHERE id IN ({old})", (*states, cutoff)).rowcount
            )

    # --- reading ---------------------------------------------------------------------------------

    def file(self, file_id: int) -> FileRow:
        row = self._one(_FILE_BY_ID, (file_id,))
        if row is None:
            raise IllegalTransition(f"journal: no file {file_id}")
        return FileRow.of(row)

    def files(self, *states: FileState) -> list[FileRow]:
        """Files in ``states``, oldest first."""
        marks, values = in_marks(states)
        return self._select(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE state IN ({marks}) "
            "ORDER BY COALESCE(mtime, ready_at, seen_at), id",
            values,
        )

    def paths(self, *states: FileState, page: int = 1000) -> Iterator[tuple[int, str, bool]]:
        """(id, path, in claim area) of every file in ``states``, read a page at a time: a sweep
        over 20,000 files never holds them all as rows, nor the journal's lock between pages."""
        marks, values = in_marks(states)
        after = 0
        while True:
            rows = self._read(
                f"SELECT id, path, claimed_at IS NOT NULL FROM files WHERE state IN ({marks}) "
                "AND id > ? ORDER BY id LIMIT ?",
                (*values, after, page),
            )
            for file_id, path, in_claim_area in rows:
                yield file_id, path, bool(in_claim_area)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def recently_finished(self, *, limit: int) -> list[FileRow]:
        marks, values = in_marks((FileState.DONE, FileState.FAILED))
        return self._select(
            f"SELECT {_FILE_COLUMNS} FROM files WHERE state IN ({marks}) "
            "ORDER BY finished_at DESC LIMIT ?",
            (*values, limit),
        )

    def deliveries(self, file_id: int) -> list[DeliveryRow]:
        with self._lock:
            rows = self._read(_DELIVERIES_OF, (file_id,))
        return [DeliveryRow.of(row) for row in rows]

    def set_meta(self, key: str, value: str) -> None:
        with self._statement() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[FileRow]:
        return [FileRow.of(row) for row in self._read(sql, params)]

    def _one(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
        rows = self._read(sql, params)
        return rows[0] if rows else None

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.OperationalError as error:
                raise self._unavailable(error) from error
