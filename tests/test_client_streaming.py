"""Through a real HTTP server on 127.0.0.1: streamed bodies with flat memory, exact paths."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from pushagent.errors import ExchangeUnavailable, SourceChanged
from pushagent.exchange import ExchangeClient, ExpectedBody, RetryPolicy
from pushagent.exchange.client import FINAL_BLOCK
from pushagent.exchange.outcome import Outcome, classify
from pushagent.simulator import Simulator
from pushagent.validator import validate_csv

KEY = "7d1c0a3e-5f2b-4e8d-b6a9-3c2e1f0d9b8a"
MiB = 1024 * 1024
UPLOAD_SIZE = 200 * MiB
DOWNLOAD_SIZE = 64 * MiB
BLOCK = bytes(range(256)) * 4096  # 1 MiB of a repeating pattern


class StreamingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), StreamingHandler)
        self.uploads: list[tuple[str, int]] = []
        self.deleted: list[str] = []


class StreamingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StreamingServer

    def do_POST(self) -> None:
        remaining = int(self.headers["Content-Length"])
        counted = 0
        while remaining:
            chunk = self.rfile.read(min(MiB, remaining))
            if not chunk:
                break
            counted += len(chunk)
            remaining -= len(chunk)
        self.server.uploads.append((self.path, counted))
        self._answer(b"1347")

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/csv")
        self.send_header("Content-Length", str(DOWNLOAD_SIZE))
        self.end_headers()
        for _ in range(DOWNLOAD_SIZE // MiB):
            self.wfile.write(BLOCK)

    def do_DELETE(self) -> None:
        self.server.deleted.append(self.path)
        self._answer(b"")

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test asserts on what the server counted, not on its log."""


@pytest.fixture
def server() -> Iterator[StreamingServer]:
    httpd = StreamingServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def client(server: StreamingServer) -> Iterator[ExchangeClient]:
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not see loopback traffic
    host, port = server.server_address[:2]
    with ExchangeClient(
        f"http://{host!s}:{port}/", KEY, session=session, retry=RetryPolicy(max_attempts=1)
    ) as exchange:
        yield exchange
    session.close()


@pytest.mark.slow
@pytest.mark.parametrize("exact", [False, True], ids=["plain", "exact"])
def test_upload_of_200_mb_streams_with_flat_memory(
    server: StreamingServer, client: ExchangeClient, tmp_path: Path, exact: bool
) -> None:
    source = tmp_path / "big.csv"
    with source.open("wb") as out:
        out.truncate(UPLOAD_SIZE)  # sparse: no disk space, reads as zeros
    digest = hashlib.sha256()
    for _ in range(UPLOAD_SIZE // MiB):
        digest.update(bytes(MiB))
    expected = ExpectedBody(
        size=UPLOAD_SIZE, sha256=digest.hexdigest(), mtime_ns=source.stat().st_mtime_ns
    )
    calls = 0

    def progress(sent: int) -> None:
        nonlocal calls
        calls += 1
        assert sent <= UPLOAD_SIZE

    tracemalloc.start()
    try:
        result = client.upload_data(
            1347, source, retry=False, progress=progress, expected=expected if exact else None
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert server.uploads == [("/v1/jobs/1347/data", UPLOAD_SIZE)]
    assert result.bytes_sent == UPLOAD_SIZE
    assert result.sha256 == expected.sha256
    assert result.response_text == "1347"
    assert calls > 100
    assert peak < 50 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"


@pytest.mark.slow
def test_download_streams_to_disk_with_flat_memory(client: ExchangeClient, tmp_path: Path) -> None:
    target = tmp_path / "segment.csv"
    seen: list[int] = []

    tracemalloc.start()
    try:
        written = client.download_segment_file(4, "segment.csv", target, progress=seen.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert written == DOWNLOAD_SIZE
    assert target.stat().st_size == DOWNLOAD_SIZE
    assert seen[-1] == DOWNLOAD_SIZE
    expected_crc = 0
    for _ in range(DOWNLOAD_SIZE // MiB):
        expected_crc = zlib.crc32(BLOCK, expected_crc)
    actual_crc = 0
    with target.open("rb") as data:
        for chunk in iter(lambda: data.read(MiB), b""):
            actual_crc = zlib.crc32(chunk, actual_crc)
    assert actual_crc == expected_crc
    assert peak < 20 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["segment.csv"]


def test_encoded_names_reach_the_server_unchanged(
    server: StreamingServer, client: ExchangeClient
) -> None:
    client.delete_segment_file(4, "../x")
    client.delete_segment_file("../../etc", "a b.csv")

    assert server.deleted == [
        "/v1/jobs/4/segmentDataFiles/..%2Fx",
        "/v1/jobs/..%2F..%2Fetc/segmentDataFiles/a%20b.csv",
    ]


# --- exact uploads against the simulator: the validated bytes or nothing ------------------------

SIM_KEY = "sim-account-key"
WAITING = "WAITING_TO_RECIEVE_DATA"
ROWS = b"".join(b"u%d@example.com,Name %d\n" % (i, i) for i in range(20000))


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=SIM_KEY, data_dir=tmp_path / "sim") as simulator:
        yield simulator


@pytest.fixture
def sim_client(sim: Simulator) -> Iterator[ExchangeClient]:
    session = requests.Session()
    session.trust_env = False
    with ExchangeClient(
        sim.url, SIM_KEY, session=session, retry=RetryPolicy(max_attempts=1)
    ) as exchange:
        yield exchange
    session.close()


def validated(path: Path) -> ExpectedBody:
    report = validate_csv(path)
    assert report.ok and report.changed is None and report.sha256 is not None
    return ExpectedBody(size=report.size, sha256=report.sha256, mtime_ns=report.mtime_ns)


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + 10
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


def cut_off_uploads(sim: Simulator) -> list[dict[str, Any]]:
    """The upload requests in the simulator's log, once it has logged one (a body cut off is
    logged when the server gives up on it)."""
    return wait_for(
        lambda: [entry for entry in sim.request_log() if entry["path"].endswith("/data")],
        "the simulator to log the cut-off upload",
    )


def test_exact_upload_is_stored_as_validated(
    sim: Simulator, sim_client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    source = tmp_path / "segment.csv"
    source.write_bytes(b"Email,name\n" + ROWS)
    expected = validated(source)

    result = sim_client.upload_data(job_id, source, retry=False, expected=expected)

    (upload,) = sim.uploads(job_id)
    assert (upload.bytes, upload.sha256) == (expected.size, expected.sha256)
    assert result.sha256 == expected.sha256


def test_bytes_written_after_validation_never_reach_the_exchange(
    sim: Simulator, sim_client: ExchangeClient, tmp_path: Path
) -> None:
    """A dropper that keeps writing through its handle after the rename: the upload is cut
    off before its final block, so the Exchange stores nothing and the job keeps waiting."""
    job_id = sim.add_job()["jobId"]
    source = tmp_path / "segment.csv"
    source.write_bytes(b"Email,name\n" + ROWS)
    expected = validated(source)
    dropper = source.open("ab")

    def still_writing(sent: int) -> None:
        if not dropper.closed:
            dropper.write(b"late@example.com,\0")  # a NUL and an unterminated line
            dropper.close()

    with pytest.raises(SourceChanged) as caught:
        sim_client.upload_data(
            job_id, source, retry=False, expected=expected, progress=still_writing
        )

    assert caught.value.path == str(source)
    assert f"(size {expected.size} -> {expected.size + 18} bytes)" in str(caught.value)
    logged = cut_off_uploads(sim)
    assert [entry["status"] for entry in logged] == [None]  # broke off: nothing to answer
    assert 0 < logged[0]["body_bytes"] <= expected.size - FINAL_BLOCK
    assert sim.uploads(job_id) == []
    assert sim.job(job_id)["status"] == WAITING


def test_body_cut_off_by_the_server_is_ambiguous(
    sim: Simulator, sim_client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    source = tmp_path / "segment.csv"
    source.write_bytes(b"Email,name\n" + ROWS)
    sim.add_fault(method="POST", path=r"/data$", drop=True)

    with pytest.raises(ExchangeUnavailable) as caught:
        sim_client.upload_data(job_id, source, retry=True, expected=validated(source))

    assert caught.value.body_sent
    assert classify(caught.value) is Outcome.AMBIGUOUS


# --- a gated upload: each block shown to a gate before it leaves ----------------------------------


class RecordingGate:
    """A BodyGate that hashes what it is fed and, with ``refuse_at``, raises once it has been fed
    that many bytes (a validator that found a problem there)."""

    def __init__(self, *, skip_bom: bool = True, refuse_at: int | None = None) -> None:
        self.skip_bom = skip_bom
        self.refuse_at = refuse_at
        self.fed = 0
        self.released = False
        self._digest = hashlib.sha256()

    def begin(self, head: bytes, opened: os.stat_result) -> int:
        return 3 if self.skip_bom and head == b"\xef\xbb\xbf" else 0

    def feed(self, block: bytes) -> None:
        assert not self.released
        self.fed += len(block)
        self._digest.update(block)
        if self.refuse_at is not None and self.fed >= self.refuse_at:
            raise Refusal(f"refused after {self.fed} bytes")

    def release(self) -> str:
        self.released = True
        return self._digest.hexdigest()


class Refusal(Exception):
    pass


def test_a_gated_upload_sends_what_the_gate_saw_after_a_bom(
    sim: Simulator, sim_client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    body = b"Email,name\n" + ROWS
    source = tmp_path / "segment.csv"
    source.write_bytes(b"\xef\xbb\xbf" + body)
    gate = RecordingGate()

    result = sim_client.upload_data(job_id, source, retry=False, gate=gate)

    (upload,) = sim.uploads(job_id)
    assert gate.released and gate.fed == len(body)
    assert (upload.bytes, upload.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert result.sha256 == upload.sha256


@pytest.mark.parametrize("where", ["early", "in the final block"])
def test_a_gate_that_refuses_stops_the_body_before_its_end(
    sim: Simulator, sim_client: ExchangeClient, tmp_path: Path, where: str
) -> None:
    job_id = sim.add_job()["jobId"]
    source = tmp_path / "segment.csv"
    source.write_bytes(b"Email,name\n" + ROWS)
    size = source.stat().st_size
    gate = RecordingGate(refuse_at=1 if where == "early" else size)

    with pytest.raises(Refusal):
        sim_client.upload_data(job_id, source, retry=False, gate=gate)

    logged = cut_off_uploads(sim)
    assert [entry["status"] for entry in logged] == [None]
    assert logged[0]["body_bytes"] <= size - FINAL_BLOCK
    assert not gate.released
    assert sim.uploads(job_id) == []
    assert sim.job(job_id)["status"] == WAITING


def test_a_file_changed_during_a_gated_upload_is_cut_before_its_final_block(
    sim: Simulator, sim_client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    source = tmp_path / "segment.csv"
    source.write_bytes(b"Email,name\n" + ROWS)
    dropper = source.open("ab")

    def still_writing(sent: int) -> None:
        if not dropper.closed:
            dropper.write(b"late@example.com,Late\n")
            dropper.close()

    gate = RecordingGate()
    with pytest.raises(SourceChanged) as caught:
        sim_client.upload_data(job_id, source, retry=False, gate=gate, progress=still_writing)

    assert "changed while it was sent" in str(caught.value)
    assert not gate.released
    cut_off_uploads(sim)
    assert sim.uploads(job_id) == []


def test_a_gated_upload_needs_a_path_and_one_attempt(
    sim_client: ExchangeClient, tmp_path: Path
) -> None:
    source = tmp_path / "segment.csv"
    source.write_bytes(b"Email\nx@example.com\n")
    with pytest.raises(TypeError):
        sim_client.upload_data(1, source, gate=RecordingGate())  # retry defaults to True
