"""The promise at its edges (issue 9), each case against the real agent process and simulator:
a definite refusal is never taken for a delivery, a redirect is not the file's fault, names at the
filesystem's limit neither strand a file nor leave one in failed/ without its reason, and a name
cannot forge a log line."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.outcomes import report_path_for
from pushagent.simulator import Simulator
from tests.e2e import drop_atomically, received, wait_for, waiting_job
from tests.faultkit import (
    WAITING,
    Drop,
    FaultHome,
    assert_invariant,
    csv_rows,
    entries,
    running,
    simulator,
    status_json,
)

pytestmark = pytest.mark.faults


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with simulator(tmp_path) as s:
        yield s


def drop_long(folder: Path, name: str, data: bytes) -> None:
    """Written under a short hidden name, then renamed: ``.<name>.part`` would not fit."""
    partial = folder / ".long.part"
    partial.write_bytes(data)
    os.rename(partial, folder / name)


def data_path(job: int) -> str:
    return rf"^/v1/jobs/{job}/data$"


@pytest.mark.parametrize("status", [404, 408, 409, 425, 429, 500, 501, 503])
def test_an_answer_that_is_not_success_is_never_taken_for_a_delivery(
    tmp_path: Path, sim: Simulator, status: int
) -> None:
    """Answered once while the job still waits: the file must still reach the job, once."""
    job = waiting_job(sim)
    data = csv_rows(f"refused-once-{status}")
    sim.add_fault(method="POST", path=data_path(job), status=status, count=1)
    with running(FaultHome(tmp_path / "agent", sim.url)) as home:
        drop_atomically(home.drop, "45311.csv", data)
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))])


@pytest.mark.parametrize("status", [400, 413, 415, 422])
def test_a_refusal_for_good_fails_the_job_with_the_servers_reason(
    tmp_path: Path, sim: Simulator, status: int
) -> None:
    job = waiting_job(sim)
    data = csv_rows(f"refused-for-good-{status}")
    sim.add_fault(method="POST", path=data_path(job), status=status, count=1)
    with running(FaultHome(tmp_path / "agent", sim.url)) as home:
        drop_atomically(home.drop, "45311.csv", data)
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,), outcome="failed")])
        assert f"HTTP {status}" in sim.job(job)["errorDetails"]


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_on_upload_is_a_setup_error_not_the_files(
    tmp_path: Path, sim: Simulator, status: int
) -> None:
    job = waiting_job(sim)
    data = csv_rows(f"redirected-{status}")
    elsewhere = "http://127.0.0.1:9/moved-here"
    sim.add_fault(method="POST", path=data_path(job), status=status, count=2, location=elsewhere)
    with running(FaultHome(tmp_path / "agent", sim.url)) as home:
        drop_atomically(home.drop, "45311.csv", data)
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,))])
        errors = [line for line in home.log().splitlines() if "| ERROR" in line]
        assert any(elsewhere in line and "base URL or a proxy" in line for line in errors)


def test_a_name_at_the_limit_dropped_twice_ends_in_done_and_failed_with_its_reason(
    tmp_path: Path, sim: Simulator
) -> None:
    name = "x" * 250 + ".csv"  # 254 bytes: "-2" would make 256
    first, second = csv_rows("long-first"), b"Email,tag\nragged\n"
    jobs = [waiting_job(sim)]
    with running(FaultHome(tmp_path / "agent", sim.url)) as home:
        (home.drop / "45311").mkdir()
        drop_long(home.drop / "45311", name, first)
        wait_for(lambda: received(sim, jobs[0]) == [first], what="the first upload")
        wait_for(lambda: entries(home.done) == [f"45311/{name}"], what="the first in done/")
        jobs.append(waiting_job(sim))
        drop_long(home.drop / "45311", name, second)
        wait_for(lambda: sim.job(jobs[1])["status"] == "ERROR", what="the second job failed")
        wait_for(lambda: len(entries(home.failed)) == 1, what="the second in failed/")
        (landed,) = entries(home.failed)
        target = home.failed / landed
        assert target.read_bytes() == second
        assert all(len(os.fsencode(p.name)) <= 255 for p in home.failed.rglob("*"))
        report = report_path_for(target)
        assert report is not None, "a file in failed/ without its reason"
        assert "expected 2 fields" in json.loads(report.read_text(encoding="utf-8"))["reason"]
        wait_for(lambda: entries(home.state / "claimed") == [], what="the claim area empty")
        shown = status_json(home)["recent"]
        assert any(f["state"] == "failed" and "expected 2 fields" in f["reason"] for f in shown)
        assert sim.job(jobs[0])["status"] != WAITING


def test_a_newline_in_a_name_cannot_forge_a_log_line(tmp_path: Path, sim: Simulator) -> None:
    job = waiting_job(sim)
    data = csv_rows("forged")
    forged = "a\n2026-01-01 00:00:00.000 | INFO    | forged.csv"
    with running(FaultHome(tmp_path / "agent", sim.url)) as home:
        (home.drop / "45311").mkdir()
        drop_atomically(home.drop / "45311", forged, data)
        wait_for(lambda: received(sim, job) == [data], what="the upload")
        wait_for(lambda: "done: moved to" in home.log(), what="the file in done/")
        stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| ")
        lines = home.log().splitlines()
        assert all(stamp.match(line) for line in lines if line.strip())
        assert not any(line.startswith("2026-01-01") for line in lines)
        assert any("a\\n2026-01-01" in line for line in lines)
