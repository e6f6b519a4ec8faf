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
import requests

from pushagent.errors import (
    BadRequest,
    Conflict,
    ExchangeUnavailable,
    RateLimited,
    ServerError,
    UnexpectedResponse,
)
from pushagent.exchange import ExchangeClient, RetryPolicy, UploadResult
from pushagent.simulator import Simulator
from pushagent.simulator.control_client import SimulatorControl
from pushagent.simulator.errors import SimulatorInputError
from pushagent.simulator.faults import DEFAULT_LOCATION, FaultBook

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
        with pytest.raises(SimulatorInputError):
            book.add(spec)

    assert book.active() == []


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never a proxy from the environment
    return session


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_fault_sends_a_location_and_changes_nothing(
    sim: Simulator, status: int
) -> None:
    job_id = sim.add_job()["jobId"]
    sim.add_fault(method="POST", path=r"/data$", status=status)

    with _session() as session:
        answer = session.post(
            f"{sim.url}/v1/jobs/{job_id}/data", data=CSV, allow_redirects=False,
            headers={"Authorization": f"Bearer {KEY}"}, timeout=10,
        )

    assert answer.status_code == status
    assert answer.headers["Location"] == DEFAULT_LOCATION
    assert sim.uploads(job_id) == []
    assert sim.job(job_id)["status"] == WAITING
    last = sim.request_log()[-1]
    assert (last["status"], last["fault"], last["body_bytes"]) == (status, "status", len(CSV))


def test_redirect_fault_with_its_own_location_and_the_client_does_not_follow(
    sim: Simulator, client: ExchangeClient
) -> None:
    elsewhere = f"{sim.url}/v1/jobs/SEGMENT_EXPORT?moved=1"
    sim.add_fault(method="GET", path="SEGMENT_EXPORT$", status=302, location=elsewhere)

    with pytest.raises(UnexpectedResponse) as refused:
        client.list_jobs("SEGMENT_EXPORT")

    assert refused.value.status == 302
    assert [entry["status"] for entry in sim.request_log()] == [302]
    assert sim.faults() == []


def test_drop_after_stores_the_upload_and_loses_only_the_answer(
    sim: Simulator, client: ExchangeClient, csv_file: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    sim.add_fault(method="POST", path=r"/data$", drop_after=True)

    with pytest.raises(ExchangeUnavailable):
        client.upload_data(job_id, csv_file)

    assert [upload.bytes for upload in sim.uploads(job_id)] == [len(CSV)]
    assert sim.upload_data(job_id, 0) == CSV
    assert sim.job(job_id)["status"] != WAITING  # complete_after=0: RUNNING then COMPLETE
    last = sim.request_log()[-1]
    assert (last["status"], last["fault"], last["body_bytes"]) == (None, "drop_after", len(CSV))
    # Sent again, as a careless client would: the job takes no second upload.
    with pytest.raises(Conflict):
        client.upload_data(job_id, csv_file)
    assert len(sim.uploads(job_id)) == 1


def test_drop_after_on_a_status_change_makes_the_change(
    sim: Simulator, client: ExchangeClient
) -> None:
    job_id = sim.add_job()["jobId"]
    sim.add_fault(method="PUT", path=r"/status/fail$", drop_after=True)

    with pytest.raises(ExchangeUnavailable):
        client.fail_job(job_id, "the file was broken")

    job = sim.job(job_id)
    assert (job["status"], job["errorDetails"]) == ("ERROR", "the file was broken")
    assert sim.request_log()[-1]["fault"] == "drop_after"


def _cut_upload(sim: Simulator, job_id: int, *, head: str, sent: bytes) -> None:
    """Send a hand-made upload's headers and part of its body, then end the connection."""
    parts = urlsplit(sim.url)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/jobs/{job_id}/data HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: text/csv\r\n{head}\r\n".encode("ascii")
            + sent
        )
        _wait_for(lambda: sim.job_state(job_id)["uploadInProgress"], "the upload to start")
        # Half-close: the server reads end-of-stream where the body should go on.
        sock.shutdown(socket.SHUT_WR)
        _wait_for(lambda: sim.request_log(), "the server to give up on the body")


@pytest.mark.parametrize(
    ("head", "sent"),
    [
        (f"Content-Length: {len(CSV) + 1}\r\n", CSV),
        ("Transfer-Encoding: chunked\r\n", b"%x\r\n%s" % (len(CSV) * 2, CSV)),
        ("Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n" % (len(CSV), CSV)),
    ],
    ids=["one-byte-short-of-content-length", "cut-inside-a-chunk", "no-last-chunk"],
)
def test_an_incomplete_upload_body_is_never_stored(sim: Simulator, head: str, sent: bytes) -> None:
    job_id = sim.add_job()["jobId"]

    _cut_upload(sim, job_id, head=head, sent=sent)

    assert sim.request_log()[-1]["status"] is None
    assert sim.uploads(job_id) == []
    assert sim.job_state(job_id)["uploadInProgress"] is False
    assert sim.job(job_id)["status"] == WAITING
    assert not list((sim.data_dir / "uploads" / str(job_id)).glob("*"))


def test_control_api_takes_the_new_fault_fields(sim: Simulator, gate: GatedSleep) -> None:
    gate.release.set()
    control = SimulatorControl(sim.url)
    job_id = control.add_job()["jobId"]

    moved = control.add_fault(method="GET", path="x", status=307, location="http://127.0.0.1:1/")
    cut = control.add_fault(method="POST", path=r"/data$", drop_after=True, delay=0.1)
    for bad in (
        {"status": 200, "location": "http://127.0.0.1:1/"},  # not a redirect
        {"drop_after": True, "status": 503},
        {"drop_after": True, "drop": True},
        {"drop_after": "yes"},
        {"status": 301, "location": "http://127.0.0.1:1/\r\nX-Evil: 1"},
    ):
        with pytest.raises(SimulatorInputError):
            control.add_fault(method="GET", path="x", **bad)

    assert (moved["location"], moved["drop_after"]) == ("http://127.0.0.1:1/", False)
    assert (cut["drop_after"], cut["location"], cut["delay"]) == (True, None, 0.1)
    assert control.faults() == [moved, cut]
    with _session() as session, pytest.raises(requests.ConnectionError):
        session.post(
            f"{sim.url}/v1/jobs/{job_id}/data", data=CSV,
            headers={"Authorization": f"Bearer {KEY}"}, timeout=10,
        )
    assert control.upload_data(job_id, 0) == CSV
    assert control.faults() == [moved]
    control.close()
