"""The key never shows, at DEBUG, in a real process's output or in the log file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.simulator import Simulator
from tests.e2e import ENDPOINT, KEY, AgentHome, drop_atomically

VALID = b"Email,firstName\nana@example.com,Ana\n"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim", complete_after=0.1) as simulator:
        yield simulator


def pushagent(*argv: str, environ: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushagent", *argv], capture_output=True, text=True,
        env={**os.environ, **environ}, cwd=cwd, timeout=60, check=False,
    )


def test_a_real_process_at_debug_never_prints_the_key(sim: Simulator, tmp_path: Path) -> None:
    job = sim.add_job(producerEndpointID=ENDPOINT)["jobId"]
    environ = {"EXCHANGE_API_KEY": KEY, "EXCHANGE_BASE_URL": sim.url}
    listed = pushagent("-v", "jobs", "list", "SEGMENT_EXPORT", "--json", environ=environ,
                       cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f'"jobId": {job}' in listed.stdout
    assert "DEBUG" in listed.stderr and "GET /v1/jobs/SEGMENT_EXPORT -> HTTP 200" in listed.stderr
    refused = pushagent("-v", "jobs", "show", "SEGMENT_EXPORT", str(job), environ={
        **environ, "EXCHANGE_API_KEY": KEY + "x"}, cwd=tmp_path)
    assert refused.returncode == 3
    for result in (listed, refused):
        assert KEY not in result.stdout + result.stderr


def test_the_log_file_has_the_run_and_not_the_key(sim: Simulator, tmp_path: Path) -> None:
    job = sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)["jobId"]
    (tmp_path / "state").mkdir()
    home = AgentHome(tmp_path, sim.url, settle=0.1,
                     extra="logging:\n  level: DEBUG\n  file: ./logs/agent.log\n")
    (tmp_path / "logs").mkdir()
    drop_atomically(home.drop, "45311.csv", VALID)
    result = home.run_once()
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "logs" / "agent.log").read_text()
    assert f"uploading {len(VALID)} bytes to job {job}" in log
    assert "DEBUG" in log
    assert KEY not in log
    assert KEY not in result.stdout + result.stderr
