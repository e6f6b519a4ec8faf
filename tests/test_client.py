"""ExchangeClient against requests-mock: every call's wire format, errors, retries and secrecy."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import requests_mock
from loguru import logger
from urllib3.exceptions import ProtocolError

import pushagent
from pushagent import logs
from pushagent.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    ExchangeError,
    ExchangeHTTPError,
    ExchangeUnavailable,
    InsecureTransportError,
    NotAuthenticated,
    NotAuthorised,
    NotFound,
    OperationRefused,
    RateLimited,
    Refused,
    RetryLater,
    ServerError,
    SourceChanged,
    UnexpectedResponse,
)
from pushagent.exchange import (
    ExchangeClient,
    ExpectedBody,
    Job,
    JobCategory,
    JobStatus,
    RetryPolicy,
    ScheduledJob,
    UploadResult,
    parse_retry_after,
)
from pushagent.exchange.client import FINAL_BLOCK
from pushagent.exchange.outcome import Outcome, classify

KEY = "5b0f0f7e-2b7a-4d0e-9a51-0c4c8d1e7a22:US"
BASE = "https://127.0.0.1:8443/pilot/"
ROOT = "https://127.0.0.1:8443/pilot"
ALL_METHODS = ["GET", "POST", "PUT", "DELETE"]
POLICY = RetryPolicy(
    max_attempts=5, max_total_seconds=60.0, initial_backoff=0.5, max_backoff=30.0, jitter=0.5
)


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Harness:
    client: ExchangeClient
    adapter: requests_mock.Adapter
    sleep: RecordingSleep
    bodies: list[bytes] = field(default_factory=list)

    def on(
        self, method: str, path: str, responses: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> None:
        self.adapter.register_uri(method, ROOT + path, responses, **kwargs)

    def on_any(self, **kwargs: Any) -> None:
        self.adapter.register_uri(requests_mock.ANY, requests_mock.ANY, **kwargs)

    @property
    def history(self) -> list[Any]:
        return list(self.adapter.request_history)

    @property
    def last(self) -> Any:
        return self.adapter.request_history[-1]


def make_harness(policy: RetryPolicy = POLICY, base: str = BASE, **kwargs: Any) -> Harness:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE etc. would replace verify=True in the history
    adapter = requests_mock.Adapter(case_sensitive=True)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    sleep = RecordingSleep()
    client = ExchangeClient(base, KEY, session=session, retry=policy, sleep=sleep, **kwargs)
    return Harness(client=client, adapter=adapter, sleep=sleep)


@pytest.fixture
def ex() -> Harness:
    return make_harness()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{level} {message}")
    yield lines
    logger.remove(handler)


def read_body(request: Any) -> bytes:
    """What the transport would have sent: requests-mock hands over the body object unread."""
    body = request.body
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if hasattr(body, "read"):
        return cast(bytes, body.read())
    return b"".join(body)


def recording(
    bodies: list[bytes], status: int = 200, text: str = "1347", partial: int | None = None
) -> Callable[[Any, Any], str]:
    """A response callback that reads the request body (all of it, or ``partial`` bytes)."""

    def respond(request: Any, context: Any) -> str:
        bodies.append(request.body.read(partial) if partial is not None else read_body(request))
        context.status_code = status
        return text

    return respond


def query(request: Any) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(request.url).query, keep_blank_values=True)


def assert_common_headers(request: Any, accept: str = "application/json") -> None:
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["User-Agent"] == pushagent.USER_AGENT
    assert request.headers["Accept"] == accept


def job_json(job_id: int = 1347, status: str = "WAITING_TO_RECIEVE_DATA", **extra: Any) -> dict:
    return {"jobId": job_id, "jobCategory": "SEGMENT_EXPORT", "status": status, **extra}


# --- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://127.0.0.1:8443/pilot/", "https://127.0.0.1:8443/pilot"),
        ("https://127.0.0.1:8443/pilot", "https://127.0.0.1:8443/pilot"),
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("https://127.0.0.1:8443/", "https://127.0.0.1:8443"),
        (" HTTPS://127.0.0.1:8443/a/b/ ", "https://127.0.0.1:8443/a/b"),
    ],
)
def test_base_url_is_normalised_and_prefix_kept(base: str, expected: str) -> None:
    harness = make_harness(base=base)
    harness.on_any(json=[])

    harness.client.list_jobs("SEGMENT_EXPORT")

    assert harness.client.base_url == expected
    assert harness.last.url == expected + "/v1/jobs/SEGMENT_EXPORT"


@pytest.mark.parametrize(
    "base", ["http://127.0.0.1:9000", "http://127.5.6.7", "http://localhost:1", "http://[::1]:80"]
)
def test_plain_http_is_allowed_to_loopback(base: str) -> None:
    assert ExchangeClient(base, KEY).base_url == base


@pytest.mark.parametrize("base", ["http://exchange.example.com", "http://10.0.0.1/pilot"])
def test_plain_http_to_other_hosts_is_refused(base: str) -> None:
    with pytest.raises(InsecureTransportError, match="plain http") as caught:
        ExchangeClient(base, KEY)
    assert KEY not in str(caught.value)
    assert ExchangeClient(base, KEY, allow_insecure_http=True).base_url == base


@pytest.mark.parametrize(
    "base",
    [
        "",
        "exchange.example.com",
        "ftp://127.0.0.1/",
        "https://",
        "https://u:p@127.0.0.1/",
        "https://127.0.0.1/?key=1",
        "https://127.0.0.1:99999/",
    ],
)
def test_malformed_base_urls_are_config_errors(base: str) -> None:
    with pytest.raises(ConfigError):
        ExchangeClient(base, KEY)


@pytest.mark.parametrize("key", ["", "   ", "abc def", "abc\ndef", "clé-42"])
def test_unusable_keys_are_refused_without_echoing_them(key: str) -> None:
    with pytest.raises(ConfigError, match="API key") as caught:
        ExchangeClient(BASE, key)
    if key.strip():
        assert key.strip() not in str(caught.value)


def test_key_is_trimmed_registered_for_masking_and_hidden_from_repr() -> None:
    session = requests.Session()
    adapter = requests_mock.Adapter()
    session.mount("https://", adapter)
    adapter.register_uri("GET", requests_mock.ANY, json=[])
    client = ExchangeClient(BASE, f"  {KEY}\n", session=session)

    client.list_jobs("SEGMENT_EXPORT")

    assert adapter.request_history[-1].headers["Authorization"] == f"Bearer {KEY}"
    assert logs.mask(f"key={KEY}") == f"key={logs.MASK}"
    assert repr(client) == "ExchangeClient(base_url='https://127.0.0.1:8443/pilot')"


def test_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA bundle"):
        ExchangeClient(BASE, KEY, verify=str(tmp_path / "nope.pem"))


def test_verify_timeouts_and_no_redirects_are_passed_to_requests(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not really a certificate")
    harness = make_harness(verify=str(bundle), connect_timeout=3.0, read_timeout=40.0)
    harness.on_any(json=[])

    harness.client.list_jobs(JobCategory.SEGMENT_EXPORT)

    assert harness.last.verify == str(bundle)
    assert harness.last.timeout == (3.0, 40.0)


def test_tls_verification_and_default_timeouts(ex: Harness) -> None:
    ex.on_any(json=[])

    ex.client.list_jobs("SEGMENT_EXPORT")

    assert ex.last.verify is True
    assert ex.last.timeout == (10.0, 300.0)


# --- list_jobs ------------------------------------------------------------------------------


def test_list_jobs_sends_every_filter(ex: Harness) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", json=[job_json()])

    jobs = ex.client.list_jobs(
        JobCategory.SEGMENT_EXPORT,
        endpoint_id=85,
        status=JobStatus.WAITING_TO_RECEIVE_DATA,
        extra_fields=True,
        include_producer_segment_id_string=True,
    )

    assert [job.job_id for job in jobs] == [1347]
    request = ex.last
    assert request.method == "GET"
    assert urlsplit(request.url).path == "/pilot/v1/jobs/SEGMENT_EXPORT"
    assert query(request) == [
        ("endpointId", "85"),
        ("status", "WAITING_TO_RECIEVE_DATA"),
        ("extraFields", "true"),
        ("includeProducerSegmentIDString", "true"),
    ]
    assert_common_headers(request)
    assert read_body(request) == b""


def test_list_jobs_omits_unset_filters(ex: Harness) -> None:
    ex.on("GET", "/v1/jobs/IDENTITY_IMPORT", json=[])

    assert ex.client.list_jobs("identity_import") == []
    assert query(ex.last) == []


@pytest.mark.parametrize(
    "status",
    ["WAITING_TO_RECEIVE_DATA", "waiting_to_recieve_data", JobStatus.WAITING_TO_RECEIVE_DATA],
)
def test_waiting_status_is_sent_with_the_documented_spelling(
    ex: Harness, status: JobStatus | str
) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", json=[])

    ex.client.list_jobs("SEGMENT_EXPORT", status=status)

    assert query(ex.last) == [("status", "WAITING_TO_RECIEVE_DATA")]


def test_status_unknown_is_not_a_filter(ex: Harness) -> None:
    with pytest.raises(ValueError, match="UNKNOWN"):
        ex.client.list_jobs("SEGMENT_EXPORT", status=JobStatus.UNKNOWN)
    assert ex.history == []


def test_list_jobs_parses_both_spellings_unknown_status_and_big_ids(ex: Harness) -> None:
    text = (
        '[{"jobId": 1, "status": "WAITING_TO_RECIEVE_DATA"},'
        ' {"jobId": 2, "status": "WAITING_TO_RECEIVE_DATA"},'
        ' {"jobId": 3, "status": "HIBERNATING", "surprise": [1, {"x": 2}]},'
        ' {"jobId": 8000000000000001153, "producerSegmentID": 8000000000000001152,'
        '  "ratio": 0.1}]'
    )
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", text=text)

    jobs = ex.client.list_jobs("SEGMENT_EXPORT")

    assert [job.status for job in jobs[:2]] == [JobStatus.WAITING_TO_RECEIVE_DATA] * 2
    assert jobs[2].status is JobStatus.UNKNOWN
    assert jobs[2].status_raw == "HIBERNATING"
    assert jobs[2].raw["surprise"] == [1, {"x": 2}]
    assert jobs[3].job_id == 8000000000000001153
    assert jobs[3].producer_segment_id == 8000000000000001152
    assert jobs[3].segment_keys() == frozenset({"8000000000000001152"})
    assert str(jobs[3].raw["ratio"]) == "0.1"


def test_list_jobs_skips_unusable_items_with_a_warning(ex: Harness, log_lines: list[str]) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", json=[{"status": "RUNNING"}, "junk", job_json(9)])

    jobs = ex.client.list_jobs("SEGMENT_EXPORT")

    assert [job.job_id for job in jobs] == [9]
    assert sum("skipping job" in line for line in log_lines) == 2


@pytest.mark.parametrize(
    ("body", "expected"), [("", []), ("null", []), (json.dumps(job_json(4)), [4])]
)
def test_list_jobs_tolerates_empty_and_bare_object(ex: Harness, body: str, expected: list) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", text=body)

    assert [job.job_id for job in ex.client.list_jobs("SEGMENT_EXPORT")] == expected


@pytest.mark.parametrize("body", ["<html>oops</html>", "42", '"text"'])
def test_list_jobs_rejects_non_json_or_wrong_shape(ex: Harness, body: str) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", text=body)

    with pytest.raises(UnexpectedResponse, match=r"GET /v1/jobs/SEGMENT_EXPORT"):
        ex.client.list_jobs("SEGMENT_EXPORT")
    assert len(ex.history) == 1


# --- get_job --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["array", "object"])
def test_get_job_accepts_array_or_object(ex: Harness, shape: str) -> None:
    obj = job_json(1347, producerSegmentID=45311)
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT/1347", json=[obj] if shape == "array" else obj)

    job = ex.client.get_job("SEGMENT_EXPORT", 1347)

    assert isinstance(job, Job)
    assert (job.job_id, job.producer_segment_id, job.is_waiting) == (1347, 45311, True)
    assert ex.last.method == "GET"
    assert_common_headers(ex.last)


def test_get_job_picks_the_asked_job_from_several(ex: Harness) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT/2", json=[job_json(1), job_json(2, "RUNNING")])

    assert ex.client.get_job("SEGMENT_EXPORT", "2").status is JobStatus.RUNNING


def test_get_job_empty_array_is_not_found(ex: Harness) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT/77", json=[])

    with pytest.raises(NotFound, match=r"GET /v1/jobs/SEGMENT_EXPORT/77"):
        ex.client.get_job("SEGMENT_EXPORT", 77)


def test_get_job_with_another_id_is_unexpected(ex: Harness) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT/77", json=[job_json(78)])

    with pytest.raises(UnexpectedResponse, match="asked for job 77"):
        ex.client.get_job("SEGMENT_EXPORT", 77)


# --- upload_data ----------------------------------------------------------------------------


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "segment.csv"
    path.write_bytes(
        b"email,firstName\n" + b"".join(b"u%d@example.com,N%d\n" % (i, i) for i in range(5000))
    )
    return path


def test_upload_streams_the_file_with_length_and_type(ex: Harness, csv_file: Path) -> None:
    ex.on("POST", "/v1/jobs/1347/data", text=recording(ex.bodies, text="1347"))
    seen: list[int] = []

    result = ex.client.upload_data(1347, csv_file, progress=seen.append)

    size = csv_file.stat().st_size
    assert result == UploadResult(
        job_id=1347,
        bytes_sent=size,
        status_code=200,
        response_text="1347",
        sha256=hashlib.sha256(csv_file.read_bytes()).hexdigest(),
    )
    assert ex.bodies == [csv_file.read_bytes()]
    request = ex.last
    assert request.method == "POST"
    assert urlsplit(request.url).path == "/pilot/v1/jobs/1347/data"
    assert request.headers["Content-Type"] == "text/csv"
    assert request.headers["Content-Length"] == str(size)
    assert "Transfer-Encoding" not in request.headers
    assert_common_headers(request, accept="*/*")
    assert seen[-1] == size
    assert seen == sorted(seen)


def test_upload_content_type_is_configurable_and_str_path_accepted(
    ex: Harness, csv_file: Path
) -> None:
    ex.on("POST", "/v1/jobs/5/data", text=recording(ex.bodies))

    ex.client.upload_data("5", str(csv_file), content_type="text/plain; charset=utf-8")

    assert ex.last.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert ex.bodies == [csv_file.read_bytes()]


def test_upload_of_a_seekable_file_object_sends_all_of_it(ex: Harness) -> None:
    ex.on("POST", "/v1/jobs/5/data", text=recording(ex.bodies))
    data = b"a,b\n1,2\n"
    stream = io.BytesIO(data)
    stream.read(3)  # a half-consumed stream must still be sent whole

    result = ex.client.upload_data(5, stream)

    assert ex.bodies == [data]
    assert ex.last.headers["Content-Length"] == str(len(data))
    assert result.bytes_sent == len(data)


def test_upload_of_an_empty_file_sends_length_zero(ex: Harness, tmp_path: Path) -> None:
    ex.on("POST", "/v1/jobs/5/data", text=recording(ex.bodies))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")

    result = ex.client.upload_data(5, empty)

    assert ex.last.headers["Content-Length"] == "0"
    assert ex.bodies == [b""]
    assert result.bytes_sent == 0


def test_retried_upload_resends_the_whole_file(ex: Harness, csv_file: Path) -> None:
    ex.on(
        "POST",
        "/v1/jobs/1347/data",
        [
            {"text": recording(ex.bodies, status=503, text="busy", partial=100)},
            {"text": recording(ex.bodies, status=200)},
        ],
    )

    result = ex.client.upload_data(1347, csv_file)

    assert result.status_code == 200
    assert len(ex.history) == 2
    assert len(ex.bodies[0]) == 100
    assert ex.bodies[1] == csv_file.read_bytes()
    assert result.bytes_sent == csv_file.stat().st_size
    assert len(ex.sleep.delays) == 1
    assert 0.5 <= ex.sleep.delays[0] <= 1.0


def test_retried_upload_of_a_file_object_rewinds_it(ex: Harness) -> None:
    ex.on(
        "POST",
        "/v1/jobs/8/data",
        [
            {"text": recording(ex.bodies, status=502, partial=4)},
            {"text": recording(ex.bodies, status=200)},
        ],
    )
    data = b"x,y\n" * 100

    ex.client.upload_data(8, io.BytesIO(data))

    assert ex.bodies == [data[:4], data]


def test_upload_with_retry_false_is_exactly_one_attempt(ex: Harness, csv_file: Path) -> None:
    ex.on("POST", "/v1/jobs/1347/data", text=recording(ex.bodies, status=503))

    with pytest.raises(ServerError) as caught:
        ex.client.upload_data(1347, csv_file, retry=False)

    assert caught.value.status == 503
    assert len(ex.history) == 1
    assert ex.sleep.delays == []


class PipeLike:
    """A stream that cannot be rewound, like stdin or a socket."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._inner.read(size)

    def seekable(self) -> bool:
        return False


def test_non_seekable_stream_is_sent_chunked_and_never_retried(ex: Harness) -> None:
    ex.on("POST", "/v1/jobs/3/data", text=recording(ex.bodies, status=503))

    with pytest.raises(ServerError):
        ex.client.upload_data(3, cast(BinaryIO, PipeLike(b"a\n" * 10)))

    assert len(ex.history) == 1
    assert ex.last.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in ex.last.headers
    assert ex.bodies == [b"a\n" * 10]


def test_non_seekable_stream_upload_succeeds(ex: Harness) -> None:
    ex.on("POST", "/v1/jobs/3/data", text=recording(ex.bodies))
    seen: list[int] = []

    result = ex.client.upload_data(3, cast(BinaryIO, PipeLike(b"a,b\n" * 5)), progress=seen.append)

    assert ex.bodies == [b"a,b\n" * 5]
    assert result.bytes_sent == 20
    assert seen[-1] == 20


class ShrinkingFile(io.BytesIO):
    """Claims more bytes than it delivers, as a file truncated while being uploaded."""

    def seek(self, offset: int, whence: int = 0) -> int:
        position = super().seek(offset, whence)
        return position + 50 if whence == io.SEEK_END else position


def test_file_shrinking_mid_upload_aborts_without_retry(ex: Harness) -> None:
    ex.on("POST", "/v1/jobs/3/data", text=recording(ex.bodies))

    with pytest.raises(SourceChanged, match="expected 60 bytes, the file ended after 10 while"):
        ex.client.upload_data(3, ShrinkingFile(b"0123456789"))

    assert len(ex.history) == 1


def test_upload_to_unknown_job_is_not_found_and_not_retried(ex: Harness, csv_file: Path) -> None:
    ex.on("POST", "/v1/jobs/9/data", status_code=404, json={"message": "no such job 9"})

    with pytest.raises(NotFound, match=r"POST /v1/jobs/9/data -> HTTP 404.*no such job 9"):
        ex.client.upload_data(9, csv_file)
    assert len(ex.history) == 1


def test_upload_of_missing_file_raises_oserror(ex: Harness, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ex.client.upload_data(9, tmp_path / "gone.csv")
    assert ex.history == []


def test_upload_result_has_the_digest_of_a_streamed_body(ex: Harness) -> None:
    ex.on("POST", "/v1/jobs/3/data", text=recording(ex.bodies))

    result = ex.client.upload_data(3, cast(BinaryIO, PipeLike(b"a,b\n" * 5)))

    assert result.sha256 == hashlib.sha256(b"a,b\n" * 5).hexdigest()


# --- upload_data with expected: the validated bytes or nothing --------------------------------


def expected_of(path: Path) -> ExpectedBody:
    data = path.read_bytes()
    return ExpectedBody(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mtime_ns=path.stat().st_mtime_ns,
    )


def reading_in_blocks(received: list[int]) -> Callable[[Any, Any], str]:
    """A response callback that reads the body as urllib3 would, 16 KiB at a time, recording
    how much it got before the body ended or raised."""

    def respond(request: Any, context: Any) -> str:
        received.append(0)
        while block := request.body.read(16 * 1024):
            received[-1] += len(block)
        return "1347"

    return respond


def test_exact_upload_sends_the_validated_bytes(ex: Harness, csv_file: Path) -> None:
    ex.on("POST", "/v1/jobs/1347/data", text=recording(ex.bodies))
    expected = expected_of(csv_file)
    seen: list[int] = []

    result = ex.client.upload_data(1347, csv_file, expected=expected, progress=seen.append)

    assert ex.bodies == [csv_file.read_bytes()]
    assert ex.last.headers["Content-Length"] == str(expected.size)
    assert (result.bytes_sent, result.sha256) == (expected.size, expected.sha256)
    assert seen[-1] == expected.size
    assert seen == sorted(seen)


def test_exact_upload_from_an_offset_leaves_out_a_byte_order_mark(
    ex: Harness, tmp_path: Path
) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfEmail,Name\r\na@x,A\r\n")
    body = path.read_bytes()[3:]
    ex.on(
        "POST",
        "/v1/jobs/1347/data",
        [
            {"text": recording(ex.bodies, status=503, partial=4)},
            {"text": recording(ex.bodies, status=200)},
        ],
    )
    expected = ExpectedBody(size=len(body), sha256=hashlib.sha256(body).hexdigest(),
                            mtime_ns=path.stat().st_mtime_ns, offset=3)

    result = ex.client.upload_data(1347, path, expected=expected)

    assert ex.bodies[1] == body, "every attempt starts after the mark"
    assert ex.last.headers["Content-Length"] == str(len(body))
    assert (result.bytes_sent, result.sha256) == (len(body), expected.sha256)
    with pytest.raises(SourceChanged, match="size 22 -> 23 bytes"):
        path.write_bytes(path.read_bytes() + b"\n")
        ex.client.upload_data(1347, path, expected=expected)


def test_exact_upload_checks_every_attempt(ex: Harness, csv_file: Path) -> None:
    ex.on(
        "POST",
        "/v1/jobs/1347/data",
        [
            {"text": recording(ex.bodies, status=503, partial=100)},
            {"text": recording(ex.bodies, status=200)},
        ],
    )

    result = ex.client.upload_data(1347, csv_file, expected=expected_of(csv_file))

    assert ex.bodies[1] == csv_file.read_bytes()
    assert result.sha256 == expected_of(csv_file).sha256


def test_exact_upload_of_an_empty_file(ex: Harness, tmp_path: Path) -> None:
    ex.on("POST", "/v1/jobs/5/data", text=recording(ex.bodies))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")

    result = ex.client.upload_data(5, empty, expected=expected_of(empty))

    assert ex.last.headers["Content-Length"] == "0"
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    with pytest.raises(SourceChanged, match="other bytes"):
        ex.client.upload_data(5, empty, expected=ExpectedBody(size=0, sha256="0" * 64))
    assert len(ex.history) == 1


def grow(path: Path) -> None:
    with path.open("ab") as out:
        out.write(b"late@example.com\0")


def touch(path: Path) -> None:
    mtime = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(mtime, mtime))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (grow, "size {size} -> {grown} bytes"),
        (touch, "rewritten at the same size of {size} bytes"),
    ],
)
def test_exact_upload_of_a_file_changed_since_validation_sends_nothing(
    ex: Harness, csv_file: Path, change: Callable[[Path], None], said: str
) -> None:
    ex.on("POST", "/v1/jobs/1347/data", text=recording(ex.bodies))
    expected = expected_of(csv_file)
    change(csv_file)

    with pytest.raises(SourceChanged) as caught:
        ex.client.upload_data(1347, csv_file, expected=expected)

    assert ex.history == []
    assert caught.value.path == str(csv_file)
    detail = said.format(size=expected.size, grown=expected.size + 17)
    assert str(caught.value) == (
        f"{csv_file}: changed after it was validated ({detail}); the dropper must finish "
        "writing before renaming it into the drop folder; nothing was sent"
    )


def test_exact_upload_withholds_the_final_block_of_other_bytes(
    ex: Harness, csv_file: Path
) -> None:
    """Same size, same mtime, other content: only the digest tells, before the last 64 KiB."""
    received: list[int] = []
    ex.on("POST", "/v1/jobs/1347/data", text=reading_in_blocks(received))
    expected = expected_of(csv_file)
    csv_file.write_bytes(csv_file.read_bytes().replace(b"u1@", b"u\0@"))
    os.utime(csv_file, ns=(expected.mtime_ns or 0, expected.mtime_ns or 0))

    with pytest.raises(SourceChanged, match=r"\(the same size of \d+ bytes, but other bytes\)"):
        ex.client.upload_data(1347, csv_file, expected=expected)

    assert received == [expected.size - FINAL_BLOCK]
    assert len(ex.history) == 1


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (grow, r"size \d+ -> \d+ bytes"),
        (touch, r"rewritten at the same size of \d+ bytes"),
        (lambda path: os.truncate(path, 70_000), r"expected \d+ bytes, the file ended after 70000"),
    ],
)
def test_exact_upload_aborts_when_the_file_changes_while_sent(
    ex: Harness, csv_file: Path, change: Callable[[Path], None], said: str
) -> None:
    received: list[int] = []
    ex.on("POST", "/v1/jobs/1347/data", text=reading_in_blocks(received))
    expected = expected_of(csv_file)
    changed: list[int] = []

    def dropper_still_writing(sent: int) -> None:
        if not changed:
            changed.append(sent)
            change(csv_file)

    with pytest.raises(SourceChanged, match=said) as caught:
        ex.client.upload_data(
            1347, csv_file, expected=expected, progress=dropper_still_writing, retry=True
        )

    assert received == [expected.size - FINAL_BLOCK]
    assert len(ex.history) == 1  # not retried: the file is not fit to send
    assert "was aborted before its last bytes, so the Exchange did not take the upload" in str(
        caught.value
    )


def test_exact_upload_withholds_all_of_a_small_file(ex: Harness, tmp_path: Path) -> None:
    small = tmp_path / "small.csv"
    small.write_bytes(b"Email\na@example.com\n")
    received: list[int] = []
    ex.on("POST", "/v1/jobs/2/data", text=reading_in_blocks(received))
    expected = expected_of(small)
    small.write_bytes(b"Email\nb@example.com\n")
    os.utime(small, ns=(expected.mtime_ns or 0, expected.mtime_ns or 0))

    with pytest.raises(SourceChanged):
        ex.client.upload_data(2, small, expected=expected)

    assert received == [0]


def test_exact_upload_needs_a_path(ex: Harness) -> None:
    with pytest.raises(TypeError, match="needs a path"):
        ex.client.upload_data(
            1, io.BytesIO(b"a\n"), expected=ExpectedBody(size=2, sha256="0" * 64)
        )


@pytest.mark.parametrize(
    "bad", [{"size": -1, "sha256": "0" * 64}, {"size": 1, "sha256": "ABC"},
            {"size": 1, "sha256": "0" * 64, "offset": -3}]
)
def test_expected_body_refuses_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="ExpectedBody"):
        ExpectedBody(**bad)


def test_upload_cut_off_after_body_bytes_left_is_ambiguous_and_not_retried(
    ex: Harness, csv_file: Path
) -> None:
    def cut_off(request: Any, context: Any) -> str:
        request.body.read(1000)
        raise requests.exceptions.ConnectionError("reset by peer")

    ex.on("POST", "/v1/jobs/1347/data", text=cut_off)

    with pytest.raises(ExchangeUnavailable) as caught:
        ex.client.upload_data(1347, csv_file)

    assert caught.value.body_sent
    assert "1000 bytes of the body had been sent, so it may have arrived" in str(caught.value)
    assert classify(caught.value) is Outcome.AMBIGUOUS
    assert len(ex.history) == 1


def test_upload_that_never_started_its_body_is_retried(ex: Harness, csv_file: Path) -> None:
    ex.on(
        "POST",
        "/v1/jobs/1347/data",
        [{"exc": requests.exceptions.ConnectionError("refused")}, {"text": "1347"}],
    )

    assert ex.client.upload_data(1347, csv_file).status_code == 200
    assert len(ex.history) == 2


# --- fail_job / complete_job ------------------------------------------------------------------


def test_fail_job_sends_the_message_as_json(ex: Harness) -> None:
    ex.on("PUT", "/v1/jobs/1347/status/fail", text="true")

    ex.client.fail_job(1347, "column email missing on line 1")

    request = ex.last
    assert request.method == "PUT"
    assert request.headers["Content-Type"] == "application/json"
    assert_common_headers(request)
    assert json.loads(read_body(request)) == {"errorMessage": "column email missing on line 1"}


@pytest.mark.parametrize("message", ["", "   ", "\n\t\r", "\x00\x07"])
def test_fail_job_refuses_an_empty_message(ex: Harness, message: str) -> None:
    with pytest.raises(ValueError, match="non-empty error message"):
        ex.client.fail_job(1, message)
    assert ex.history == []


def test_fail_job_cleans_caps_and_masks_the_message(ex: Harness) -> None:
    ex.on("PUT", "/v1/jobs/1/status/fail", text="true")

    ex.client.fail_job(1, f"bad\x00 row\n\tnear key {KEY}\x1b[31m " + "x" * 3000)

    sent = json.loads(read_body(ex.last))["errorMessage"]
    assert len(sent) == 1000
    assert sent.startswith(f"bad row near key {logs.MASK} [31m xxx")
    assert sent.endswith("x…")
    assert KEY not in sent
    assert not any(ord(ch) < 32 for ch in sent)


def test_complete_job_is_a_bodiless_put(ex: Harness) -> None:
    ex.on("PUT", "/v1/jobs/1347/status/complete", text="true")

    ex.client.complete_job(1347)

    request = ex.last
    assert request.method == "PUT"
    assert urlsplit(request.url).path == "/pilot/v1/jobs/1347/status/complete"
    assert read_body(request) == b""
    assert "Content-Type" not in request.headers
    assert_common_headers(request)


@pytest.mark.parametrize("operation", ["complete", "fail"])
@pytest.mark.parametrize("body", ["true", "TRUE", '"TRUE"', " True \n", '"true"', "", "  "])
def test_status_calls_accept_every_form_of_true(ex: Harness, operation: str, body: str) -> None:
    ex.on("PUT", f"/v1/jobs/1/status/{operation}", text=body, status_code=204 if not body else 200)

    call_status(ex.client, operation)

    assert len(ex.history) == 1


@pytest.mark.parametrize("operation", ["complete", "fail"])
@pytest.mark.parametrize("body", ["false", "FALSE", "False", '"false"', "\tfalse\n"])
def test_status_calls_raise_operation_refused_on_false(
    ex: Harness, operation: str, body: str
) -> None:
    ex.on("PUT", f"/v1/jobs/1/status/{operation}", text=body)

    with pytest.raises(OperationRefused, match=rf"PUT /v1/jobs/1/status/{operation}.*false"):
        call_status(ex.client, operation)
    assert len(ex.history) == 1


@pytest.mark.parametrize("operation", ["complete", "fail"])
@pytest.mark.parametrize("body", ["yes", "1", "{}", "[true]", "truee"])
def test_status_calls_reject_other_answers(ex: Harness, operation: str, body: str) -> None:
    ex.on("PUT", f"/v1/jobs/1/status/{operation}", text=body)

    with pytest.raises(UnexpectedResponse, match="expected true or false"):
        call_status(ex.client, operation)


def call_status(client: ExchangeClient, operation: str) -> None:
    if operation == "complete":
        client.complete_job(1)
    else:
        client.fail_job(1, "upload failed")


# --- download / delete / scheduled jobs -----------------------------------------------------


def test_download_to_path_writes_atomically(ex: Harness, tmp_path: Path) -> None:
    data = b"email\n" + b"x@example.com\n" * 1000
    ex.on("GET", "/v1/jobs/1347/segmentDataFiles/part-1.csv", content=data)
    target = tmp_path / "out.csv"
    seen: list[int] = []

    written = ex.client.download_segment_file(1347, "part-1.csv", target, progress=seen.append)

    assert written == len(data)
    assert target.read_bytes() == data
    assert seen[-1] == len(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    assert_common_headers(ex.last, accept="*/*")
    assert ex.last.stream is True


def test_download_into_a_file_object(ex: Harness) -> None:
    ex.on("GET", "/v1/jobs/4/segmentDataFiles/f.csv", content=b"a,b\n")
    sink = io.BytesIO()

    assert ex.client.download_segment_file(4, "f.csv", sink) == 4
    assert sink.getvalue() == b"a,b\n"


class BreakingBody(io.RawIOBase):
    """A response body whose connection drops after the first bytes."""

    def __init__(self) -> None:
        self._sent = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._sent:
            raise ProtocolError("Connection broken: IncompleteRead")
        self._sent = True
        buffer[:5] = b"email"
        return 5


def test_failed_download_leaves_no_partial_file(tmp_path: Path) -> None:
    harness = make_harness(policy=RetryPolicy(max_attempts=2, jitter=0.0))
    harness.on(
        "GET",
        "/v1/jobs/4/segmentDataFiles/f.csv",
        [{"body": BreakingBody()}, {"body": BreakingBody()}],
    )
    target = tmp_path / "f.csv"
    target.write_bytes(b"previous complete download")

    with pytest.raises(ExchangeUnavailable, match=r"GET /v1/jobs/4/segmentDataFiles/f\.csv"):
        harness.client.download_segment_file(4, "f.csv", target)

    assert len(harness.history) == 2
    assert target.read_bytes() == b"previous complete download"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]


def test_download_retry_rewinds_a_file_object() -> None:
    harness = make_harness(policy=RetryPolicy(max_attempts=2, jitter=0.0))
    harness.on(
        "GET",
        "/v1/jobs/4/segmentDataFiles/f.csv",
        [{"body": BreakingBody()}, {"content": b"email\nz@example.com\n"}],
    )
    sink = io.BytesIO(b"HEAD:")
    sink.seek(5)

    written = harness.client.download_segment_file(4, "f.csv", sink)

    assert written == 20
    assert sink.getvalue() == b"HEAD:email\nz@example.com\n"


def test_download_not_found_creates_no_file(ex: Harness, tmp_path: Path) -> None:
    ex.on("GET", "/v1/jobs/4/segmentDataFiles/f.csv", status_code=404, text="file is gone")

    with pytest.raises(NotFound, match="file is gone"):
        ex.client.download_segment_file(4, "f.csv", tmp_path / "f.csv")
    assert list(tmp_path.iterdir()) == []


def test_delete_segment_file(ex: Harness) -> None:
    ex.on("DELETE", "/v1/jobs/4/segmentDataFiles/f.csv", text="")

    ex.client.delete_segment_file(4, "f.csv")

    assert ex.last.method == "DELETE"
    assert_common_headers(ex.last, accept="*/*")


def test_list_scheduled_jobs(ex: Harness) -> None:
    ex.on(
        "GET",
        "/v1/scheduledjobs/SEGMENT_EXPORT",
        json=[
            {"jobId": 301, "state": "SCHEDULED", "jobCategory": "SEGMENT_EXPORT", "active": 1},
            {"jobId": 1044, "state": "SCHEDULED", "newField": True},
        ],
    )

    jobs = ex.client.list_scheduled_jobs(endpoint_id=85)

    assert [(job.job_id, job.state, job.active) for job in jobs] == [
        (301, "SCHEDULED", 1),
        (1044, "SCHEDULED", None),
    ]
    assert all(isinstance(job, ScheduledJob) for job in jobs)
    assert jobs[1].raw["newField"] is True
    assert query(ex.last) == [("endpointId", "85")]
    assert_common_headers(ex.last)


def test_list_scheduled_jobs_without_endpoint(ex: Harness) -> None:
    ex.on("GET", "/v1/scheduledjobs/SEGMENT_EXPORT", json=[])

    assert ex.client.list_scheduled_jobs() == []
    assert query(ex.last) == []


def test_delete_scheduled_job(ex: Harness) -> None:
    ex.on("DELETE", "/v1/scheduledjobs/301", status_code=204)

    ex.client.delete_scheduled_job(301)

    assert ex.last.method == "DELETE"
    assert urlsplit(ex.last.url).path == "/pilot/v1/scheduledjobs/301"


# --- path encoding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "encoded"),
    [
        ("../x", "..%2Fx"),
        ("a b.csv", "a%20b.csv"),
        ("../../v1/scheduledjobs/1", "..%2F..%2Fv1%2Fscheduledjobs%2F1"),
        ("50%.csv", "50%25.csv"),
        ("?q=1#f", "%3Fq%3D1%23f"),
        ("...", "..."),
    ],
)
def test_file_names_are_one_path_segment(ex: Harness, file_name: str, encoded: str) -> None:
    ex.on_any(text="")

    ex.client.delete_segment_file(4, file_name)
    ex.client.download_segment_file(4, file_name, io.BytesIO())

    for request in ex.history:
        assert request.url == f"{ROOT}/v1/jobs/4/segmentDataFiles/{encoded}"


@pytest.mark.parametrize("job_id", ["../x", "a b", "1/2"])
def test_job_ids_are_one_path_segment(ex: Harness, job_id: str) -> None:
    ex.on_any(text="true")

    ex.client.complete_job(job_id)

    encoded = job_id.replace("/", "%2F").replace(" ", "%20")
    assert ex.last.url == f"{ROOT}/v1/jobs/{encoded}/status/complete"


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_segments_are_refused(ex: Harness, name: str) -> None:
    with pytest.raises(ValueError, match="not a valid"):
        ex.client.delete_segment_file(4, name)
    with pytest.raises(ValueError, match="not a valid"):
        ex.client.complete_job(name)
    assert ex.history == []


@pytest.mark.parametrize("job_id", [True, 1.5, None, ""])
def test_bad_job_id_types_are_refused(ex: Harness, job_id: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        ex.client.complete_job(job_id)
    assert ex.history == []


def test_big_job_id_in_path(ex: Harness, csv_file: Path) -> None:
    ex.on_any(text=recording(ex.bodies))

    ex.client.upload_data(8000000000000001153, csv_file)

    assert urlsplit(ex.last.url).path == "/pilot/v1/jobs/8000000000000001153/data"


# --- error mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "attempts"),
    [
        (400, BadRequest, 1),
        (401, NotAuthenticated, 1),
        (403, NotAuthorised, 1),
        (404, NotFound, 1),
        (408, RetryLater, 5),
        (409, Conflict, 1),
        (410, Refused, 1),
        (413, Refused, 1),
        (415, Refused, 1),
        (422, Refused, 1),
        (425, RetryLater, 5),
        (429, RateLimited, 5),
        (499, Refused, 1),
        (500, ServerError, 5),
        (502, ServerError, 5),
        (503, ServerError, 5),
        (504, ServerError, 5),
        (501, ServerError, 5),
        (505, ServerError, 5),
        (599, ServerError, 5),
        (301, UnexpectedResponse, 1),
        (302, UnexpectedResponse, 1),
        (307, UnexpectedResponse, 1),
        (308, UnexpectedResponse, 1),
    ],
)
def test_status_codes_map_to_error_classes(
    ex: Harness, status: int, error_class: type[ExchangeError], attempts: int
) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", status_code=status, text="nope")

    with pytest.raises(error_class) as caught:
        ex.client.list_jobs("SEGMENT_EXPORT")

    assert type(caught.value) is error_class
    assert caught.value.status == status
    assert caught.value.method == "GET"
    assert caught.value.url == "/v1/jobs/SEGMENT_EXPORT"
    assert str(caught.value).startswith(f"GET /v1/jobs/SEGMENT_EXPORT -> HTTP {status}: ")
    assert "(server said: nope)" in str(caught.value)
    assert len(ex.history) == attempts
    assert len(ex.sleep.delays) == attempts - 1


def test_redirect_is_reported_not_followed(ex: Harness) -> None:
    ex.on(
        "GET",
        "/v1/jobs/SEGMENT_EXPORT",
        status_code=301,
        headers={"Location": "https://127.0.0.1:9443/other/v1/jobs/SEGMENT_EXPORT"},
    )

    with pytest.raises(
        UnexpectedResponse, match=re.escape("redirect to 'https://127.0.0.1:9443/other")
    ) as caught:
        ex.client.list_jobs("SEGMENT_EXPORT")
    assert caught.value.status == 301
    assert classify(caught.value) is Outcome.RETRY  # for the caller, later; never in-client
    assert len(ex.history) == 1


def test_redirect_without_location_says_so(ex: Harness) -> None:
    ex.on("POST", "/v1/jobs/4/data", status_code=307)

    with pytest.raises(UnexpectedResponse, match="redirect but no Location") as caught:
        ex.client.upload_data(4, io.BytesIO(b"a\n1\n"))
    assert caught.value.status == 307


def test_not_found_names_the_command_to_check_the_id(ex: Harness) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT/9", status_code=404)

    with pytest.raises(NotFound, match=re.escape("check the id with `pushagent jobs list")):
        ex.client.get_job("SEGMENT_EXPORT", 9)


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"json": {"message": "endpoint 85 is not active"}}, "endpoint 85 is not active"),
        ({"json": {"error": "Forbidden", "status": 403}}, "Forbidden"),
        ({"json": {"errorMessage": "job is COMPLETE"}}, "job is COMPLETE"),
        ({"json": {"code": 7}}, '{"code": 7}'),
        ({"text": "  plain\n\ttext  "}, "plain text"),
        ({"text": "y" * 500}, "y" * 199 + "…"),
    ],
)
def test_server_message_is_quoted(ex: Harness, kwargs: dict[str, Any], said: str) -> None:
    ex.on("PUT", "/v1/jobs/1/status/complete", status_code=403, **kwargs)

    with pytest.raises(NotAuthorised) as caught:
        ex.client.complete_job(1)

    assert caught.value.server_message == said
    assert str(caught.value).endswith(f"(server said: {said})")


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (requests.exceptions.ConnectionError("refused"), "could not reach"),
        (requests.exceptions.ConnectTimeout("slow"), "could not connect within 10 s"),
        (requests.exceptions.ReadTimeout("slow"), "no answer within 300 s"),
        (requests.exceptions.SSLError("bad cert"), "TLS failed"),
    ],
)
def test_transport_failures_are_unavailable_and_retried(
    ex: Harness, exc: Exception, words: str
) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", exc=exc)

    with pytest.raises(ExchangeUnavailable, match=words) as caught:
        ex.client.list_jobs("SEGMENT_EXPORT")

    assert caught.value.__cause__ is exc
    assert str(caught.value).startswith("GET /v1/jobs/SEGMENT_EXPORT: ")
    assert caught.value.retryable
    assert len(ex.history) == 5


def test_transport_failure_then_success(ex: Harness) -> None:
    ex.on(
        "GET",
        "/v1/jobs/SEGMENT_EXPORT",
        [{"exc": requests.exceptions.ConnectionError("reset")}, {"json": [job_json()]}],
    )

    assert [job.job_id for job in ex.client.list_jobs("SEGMENT_EXPORT")] == [1347]
    assert len(ex.sleep.delays) == 1


# --- retry schedule -------------------------------------------------------------------------


def test_backoff_is_exponential_with_bounded_jitter(ex: Harness, log_lines: list[str]) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", status_code=503)

    with pytest.raises(ServerError):
        ex.client.list_jobs("SEGMENT_EXPORT")

    assert len(ex.history) == 5
    assert len(ex.sleep.delays) == 4
    for attempt, delay in enumerate(ex.sleep.delays, start=1):
        base = 0.5 * 2 ** (attempt - 1)
        assert base <= delay <= base + 0.5
    retries = [line for line in log_lines if "retrying in" in line]
    assert len(retries) == 4
    assert retries[0].startswith(
        "WARNING GET /v1/jobs/SEGMENT_EXPORT failed (HTTP 503), attempt 1 of 5, retrying in "
    )
    assert "attempt 4 of 5" in retries[3]


def test_backoff_never_exceeds_max_backoff() -> None:
    harness = make_harness(
        policy=RetryPolicy(
            max_attempts=6,
            max_total_seconds=1000.0,
            initial_backoff=4.0,
            max_backoff=10.0,
            jitter=3.0,
        )
    )
    harness.on("GET", "/v1/jobs/SEGMENT_EXPORT", status_code=500)

    with pytest.raises(ServerError):
        harness.client.list_jobs("SEGMENT_EXPORT")

    assert len(harness.sleep.delays) == 5
    assert 4.0 <= harness.sleep.delays[0] <= 7.0
    assert all(delay <= 10.0 for delay in harness.sleep.delays)
    assert harness.sleep.delays[2:] == [10.0, 10.0, 10.0]


def test_time_budget_ends_retries_before_overrunning() -> None:
    harness = make_harness(
        policy=RetryPolicy(max_attempts=10, max_total_seconds=2.0, initial_backoff=0.5, jitter=0.0)
    )
    harness.on("GET", "/v1/jobs/SEGMENT_EXPORT", exc=requests.exceptions.ConnectionError("down"))

    with pytest.raises(ExchangeUnavailable):
        harness.client.list_jobs("SEGMENT_EXPORT")

    assert harness.sleep.delays == [0.5, 1.0]
    assert len(harness.history) == 3


def test_retry_after_seconds_is_honoured(ex: Harness, log_lines: list[str]) -> None:
    ex.on(
        "GET",
        "/v1/jobs/SEGMENT_EXPORT",
        [{"status_code": 429, "headers": {"Retry-After": "7"}}, {"json": []}],
    )

    assert ex.client.list_jobs("SEGMENT_EXPORT") == []
    assert ex.sleep.delays == [7.0]
    assert any("(HTTP 429), attempt 1 of 5, retrying in 7.0 s" in line for line in log_lines)


def test_retry_after_on_503_is_honoured_beyond_max_backoff() -> None:
    harness = make_harness(policy=RetryPolicy(max_backoff=1.0))
    harness.on(
        "GET",
        "/v1/jobs/SEGMENT_EXPORT",
        [{"status_code": 503, "headers": {"Retry-After": "12"}}, {"json": []}],
    )

    harness.client.list_jobs("SEGMENT_EXPORT")

    assert harness.sleep.delays == [12.0]


def test_retry_after_http_date_in_the_past_means_now(ex: Harness) -> None:
    past = format_datetime(datetime.now(timezone.utc) - timedelta(minutes=5), usegmt=True)
    ex.on(
        "GET",
        "/v1/jobs/SEGMENT_EXPORT",
        [{"status_code": 429, "headers": {"Retry-After": past}}, {"json": []}],
    )

    ex.client.list_jobs("SEGMENT_EXPORT")

    assert ex.sleep.delays == [0.0]


def test_retry_after_beyond_the_budget_is_left_to_the_caller(ex: Harness) -> None:
    ex.on("GET", "/v1/jobs/SEGMENT_EXPORT", status_code=429, headers={"Retry-After": "120"})

    with pytest.raises(RateLimited) as caught:
        ex.client.list_jobs("SEGMENT_EXPORT")

    assert caught.value.retry_after == 120.0
    assert "retry after 120 s" in str(caught.value)
    assert len(ex.history) == 1
    assert ex.sleep.delays == []


def test_max_attempts_one_means_no_retry() -> None:
    harness = make_harness(policy=RetryPolicy(max_attempts=1))
    harness.on("GET", "/v1/jobs/SEGMENT_EXPORT", status_code=503)

    with pytest.raises(ServerError):
        harness.client.list_jobs("SEGMENT_EXPORT")
    assert len(harness.history) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        ("", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=timezone.utc).timestamp()

    assert parse_retry_after(value, now=now) == expected


# --- secrecy --------------------------------------------------------------------------------


def test_key_never_appears_in_messages_reprs_tracebacks_or_logs(
    log_lines: list[str], csv_file: Path, tmp_path: Path
) -> None:
    harness = make_harness(policy=RetryPolicy(max_attempts=2, jitter=0.0))
    harness.on(
        "GET", "/v1/jobs/SEGMENT_EXPORT", status_code=401, json={"message": f"bad key {KEY}"}
    )
    harness.on("POST", "/v1/jobs/1/data", status_code=503, text=f"Authorization: Bearer {KEY}")
    harness.on("PUT", "/v1/jobs/1/status/fail", text="false")
    harness.on("PUT", "/v1/jobs/1/status/complete", exc=requests.exceptions.ConnectionError("x"))
    harness.on("GET", "/v1/jobs/1/segmentDataFiles/f", status_code=404)
    harness.on("DELETE", "/v1/scheduledjobs/1", status_code=429, headers={"Retry-After": "1"})
    calls: list[Callable[[], object]] = [
        lambda: harness.client.list_jobs("SEGMENT_EXPORT"),
        lambda: harness.client.upload_data(1, csv_file),
        lambda: harness.client.fail_job(1, f"leaked {KEY}"),
        lambda: harness.client.complete_job(1),
        lambda: harness.client.download_segment_file(1, "f", tmp_path / "f"),
        lambda: harness.client.delete_scheduled_job(1),
    ]
    texts: list[str] = [repr(harness.client), str(vars(harness.client.__class__))]
    errors: list[ExchangeError] = []
    for call in calls:
        with pytest.raises(ExchangeError) as caught:
            call()
        errors.append(caught.value)
        texts.append(str(caught.value))
        texts.append(repr(caught.value))
        texts.append("".join(traceback.format_exception(caught.value)))

    assert [type(error) for error in errors] == [
        NotAuthenticated,
        ServerError,
        OperationRefused,
        ExchangeUnavailable,
        NotFound,
        RateLimited,
    ]
    assert isinstance(errors[0], ExchangeHTTPError)
    assert any("retrying in" in line for line in log_lines)
    assert logs.MASK in str(errors[0])
    for text in texts + log_lines:
        assert KEY not in text
        assert KEY.split(":")[0] not in text


@contextmanager
def loopback(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A server on loopback for the client's own session and transport (a mock would replace
    what is tested); yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Quiet(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Exchange

    def answer(self, status: int, body: bytes, *headers: tuple[str, str]) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_own_session_never_takes_credentials_from_netrc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requests would put ~/.netrc's login in place of the key's Authorization header."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    seen: list[str | None] = []

    class Jobs(Quiet):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.answer(200, b"[]")

    with loopback(Jobs) as url, ExchangeClient(url, KEY, retry=POLICY,
                                               sleep=RecordingSleep()) as client:
        assert client.list_jobs("SEGMENT_EXPORT") == []

    assert seen == [f"Bearer {KEY}"]


def test_own_transport_answers_every_call_over_one_connection_and_keeps_no_cookie(
    csv_file: Path,
) -> None:
    """The client's own adapter keeps the origin's connection pool at hand and builds answers
    without a cookie jar: calls to many paths share one connection, each gets its own answer,
    and a cookie the server sets is never sent back."""
    connections: list[str] = []
    cookies: list[str | None] = []

    class Exchange(Quiet):
        def setup(self) -> None:
            connections.append(str(self.client_address))
            super().setup()

        def do_GET(self) -> None:
            cookies.append(self.headers.get("Cookie"))
            self.answer(200, b"[]", ("Set-Cookie", "affinity=node-7; Path=/"))

        def do_POST(self) -> None:
            cookies.append(self.headers.get("Cookie"))
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/v1/jobs/2/"):
                self.answer(503, b'{"message": "busy"}', ("Content-Type", "application/json"))
            else:
                self.answer(200, self.path.split("/")[3].encode())

        def do_PUT(self) -> None:
            cookies.append(self.headers.get("Cookie"))
            self.rfile.read(int(self.headers["Content-Length"]))
            self.answer(200, b"true")

    with loopback(Exchange) as url, ExchangeClient(url, KEY, retry=POLICY,
                                                   sleep=RecordingSleep()) as client:
        assert client.list_jobs("SEGMENT_EXPORT") == []
        assert client.upload_data(1347, csv_file, retry=False).response_text == "1347"
        with pytest.raises(ServerError, match="busy"):
            client.upload_data(2, csv_file, retry=False)
        assert client.upload_data(8, csv_file, retry=False).response_text == "8"
        client.fail_job(9, "a reason")
        assert client.list_jobs("SEGMENT_EXPORT") == []

    assert len(connections) == 1
    assert cookies == [None] * 6
