"""Fault suite: droppers that misbehave or come in crowds (slow writers, rewrites, renames, the
same name twice, a thousand files at once); only complete files are sent, each once."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from pushagent.simulator import Simulator
from tests.e2e import drop_atomically, wait_for
from tests.faultkit import (
    Drop,
    FaultHome,
    assert_invariant,
    csv_rows,
    list_calls,
    received,
    requests_to,
    running,
    simulator,
    waiting_job,
)

pytestmark = pytest.mark.faults

SETTLE = 1.0
PAUSE = 0.15  # a dropper's pause between writes: well within the settle time, even on a busy CI


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with simulator(tmp_path) as s:
        yield s


def write_slowly(path: Path, pieces: list[bytes]) -> None:
    with open(path, "wb") as stream:
        for piece in pieces:
            stream.write(piece)
            stream.flush()
            time.sleep(PAUSE)


def test_awkward_droppers_send_only_complete_final_content(tmp_path: Path, sim: Simulator) -> None:
    slow, rewritten, renamed = waiting_job(sim), waiting_job(sim, 50001), waiting_job(sim, 50002)
    first_twice = waiting_job(sim, 50003)
    home = FaultHome(tmp_path / "agent", sim.url, settle=SETTLE)
    slow_data = csv_rows("slow", rows=12)
    final = csv_rows("final")
    twice = [csv_rows("twice-1"), csv_rows("twice-2")]
    with running(home):
        home.wait_started()
        # Written in place, a line at a time.
        lines = slow_data.splitlines(keepends=True)
        write_slowly(home.drop / "45311.csv", [b"".join(lines[n : n + 2]) for n in range(0, 13, 2)])
        # Written whole, then truncated and written again before it settled: only the second.
        target = home.drop / "50001.csv"
        write_slowly(target, [csv_rows("first-version", rows=50)])
        os.truncate(target, 0)
        write_slowly(target, [final[:20], final[20:]])
        # Written elsewhere, renamed in.
        drop_atomically(home.drop, "50002.csv", csv_rows("renamed"))
        # The same name twice: the second waits for a second job, then lands beside the first.
        drop_atomically(home.drop, "50003.csv", twice[0])
        wait_for(lambda: received(sim, first_twice), what="the first of the same name sent")
        drop_atomically(home.drop, "50003.csv", twice[1])
        polls = len(list_calls(sim))
        wait_for(lambda: len(list_calls(sim)) >= polls + 2, what="two more polls")
        pending = [Drop("50003.csv", twice[1], outcome="pending")]
        drops = [
            Drop("45311.csv", slow_data, (slow,)),
            Drop("50001.csv", final, (rewritten,)),
            Drop("50002.csv", csv_rows("renamed"), (renamed,)),
            Drop("50003.csv", twice[0], (first_twice,)),
        ]
        assert_invariant(home, sim, drops + pending, alive=False)
        second_twice = waiting_job(sim, 50003)
        assert_invariant(home, sim, [*drops, Drop("50003.csv", twice[1], (second_twice,))])
        assert (home.done / "50003-2.csv").read_bytes() == twice[1]


def test_files_renamed_in_one_after_another_are_each_sent_at_once(
    tmp_path: Path, sim: Simulator
) -> None:
    # The default poll period: a fresh file must not wait for it.
    home = FaultHome(tmp_path / "agent", sim.url, poll=5.0)
    stage = tmp_path / "stage"
    stage.mkdir()
    delays = []
    with running(home):
        home.wait_started()
        for n in range(7):
            job = waiting_job(sim, 54000 + n)
            source = stage / f"{n}.csv"
            source.write_bytes(csv_rows(f"quick{n}"))
            renamed = time.time()
            os.rename(source, home.drop / f"{54000 + n}.csv")
            posts = wait_for(
                partial(requests_to, sim, "POST", rf"^/v1/jobs/{job}/data$"), what=f"upload {n}"
            )
            delays.append(posts[0]["time"] - renamed)
        # Rename noticed at once (0.1 s), one list call at most 0.2 s after the previous one.
        assert statistics.median(delays) < 0.6, delays


def test_a_thousand_files_at_once_each_delivered_once(tmp_path: Path, sim: Simulator) -> None:
    count = 1000
    jobs = [waiting_job(sim, 100_000 + n) for n in range(count)]
    drops = [
        Drop(f"{100_000 + n}.csv", f"Email\nuser{n}@example.com\n".encode(), (jobs[n],))
        for n in range(count)
    ]
    home = FaultHome(tmp_path / "agent", sim.url, settle=SETTLE)
    with running(home):
        home.wait_started()
        started = time.monotonic()
        for drop in drops:
            drop_atomically(home.drop, drop.name, drop.data)
        wait_for(
            lambda: len(requests_to(sim, "POST", r"/data$")) >= count,
            timeout=90,
            what="a thousand uploads",
        )
        elapsed = time.monotonic() - started
        assert_invariant(home, sim, drops, timeout=30)
        # Batched matching: the number of list calls follows the time taken, not the file count.
        assert len(list_calls(sim)) <= 10 + 3 * elapsed, (len(list_calls(sim)), elapsed)
