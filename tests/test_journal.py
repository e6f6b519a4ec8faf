from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pushagent.errors import StateLockedError
from pushagent.journal import Journal, StateLock
from tests.fakes import FakeClock


def test_a_file_goes_from_settling_to_done(tmp_path: Path) -> None:
    clock = FakeClock()
    journal = Journal.for_state_dir(tmp_path, clock=clock)
    file_id = journal.note_settling("45311.csv", tmp_path / "45311.csv", size=10, mtime=1.0)
    assert journal.note_settling("45311.csv", tmp_path / "45311.csv", size=12, mtime=2.0) == file_id
    row = journal.mark_waiting(file_id, segment="45311", reason="waiting")
    assert (row.state, row.segment, row.size, row.ready_at) == ("waiting", "45311", 12, 1000.0)
    journal.claim(file_id, path=tmp_path / "claimed", job_ids=["1", "2"])
    assert journal.reserved_jobs() == {"1", "2"}
    journal.upload_started(file_id, "1")
    journal.delivery_ended(file_id, "1", "uploaded", nbytes=12)
    journal.delivery_ended(file_id, "2", "gone", error="job CANCELLED")
    assert journal.reserved_jobs() == {"1"}
    journal.finish(file_id, state="done", final_path=tmp_path / "done.csv", reason=None)
    assert [r.id for r in journal.recently_finished(limit=5)] == [file_id]
    assert {d.job_id: d.state for d in journal.deliveries(file_id)} == {
        "1": "uploaded",
        "2": "gone",
    }


def test_a_job_can_never_take_two_uploads(tmp_path: Path) -> None:
    journal = Journal.for_state_dir(tmp_path)
    first = journal.note_settling("a.csv", tmp_path / "a.csv", size=1, mtime=1.0)
    second = journal.note_settling("b.csv", tmp_path / "b.csv", size=1, mtime=1.0)
    journal.claim(first, path=tmp_path / "a", job_ids=["7"])
    journal.claim(second, path=tmp_path / "b", job_ids=["7"])
    journal.upload_started(first, "7")
    with pytest.raises(sqlite3.IntegrityError):
        journal.upload_started(second, "7")


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
    old = journal.note_settling("old.csv", tmp_path / "old.csv", size=1, mtime=1.0)
    journal.claim(old, path=tmp_path / "o", job_ids=["1"])
    journal.delivery_ended(old, "1", "uploaded", nbytes=1)
    journal.finish(old, state="done", final_path=tmp_path / "done-old.csv", reason=None)
    clock.advance(8 * 86400)
    assert journal.reserved_jobs() == set()
    fresh = journal.note_settling("new.csv", tmp_path / "new.csv", size=1, mtime=2.0)
    journal.claim(fresh, path=tmp_path / "n", job_ids=["2"])
    clock.advance(30 * 86400)
    assert journal.prune() == 1
    assert [r.id for r in journal.files("claimed")] == [fresh]
    assert journal.reserved_jobs() == {"2"}
    assert journal.deliveries(old) == []
