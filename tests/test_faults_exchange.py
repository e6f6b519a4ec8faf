"""Fault suite: the Exchange misbehaves (5xx, 429, cut connections, silence, refused keys, jobs
that stop waiting) and every dropped file still ends delivered once or failed with a reason."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pushagent.simulator import Simulator
from tests.e2e import KEY, drop_atomically, wait_for
from tests.faultkit import (
    WAITING,
    Drop,
    FaultHome,
    assert_invariant,
    csv_rows,
    fault_fired,
    list_calls,
    received,
    requests_to,
    running,
    simulator,
    waiting_job,
)

pytestmark = pytest.mark.faults

OTHER_ENDPOINT_KEY = "key-of-endpoint-99-3c5e"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with simulator(tmp_path, endpoint_keys={OTHER_ENDPOINT_KEY: 99}) as s:
        yield s


def data_path(job: int) -> str:
    return rf"^/v1/jobs/{job}/data$"


def test_server_errors_and_rate_limits_are_ridden_out(tmp_path: Path, sim: Simulator) -> None:
    recovers, limited, never = waiting_job(sim), waiting_job(sim, 50001), waiting_job(sim, 50002)
    # One segment, two destinations: one takes the file, the other never does.
    takes, refuses = waiting_job(sim, 50003), waiting_job(sim, 50003, destinationEndpointID=9)
    # Listing: 500, 502, 503 then a 429 asking for a pause, then normal service.
    for status in (500, 502, 503):
        sim.add_fault(method="GET", path=r"^/v1/jobs/SEGMENT_EXPORT$", status=status)
    sim.add_fault(method="GET", path=r"^/v1/jobs/SEGMENT_EXPORT$", status=429, retry_after=1)
    # Uploads: one job's recovers after three 5xx, one is rate limited, one never recovers.
    for status in (500, 502, 503):
        sim.add_fault(method="POST", path=data_path(recovers), status=status)
    sim.add_fault(method="POST", path=data_path(limited), status=429, retry_after=1.5)
    sim.add_fault(method="POST", path=data_path(never), status=503, count=None)
    sim.add_fault(method="POST", path=data_path(refuses), status=500, count=None)
    home = FaultHome(tmp_path / "agent", sim.url, max_attempts=4)
    drops = [
        Drop("45311.csv", csv_rows("recovers"), (recovers,)),
        Drop("50001.csv", csv_rows("limited"), (limited,)),
        Drop("50002.csv", csv_rows("never"), (never,), outcome="failed"),
        Drop("50003.csv", csv_rows("half"), (refuses,), outcome="failed", uploaded=(takes,)),
    ]
    with running(home):
        for drop in drops:
            drop_atomically(home.drop, drop.name, drop.data)
        assert_invariant(home, sim, drops, timeout=30)
        statuses = [r["status"] for r in requests_to(sim, "POST", data_path(recovers))]
        assert statuses == [500, 502, 503, 200]
        assert [r["status"] for r in list_calls(sim)][:4] == [500, 502, 503, 429]
        limited_posts = requests_to(sim, "POST", data_path(limited))
        assert [r["status"] for r in limited_posts] == [429, 200]
        assert limited_posts[1]["time"] - limited_posts[0]["time"] >= 1.5, "Retry-After ignored"
        assert len(requests_to(sim, "POST", data_path(never))) == 4  # upload.max_attempts
        assert "upload failed 4 times" in str(sim.job(never)["errorDetails"])
        report = json.loads((home.failed / "50003.csv.error.json").read_text())
        assert report["uploaded_to"] == [str(takes)]
        assert sorted(report["job_ids"]) == sorted([str(takes), str(refuses)])


def test_a_cut_connection_and_a_silent_server_still_deliver_once(
    tmp_path: Path, sim: Simulator
) -> None:
    cut, silent = waiting_job(sim), waiting_job(sim, 50001)
    big = csv_rows("cut", rows=40_000)  # ~1.2 MB: the cut happens mid-body
    sim.add_fault(method="POST", path=data_path(cut), drop=True)
    # Longer than the agent's read_timeout: the agent gives up on the answer, asks for the job
    # (still waiting: the server has not read the body yet) and sends again.
    sim.add_fault(method="POST", path=data_path(silent), delay=4)
    home = FaultHome(tmp_path / "agent", sim.url, read_timeout=1.5)
    drops = [
        Drop("45311.csv", big, (cut,)),
        Drop("50001.csv", csv_rows("silent"), (silent,)),
    ]
    with running(home):
        for drop in drops:
            drop_atomically(home.drop, drop.name, drop.data)
        # The held request is logged when the server lets go of it (after the delay): only then
        # can no late second upload appear.
        wait_for(
            lambda: any(r["fault"] == "delay" for r in requests_to(sim, "POST", data_path(silent))),
            timeout=20,
            what="the held upload to end",
        )
        assert_invariant(home, sim, drops)
        cut_posts = requests_to(sim, "POST", data_path(cut))
        assert cut_posts[0]["status"] is None and cut_posts[0]["fault"] == "drop"
        assert 0 < cut_posts[0]["body_bytes"] < len(big)
        assert "no answer within 1.5 s" in home.log()


def test_an_unreachable_exchange_fails_nothing_and_delivers_when_back(tmp_path: Path) -> None:
    data = csv_rows("unreachable")
    with (
        Simulator(account_key=KEY, data_dir=tmp_path / "gone") as gone,
        running(FaultHome(tmp_path / "agent", gone.url)) as home,
    ):
        home.wait_started()
        gone.stop()  # connection refused from now on (stopping twice is harmless)
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: home.log().count("cannot list the waiting jobs") >= 2, what="refusals")
        assert (home.drop / "45311.csv").read_bytes() == data
        assert list(home.failed.iterdir()) == []
        # The Exchange is back at the same address.
        port = int(gone.url.rsplit(":", 1)[1])
        with simulator(tmp_path, port=port) as back:
            job = waiting_job(back)
            assert_invariant(home, back, [Drop("45311.csv", data, (job,))], timeout=30)


@pytest.mark.parametrize(
    ("agent_key", "status", "logged"),
    [
        ("wrong-key-51f0", 401, "HTTP 401"),
        (OTHER_ENDPOINT_KEY, 403, "HTTP 403"),
    ],
    ids=["401-unknown-key", "403-other-endpoint"],
)
def test_a_refused_key_keeps_files_and_does_not_hammer(
    tmp_path: Path, sim: Simulator, agent_key: str, status: int, logged: str
) -> None:
    job = waiting_job(sim)
    data = csv_rows("refused")
    home = FaultHome(tmp_path / "agent", sim.url, key=agent_key)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: list_calls(sim), what="a first list call")
        started = time.time()
        wait_for(lambda: time.time() - started > 5, timeout=6, what="five seconds")
        window = [r for r in sim.request_log() if started <= r["time"] < started + 5]
        assert 0 < len(window) < 20, f"{len(window)} requests in 5 s"
        assert {r["status"] for r in sim.request_log()} == {status}
        log = home.log()
        assert logged in log and "cannot list the waiting jobs" in log
        assert "refused the key" in log and "unreachable" not in log
        assert agent_key not in log
        assert (home.drop / "45311.csv").read_bytes() == data
        assert sim.job(job)["status"] == WAITING
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,), "pending")], alive=False)
        assert home.stop() == 0
    # Fixed: the right key, and the file goes through.
    home.key = KEY
    with running(home):
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))])


@pytest.mark.parametrize(
    "fault",
    [{"status": 403}, {"drop": True}],
    ids=["key-refused-at-upload", "connection-cut-at-upload"],
)
def test_an_upload_refused_or_cut_again_and_again_backs_off(
    tmp_path: Path, sim: Simulator, fault: dict[str, Any]
) -> None:
    job = waiting_job(sim)
    data = csv_rows("backoff")
    # The key still lists jobs but every upload fails, as when a key loses a permission or a
    # proxy in front of the upload endpoint breaks.
    sim.add_fault(method="POST", path=data_path(job), count=None, **fault)
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: requests_to(sim, "POST", data_path(job)), what="a first upload")
        started = time.time()
        wait_for(lambda: time.time() - started > 4, timeout=5, what="four seconds")
        # Backing off from 0.2 s up to upload.max_backoff (1 s), counted attempts or not: about
        # 3 tries in 3 s, where a fixed 0.2 s wait would make 15.
        posts = requests_to(sim, "POST", data_path(job), since=started + 1)
        assert len(posts) <= 5, f"{len(posts)} failed uploads in 3 s: no backoff"
        sim.clear_faults()
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))], timeout=30)


@pytest.mark.parametrize("stopped", ["CANCELLED", "ERROR"])
def test_a_job_that_stops_waiting_before_its_upload_gets_nothing(
    tmp_path: Path, sim: Simulator, stopped: str
) -> None:
    job = waiting_job(sim)
    data = csv_rows("late")
    # Hold the upload before its body is read: the window between match and upload.
    sim.add_fault(method="POST", path=data_path(job), delay=1.0, count=2)
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: fault_fired(sim), what="the upload to start")
        sim.set_status(job, stopped, error_details="stopped by someone else")
        wait_for(lambda: "gone or taken" in home.log(), what="the agent to see the change")
        assert sim.uploads(job) == []
        # Left as someone else set it: the agent neither failed it nor sent it anything.
        assert sim.job(job)["status"] == stopped
        assert sim.job(job)["errorDetails"] == "stopped by someone else"
        assert list(home.done.iterdir()) == [] and list(home.failed.iterdir()) == []
        replacement = waiting_job(sim)
        assert_invariant(home, sim, [Drop("45311.csv", data, (replacement,))])
        assert received(sim, job) == []


def test_a_job_deleted_before_its_upload_leaves_the_file_for_the_next_job(
    tmp_path: Path, sim: Simulator
) -> None:
    job = waiting_job(sim)
    data = csv_rows("deleted")
    # The job is gone from the Exchange: every call about it answers 404.
    sim.add_fault(method="POST", path=data_path(job), status=404, count=None)
    sim.add_fault(method="GET", path=rf"^/v1/jobs/SEGMENT_EXPORT/{job}$", status=404, count=None)
    home = FaultHome(tmp_path / "agent", sim.url, max_attempts=3)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        # A 404 is a definite answer: the job is gone, and the file waits for the next one.
        wait_for(lambda: "gone or taken" in home.log(), what="the agent to see the 404")
        replacement = waiting_job(sim)
        assert_invariant(home, sim, [Drop("45311.csv", data, (replacement,))], timeout=6)
        assert received(sim, job) == []


def test_attempts_run_out_on_one_job_and_the_job_never_tried_is_left_waiting(
    tmp_path: Path, sim: Simulator
) -> None:
    # Found by the campaign (full mix, seed 1001): a file assigned to two jobs retried the
    # first (deliveries go in job id order) until its attempts ran out, then failed both; the
    # second never saw a byte, yet was failed for the first one's HTTP 5xx, and the next file
    # of its segment had no job left to go to.
    broken, never_tried = waiting_job(sim, 50004), waiting_job(sim, 50004)
    assert broken < never_tried
    sim.add_fault(method="POST", path=data_path(broken), status=503, count=None)
    home = FaultHome(tmp_path / "agent", sim.url, max_attempts=3)
    first = Drop("50004/first.csv", csv_rows("first"), (broken,), outcome="failed")
    with running(home):
        (home.drop / "50004").mkdir()
        drop_atomically(home.drop / "50004", "first.csv", first.data)
        wait_for(lambda: (home.failed / "50004" / "first.csv.error.json").exists(), timeout=30,
                 what="first.csv in failed/")
        assert sim.job(never_tried)["status"] == WAITING, sim.job(never_tried)["errorDetails"]
        assert requests_to(sim, "POST", data_path(never_tried)) == []
        second = Drop("50004/second.csv", csv_rows("second"), (never_tried,))
        drop_atomically(home.drop / "50004", "second.csv", second.data)
        assert_invariant(home, sim, [first, second], timeout=30)
    report = json.loads((home.failed / "50004" / "first.csv.error.json").read_text())
    assert "upload failed 3 times" in report["reason"]
    assert report["failed_jobs"] == [str(broken)]
    assert {j["job_id"]: j["state"] for j in report["jobs"]} == {
        str(broken): "rejected", str(never_tried): "released"}
