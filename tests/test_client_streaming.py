"""Through a real HTTP server on 127.0.0.1: streamed bodies with flat memory, exact paths."""

from __future__ import annotations

import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from pushagent.exchange import ExchangeClient, RetryPolicy

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
def test_upload_of_200_mb_streams_with_flat_memory(
    server: StreamingServer, client: ExchangeClient, tmp_path: Path
) -> None:
    source = tmp_path / "big.csv"
    with source.open("wb") as out:
        out.truncate(UPLOAD_SIZE)  # sparse: no disk space, reads as zeros
    calls = 0

    def progress(sent: int) -> None:
        nonlocal calls
        calls += 1
        assert sent <= UPLOAD_SIZE

    tracemalloc.start()
    try:
        result = client.upload_data(1347, source, retry=False, progress=progress)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert server.uploads == [("/v1/jobs/1347/data", UPLOAD_SIZE)]
    assert result.bytes_sent == UPLOAD_SIZE
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
