"""Fault suite: the agent is killed (-9) or stopped (SIGTERM) at awkward moments; after a
restart every file is done or failed and no job ever gets two uploads."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pushagent.simulator import Simulator
from tests.e2e import drop_atomically, wait_for
from tests.faultkit import (
    Drop,
    FaultHome,
    assert_invariant,
    body_in_flight,
    csv_rows,
    fault_fired,
    folder_outage,
    journal,
    received,
    requests_to,
    running,
    simulator,
    waiting_job,
)

pytestmark = pytest.mark.faults

# Bigger than loopback's socket buffers: a held upload of it is cut with part of the body sent.
BIG_ROWS = 600_000  # ~20 MB


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with simulator(tmp_path) as s:
        yield s


def data_path(job: int) -> str:
    return rf"^/v1/jobs/{job}/data$"


def uploads_ended(sim: Simulator, job: int) -> list[dict[str, Any]]:
    """The job's POSTs the server has finished with (a held one is logged when let go)."""
    return requests_to(sim, "POST", data_path(job))


def test_kill_9_after_claim_and_after_the_body_was_sent_then_restart(
    tmp_path: Path, sim: Simulator
) -> None:
    sent, claimed = waiting_job(sim), waiting_job(sim, 50001)
    first, second = csv_rows("sent"), csv_rows("claimed")
    # One worker: while the first file's upload is held, the second is claimed and queued.
    sim.add_fault(method="POST", path=data_path(sent), delay=2.5, count=2)
    home = FaultHome(tmp_path / "agent", sim.url, workers=1)
    with running(home):
        drop_atomically(home.drop, "45311.csv", first)
        wait_for(lambda: fault_fired(sim), what="the first upload to start")
        drop_atomically(home.drop, "50001.csv", second)
        wait_for(
            lambda: journal(
                home,
                "SELECT 1 FROM files JOIN deliveries ON files.id = file_id "
                "WHERE rel_path = '50001.csv' AND files.state = 'claimed' AND deliveries.state = "
                "'assigned'",
            ),
            what="the second file claimed, not yet uploaded",
        )
        home.kill9()
        assert not (home.drop / "50001.csv").exists()
        assert uploads_ended(sim, claimed) == []
        # The held body was sent whole before the kill: the server stores it when it lets go.
        wait_for(lambda: sim.uploads(sent), what="the orphaned upload to be stored")
        sim.clear_faults()
        home.start()
        drops = [Drop("45311.csv", first, (sent,)), Drop("50001.csv", second, (claimed,))]
        assert_invariant(home, sim, drops)
        assert len(uploads_ended(sim, sent)) == 1, "the first file was sent again"
        assert "already has this file's data" in home.log()


def test_kill_9_mid_body_then_restart_sends_it_whole_once(tmp_path: Path, sim: Simulator) -> None:
    job = waiting_job(sim)
    data = csv_rows("big", rows=BIG_ROWS)
    sim.add_fault(method="POST", path=data_path(job), delay=3, count=2)
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: fault_fired(sim), what="the upload to start")
        wait_for(lambda: body_in_flight(sim.url) > 256 * 1024, what="part of the body sent")
        home.kill9()
        cut = wait_for(lambda: uploads_ended(sim, job), what="the server to drop the cut body")
        assert cut[0]["status"] is None and 0 < cut[0]["body_bytes"] < len(data)
        assert sim.uploads(job) == []
        sim.clear_faults()
        home.start()
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))])
        assert [r["status"] for r in uploads_ended(sim, job)] == [None, 200]


def test_kill_9_after_upload_before_the_move_then_restart(tmp_path: Path, sim: Simulator) -> None:
    job = waiting_job(sim)
    data = csv_rows("unmoved")
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        home.wait_started()
        with folder_outage(home.done):
            drop_atomically(home.drop, "45311.csv", data)
            wait_for(lambda: "cannot move the file" in home.log(), what="the failed move")
            assert received(sim, job) == [data]
            home.kill9()
        home.start()
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))])
        assert len(uploads_ended(sim, job)) == 1


def test_a_crash_inside_the_move_to_done_leaves_one_copy(tmp_path: Path, sim: Simulator) -> None:
    job = waiting_job(sim)
    data = csv_rows("linked")
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        home.wait_started()
        with folder_outage(home.done):
            drop_atomically(home.drop, "45311.csv", data)
            wait_for(lambda: "cannot move the file" in home.log(), what="the failed move")
            home.kill9()
        # The state a kill -9 leaves right after move_to's os.link: both names.
        (claimed,) = journal(home, "SELECT path FROM files WHERE rel_path = '45311.csv'")
        os.link(claimed["path"], home.done / "45311.csv")
        home.start()
        wait_for(
            lambda: journal(home, "SELECT 1 FROM files WHERE state = 'done'"),
            what="the restarted agent to finish the file",
        )
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))], timeout=1)


def test_sigterm_lets_the_upload_in_progress_finish(tmp_path: Path, sim: Simulator) -> None:
    job = waiting_job(sim)
    data = csv_rows("graceful")
    sim.add_fault(method="POST", path=data_path(job), delay=1.5, count=2)
    home = FaultHome(tmp_path / "agent", sim.url, grace=10)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: fault_fired(sim), what="the upload to start")
        assert home.stop(signal.SIGTERM, timeout=10) == 0
        assert received(sim, job) == [data]
        assert (home.done / "45311.csv").read_bytes() == data
        home.start()
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))])


def test_sigterm_exits_zero_even_after_a_file_failed(tmp_path: Path, sim: Simulator) -> None:
    job = waiting_job(sim)
    data = b"Email,firstName\na@example.com\n"  # ragged: the job is failed, the file too
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        assert_invariant(
            home, sim, [Drop("45311.csv", data, (job,), outcome="failed")], alive=False
        )
        assert home.stop(signal.SIGTERM) == 0


def test_a_second_sigterm_stops_at_once_and_the_file_resumes(
    tmp_path: Path, sim: Simulator
) -> None:
    job = waiting_job(sim)
    data = csv_rows("cold", rows=BIG_ROWS)
    sim.add_fault(method="POST", path=data_path(job), delay=3, count=2)
    home = FaultHome(tmp_path / "agent", sim.url, grace=30)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: fault_fired(sim), what="the upload to start")
        process = home.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping: no new files" in home.log(), what="the warm stop")
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert home.stop(timeout=10) == 0
        assert time.monotonic() - asked < 2.0, "the cold stop waited for the upload"
        wait_for(lambda: uploads_ended(sim, job), what="the server to drop the cut body")
        assert sim.uploads(job) == []
        sim.clear_faults()
        home.start()
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))])


def more_done_than(home: FaultHome, count: int) -> Callable[[], bool]:
    def probe() -> bool:
        home.assert_running()
        return len(list(home.done.iterdir())) > count

    return probe


def test_repeated_kill_9_under_a_stream_of_files(tmp_path: Path, sim: Simulator) -> None:
    """Kills at whatever point the agent happens to be: between files, mid-claim, mid-upload,
    mid-move. Each restart must pick up exactly where the journal says."""
    count = 24
    jobs = [waiting_job(sim, 60000 + n) for n in range(count)]
    drops = [
        Drop(f"{60000 + n}.csv", csv_rows(f"stream{n}", rows=2000), (jobs[n],))
        for n in range(count)
    ]
    # Held uploads widen the mid-upload window; the rest land wherever the kill falls.
    for job in jobs[::3]:
        sim.add_fault(method="POST", path=data_path(job), delay=0.3)
    home = FaultHome(tmp_path / "agent", sim.url, settle=0.3)
    with running(home):
        for round_ in range(6):
            before = len(list(home.done.iterdir()))
            for drop in drops[round_ * 4 : round_ * 4 + 4]:
                drop_atomically(home.drop, drop.name, drop.data)
            wait_for(more_done_than(home, before), timeout=15, what="progress before the kill")
            home.kill9()
            home.start()
        assert_invariant(home, sim, drops, timeout=30)


def test_an_upload_longer_than_the_grace_is_left_to_the_next_start(
    tmp_path: Path, sim: Simulator
) -> None:
    job = waiting_job(sim)
    data = csv_rows("outlasts")
    sim.add_fault(method="POST", path=data_path(job), delay=3, count=2)
    home = FaultHome(tmp_path / "agent", sim.url, grace=0.5)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: fault_fired(sim), what="the upload to start")
        asked = time.monotonic()
        assert home.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - asked < 2.5, "the stop did not end at the grace"
        # The body was sent whole before the exit: the server stores it once it lets go.
        wait_for(lambda: sim.uploads(job), what="the held upload to be stored")
        sim.clear_faults()
        home.start()
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))])
        assert len(uploads_ended(sim, job)) == 1, "sent again after the restart"
