"""The real ``pushagent run`` process against the simulator over loopback, with real files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from pushagent.simulator import Simulator
from tests.e2e import (
    KEY,
    AgentHome,
    assert_never,
    drop_atomically,
    received,
    wait_for,
    waiting_job,
)

pytestmark = pytest.mark.e2e

VALID = b'Email,firstName\r\nana@example.com,Ana\r\n"bo@example.com","Bo, Jr."\r\n'


@pytest.fixture
def sim(tmp_path: Path) -> Simulator:
    with Simulator(
        account_key=KEY, data_dir=tmp_path / "sim-data", complete_after=0.2
    ) as simulator:
        yield simulator  # type: ignore[misc]


def fault_fired(sim: Simulator) -> bool:
    return any(fault["fired"] for fault in sim.faults())


def list_calls(sim: Simulator) -> list[dict[str, object]]:
    return [
        r
        for r in sim.request_log()
        if r["method"] == "GET" and r["path"] == "/v1/jobs/SEGMENT_EXPORT"
    ]


@pytest.fixture
def home(tmp_path: Path, sim: Simulator) -> AgentHome:
    h = AgentHome(tmp_path / "agent", sim.url)
    yield h  # type: ignore[misc]
    if h.process is not None:
        h.kill9()


def test_a_renamed_in_file_reaches_its_job_once_and_moves_to_done(
    home: AgentHome, sim: Simulator
) -> None:
    job = waiting_job(sim)
    home.start()
    drop_atomically(home.drop, "45311.csv", VALID)
    wait_for(lambda: (home.done / "45311.csv").exists(), what="45311.csv in done/")
    assert received(sim, job) == [VALID]
    assert sim.job(job)["status"] in ("RUNNING", "COMPLETE")
    assert home.stop() == 0
    assert "Traceback" not in home.log()
    assert KEY not in home.log()


def test_a_file_written_slowly_is_sent_only_when_complete(home: AgentHome, sim: Simulator) -> None:
    job = waiting_job(sim)
    home.start()
    rows = [b"Email,firstName\n"] + [f"user{n}@example.com,U{n}\n".encode() for n in range(8)]
    with open(home.drop / "45311.csv", "wb") as stream:
        for row in rows:
            stream.write(row)
            stream.flush()
            time.sleep(0.2)  # a slow writer: each pause is shorter than the settle time
    wait_for(lambda: (home.done / "45311.csv").exists(), what="slow file in done/")
    assert received(sim, job) == [b"".join(rows)]


def test_one_segment_two_destinations_both_get_the_file(home: AgentHome, sim: Simulator) -> None:
    first, second = waiting_job(sim), waiting_job(sim, destinationEndpointID=9)
    other = waiting_job(sim, segment=777)
    home.start()
    drop_atomically(home.drop, "vip_customers.csv", VALID)
    wait_for(lambda: (home.done / "vip_customers.csv").exists(), what="file in done/")
    assert received(sim, first) == [VALID]
    assert received(sim, second) == [VALID]
    assert received(sim, other) == []


def test_files_for_one_segment_are_served_oldest_first_one_per_job(
    home: AgentHome, sim: Simulator
) -> None:
    job = waiting_job(sim)
    (home.drop / "45311").mkdir()
    older = b"Email\nold@example.com\n"
    newer = b"Email\nnew@example.com\n"
    drop_atomically(home.drop / "45311", "a-monday.csv", older)
    time.sleep(0.05)
    drop_atomically(home.drop / "45311", "b-tuesday.csv", newer)
    home.start()
    wait_for(lambda: (home.done / "45311" / "a-monday.csv").exists(), what="older file done")
    assert received(sim, job) == [older]
    # The newer file waits in the drop folder, through several polls, until a new job appears.
    polls = len(list_calls(sim))
    wait_for(lambda: len(list_calls(sim)) >= polls + 2, what="two more polls")
    assert (home.drop / "45311" / "b-tuesday.csv").exists()
    second = waiting_job(sim)
    wait_for(lambda: (home.done / "45311" / "b-tuesday.csv").exists(), what="newer file done")
    assert received(sim, second) == [newer]
    assert len(sim.uploads(job)) == 1


def test_an_invalid_file_fails_its_job_with_the_line_and_moves_to_failed(
    home: AgentHome, sim: Simulator
) -> None:
    job = waiting_job(sim)
    home.start()
    drop_atomically(home.drop, "45311.csv", b"Email,firstName\na@example.com,A\nb@example.com\n")
    report_path = home.failed / "45311.csv.error.json"
    # The report is written first, then the file is moved beside it: wait for both.
    wait_for(lambda: report_path.exists() and (home.failed / "45311.csv").exists(),
             what="the file and its error report in failed/")
    report = json.loads(report_path.read_text())
    assert report["job_ids"] == [str(job)]
    assert "line 3: expected 2 fields, found 1" in report["reason"]
    state = sim.job(job)
    assert state["status"] == "ERROR"
    assert "line 3: expected 2 fields, found 1" in str(state["errorDetails"])
    assert sim.uploads(job) == []
    assert (home.failed / "45311.csv").exists()


def test_a_missing_mapped_column_fails_the_job(home: AgentHome, sim: Simulator) -> None:
    job = waiting_job(sim)
    home.start()
    drop_atomically(home.drop, "45311.csv", b"mail,firstName\na@example.com,A\n")
    wait_for((home.failed / "45311.csv.error.json").exists, what="error report")
    assert "Email" in str(sim.job(job)["errorDetails"])
    assert sim.uploads(job) == []


def test_an_unknown_segment_goes_to_failed_without_touching_jobs(
    home: AgentHome, sim: Simulator
) -> None:
    job = waiting_job(sim)
    home.start()
    drop_atomically(home.drop, "notes.txt", VALID)
    report_path = home.failed / "notes.txt.error.json"
    wait_for(report_path.exists, what="error report")
    assert "cannot tell which segment" in json.loads(report_path.read_text())["reason"]
    assert sim.job(job)["status"] == "WAITING_TO_RECIEVE_DATA"


def test_a_symlink_is_moved_aside_and_its_target_never_read(
    home: AgentHome, sim: Simulator, tmp_path: Path
) -> None:
    job = waiting_job(sim)
    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"Email\nroot-password-8842@example.com\n")
    home.start()
    os.symlink(secret, home.drop / "45311.csv")
    # The report is written first, then the link is moved beside it: wait for both.
    wait_for(lambda: (home.failed / "45311.csv.error.json").exists()
             and os.path.lexists(home.failed / "45311.csv"), what="symlink moved aside")
    assert (home.failed / "45311.csv").is_symlink()
    assert sim.uploads(job) == []
    assert all(r["body_bytes"] == 0 for r in sim.request_log() if r["method"] == "POST")


def test_kill_9_during_an_upload_then_restart_delivers_exactly_once(
    home: AgentHome, sim: Simulator
) -> None:
    job = waiting_job(sim)
    # count=2 keeps the fault listed (with fired=1) after it fires, so the test can see it.
    sim.add_fault(method="POST", path=rf"/v1/jobs/{job}/data", delay=30, count=2)
    home.start()
    drop_atomically(home.drop, "45311.csv", VALID)
    wait_for(lambda: fault_fired(sim), what="the upload to start")
    home.kill9()
    assert sim.uploads(job) == []
    sim.clear_faults()
    home.start()
    wait_for(lambda: (home.done / "45311.csv").exists(), timeout=20, what="done after restart")
    assert received(sim, job) == [VALID]
    assert home.stop() == 0


def test_sigterm_exits_zero_and_a_second_agent_is_refused(home: AgentHome) -> None:
    home.start()
    wait_for(lambda: "watching" in home.log(), what="agent start")
    second = home.run_once()
    assert second.returncode == 2
    assert "another pushagent" in second.stderr
    assert home.stop(signal.SIGTERM) == 0


def test_once_reports_done_failed_and_waiting(home: AgentHome, sim: Simulator) -> None:
    job = waiting_job(sim)
    drop_atomically(home.drop, "45311.csv", VALID)
    drop_atomically(home.drop, "999.csv", VALID)  # no job waits for segment 999
    result = home.run_once()
    assert result.returncode == 0, result.stderr
    assert "done     45311.csv" in result.stdout
    assert "pending  999.csv" in result.stdout
    assert (home.drop / "999.csv").exists()
    assert received(sim, job) == [VALID]
    drop_atomically(home.drop, "45311.csv", b"not,a\ncsv\n")
    waiting_job(sim)
    assert home.run_once().returncode == 1


def test_a_config_error_names_the_key_and_exits_2(tmp_path: Path, sim: Simulator) -> None:
    home = AgentHome(tmp_path / "agent", sim.url)
    home.config.write_text(home.config.read_text().replace("poll_seconds: 0.5", "poll_seconds: x"))
    result = home.run_once()
    assert result.returncode == 2
    assert "matching.poll_seconds" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_burst_of_small_files_uses_few_list_calls(home: AgentHome, sim: Simulator) -> None:
    count = 200
    jobs = [waiting_job(sim, segment=100000 + n) for n in range(count)]
    home.start()
    wait_for(lambda: "watching" in home.log(), what="agent start")
    payloads = {}
    for n in range(count):
        data = f"Email\nuser{n}@example.com\n".encode()
        payloads[jobs[n]] = data
        drop_atomically(home.drop, f"{100000 + n}.csv", data)
    wait_for(lambda: len(list(home.done.iterdir())) == count, timeout=60, what="all files done")
    for job_id, data in payloads.items():
        assert received(sim, job_id) == [data]
    assert len(list_calls(sim)) < 40, len(list_calls(sim))


def test_the_same_name_dropped_twice_is_delivered_twice_to_two_jobs(
    home: AgentHome, sim: Simulator
) -> None:
    first = waiting_job(sim)
    home.start()
    drop_atomically(home.drop, "45311.csv", b"Email\none@example.com\n")
    wait_for(lambda: (home.done / "45311.csv").exists(), what="first drop done")
    second = waiting_job(sim)
    drop_atomically(home.drop, "45311.csv", b"Email\ntwo@example.com\n")
    wait_for(lambda: (home.done / "45311-2.csv").exists(), what="second drop done")
    assert received(sim, first) == [b"Email\none@example.com\n"]
    assert received(sim, second) == [b"Email\ntwo@example.com\n"]
    digest = hashlib.sha256((home.done / "45311-2.csv").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(b"Email\ntwo@example.com\n").hexdigest()


def test_an_exchange_outage_keeps_files_and_recovers(home: AgentHome, sim: Simulator) -> None:
    job = waiting_job(sim)
    sim.add_fault(method="GET", path=r"/v1/jobs/SEGMENT_EXPORT$", status=503, count=4)
    sim.add_fault(method="POST", path=r"/data$", status=502, count=2)
    home.start()
    drop_atomically(home.drop, "45311.csv", VALID)
    wait_for(lambda: (home.done / "45311.csv").exists(), timeout=30, what="done after outage")
    assert received(sim, job) == [VALID]
    assert list(home.failed.iterdir()) == []


def test_a_job_cancelled_before_upload_leaves_the_file_waiting(
    home: AgentHome, sim: Simulator
) -> None:
    job = waiting_job(sim)
    sim.add_fault(method="POST", path=rf"/v1/jobs/{job}/data", delay=1.5, count=2)
    home.start()
    drop_atomically(home.drop, "45311.csv", VALID)
    wait_for(lambda: fault_fired(sim), what="the upload to start")
    sim.set_status(job, "CANCELLED")
    wait_for(lambda: "gone or taken" in home.log(), what="the agent to see the cancel")
    assert sim.uploads(job) == []
    assert list(home.done.iterdir()) == [] and list(home.failed.iterdir()) == []
    replacement = waiting_job(sim)
    wait_for(lambda: (home.done / "45311.csv").exists(), what="delivered to the new job")
    assert received(sim, replacement) == [VALID]


def test_with_a_trigger_suffix_only_the_marker_releases_the_file(
    tmp_path: Path, sim: Simulator
) -> None:
    home = AgentHome(tmp_path / "agent", sim.url, trigger=".done")
    job = waiting_job(sim)
    home.start()
    try:
        (home.drop / "45311.csv").write_bytes(VALID)
        # Settled after 0.5 s, but with no marker it must stay put.
        assert_never(lambda: sim.uploads(job), seconds=2.0, what="an upload without the marker")
        (home.drop / "45311.csv.done").write_bytes(b"")
        wait_for(lambda: (home.done / "45311.csv").exists(), what="file in done/")
        assert received(sim, job) == [VALID]
        assert (home.done / "45311.csv.done").exists()
        assert [p.name for p in home.drop.iterdir()] == [".pushagent.lock"]
    finally:
        home.kill9()
