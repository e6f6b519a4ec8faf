"""Injected faults and broken connections, seen through the real ExchangeClient."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pushagent.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    ExchangeUnavailable,
    RateLimited,
    ServerError,
)
from pushagent.exchange import ExchangeClient, RetryPolicy, UploadResult
from pushagent.simulator import Simulator
from pushagent.simulator.faults import FaultBook

KEY = "sim-account-key"
WAITING = "WAITING_TO_RECIEVE_DATA"
CSV = b"Email\nann@example.com\nbob@example.com\n"


class GatedSleep:
    """The simulator's sleep for delay faults: blocks until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.entered.set()
        assert self.release.wait(10), "the test never released the delayed request"


@pytest.fixture
def gate() -> GatedSleep:
    return GatedSleep()


@pytest.fixture
def sim(tmp_path: Path, gate: GatedSleep) -> Iterator[Simulator]:
    with Simulator(data_dir=tmp_path / "sim", complete_after=0.0, sleep=gate) as simulator:
        yield simulator
    gate.release.set()


@pytest.fixture
def client(sim: Simulator) -> Iterator[ExchangeClient]:
    with ExchangeClient(sim.url, KEY, retry=RetryPolicy(max_attempts=1)) as exchange:
        yield exchange


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "segment.csv"
    path.write_bytes(CSV)
    return path


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _open_upload(sim: Simulator, job_id: int, total: int, first: bytes) -> socket.socket:
    """Start an upload by hand: headers announcing ``total`` bytes, then only ``first``."""
    parts = urlsplit(sim.url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = (
        f"POST /v1/jobs/{job_id}/data HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {total}\r\n\r\n"
    )
    sock.sendall(head.encode("ascii") + first)
    return sock


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """Read the HTTP answer to a hand-made request, then close the socket."""
    with sock:
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def test_status_fault_answers_without_touching_state(
    sim: Simulator, client: ExchangeClient, csv_file: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    sim.add_fault(method="POST", path=r"/data$", status=503)

    with pytest.raises(ServerError) as failed:
        client.upload_data(job_id, csv_file)

    assert failed.value.status == 503
    assert sim.uploads(job_id) == []
    assert sim.job(job_id)["status"] == WAITING
    last = sim.request_log()[-1]
    assert (last["status"], last["fault"], last["body_bytes"]) == (503, "status", len(CSV))
    # The fault fired once; the same connection then carries a normal upload.
    assert client.upload_data(job_id, csv_file).status_code == 200
    assert sim.faults() == []


def test_status_fault_with_retry_after_and_body(sim: Simulator, client: ExchangeClient) -> None:
    sim.add_fault(method="GET", path="SEGMENT_EXPORT$", status=429, retry_after=7)
    sim.add_fault(method="*", path="SEGMENT_EXPORT$", status=400, body="no such thing")

    with pytest.raises(RateLimited) as limited:
        client.list_jobs("SEGMENT_EXPORT")
    with pytest.raises(BadRequest) as bad:
        client.list_jobs("SEGMENT_EXPORT")

    assert limited.value.retry_after == 7
    assert bad.value.server_message == "no such thing"
    assert client.list_jobs("SEGMENT_EXPORT") == []


def test_fault_matches_method_and_path_and_repeats_until_cleared(
    sim: Simulator, client: ExchangeClient
) -> None:
    sim.add_fault(method="DELETE", path="/v1/jobs", status=500)
    sim.add_fault(method="GET", path="scheduledjobs", status=502, count=None)

    assert client.list_jobs("SEGMENT_EXPORT") == []
    for _ in range(3):
        with pytest.raises(ServerError):
            client.list_scheduled_jobs()
    assert [fault["fired"] for fault in sim.faults()] == [0, 3]

    sim.clear_faults()

    assert client.list_scheduled_jobs() == []


def test_client_retries_recover_from_two_503s(sim: Simulator) -> None:
    sim.add_job(producerEndpointID=85)
    sim.add_fault(method="GET", path="/v1/jobs/", status=503, count=2)
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.0, jitter=0.0)
    sleeps: list[float] = []

    with ExchangeClient(sim.url, KEY, retry=policy, sleep=sleeps.append) as client:
        jobs = client.list_jobs("SEGMENT_EXPORT", endpoint_id=85)

    assert len(jobs) == 1
    assert [entry["status"] for entry in sim.request_log()] == [503, 503, 200]
    assert len(sleeps) == 2


def test_delay_fault_holds_the_upload_before_its_body_is_read(
    sim: Simulator, client: ExchangeClient, csv_file: Path, gate: GatedSleep
) -> None:
    job_id = sim.add_job()["jobId"]
    sim.add_fault(method="POST", path="/data$", delay=2.5)
    results: list[UploadResult] = []
    sender = threading.Thread(target=lambda: results.append(client.upload_data(job_id, csv_file)))

    sender.start()
    assert gate.entered.wait(5), "the delay fault never fired"
    # Held: nothing received, stored or answered yet; the job is still waiting.
    assert sim.job_state(job_id)["uploadInProgress"] is False
    assert sim.uploads(job_id) == []
    assert sim.request_log() == []
    gate.release.set()
    sender.join(10)

    assert gate.delays == [2.5]
    assert results[0].status_code == 200
    assert len(sim.uploads(job_id)) == 1
    assert sim.request_log()[-1]["fault"] == "delay"


def test_drop_fault_on_a_read_is_a_broken_connection(
    sim: Simulator, client: ExchangeClient
) -> None:
    sim.add_fault(method="GET", path="SEGMENT_EXPORT", drop=True)

    with pytest.raises(ExchangeUnavailable):
        client.list_jobs("SEGMENT_EXPORT")

    assert sim.request_log()[-1]["status"] is None
    assert sim.request_log()[-1]["fault"] == "drop"
    assert client.list_jobs("SEGMENT_EXPORT") == []


def test_drop_fault_mid_upload_stores_nothing(
    sim: Simulator, client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    big = tmp_path / "big.csv"
    big.write_bytes(b"Email\n" + b"someone@example.com\n" * 50_000)
    sim.add_fault(method="POST", path="/data$", drop=True)

    with pytest.raises(ExchangeUnavailable):
        client.upload_data(job_id, big)

    entry = sim.request_log()[-1]
    assert entry["status"] is None
    assert 0 < entry["body_bytes"] < big.stat().st_size
    assert sim.uploads(job_id) == []
    assert sim.job(job_id)["status"] == WAITING
    assert not list((sim.data_dir / "uploads" / str(job_id)).glob("*"))
    assert client.upload_data(job_id, big).status_code == 200


def test_upload_cut_before_content_length_is_discarded(sim: Simulator) -> None:
    job_id = sim.add_job()["jobId"]
    sock = _open_upload(sim, job_id, total=len(CSV) * 10, first=CSV)
    _wait_for(lambda: sim.job_state(job_id)["uploadInProgress"], "the upload to start")

    sock.close()

    _wait_for(lambda: not sim.job_state(job_id)["uploadInProgress"], "the upload to be dropped")
    assert sim.uploads(job_id) == []
    assert sim.job(job_id)["status"] == WAITING
    assert not list((sim.data_dir / "uploads" / str(job_id)).glob("*"))
    assert sim.request_log()[-1]["status"] is None


def test_second_upload_while_one_is_in_progress_is_409(
    sim: Simulator, client: ExchangeClient, csv_file: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    sock = _open_upload(sim, job_id, total=len(CSV) * 2, first=CSV)
    _wait_for(lambda: sim.job_state(job_id)["uploadInProgress"], "the first upload to start")

    with pytest.raises(Conflict) as refused:
        client.upload_data(job_id, csv_file)

    assert "already receiving" in (refused.value.server_message or "")
    sock.sendall(CSV)
    status, _ = _answer(sock)
    assert status == 200
    assert len(sim.uploads(job_id)) == 1


def test_job_cancelled_during_the_upload_refuses_the_data(sim: Simulator) -> None:
    job_id = sim.add_job()["jobId"]
    sock = _open_upload(sim, job_id, total=len(CSV) * 2, first=CSV)
    _wait_for(lambda: sim.job_state(job_id)["uploadInProgress"], "the upload to start")

    sim.set_status(job_id, "CANCELLED")
    sock.sendall(CSV)
    status, body = _answer(sock)

    assert status == 409
    assert b"CANCELLED" in body
    assert sim.uploads(job_id) == []


def test_fault_definitions_are_validated() -> None:
    book = FaultBook()

    for spec in (
        {"method": "GET", "path": "x"},
        {"method": "GET", "path": "x", "status": 503, "drop": True},
        {"method": "GET", "path": "(", "status": 503},
        {"method": "GET", "path": "x", "status": 503, "count": 0},
        {"method": "GET", "path": "x", "delay": -1},
        {"method": "GET", "path": "x", "status": 503, "colour": "red"},
    ):
        with pytest.raises(ConfigError):
            book.add(spec)

    assert book.active() == []
