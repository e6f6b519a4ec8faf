from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from pushagent.readiness import RENAME_GRACE_SECONDS, ReadinessTracker, open_for_writing
from tests.fakes import FakeClock


class FakeLstat:
    """An in-memory folder for ``lstat``: size, mtime and mode per path; counts every call."""

    def __init__(self) -> None:
        self.entries: dict[Path, tuple[int, int, int]] = {}
        self.calls = 0

    def write(self, path: Path, size: int, *, mtime_ns: int = 1, mode: int = stat.S_IFREG) -> None:
        self.entries[path] = (mode | 0o644, size, mtime_ns)

    def remove(self, path: Path) -> None:
        del self.entries[path]

    def __call__(self, path: Path) -> os.stat_result:
        self.calls += 1
        if path not in self.entries:
            raise FileNotFoundError(path)
        mode, size, mtime_ns = self.entries[path]
        fields = (mode, 1, 1, 1, 0, 0, size, 0, mtime_ns // 10**9, 0)
        return os.stat_result(fields, {"st_mtime": mtime_ns / 1e9, "st_mtime_ns": mtime_ns})


def tracker(
    clock: FakeClock,
    *,
    trigger: str | None = None,
    lstat: Callable[[Path], os.stat_result] = os.lstat,
) -> ReadinessTracker:
    return ReadinessTracker(
        settle_seconds=2.0,
        ignore=(".*", "*.tmp", "*.part"),
        trigger_suffix=trigger,
        clock=clock,
        lstat=lstat,
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
    assert f not in t and len(t) == 0


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
    trigger = tmp_path / "1.csv.done"
    trigger.write_text("")
    assert t.ignored("1.csv.done")
    t.observe(f, event="scan")  # what the agent does on the trigger's event
    assert ready_paths(t) == [f]


def test_ignored_names_and_folders() -> None:
    t = tracker(FakeClock())
    assert t.ignored(".hidden.csv")
    assert t.ignored("x.csv.tmp")
    assert t.ignored("x.part")
    assert t.ignored(".staging/1.csv")
    assert not t.ignored("45311/export.csv")


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
    assert f not in t and len(t) == 0


# --- with a fake lstat --------------------------------------------------------------------------

DROP = Path("/drop")


def test_membership_and_length() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    a, b = DROP / "a.csv", DROP / "b.csv"
    fs.write(a, 1)
    fs.write(b, 1)
    t.observe(a, event="written")
    t.observe(b, event="written")
    assert a in t and b in t and DROP / "c.csv" not in t
    assert len(t) == 2


def test_many_files_come_out_in_due_order_and_only_when_due() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    paths = [DROP / f"{i}.csv" for i in range(500)]
    # Observed in a shuffled order, 10 ms apart: each is due 2 s after its own write.
    order = sorted(range(500), key=lambda i: (i * 7919) % 500)
    seen_at = []
    for i in order:
        fs.write(paths[i], 1)
        t.observe(paths[i], event="written")
        seen_at.append(clock.now)
        clock.advance(0.01)
    assert t.next_deadline() == seen_at[0] + 2.0
    clock.now = seen_at[249] + 2.0
    assert ready_paths(t) == [paths[i] for i in order[:250]]
    assert t.next_deadline() == seen_at[250] + 2.0
    clock.now = seen_at[-1] + 2.0
    assert ready_paths(t) == [paths[i] for i in order[250:]]
    assert t.next_deadline() is None and len(t) == 0


def test_a_file_changed_without_an_event_is_re_armed() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    f = DROP / "1.csv"
    fs.write(f, 10)
    t.observe(f, event="written")
    clock.advance(1.0)
    fs.write(f, 20, mtime_ns=2)  # the writer appended; no event reached the tracker
    clock.advance(1.0)
    assert ready_paths(t) == []
    assert t.next_deadline() == clock.now + 2.0
    clock.advance(2.0)
    [candidate] = t.take_ready()
    assert (candidate.path, candidate.size) == (f, 20)


def test_write_events_postpone_without_a_heap_entry_each() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    f = DROP / "1.csv"
    for size in range(1, 1001):
        fs.write(f, size, mtime_ns=size)
        t.observe(f, event="written")
        clock.advance(0.01)
    assert len(t._heap) == 1  # one file being written holds one entry
    assert t.next_deadline() == clock.now - 0.01 + 2.0
    assert ready_paths(t) == []
    clock.advance(2.0)
    assert ready_paths(t) == [f]


def test_a_vanished_file_is_dropped_when_due() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    f = DROP / "1.csv"
    fs.write(f, 1)
    t.observe(f, event="written")
    fs.remove(f)
    clock.advance(2.0)
    assert ready_paths(t) == []
    assert f not in t and t.next_deadline() is None


def test_a_file_waiting_for_its_trigger_has_no_deadline() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, trigger=".done", lstat=fs)
    f, other = DROP / "1.csv", DROP / "2.csv"
    fs.write(f, 1)
    t.observe(f, event="moved")
    assert ready_paths(t) == []
    assert t.next_deadline() is None  # the loop sleeps instead of spinning
    assert t.waiting_for_trigger() == 1 and t.paths_waiting_for_trigger() == [f]
    assert f in t and len(t) == 1
    fs.write(other, 1)
    t.observe(other, event="written")
    assert t.next_deadline() == clock.now + 2.0  # another file's deadline, never a past one
    clock.advance(5)
    fs.calls = 0
    assert ready_paths(t) == []
    assert fs.calls == 2  # the other file and its missing trigger; the waiting one costs nothing
    assert t.next_deadline() is None and t.waiting_for_trigger() == 2


def test_the_trigger_appearing_makes_the_file_ready() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, trigger=".done", lstat=fs)
    f = DROP / "sub" / "1.csv"
    fs.write(f, 1)
    t.observe(f, event="written")
    clock.advance(2.0)
    assert ready_paths(t) == []
    t.observe(f, event="scan")  # a false alarm: due at once, looked at, waiting again
    deadline = t.next_deadline()
    assert deadline is not None and deadline <= clock.now
    assert ready_paths(t) == [] and t.next_deadline() is None
    assert t.waiting_for_trigger() == 1
    clock.advance(60)
    fs.write(DROP / "sub" / "1.csv.done", 0)
    t.observe(f, event="scan")  # the agent saw the trigger created
    assert ready_paths(t) == [f]
    assert t.waiting_for_trigger() == 0 and f not in t


def test_a_trigger_present_before_the_file_settles_needs_no_event() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, trigger=".done", lstat=fs)
    f = DROP / "1.csv"
    fs.write(f, 1)
    fs.write(DROP / "1.csv.done", 0)
    t.observe(f, event="written")
    clock.advance(2.0)
    assert ready_paths(t) == [f]


def test_a_file_written_again_while_waiting_for_its_trigger_settles_again() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, trigger=".done", lstat=fs)
    f = DROP / "1.csv"
    fs.write(f, 1)
    t.observe(f, event="moved")
    assert ready_paths(t) == [] and t.waiting_for_trigger() == 1
    fs.write(f, 2, mtime_ns=2)
    t.observe(f, event="written")
    assert t.waiting_for_trigger() == 0
    assert t.next_deadline() == clock.now + 2.0


def test_an_odd_entry_is_due_at_once() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    d = DROP / "x.csv"
    fs.write(d, 0, mode=stat.S_IFDIR)
    t.observe(d, event="written")
    [candidate] = t.take_ready()
    assert candidate.odd is not None and "directory" in candidate.odd


def test_oldest_mtime_by_key_in_one_pass() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    for name, mtime_ns in [("a/1.csv", 5e9), ("a/2.csv", 3e9), ("b/1.csv", 4e9), ("stray.csv", 1)]:
        fs.write(DROP / name, 1, mtime_ns=int(mtime_ns))
        t.observe(DROP / name, event="written")
    calls: list[Path] = []

    def segment(path: Path) -> str | None:
        calls.append(path)
        return None if path.name == "stray.csv" else path.parent.name

    assert t.oldest_mtime_by(segment) == {"a": 3.0, "b": 4.0}
    assert len(calls) == 4


def test_scale_a_pass_with_nothing_due_makes_no_lstat_call() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    paths = [DROP / f"{i}.csv" for i in range(20_000)]
    for path in paths:
        fs.write(path, 1)
        t.observe(path, event="created")
        t.observe(path, event="written")
    assert fs.calls == 40_000  # one per event
    fs.calls = 0
    clock.advance(1.0)
    for _ in range(10):
        assert t.take_ready() == []
        assert t.next_deadline() == clock.now + 1.0
    assert paths[-1] in t
    assert fs.calls == 0
    assert len(t._heap) <= 2 * len(t) + 64
    clock.advance(1.0)
    assert len(t.take_ready()) == 20_000
    assert fs.calls == 20_000  # one per ready file


def test_forgotten_files_do_not_pile_up_in_the_heap() -> None:
    fs, clock = FakeLstat(), FakeClock()
    t = tracker(clock, lstat=fs)
    for i in range(5000):
        path = DROP / f"{i}.csv"
        fs.write(path, 1)
        t.observe(path, event="written")
        fs.remove(path)
        t.observe(path, event="deleted")  # gone: forgotten
    assert len(t) == 0 and len(t._heap) <= 64
    assert t.next_deadline() is None


def test_a_renamed_file_still_open_for_writing_waits_for_its_writer(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(clock)
    f = tmp_path / "1.csv"
    with open(f, "w") as writer:
        writer.write("a\n")
        writer.flush()
        assert open_for_writing(f)
        t.observe(f, event="moved")
        assert ready_paths(t) == []
        clock.advance(5.0)
        assert ready_paths(t) == [], "held open: the settle time alone does not release it"
        writer.write("1\n")  # what a dropper writes after its rename must reach the upload
    assert not open_for_writing(f)
    t.observe(f, event="written")  # the writer's close
    clock.advance(2.0)
    (candidate,) = t.take_ready()
    assert candidate.size == len("a\n1\n")


def test_a_file_nobody_writes_is_not_held(tmp_path: Path) -> None:
    f = tmp_path / "1.csv"
    f.write_text("a\n1\n")
    with open(f) as reader:
        assert reader.read() and not open_for_writing(f)
    assert not open_for_writing(tmp_path / "missing.csv")


def test_the_creating_writers_open_means_not_a_rename_but_a_readers_open_changes_nothing(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    t = tracker(clock)
    created, renamed = tmp_path / "1.csv", tmp_path / "2.csv"
    created.write_text("a\n1\n")
    renamed.write_text("a\n2\n")
    t.observe(created, event="created")
    t.observe(created, event="opened")  # within the grace: the writer that created it
    t.observe(renamed, event="moved")
    clock.advance(RENAME_GRACE_SECONDS)
    t.observe(renamed, event="opened")  # a reader (the agent's own check, a virus scanner)
    assert ready_paths(t) == [renamed]
    clock.advance(2.0)
    assert ready_paths(t) == [created], "the writer's file waited for the settle time"


def test_a_file_found_by_a_scan_counts_its_mtime_toward_the_settle_time(tmp_path: Path) -> None:
    clock = FakeClock()
    fs = FakeLstat()
    old, fresh = tmp_path / "old.csv", tmp_path / "fresh.csv"
    fs.write(old, 10, mtime_ns=100 * 10**9)  # still for 900 s at wall time 1000
    fs.write(fresh, 10, mtime_ns=999 * 10**9)  # written a second ago
    t = ReadinessTracker(
        settle_seconds=2.0, ignore=(), trigger_suffix=None, clock=clock, lstat=fs,
        being_written=lambda path: False, wall=lambda: 1000.0,
    )
    t.observe(old, event="scan")
    t.observe(fresh, event="scan")
    assert [c.path for c in t.take_ready()] == [old]
    clock.advance(1.0)
    assert [c.path for c in t.take_ready()] == [fresh]
