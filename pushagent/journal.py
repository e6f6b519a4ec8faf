"""The crash-safe journal: every file's life from first sight to done/ or failed/, in SQLite.

A file row goes ``settling -> waiting -> claimed -> done | failed``; each job a claimed file is sent
to has a delivery row ``assigned -> uploading -> uploaded | gone | rejected``. A delivery left in
``uploading`` by a crash may have reached the server, so the next attempt asks the job first.
The partial unique index makes a second upload to one job impossible, whatever the code above does.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pushagent.errors import StateLockedError

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    rel_path TEXT NOT NULL,          -- where it was dropped, relative to the drop folder
    segment TEXT,
    state TEXT NOT NULL,             -- settling | waiting | claimed | done | failed | vanished
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
    final_path TEXT
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE INDEX IF NOT EXISTS files_finished ON files(finished_at);
CREATE UNIQUE INDEX IF NOT EXISTS files_open_drop ON files(rel_path)
    WHERE state IN ('settling', 'waiting');
CREATE TABLE IF NOT EXISTS deliveries (
    file_id INTEGER NOT NULL REFERENCES files(id),
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,             -- assigned | uploading | uploaded | gone | rejected
    started_at REAL,
    ended_at REAL,
    bytes INTEGER,
    error TEXT,
    PRIMARY KEY (file_id, job_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_upload_per_job ON deliveries(job_id)
    WHERE state IN ('uploading', 'uploaded');
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

RESERVE_SECONDS = 7 * 86400
# Finished files stay in the journal (for ``pushagent status``) this long.
KEEP_FINISHED_SECONDS = 30 * 86400


@dataclass(frozen=True)
class FileRow:
    id: int
    rel_path: str
    segment: str | None
    state: str
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


@dataclass(frozen=True)
class DeliveryRow:
    file_id: int
    job_id: str
    state: str
    started_at: float | None
    ended_at: float | None
    bytes: int | None
    error: str | None


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


class Journal:
    """Thread-safe: workers and the agent loop share one connection behind a lock."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # WAL + NORMAL survives a killed process (what the agent must survive); only an OS
        # crash may lose the last transactions, and the job-status check covers those.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @classmethod
    def for_state_dir(cls, state_dir: Path, *, clock: Callable[[], float] = time.time) -> Journal:
        return cls(state_dir / "journal.sqlite3", clock=clock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- files in the drop folder -------------------------------------------------------------

    def note_settling(
        self, rel_path: str, path: Path, *, size: int, mtime: float | None = None
    ) -> int:
        """Record a file seen in the drop folder; keeps its first-seen time across restarts."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM files WHERE rel_path = ? AND state IN ('settling', 'waiting')",
                (rel_path,),
            ).fetchone()
            if row:
                db.execute(
                    "UPDATE files SET size = ?, mtime = ? WHERE id = ?", (size, mtime, row["id"])
                )
                return int(row["id"])
            cursor = db.execute(
                "INSERT INTO files (rel_path, state, path, size, mtime, seen_at, reason) "
                "VALUES (?, 'settling', ?, ?, ?, ?, 'settling: still being written')",
                (rel_path, str(path), size, mtime, self._clock()),
            )
            return int(cursor.lastrowid or 0)

    def mark_waiting(self, file_id: int, *, segment: str, reason: str) -> FileRow:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET state = 'waiting', segment = ?, reason = ?, "
                "ready_at = COALESCE(ready_at, ?) WHERE id = ?",
                (segment, reason, self._clock(), file_id),
            )
        return self.file(file_id)

    def set_reason(
        self, file_id: int, reason: str, *, next_attempt_at: float | None = None
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET reason = ?, next_attempt_at = ? WHERE id = ?",
                (reason, next_attempt_at, file_id),
            )

    def forget(self, file_id: int) -> None:
        """A settling or waiting file vanished from the drop folder before it was claimed."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM files WHERE id = ? AND state IN ('settling', 'waiting')", (file_id,)
            )

    # --- claimed files and their deliveries -----------------------------------------------------

    def claim(self, file_id: int, *, path: Path, job_ids: list[str]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET state = 'claimed', path = ?, claimed_at = ?, "
                "reason = 'uploading' WHERE id = ?",
                (str(path), self._clock(), file_id),
            )
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (file_id, job_id, state) "
                "VALUES (?, ?, 'assigned')",
                [(file_id, job_id) for job_id in job_ids],
            )

    def assign_more(self, file_id: int, job_ids: list[str]) -> None:
        """A requeued claimed file found new waiting jobs."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (file_id, job_id, state) "
                "VALUES (?, ?, 'assigned')",
                [(file_id, job_id) for job_id in job_ids],
            )
            db.execute("UPDATE files SET reason = 'uploading' WHERE id = ?", (file_id,))

    def upload_started(self, file_id: int, job_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'uploading', started_at = ?, error = NULL "
                "WHERE file_id = ? AND job_id = ?",
                (self._clock(), file_id, job_id),
            )

    def delivery_ended(
        self,
        file_id: int,
        job_id: str,
        state: str,
        *,
        nbytes: int | None = None,
        error: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = ?, ended_at = ?, bytes = ?, error = ? "
                "WHERE file_id = ? AND job_id = ?",
                (state, self._clock(), nbytes, error, file_id, job_id),
            )

    def upload_interrupted(self, file_id: int, job_id: str, error: str) -> None:
        """The attempt failed in a way that may or may not have reached the server."""
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET error = ? WHERE file_id = ? AND job_id = ?",
                (error, file_id, job_id),
            )

    def count_attempt(self, file_id: int, reason: str, *, next_attempt_at: float) -> int:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET attempts = attempts + 1, reason = ?, next_attempt_at = ? "
                "WHERE id = ?",
                (reason, next_attempt_at, file_id),
            )
            row = db.execute("SELECT attempts FROM files WHERE id = ?", (file_id,)).fetchone()
            return int(row["attempts"])

    def intend_final(self, file_id: int, target: Path) -> None:
        """Written before the final move, so a crash inside the move can be finished, not redone."""
        with self._tx() as db:
            db.execute("UPDATE files SET final_path = ? WHERE id = ?", (str(target), file_id))

    def finish(self, file_id: int, *, state: str, final_path: Path, reason: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET state = ?, final_path = ?, path = ?, finished_at = ?, "
                "reason = ?, next_attempt_at = NULL WHERE id = ?",
                (state, str(final_path), str(final_path), self._clock(), reason, file_id),
            )

    def unclaim(self, file_id: int, dropped: Path) -> None:
        """The claim was journalled but the file never left the drop folder: wait again."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM deliveries WHERE file_id = ? AND state = 'assigned'", (file_id,)
            )
            db.execute(
                "UPDATE files SET state = 'waiting', path = ?, claimed_at = NULL WHERE id = ?",
                (str(dropped), file_id),
            )

    def drop_claim(self, file_id: int) -> None:
        """The file is gone (removed by someone else): nothing is left to deliver."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM deliveries WHERE file_id = ? AND state = 'assigned'", (file_id,)
            )
            db.execute(
                "UPDATE files SET state = 'vanished', finished_at = ?, "
                "reason = 'removed by someone else before it was delivered' WHERE id = ?",
                (self._clock(), file_id),
            )

    def reserved_jobs(self) -> set[str]:
        """Jobs no other file may be given: assigned, being uploaded, uploaded, or failed by us.

        Finished files count for ``RESERVE_SECONDS``: long enough for any lag in the server's
        list of waiting jobs, short enough that the query stays small after months of work.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT d.job_id FROM deliveries d JOIN files f ON f.id = d.file_id "
                "WHERE d.state != 'gone' AND (f.state = 'claimed' OR f.finished_at > ?)",
                (self._clock() - RESERVE_SECONDS,),
            ).fetchall()
        return {row["job_id"] for row in rows}

    def prune(self, *, keep_seconds: float = KEEP_FINISHED_SECONDS) -> int:
        """Forget files finished longer ago than ``keep_seconds``; returns how many."""
        cutoff = self._clock() - keep_seconds
        with self._tx() as db:
            old = "SELECT id FROM files WHERE state IN ('done', 'failed', 'vanished') " \
                  "AND finished_at < ?"
            db.execute(f"DELETE FROM deliveries WHERE file_id IN ({old})", (cutoff,))
            return db.execute(f"DELETE FROM files WHERE id IN ({old})", (cutoff,)).rowcount

    # --- reading ---------------------------------------------------------------------------------

    def file(self, file_id: int) -> FileRow:
        with self._lock:
            row = self._db.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return FileRow(**dict(row))

    def files(self, *states: str) -> list[FileRow]:
        """Files in ``states``, oldest first."""
        marks = ", ".join("?" for _ in states)
        return self._select(
            f"SELECT * FROM files WHERE state IN ({marks}) "
            "ORDER BY COALESCE(mtime, ready_at, seen_at), id",
            states,
        )

    def recently_finished(self, *, limit: int) -> list[FileRow]:
        return self._select(
            "SELECT * FROM files WHERE state IN ('done', 'failed') "
            "ORDER BY finished_at DESC LIMIT ?",
            (limit,),
        )

    def _select(self, sql: str, params: tuple[object, ...]) -> list[FileRow]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [FileRow(**dict(row)) for row in rows]

    def deliveries(self, file_id: int) -> list[DeliveryRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE file_id = ? ORDER BY job_id", (file_id,)
            ).fetchall()
        return [DeliveryRow(**dict(row)) for row in rows]

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])
