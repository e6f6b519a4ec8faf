"""The key never shows, at DEBUG, in a real process's output or in the log file; a control
character in a name never breaks a log line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from pushagent.env import Environment
from pushagent.logs import add_file_sink, add_json_stderr, configure_stderr, emit_error
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


FORGED = "45311\n2026-01-01 00:00:00.000 | INFO    | done: forged\x1b[31m.csv"
ESCAPED = "45311\\n2026-01-01 00:00:00.000 | INFO    | done: forged\\x1b[31m.csv"


@pytest.fixture
def quiet_logger() -> Iterator[None]:
    """The test sets loguru's sinks; put the default one back after it."""
    yield
    logger.remove()
    logger.add(sys.stderr)


def log_a_hostile_name() -> None:
    logger.bind(file=FORGED, segment=45311).warning("failed: moved to failed/{}", FORGED)
    logger.info("next event")


def test_a_newline_in_a_file_name_cannot_forge_a_text_log_line(
    quiet_logger: None, tmp_path: Path
) -> None:
    stderr = io.StringIO()
    configure_stderr(env=Environment(stderr=stderr, environ={}))
    add_file_sink(
        tmp_path / "agent.log", level="INFO", rotation="1 MB", retention="1 day", json_lines=False
    )
    log_a_hostile_name()
    logger.complete()
    logger.remove()  # closes the file sink
    for text in (stderr.getvalue(), (tmp_path / "agent.log").read_text()):
        first, second = text.splitlines()
        assert first.endswith(
            f"| WARNING | failed: moved to failed/{ESCAPED} | file={ESCAPED} segment=45311"
        )
        assert second.endswith("| INFO    | next event")
        assert "\x1b" not in text


def test_json_lines_carry_the_escaped_name_in_message_and_fields(quiet_logger: None) -> None:
    stderr = io.StringIO()
    add_json_stderr(env=Environment(stderr=stderr, environ={}), level="INFO")
    log_a_hostile_name()
    first, second = (json.loads(line)["record"] for line in stderr.getvalue().splitlines())
    assert first["message"] == f"failed: moved to failed/{ESCAPED}"
    assert first["extra"]["file"] == ESCAPED
    assert first["extra"]["segment"] == 45311
    assert second["message"] == "next event"


def test_an_expected_failure_prints_one_line_whatever_the_name() -> None:
    stderr = io.StringIO()
    emit_error(Environment(stderr=stderr, environ={}), f"{FORGED}: cannot move it")
    assert stderr.getvalue() == f"pushagent: error: {ESCAPED}: cannot move it\n"
