from __future__ import annotations

import os
from pathlib import Path, PurePath

from pushagent.readiness import RENAME_GRACE_SECONDS, ReadinessTracker
from tests.fakes import FakeClock


def tracker(clock: FakeClock, *, trigger: str | None = None) -> ReadinessTracker:
    return ReadinessTracker(
        settle_seconds=2.0, ignore=(".*", "*.tmp", "*.part"), trigger_suffix=trigger, clock=clock
    )


def ready_paths(t: ReadinessTracker) -> list[Path]:
    return [c.path for c in t.take_ready()]


def test_a_written_file_waits_for_the_settle_time(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock)
    f = tmp_path / "1.csv"
    f.write_text("a\n1\n")
    t.observe(f, event="created")
    t.observe(f, event="written")
    clock.advance(1.9)
    assert ready_paths(t) == []
    clock.advance(0.2)
    assert ready_paths(t) == [f]
    assert t.tracked() == []


def test_growth_restarts_the_settle_time(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock)
    f = tmp_path / "1.csv"
    f.write_text("a\n")
    t.observe(f, event="scan")
    clock.advance(1.5)
    with open(f, "a") as stream:
        stream.write("1\n")
    clock.advance(1.0)  # 2.5 s since first seen, but it changed: not ready
    assert ready_paths(t) == []
    clock.advance(2.0)
    assert ready_paths(t) == [f]


def test_a_rename_into_the_folder_is_ready_at_once(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock)
    f = tmp_path / "1.csv"
    f.write_text("a\n1\n")
    t.observe(f, event="moved")
    assert ready_paths(t) == [f]


def test_a_create_without_a_writer_is_a_rename_after_the_grace(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock)
    f = tmp_path / "1.csv"
    f.write_text("a\n1\n")
    t.observe(f, event="created")
    assert ready_paths(t) == []
    clock.advance(RENAME_GRACE_SECONDS)
    assert ready_paths(t) == [f]


def test_a_create_followed_by_a_write_is_not_a_rename(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock)
    f = tmp_path / "1.csv"
    f.write_text("a\n")
    t.observe(f, event="created")
    t.observe(f, event="written")
    clock.advance(RENAME_GRACE_SECONDS * 5)
    assert ready_paths(t) == []


def test_trigger_file_gates_readiness(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock, trigger=".done")
    f = tmp_path / "1.csv"
    f.write_text("a\n1\n")
    t.observe(f, event="moved")
    clock.advance(10)
    assert ready_paths(t) == []
    (tmp_path / "1.csv.done").write_text("")
    assert ready_paths(t) == [f]
    assert t.ignored(PurePath("1.csv.done"))


def test_ignored_names_and_folders() -> None:
    t = tracker(FakeClock())
    assert t.ignored(PurePath(".hidden.csv"))
    assert t.ignored(PurePath("x.csv.tmp"))
    assert t.ignored(PurePath("x.part"))
    assert t.ignored(PurePath(".staging/1.csv"))
    assert not t.ignored(PurePath("45311/export.csv"))


def test_a_symlink_is_reported_odd_without_settling(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock)
    secret = tmp_path / "secret"
    secret.write_text("password\n")
    link = tmp_path / "1.csv"
    os.symlink(secret, link)
    t.observe(link, event="created")
    t.observe(link, event="written")
    [candidate] = t.take_ready()
    assert candidate.path == link
    assert candidate.odd is not None and "symbolic link" in candidate.odd


def test_a_vanished_file_is_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock)
    f = tmp_path / "1.csv"
    f.write_text("a\n1\n")
    t.observe(f, event="scan")
    f.unlink()
    clock.advance(5)
    assert ready_paths(t) == []
    assert t.tracked() == []
