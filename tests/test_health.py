"""The /healthz and /metrics server: answers from the agent, loopback, refuses a taken port."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from pushagent.errors import ConfigError
from pushagent.health import HealthServer
from pushagent.metrics import AgentMetrics
from pushagent.simulator import Simulator
from tests.e2e import ENDPOINT, KEY, AgentHome, drop_atomically, wait_for
from tests.test_cli_api import run_cli


class FakeAgent:
    def __init__(self) -> None:
        self.metrics = AgentMetrics()
        self.state = (True, "ok")

    def health(self) -> tuple[bool, str]:
        return self.state


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[FakeAgent, HealthServer]]:
    agent = FakeAgent()
    server = HealthServer(agent, host="127.0.0.1", port=0).start()
    yield agent, server
    server.stop()


def test_healthz_is_200_ok_while_the_agent_is_healthy(
    served: tuple[FakeAgent, HealthServer],
) -> None:
    _, server = served
    assert fetch(f"{server.url}/healthz")[::2] == (200, "ok\n")


def test_healthz_is_503_with_the_reason_when_not(served: tuple[FakeAgent, HealthServer]) -> None:
    agent, server = served
    agent.state = (False, "the Exchange was not reached in the last 300 s")
    status, _, body = fetch(f"{server.url}/healthz")
    assert status == 503
    assert body == "the Exchange was not reached in the last 300 s\n"


def test_metrics_serves_the_agents_registry(served: tuple[FakeAgent, HealthServer]) -> None:
    agent, server = served
    agent.metrics.files_uploaded.inc(3)
    agent.metrics.bytes_uploaded.inc(1234)
    status, content_type, body = fetch(f"{server.url}/metrics")
    assert status == 200
    assert content_type == CONTENT_TYPE_LATEST
    assert "pushagent_files_uploaded_total 3.0" in body
    assert "pushagent_bytes_uploaded_total 1234.0" in body


def test_other_paths_are_404(served: tuple[FakeAgent, HealthServer]) -> None:
    _, server = served
    assert fetch(f"{server.url}/")[0] == 404


def test_binds_where_it_is_told(served: tuple[FakeAgent, HealthServer]) -> None:
    _, server = served
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_a_taken_port_is_a_config_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*metrics.port"):
            HealthServer(FakeAgent(), host="127.0.0.1", port=port)


def test_stop_frees_the_port() -> None:
    server = HealthServer(FakeAgent(), host="127.0.0.1", port=0).start()
    port = server.port
    server.stop()
    again = HealthServer(FakeAgent(), host="127.0.0.1", port=port)
    again.stop()


# --- the real agent --------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.e2e
def test_the_running_agent_serves_health_and_metrics_that_move(tmp_path: Path) -> None:
    data = b"Email,firstName\nana@example.com,Ana\n"
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim", complete_after=0.1) as sim:
        job = sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)["jobId"]
        (tmp_path / "agent" / "state").mkdir(parents=True)
        home = AgentHome(tmp_path / "agent", sim.url, settle=0.1, extra=(
            "metrics:\n  enabled: true\n  host: 127.0.0.1\n  port: 0\n"
        ))
        home.start()
        try:
            base = home.served_url()
            before = wait_for(lambda: _scrape(f"{base}/metrics"), what="/metrics to answer")
            assert before is not None
            assert metric(before, "pushagent_files_uploaded_total") == 0
            drop_atomically(home.drop, "45311.csv", data)
            wait_for(lambda: (home.done / "45311.csv").exists(), what="the file in done/")
            # The counters move just after the file lands in done/.
            after = wait_for(
                lambda: (text := _scrape(f"{base}/metrics"))
                and metric(text, "pushagent_files_uploaded_total") == 1 and text,
                what="the upload counted",
            )
            assert after is not None
            assert metric(after, "pushagent_bytes_uploaded_total") == len(data)
            assert fetch(f"{base}/healthz")[::2] == (200, "ok\n")
            assert sim.upload_data(job, 0) == data
            status = run_cli("status", "-c", str(home.config), "--json",
                             environ={"E2E_EXCHANGE_KEY": KEY}).json()
            assert status["agent"] == {
                "running": True, "pid": home.process.pid if home.process else None}
            assert [f["state"] for f in status["recent"]] == ["done"]
            assert status["last_contact_age_seconds"] < 30
        finally:
            code = home.stop()
        assert code == 0
        assert "Traceback" not in home.log()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{base}/healthz", timeout=2)


def _scrape(url: str) -> str | None:
    try:
        status, _, body = fetch(url)
    except OSError:
        return None
    return body if status == 200 else None
