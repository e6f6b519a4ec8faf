from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pushagent.errors import JournalUnavailable, StateLockedError
from pushagent.journal import MIGRATIONS, PULL_SCHEMA, SCHEMA_VERSION, Journal, StateLock
from pushagent.lifecycle import (
    DELIVERY_MOVES,
    FILE_MOVES,
    PULL_FILE_MOVES,
    PULL_JOB_MOVES,
    DeliveryState,
    FileState,
    IllegalTransition,
    PullFileState,
    PullJobState,
)
from pushagent.pulljournal import PullJournal
from tests.fakes import FakeClock


def _claimed(journal: Journal, tmp_path: Path, name: str, job_ids: list[str]) -> int:
    file_id = journal.note_settling(name, tmp_path / name, size=1, mtime=1.0)
    journal.mark_waiting(file_id, segment="45311", reason="waiting")
    journal.claim(file_id, path=tmp_path / "claimed" / name, job_ids=job_ids)
    return file_id


def test_a_file_goes_from_settling_to_done(tmp_path: Path) -> None:
    clock = FakeClock()
    journal = Journal.for_state_dir(tmp_path, clock=clock)
    file_id = journal.note_settling("45311.csv", tmp_path / "45311.csv", size=10, mtime=1.0)
    assert journal.note_settling("45311.csv", tmp_path / "45311.csv", size=12, mtime=2.0) == file_id
    row = journal.mark_waiting(file_id, segment="45311", reason="waiting")
    assert (row.state, row.segment, row.size, row.ready_at) == (
        FileState.WAITING, "45311", 12, 1000.0
    )
    journal.claim(file_id, path=tmp_path / "claimed", job_ids=["1", "2"])
    assert journal.reserved_jobs() == {"1", "2"}
    journal.upload_started(file_id, "1")
    journal.delivery_ended(file_id, "1", DeliveryState.UPLOADED, nbytes=12, sha256="ab")
    journal.delivery_ended(file_id, "2", DeliveryState.GONE, error="job CANCELLED")
    assert journal.reserved_jobs() == {"1"}
    journal.conclude(file_id, FileState.DELIVERED, reason=None)
    journal.finish(file_id, final_path=tmp_path / "done.csv")
    assert journal.file(file_id).state is FileState.DONE
    assert [r.id for r in journal.recently_finished(limit=5)] == [file_id]
    assert {d.job_id: d.state for d in journal.deliveries(file_id)} == {
        "1": DeliveryState.UPLOADED,
        "2": DeliveryState.GONE,
    }


def test_an_illegal_file_transition_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    journal = Journal.for_state_dir(tmp_path)
    file_id = journal.note_settling("a.csv", tmp_path / "a.csv", size=1, mtime=1.0)
    with pytest.raises(IllegalTransition, match="from settling to claimed"):
        journal.claim(file_id, path=tmp_path / "c", job_ids=["1"])
    assert journal.file(file_id).state is FileState.SETTLING
    assert journal.deliveries(file_id) == []
    with pytest.raises(IllegalTransition, match="from settling to done or failed"):
        journal.finish(file_id, final_path=tmp_path / "done.csv")


def test_a_finished_file_never_moves_again(tmp_path: Path) -> None:
    journal = Journal.for_state_dir(tmp_path)
    file_id = _claimed(journal, tmp_path, "a.csv", ["1"])
    journal.conclude(file_id, FileState.REJECTED, reason="invalid CSV")
    journal.finish(file_id, final_path=tmp_path / "failed.csv")
    assert journal.file(file_id).state is FileState.FAILED
    for move in (lambda: journal.reclaim(file_id), lambda: journal.resettle(file_id, "x"),
                 lambda: journal.mark_waiting(file_id, segment="1", reason="x")):
        with pytest.raises(IllegalTransition):
            move()


def test_an_illegal_delivery_transition_is_refused(tmp_path: Path) -> None:
    journal = Journal.for_state_dir(tmp_path)
    file_id = _claimed(journal, tmp_path, "a.csv", ["1"])
    with pytest.raises(IllegalTransition, match="from assigned to uploaded"):
        journal.delivery_ended(file_id, "1", DeliveryState.UPLOADED)
    journal.upload_started(file_id, "1")
    journal.delivery_ended(file_id, "1", DeliveryState.UPLOADED)
    with pytest.raises(IllegalTransition, match="from uploaded to assigned"):
        journal.delivery_ended(file_id, "1", DeliveryState.ASSIGNED)


@pytest.mark.parametrize("table", [FILE_MOVES, DELIVERY_MOVES, PULL_JOB_MOVES, PULL_FILE_MOVES])
def test_every_state_has_a_row_in_its_transition_table(table: dict[Any, Any]) -> None:
    states = type(next(iter(table)))
    assert set(table) == set(states)
    assert all(target in table for targets in table.values() for target in targets)


def test_a_changed_claimed_file_settles_again_and_is_claimed_again(tmp_path: Path) -> None:
    journal = Journal.for_state_dir(tmp_path)
    file_id = _claimed(journal, tmp_path, "a.csv", ["1"])
    journal.resettle(file_id, "changed after it was claimed")
    assert journal.file(file_id).state is FileState.RESETTLING
    assert journal.reserved_jobs() == {"1"}  # its job stays its own meanwhile
    journal.reclaim(file_id)
    assert journal.file(file_id).state is FileState.CLAIMED


def test_a_job_can_never_take_two_uploads(tmp_path: Path) -> None:
    journal = Journal.for_state_dir(tmp_path)
    first = _claimed(journal, tmp_path, "a.csv", ["7"])
    second = _claimed(journal, tmp_path, "b.csv", ["7"])
    journal.upload_started(first, "7")
    with pytest.raises(sqlite3.IntegrityError):
        journal.upload_started(second, "7")


def test_a_journal_of_the_first_release_is_migrated_in_place(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.executescript(V0_SCHEMA)
    db.execute(
        "INSERT INTO files (id, rel_path, segment, state, path, size, mtime, seen_at, "
        "claimed_at, reason) VALUES (1, 'a.csv', '45311', 'claimed', '/s/claimed/1/a.csv', 5, "
        "1.0, 1.0, 2.0, 'uploading')"
    )
    db.execute("INSERT INTO deliveries (file_id, job_id, state) VALUES (1, '9', 'uploading')")
    db.commit()
    db.close()
    journal = Journal.for_state_dir(tmp_path)
    row = journal.file(1)
    assert (row.state, row.sha256, row.path) == (FileState.CLAIMED, None, "/s/claimed/1/a.csv")
    assert [d.state for d in journal.deliveries(1)] == [DeliveryState.UPLOADING]
    journal.delivery_ended(1, "9", DeliveryState.UPLOADED, sha256="cd")
    journal.close()
    again = sqlite3.connect(tmp_path / "journal.sqlite3")
    assert again.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_journal_of_version_1_keeps_its_deliveries_and_learns_categories(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.executescript(V0_SCHEMA)
    for statement in MIGRATIONS[1]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO files (id, rel_path, segment, state, path, size, mtime, seen_at, "
        "claimed_at, reason) VALUES (1, 'a.csv', '45311', 'claimed', '/s/claimed/1/a.csv', 5, "
        "1.0, 1.0, 2.0, 'uploading')"
    )
    db.execute("INSERT INTO deliveries (file_id, job_id, state) VALUES (1, '9', 'uploading')")
    db.commit()
    db.close()
    journal = Journal.for_state_dir(tmp_path)
    # A delivery written before categories were kept was to a SEGMENT_EXPORT job.
    assert [(d.job_id, d.category) for d in journal.deliveries(1)] == [("9", None)]
    second = journal.note_settling("b.csv", tmp_path / "b.csv", size=1, mtime=1.0)
    journal.mark_waiting(second, segment="45311", reason="waiting")
    journal.claim(second, path=tmp_path / "claimed" / "b.csv", job_ids=["10", "11"],
                  categories={"10": "IDENTITY_IMPORT"})
    assert [(d.job_id, d.category) for d in journal.deliveries(second)] == [
        ("10", "IDENTITY_IMPORT"), ("11", None)]
    journal.close()
    again = sqlite3.connect(tmp_path / "journal.sqlite3")
    assert again.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_journal_of_version_2_gains_the_pull_tables_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.executescript(V0_SCHEMA)
    for statement in (*MIGRATIONS[1], *MIGRATIONS[2]):
        db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.execute(
        "INSERT INTO files (id, rel_path, segment, state, path, size, mtime, seen_at, "
        "claimed_at, reason) VALUES (1, 'a.csv', '45311', 'claimed', '/s/claimed/1/a.csv', 5, "
        "1.0, 1.0, 2.0, 'uploading')"
    )
    db.execute("INSERT INTO deliveries (file_id, job_id, state, category) "
               "VALUES (1, '9', 'assigned', 'IDENTITY_IMPORT')")
    db.commit()
    db.close()
    journal = Journal.for_state_dir(tmp_path)
    assert [(d.job_id, d.category) for d in journal.deliveries(1)] == [("9", "IDENTITY_IMPORT")]
    pulls = PullJournal(journal)
    pulls.take_on("2001", folder="/out/2001", job_json="{}", files=[("a.csv", "a.csv")])
    assert [f.state for f in pulls.files("2001")] == [PullFileState.PENDING]
    journal.close()
    again = sqlite3.connect(tmp_path / "journal.sqlite3")
    assert again.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_a_pull_job_moves_only_as_its_table_allows(tmp_path: Path) -> None:
    pulls = PullJournal(Journal.for_state_dir(tmp_path))
    pulls.take_on("7", folder="/out/7", job_json="{}", files=[("a.csv", "a.csv")])
    with pytest.raises(IllegalTransition, match="cannot go from downloading to done"):
        pulls.finish("7", PullJobState.DONE)
    with pytest.raises(IllegalTransition, match="cannot go from pending to deleted"):
        pulls.deleted("7", "a.csv")
    pulls.downloaded("7", "a.csv", size=3, sha256="ab", problems=None)
    pulls.on_disk("7")
    # Listed as ready again once on disk: nothing changes, no name is added.
    pulls.take_on("7", folder="/out/7", job_json="{}", files=[("b.csv", "b.csv")])
    assert [(f.name, f.state) for f in pulls.files("7")] == [("a.csv", PullFileState.DOWNLOADED)]
    pulls.deleted("7", "a.csv")
    pulls.finish("7", PullJobState.DONE)
    assert pulls.job("7").state is PullJobState.DONE  # type: ignore[union-attr]
    with pytest.raises(IllegalTransition):
        pulls.on_disk("7")


def test_a_gone_pull_job_listed_as_ready_again_is_downloaded_again(tmp_path: Path) -> None:
    pulls = PullJournal(Journal.for_state_dir(tmp_path))
    pulls.take_on("8", folder="/out/8", job_json="{}", files=[("a.csv", "a.csv")])
    pulls.finish("8", PullJobState.GONE, reason="job 8 is CANCELLED")
    pulls.take_on("8", folder="/out/8", job_json="{}", files=[("a.csv", "a.csv")])
    row = pulls.job("8")
    assert row is not None and (row.state, row.reason) == (PullJobState.DOWNLOADING, None)


def test_a_journal_of_version_3_gains_what_files_were_converted_from(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.executescript(V0_SCHEMA)
    for statement in (*MIGRATIONS[1], *MIGRATIONS[2]):
        db.execute(statement)
    db.executescript(PULL_SCHEMA)
    db.execute("PRAGMA user_version = 3")
    db.execute(
        "INSERT INTO files (id, rel_path, segment, state, path, size, mtime, seen_at, "
        "claimed_at, reason, sha256) VALUES (1, 'a.csv', '45311', 'claimed', '/s/claimed/1-a.csv',"
        " 5, 1.0, 1.0, 2.0, 'uploading', 'ab')"
    )
    db.commit()
    db.close()
    journal = Journal.for_state_dir(tmp_path)
    row = journal.file(1)
    assert (row.state, row.sha256, row.converted_from) == (FileState.CLAIMED, "ab", None)
    journal.validated(1, size=4, sha256="cd", converted_from="cp1252, semicolon-separated")
    assert journal.file(1).converted_from == "cp1252, semicolon-separated"
    journal.close()
    again = sqlite3.connect(tmp_path / "journal.sqlite3")
    assert again.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_a_full_disk_is_a_journal_condition_not_a_sqlite_error(tmp_path: Path) -> None:
    journal = Journal.for_state_dir(tmp_path)
    journal._db.execute("PRAGMA max_page_count = 1")
    with pytest.raises(JournalUnavailable, match="free space in the state_dir"):
        for n in range(200):
            journal.note_settling(f"{n:0200d}.csv", tmp_path / f"{n}.csv", size=1, mtime=1.0)


V0_SCHEMA = """
CREATE TABLE files (
    id INTEGER PRIMARY KEY, rel_path TEXT NOT NULL, segment TEXT, state TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER, mtime REAL, seen_at REAL NOT NULL, ready_at REAL,
    claimed_at REAL, finished_at REAL, reason TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL, final_path TEXT
);
CREATE INDEX files_state ON files(state);
CREATE INDEX files_finished ON files(finished_at);
CREATE UNIQUE INDEX files_open_drop ON files(rel_path) WHERE state IN ('settling', 'waiting');
CREATE TABLE deliveries (
    file_id INTEGER NOT NULL REFERENCES files(id), job_id TEXT NOT NULL, state TEXT NOT NULL,
    started_at REAL, ended_at REAL, bytes INTEGER, error TEXT, PRIMARY KEY (file_id, job_id)
);
CREATE UNIQUE INDEX one_upload_per_job ON deliveries(job_id)
    WHERE state IN ('uploading', 'uploaded');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_the_journal_survives_reopening(tmp_path: Path) -> None:
    journal = Journal.for_state_dir(tmp_path)
    file_id = journal.note_settling("a.csv", tmp_path / "a.csv", size=1, mtime=1.0)
    journal.set_meta("last_contact", "123.5")
    journal.close()
    again = Journal.for_state_dir(tmp_path)
    assert again.file(file_id).rel_path == "a.csv"
    assert again.meta("last_contact") == "123.5"


def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from pushagent.journal import StateLock; "
            "StateLock(pathlib.Path(sys.argv[1])).acquire(); print('locked', flush=True); "
            "sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateLockedError, match=rf"pid {holder.pid}.*own state_dir"):
            StateLock(tmp_path).acquire()
    finally:
        holder.communicate("")
    lock = StateLock(tmp_path)
    lock.acquire()  # the holder exited: the lock is free again
    lock.release()


def test_old_finished_files_are_pruned_and_stop_reserving_jobs(tmp_path: Path) -> None:
    clock = FakeClock()
    journal = Journal.for_state_dir(tmp_path, clock=clock)
    old = _claimed(journal, tmp_path, "old.csv", ["1"])
    journal.upload_started(old, "1")
    journal.delivery_ended(old, "1", DeliveryState.UPLOADED, nbytes=1)
    journal.conclude(old, FileState.DELIVERED, reason=None)
    journal.finish(old, final_path=tmp_path / "done-old.csv")
    clock.advance(8 * 86400)
    assert journal.reserved_jobs() == set()
    fresh = _claimed(journal, tmp_path, "new.csv", ["2"])
    clock.advance(30 * 86400)
    assert journal.prune() == 1
    assert [r.id for r in journal.files(FileState.CLAIMED)] == [fresh]
    assert journal.reserved_jobs() == {"2"}
    assert journal.deliveries(old) == []
