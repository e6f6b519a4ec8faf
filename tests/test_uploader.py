"""The deliverer's promise, against a real journal and a small fake client that records every call.

Each test asserts what the fake Exchange was sent (uploads, fail calls, status questions) and
where each delivery stands in the journal (``DeliveryState``), never log text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from pushagent.config import InputDialect
from pushagent.errors import (
    BadRequest,
    Conflict,
    ExchangeError,
    ExchangeUnavailable,
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
from pushagent.exchange import BodyGate, ExpectedBody, Job, JobCategory, JobStatus, UploadResult
from pushagent.intake import staged_path
from pushagent.journal import Journal
from pushagent.lifecycle import DeliveryState
from pushagent.metrics import AgentMetrics
from pushagent.uploader import Deliverer, DeliveryResult, DeliverySettings, Verdict
from pushagent.validator import CSVReport, validate_csv
from tests.fakes import FakeClock, run_gate

NAME = "45311.csv"
VALID = b"Email,name\na@example.com,A\n"
INVALID = b"Email,name\na@example.com\n"
AGENT_USER = "pushagent-svc"
WAITING = JobStatus.WAITING_TO_RECEIVE_DATA

ASSIGNED = DeliveryState.ASSIGNED
UPLOADING = DeliveryState.UPLOADING
UPLOADED = DeliveryState.UPLOADED
GONE = DeliveryState.GONE
REJECTED = DeliveryState.REJECTED
RELEASED = DeliveryState.RELEASED

# The class pushagent.exchange.client._http_error gives each status it has its own class for.
_ERROR_CLASSES: dict[int, type[ExchangeError]] = {
    400: BadRequest,
    401: NotAuthenticated,
    403: NotAuthorised,
    404: NotFound,
    408: RetryLater,
    409: Conflict,
    425: RetryLater,
    429: RateLimited,
}


def http_error(
    status: int,
    *,
    method: str = "POST",
    url: str = "/v1/jobs/1/data",
    server_message: str | None = None,
    retry_after: float | None = None,
) -> ExchangeError:
    """The error the real client raises for an answer with ``status``."""
    error_class: type[ExchangeError]
    if status in _ERROR_CLASSES:
        error_class = _ERROR_CLASSES[status]
    elif 500 <= status <= 599:
        error_class = ServerError
    elif 400 <= status <= 499:
        error_class = Refused
    else:  # 3xx: a redirect is never followed
        error_class = UnexpectedResponse
    return error_class(
        f"answered {status}", method=method, url=url, status=status,
        server_message=server_message, retry_after=retry_after,
    )


def fail_error(status: int) -> ExchangeError:
    return http_error(status, method="PUT", url="/v1/jobs/1/status/fail")


def connection_lost(*, body_sent: bool) -> ExchangeUnavailable:
    return ExchangeUnavailable(
        "the connection broke", method="POST", url="/v1/jobs/1/data", body_sent=body_sent
    )


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def job(job_id: str, status: JobStatus = WAITING) -> Job:
    mappings = {"Email": "EMAIL_SHA256"}
    return Job.from_json({"jobId": int(job_id), "status": status.value,
                          "identityMappings": mappings})


def waiting(*job_ids: str) -> dict[str, Job]:
    return {job_id: job(job_id) for job_id in job_ids}


@dataclass(frozen=True)
class UploadCall:
    job_id: str
    source: str
    content_type: str
    retry: bool
    expected: ExpectedBody | None


class FakeClient:
    """Answers from a script and records what it was asked.

    ``upload_errors`` and ``fail_errors`` are raised in turn, one per call, before calls succeed.
    ``statuses`` holds each job's status (waiting unless set); ``status_errors`` what get_job
    raises for a job. Like the real client, ``upload_data`` checks the file against ``expected``
    (size, then SHA-256) before any scripted answer, raising SourceChanged: a changed file never
    reaches the server. ``before_upload`` runs as an upload starts (a dropper writing meanwhile).
    """

    def __init__(
        self,
        *,
        statuses: dict[str, JobStatus] | None = None,
        status_errors: dict[str, ExchangeError] | None = None,
        upload_errors: list[ExchangeError] | None = None,
        fail_errors: list[ExchangeError] | None = None,
        before_upload: Callable[[str], None] | None = None,
    ) -> None:
        self.statuses = dict(statuses or {})
        self.status_errors = dict(status_errors or {})
        self.upload_errors = list(upload_errors or [])
        self.fail_errors = list(fail_errors or [])
        self.before_upload = before_upload
        self.uploads: list[UploadCall] = []
        self.taken: dict[str, list[bytes]] = {}  # the bodies that went through whole, by job
        self.fails: list[tuple[str, str]] = []
        self.status_asks: list[str] = []
        self.status_categories: list[str] = []

    def get_job(self, category: JobCategory | str, job_id: int | str) -> Job:
        self.status_asks.append(str(job_id))
        self.status_categories.append(str(getattr(category, "value", category)))
        if str(job_id) in self.status_errors:
            raise self.status_errors[str(job_id)]
        return job(str(job_id), self.statuses.get(str(job_id), WAITING))

    def upload_data(
        self,
        job_id: int | str,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        content_type: str = "text/csv",
        retry: bool = True,
        progress: Any = None,
        expected: ExpectedBody | None = None,
        gate: BodyGate | None = None,
    ) -> UploadResult:
        assert isinstance(source, (str, os.PathLike)), "the deliverer uploads by path"
        self.uploads.append(UploadCall(str(job_id), os.fspath(source), content_type, retry,
                                       expected))
        if self.before_upload is not None:
            self.before_upload(str(job_id))
        content = Path(source).read_bytes() if gate is None else run_gate(source, gate)
        if expected is not None:
            content = content[expected.offset:]
            if len(content) != expected.size:
                raise SourceChanged(
                    os.fspath(source),
                    f"changed after it was validated (size {expected.size} -> {len(content)} "
                    "bytes); nothing was sent",
                )
            if sha256(content) != expected.sha256:
                raise SourceChanged(
                    os.fspath(source),
                    "changed after it was validated (other bytes); the upload was aborted "
                    "before its last bytes",
                )
        if self.upload_errors:
            raise self.upload_errors.pop(0)
        self.taken.setdefault(str(job_id), []).append(content)
        return UploadResult(job_id=job_id, bytes_sent=len(content), status_code=200,
                            response_text="", sha256=sha256(content))

    def fail_job(self, job_id: int | str, error_message: str) -> None:
        self.fails.append((str(job_id), error_message))
        if self.fail_errors:
            raise self.fail_errors.pop(0)

    @property
    def uploaded_to(self) -> list[str]:
        return [call.job_id for call in self.uploads]

    @property
    def failed(self) -> list[str]:
        return [job_id for job_id, _ in self.fails]


def unreadable(path: str | os.PathLike[str], **options: Any) -> CSVReport:
    raise PermissionError(13, "Permission denied", os.fspath(path))


def changed_while_read(path: str | os.PathLike[str], **options: Any) -> CSVReport:
    report = validate_csv(path, **options)
    return dataclasses.replace(report, changed="the file changed while it was read (size 27 -> "
                                               "40 bytes)")


@dataclass
class FakeStat:
    """``os.stat`` as seen after the upload: the real answer, moved by ``grow`` bytes and
    ``touch_ns`` nanoseconds (a dropper that wrote on after its rename)."""

    grow: int = 0
    touch_ns: int = 0
    asked: list[str] = field(default_factory=list)

    def __call__(self, path: str) -> os.stat_result:
        self.asked.append(path)
        real = os.stat(path)
        fields = list(real)
        fields[6] = real.st_size + self.grow
        return os.stat_result(fields, {"st_mtime_ns": real.st_mtime_ns + self.touch_ns})


@dataclass
class Rig:
    deliverer: Deliverer
    journal: Journal
    client: FakeClient
    metrics: AgentMetrics
    file_id: int
    path: Path
    jobs: tuple[str, ...]

    def deliver(self, known: Mapping[str, Job] | None = None) -> DeliveryResult:
        """One attempt, with the jobs listed as waiting unless ``known`` says otherwise."""
        jobs = waiting(*self.jobs) if known is None else known
        return self.deliverer.deliver(self.journal.file(self.file_id), jobs)

    def retry_later(self, result: DeliveryResult) -> None:
        """What the agent does with a retry before the next attempt."""
        assert result.verdict is Verdict.RETRY, result
        if result.counts_as_attempt:
            self.journal.count_attempt(self.file_id, "retrying", next_attempt_at=0)

    def states(self) -> dict[str, DeliveryState]:
        return {d.job_id: d.state for d in self.journal.deliveries(self.file_id)}

    def attempts(self) -> int:
        return self.journal.file(self.file_id).attempts

    def bytes_uploaded(self) -> float:
        value = self.metrics.registry.get_sample_value("pushagent_bytes_uploaded_total")
        return value or 0.0


def make(
    tmp_path: Path,
    client: FakeClient,
    *,
    content: bytes = VALID,
    jobs: tuple[str, ...] = ("1",),
    max_attempts: int = 3,
    validate: Callable[..., CSVReport] = validate_csv,
    stat: Callable[[Path], os.stat_result] = os.stat,
    categories: dict[str, str] | None = None,
    name: str = NAME,
    dialect: InputDialect | None = None,
    stream: bool = False,
) -> Rig:
    clock = FakeClock()
    journal = Journal.for_state_dir(tmp_path, clock=clock)
    claimed = tmp_path / "claimed"
    claimed.mkdir()
    path = claimed / name
    path.write_bytes(content)
    file_id = journal.note_settling(name, tmp_path / name, size=len(content), mtime=1.0)
    journal.mark_waiting(file_id, segment="45311", reason="waiting")
    journal.claim(file_id, path=path, job_ids=jobs, categories=categories)
    metrics = AgentMetrics()
    deliverer = Deliverer(
        client=client,  # type: ignore[arg-type]
        journal=journal,
        settings=DeliverySettings(
            content_type="text/csv", max_bytes=None, check_mapped_columns=True,
            max_attempts=max_attempts, validate_while_sending=stream,
        ),
        metrics=metrics,
        clock=clock,
        validate=validate,
        user=lambda: AGENT_USER,
        stat=stat,
        dialect_for=lambda row: dialect or InputDialect(),
    )
    return Rig(deliverer, journal, client, metrics, file_id, path, jobs)


# --- a file that goes out -------------------------------------------------------------------------


def test_a_valid_file_goes_to_every_job_as_the_validated_bytes(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(), jobs=("1", "2"))
    result = rig.deliver()
    assert result.verdict is Verdict.DELIVERED
    assert rig.client.uploaded_to == ["1", "2"]
    mtime_ns = rig.path.stat().st_mtime_ns
    for call in rig.client.uploads:
        assert call.source == str(rig.path)
        assert call.retry is False, "one attempt per call: the agent asks the job before resending"
        assert call.content_type == "text/csv"
        assert call.expected == ExpectedBody(size=len(VALID), sha256=sha256(VALID),
                                             mtime_ns=mtime_ns)
    assert rig.states() == {"1": UPLOADED, "2": UPLOADED}
    assert {d.sha256 for d in rig.journal.deliveries(rig.file_id)} == {sha256(VALID)}
    assert rig.journal.file(rig.file_id).sha256 == sha256(VALID)
    assert rig.client.fails == []
    assert rig.bytes_uploaded() == 2 * len(VALID)


def test_a_utf8_byte_order_mark_is_validated_and_sent_as_its_absence(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(), content=b"\xef\xbb\xbf" + VALID)
    assert rig.deliver().verdict is Verdict.DELIVERED
    [call] = rig.client.uploads
    assert (call.source, call.expected) == (str(rig.path), ExpectedBody(
        size=len(VALID), sha256=sha256(VALID), mtime_ns=rig.path.stat().st_mtime_ns, offset=3))
    assert rig.journal.file(rig.file_id).sha256 == sha256(VALID)
    assert rig.journal.file(rig.file_id).converted_from is None


def test_a_bom_file_one_job_took_before_an_upgrade_goes_on_to_the_others(
    tmp_path: Path
) -> None:
    content = b"\xef\xbb\xbf" + VALID
    rig = make(tmp_path, FakeClient(), content=content, jobs=("1", "2"))
    # The journal of the last version: the BOM hashed, job 1 served.
    rig.journal.validated(rig.file_id, size=len(content), sha256=sha256(content))
    rig.journal.upload_started(rig.file_id, "1")
    rig.journal.delivery_ended(rig.file_id, "1", UPLOADED, nbytes=len(content),
                               sha256=sha256(content))
    assert rig.deliver().verdict is Verdict.DELIVERED
    assert rig.client.uploaded_to == ["2"]
    assert rig.journal.file(rig.file_id).sha256 == sha256(VALID)


def test_a_converted_file_sends_its_staged_copy_and_records_what_it_was(
    tmp_path: Path
) -> None:
    original = b"Email;name\r\na@example.com;A\r\n"
    rig = make(tmp_path, FakeClient(), content=original.decode().encode("utf-16"),
               jobs=("1", "2"))
    assert rig.deliver().verdict is Verdict.DELIVERED
    staged = staged_path(rig.path)
    canonical = b"Email,name\r\na@example.com,A\r\n"
    assert staged.read_bytes() == canonical
    for call in rig.client.uploads:
        assert call.source == str(staged)
        assert call.expected == ExpectedBody(size=len(canonical), sha256=sha256(canonical),
                                             mtime_ns=staged.stat().st_mtime_ns)
    row = rig.journal.file(rig.file_id)
    assert (row.sha256, row.size) == (sha256(canonical), len(canonical))
    assert row.converted_from == "UTF-16LE with a byte order mark, semicolon-separated"
    assert rig.path.read_bytes() == original.decode().encode("utf-16"), "the original is kept"


def test_a_converted_original_that_changed_after_it_was_sent_is_refused(
    tmp_path: Path
) -> None:
    rig = make(tmp_path, FakeClient(), content=b"Email;name\na@example.com;A\n",
               stat=FakeStat(grow=5))
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert result.reason is not None and "changed after job(s) 1 received it" in result.reason


def test_a_converted_file_that_cannot_be_read_fails_its_jobs(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(), content=b"Email;name\na@example.com;Ren\xe9e\n",
               jobs=("1", "2"))
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert rig.client.uploads == []
    assert result.reason == (
        "invalid CSV: line 2: byte 0xE9 is not UTF-8; if your exporter writes Windows-1252, set "
        "input.encoding: cp1252 (or the code page it writes)")
    assert sorted(rig.client.failed) == ["1", "2"]


def test_the_dialect_of_the_files_segment_is_used(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(), content="Email;name\na@example.com;Renée\n".encode(
        "cp1252"), dialect=InputDialect(encoding="cp1252"))
    assert rig.deliver().verdict is Verdict.DELIVERED
    assert staged_path(rig.path).read_bytes() == "Email,name\r\na@example.com,Renée\r\n".encode()
    assert rig.journal.file(rig.file_id).converted_from == "cp1252, semicolon-separated"


# --- 1. definite answers to an upload -------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 409])
def test_a_job_gone_or_taken_sends_the_file_back_to_wait(tmp_path: Path, status: int) -> None:
    # The job still reads as waiting: the answer alone decides, no status is asked.
    rig = make(tmp_path, FakeClient(upload_errors=[http_error(status)]))
    result = rig.deliver()
    assert result.verdict is Verdict.REQUEUE
    assert rig.states() == {"1": GONE}
    assert rig.client.uploaded_to == ["1"]
    assert rig.client.fails == [], "a job we did not reach is not ours to fail"
    assert rig.client.status_asks == []
    assert rig.bytes_uploaded() == 0


@pytest.mark.parametrize(
    ("status", "counted"),
    [(408, True), (429, False), (500, True), (501, True), (503, True)],
)
def test_a_transient_answer_is_retried_without_failing_the_job(
    tmp_path: Path, status: int, counted: bool
) -> None:
    rig = make(tmp_path, FakeClient(upload_errors=[http_error(status, retry_after=7.0)]),
               max_attempts=3)
    result = rig.deliver()
    assert result.verdict is Verdict.RETRY
    assert result.counts_as_attempt is counted
    assert result.retry_after == 7.0
    assert not result.key_refused
    assert rig.states() == {"1": ASSIGNED}
    assert rig.client.fails == []
    assert rig.bytes_uploaded() == 0
    rig.retry_later(result)
    again = rig.deliver()
    assert again.verdict is Verdict.DELIVERED
    assert rig.client.uploaded_to == ["1", "1"]
    assert rig.states() == {"1": UPLOADED}


@pytest.mark.parametrize("status", [400, 413, 415, 422])
def test_a_refused_upload_fails_the_job_with_the_servers_message(
    tmp_path: Path, status: int
) -> None:
    said = f"segment data refused ({status})"
    rig = make(tmp_path, FakeClient(upload_errors=[http_error(status, server_message=said)]))
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert rig.client.failed == ["1"]
    message = rig.client.fails[0][1]
    assert said in message and NAME in message
    assert result.reason is not None and said in result.reason
    assert rig.states() == {"1": REJECTED}
    assert rig.bytes_uploaded() == 0


# --- 2. no answer after the body left -------------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.RUNNING, JobStatus.COMPLETE])
def test_silence_then_a_job_that_moved_on_means_it_got_the_data(
    tmp_path: Path, status: JobStatus
) -> None:
    client = FakeClient(upload_errors=[connection_lost(body_sent=True)])
    rig = make(tmp_path, client)
    client.statuses["1"] = status  # the upload had in fact arrived
    result = rig.deliver()
    assert result.verdict is Verdict.DELIVERED
    assert client.status_asks == ["1"]
    assert client.uploaded_to == ["1"]
    assert client.fails == []
    assert rig.states() == {"1": UPLOADED}


def test_after_a_crash_mid_upload_the_job_is_asked_in_its_own_category(tmp_path: Path) -> None:
    client = FakeClient(statuses={"1": JobStatus.RUNNING, "2": JobStatus.RUNNING})
    rig = make(tmp_path, client, jobs=("1", "2"), categories={"1": "IDENTITY_IMPORT"})
    for job_id in rig.jobs:
        rig.journal.upload_started(rig.file_id, job_id)
    result = rig.deliver(known={})  # a restart: nothing listed yet
    assert result.verdict is Verdict.DELIVERED
    assert list(zip(client.status_asks, client.status_categories, strict=True)) == [
        ("1", "IDENTITY_IMPORT"), ("2", "SEGMENT_EXPORT")]
    assert client.uploaded_to == []


def test_silence_then_a_waiting_job_is_retried_not_delivered(tmp_path: Path) -> None:
    client = FakeClient(upload_errors=[connection_lost(body_sent=True)])
    rig = make(tmp_path, client)
    result = rig.deliver()
    assert result.verdict is Verdict.RETRY
    assert not result.counts_as_attempt, "an unreachable network is not the file's fault"
    assert client.status_asks == ["1"]
    # Still UPLOADING: the body may yet arrive, so the next attempt asks the job first.
    assert rig.states() == {"1": UPLOADING}
    assert client.fails == []
    assert rig.bytes_uploaded() == 0


@pytest.mark.parametrize("status", [JobStatus.ERROR, JobStatus.CANCELLED])
def test_silence_then_a_job_that_ended_without_data_is_gone(
    tmp_path: Path, status: JobStatus
) -> None:
    client = FakeClient(upload_errors=[connection_lost(body_sent=True)])
    rig = make(tmp_path, client)
    client.statuses["1"] = status
    result = rig.deliver()
    assert result.verdict is Verdict.REQUEUE
    assert client.status_asks == ["1"]
    assert rig.states() == {"1": GONE}
    assert client.fails == []


def test_silence_then_a_deleted_job_is_gone(tmp_path: Path) -> None:
    client = FakeClient(
        upload_errors=[connection_lost(body_sent=True)],
        status_errors={"1": http_error(404, method="GET", url="/v1/jobs/segmentexport/1")},
    )
    rig = make(tmp_path, client)
    result = rig.deliver()
    assert result.verdict is Verdict.REQUEUE
    assert rig.states() == {"1": GONE}
    assert client.fails == []


def test_a_failure_before_the_body_left_is_retried_without_asking(tmp_path: Path) -> None:
    client = FakeClient(upload_errors=[connection_lost(body_sent=False)])
    rig = make(tmp_path, client)
    result = rig.deliver()
    assert result.verdict is Verdict.RETRY
    assert not result.counts_as_attempt
    assert client.status_asks == []
    assert rig.states() == {"1": ASSIGNED}
    assert client.fails == []


def test_a_delivery_confirmed_by_status_records_the_validated_digest(tmp_path: Path) -> None:
    # The journal's deliveries.sha256 is "of the bytes sent"; a status-confirmed upload sent the
    # validated bytes (the client withholds the last block otherwise).
    client = FakeClient(upload_errors=[connection_lost(body_sent=True)],
                        statuses={"1": JobStatus.RUNNING})
    rig = make(tmp_path, client)
    assert rig.deliver().verdict is Verdict.DELIVERED
    [delivery] = rig.journal.deliveries(rig.file_id)
    assert delivery.sha256 == sha256(VALID)


# --- 3. a refused key -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_never_fails_a_job_even_at_max_attempts(
    tmp_path: Path, status: int
) -> None:
    rig = make(tmp_path, FakeClient(upload_errors=[http_error(status)]), max_attempts=2)
    for _ in range(2):  # already at its last counted attempt
        rig.journal.count_attempt(rig.file_id, "retrying", next_attempt_at=0)
    result = rig.deliver()
    assert result.verdict is Verdict.RETRY
    assert result.key_refused
    assert not result.counts_as_attempt
    assert rig.client.fails == []
    assert rig.states() == {"1": ASSIGNED}


# --- 4. a redirect --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_retried_and_never_rejects_the_file(tmp_path: Path, status: int) -> None:
    rig = make(tmp_path, FakeClient(upload_errors=[http_error(status)]), max_attempts=1)
    result = rig.deliver()
    assert result.verdict is Verdict.RETRY
    assert not result.counts_as_attempt, "a wrong base URL is not the file's fault"
    assert not result.key_refused
    assert rig.client.fails == []
    assert rig.states() == {"1": ASSIGNED}


# --- 5. an unreadable file ------------------------------------------------------------------------


def test_an_unreadable_file_is_retried_then_released_without_failing_jobs(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(), jobs=("1", "2"), max_attempts=3, validate=unreadable)
    for attempt in range(1, 3):
        result = rig.deliver()
        assert result.verdict is Verdict.RETRY
        assert result.counts_as_attempt
        assert rig.states() == {"1": ASSIGNED, "2": ASSIGNED}
        rig.retry_later(result)
        assert rig.attempts() == attempt
    last = rig.deliver()
    assert last.verdict is Verdict.REJECTED
    assert last.reason is not None
    assert "\n" not in last.reason
    assert NAME in last.reason and AGENT_USER in last.reason
    assert rig.states() == {"1": RELEASED, "2": RELEASED}
    assert rig.client.fails == [], "the agent's permissions are not the file's content"
    assert rig.client.uploads == []


def test_an_unreadable_file_with_an_upload_cut_by_a_crash_still_ends(tmp_path: Path) -> None:
    # The crash left job 1 "uploading"; the file then became unreadable. At max_attempts the file
    # must still reach a verdict, its cut upload settled by the job's status (still waiting: the
    # job never got it), and no job failed.
    rig = make(tmp_path, FakeClient(), jobs=("1", "2"), max_attempts=2, validate=unreadable)
    rig.journal.upload_started(rig.file_id, "1")
    first = rig.deliver()
    assert first.verdict is Verdict.RETRY and first.counts_as_attempt
    rig.retry_later(first)
    last = rig.deliver()
    assert last.verdict is Verdict.REJECTED
    assert "1" in rig.client.status_asks
    assert rig.states() == {"1": RELEASED, "2": RELEASED}
    assert rig.client.fails == []
    assert rig.client.uploads == []


def test_a_file_removed_from_its_claim_folder_vanishes(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient())
    rig.path.unlink()
    result = rig.deliver()
    assert result.verdict is Verdict.VANISHED
    assert result.reason is not None and NAME in result.reason
    assert rig.client.uploads == [] and rig.client.fails == []


# --- 6. a file that changes under the deliverer ---------------------------------------------------


def test_a_change_caught_by_the_upload_before_any_job_took_it_resettles(tmp_path: Path) -> None:
    rig: Rig

    def rewrite(job_id: str) -> None:
        rig.path.write_bytes(VALID.replace(b",A", b",B"))  # same size, other bytes

    rig = make(tmp_path, FakeClient(before_upload=rewrite), jobs=("1", "2"))
    result = rig.deliver()
    assert result.verdict is Verdict.RESETTLE
    assert rig.states() == {"1": ASSIGNED, "2": ASSIGNED}
    assert rig.client.uploaded_to == ["1"]
    assert rig.client.fails == []
    assert rig.bytes_uploaded() == 0


def test_a_report_that_saw_the_file_change_resettles(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(), validate=changed_while_read)
    result = rig.deliver()
    assert result.verdict is Verdict.RESETTLE
    assert rig.states() == {"1": ASSIGNED}
    assert rig.client.uploads == []
    assert rig.client.fails == []


def test_a_claimed_file_its_writer_still_holds_open_waits_unread(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient())
    with rig.path.open("ab") as writer:  # a dropper that renamed it in and writes on
        result = rig.deliver()
        writer.write(b"b@example.com,B\n")
    assert result.verdict is Verdict.RESETTLE
    assert result.reason is not None and "holds it open" in result.reason
    assert rig.states() == {"1": ASSIGNED}
    assert rig.client.uploads == [] and rig.client.fails == []
    again = rig.deliver()  # once it is closed (and settled again, the agent's part)
    assert again.verdict is Verdict.DELIVERED
    (upload,) = rig.client.uploads
    assert upload.expected is not None
    assert upload.expected.sha256 == sha256(rig.path.read_bytes()), "the final bytes went out"


def test_a_change_after_one_job_took_it_releases_the_others(tmp_path: Path) -> None:
    rig: Rig

    def append_after_first(job_id: str) -> None:
        if job_id == "2":
            with rig.path.open("ab") as stream:
                stream.write(b"b@example.com,B\n")

    rig = make(tmp_path, FakeClient(before_upload=append_after_first), jobs=("1", "2"))
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert rig.client.uploaded_to == ["1", "2"]
    assert rig.states() == {"1": UPLOADED, "2": RELEASED}
    assert rig.client.fails == [], "job 2 never saw other bytes: it stays free for another file"
    assert result.reason is not None and "1" in result.reason


def test_a_change_between_attempts_after_one_job_took_it_is_refused(tmp_path: Path) -> None:
    # Job 1 got the validated bytes; job 2 answered 500. Before the retry the dropper appends:
    # the retry validates the new bytes, but job 2 must not get bytes job 1 never saw.
    client = FakeClient()

    def job_2_fails(job_id: str) -> None:
        if job_id == "2":
            client.upload_errors.append(http_error(500, url="/v1/jobs/2/data"))

    client.before_upload = job_2_fails
    rig = make(tmp_path, client, jobs=("1", "2"))
    first = rig.deliver()
    assert first.verdict is Verdict.RETRY
    assert rig.states() == {"1": UPLOADED, "2": ASSIGNED}
    rig.retry_later(first)
    client.before_upload = None
    with rig.path.open("ab") as stream:
        stream.write(b"b@example.com,B\n")
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert client.uploaded_to == ["1", "2"], "job 2 must not be sent other bytes than job 1"
    assert rig.states() == {"1": UPLOADED, "2": RELEASED}
    assert client.fails == []


# --- 7. a file that changed after its last upload -------------------------------------------------


@pytest.mark.parametrize(("grow", "touch_ns"), [(16, 0), (0, 1_000_000)])
def test_a_change_after_the_last_upload_rejects_the_file(
    tmp_path: Path, grow: int, touch_ns: int
) -> None:
    stat = FakeStat(grow=grow, touch_ns=touch_ns)
    rig = make(tmp_path, FakeClient(), stat=stat)
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert result.reason is not None
    assert f"the Exchange has the {len(VALID)} bytes that were validated" in result.reason
    assert stat.asked == [str(rig.path)]
    assert rig.states() == {"1": UPLOADED}
    assert rig.client.fails == []


def test_an_unchanged_file_is_delivered(tmp_path: Path) -> None:
    stat = FakeStat()
    rig = make(tmp_path, FakeClient(), stat=stat)
    assert rig.deliver().verdict is Verdict.DELIVERED
    assert stat.asked == [str(rig.path)]


# --- 8. an invalid file ---------------------------------------------------------------------------


def test_an_invalid_file_fails_every_open_job_naming_the_line(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(), content=INVALID, jobs=("1", "2"))
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert rig.client.failed == ["1", "2"]
    for _, message in rig.client.fails:
        assert NAME in message and "line 2: expected 2 fields, found 1" in message
    assert result.reason is not None and "line 2" in result.reason
    assert rig.states() == {"1": REJECTED, "2": REJECTED}
    assert rig.client.uploads == []


def test_a_server_error_on_the_fail_call_keeps_the_jobs_for_a_retry(tmp_path: Path) -> None:
    client = FakeClient(fail_errors=[fail_error(500)])
    rig = make(tmp_path, client, content=INVALID, jobs=("1", "2"))
    result = rig.deliver()
    assert result.verdict is Verdict.RETRY
    assert rig.states() == {"1": ASSIGNED, "2": ASSIGNED}
    rig.retry_later(result)
    again = rig.deliver()
    assert again.verdict is Verdict.REJECTED
    assert client.failed == ["1", "1", "2"]
    assert rig.states() == {"1": REJECTED, "2": REJECTED}


@pytest.mark.parametrize(
    "error",
    [
        fail_error(404),
        fail_error(409),
        OperationRefused("the Exchange answered false", method="PUT",
                         url="/v1/jobs/1/status/fail", status=200),
    ],
    ids=["404", "409", "false"],
)
def test_a_job_that_cannot_be_failed_is_gone_and_the_file_still_rejected(
    tmp_path: Path, error: ExchangeError
) -> None:
    client = FakeClient(fail_errors=[error])
    rig = make(tmp_path, client, content=INVALID, jobs=("1", "2"))
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert client.failed == ["1", "2"]
    assert rig.states() == {"1": GONE, "2": REJECTED}


# --- 9. resuming after a crash --------------------------------------------------------------------


def test_an_upload_cut_by_a_crash_is_settled_by_the_jobs_status(tmp_path: Path) -> None:
    client = FakeClient(statuses={"1": JobStatus.RUNNING})
    rig = make(tmp_path, client)
    rig.journal.validated(rig.file_id, size=len(VALID), sha256=sha256(VALID))
    rig.journal.upload_started(rig.file_id, "1")  # then the process died
    result = rig.deliver()  # the job list of before the crash still shows it waiting
    assert result.verdict is Verdict.DELIVERED
    assert client.status_asks == ["1"]
    assert client.uploads == [], "the job has the data: a second upload would duplicate it"
    assert rig.states() == {"1": UPLOADED}
    [delivery] = rig.journal.deliveries(rig.file_id)
    assert delivery.sha256 == sha256(VALID)


def test_an_upload_cut_by_a_crash_to_a_waiting_job_is_sent_again(tmp_path: Path) -> None:
    client = FakeClient()
    rig = make(tmp_path, client)
    rig.journal.upload_started(rig.file_id, "1")
    result = rig.deliver()
    assert result.verdict is Verdict.DELIVERED
    assert client.status_asks == ["1"]
    assert client.uploaded_to == ["1"]
    assert rig.states() == {"1": UPLOADED}


# --- 10. giving up --------------------------------------------------------------------------------


def test_repeated_server_errors_fail_the_job_tried_after_max_attempts(tmp_path: Path) -> None:
    client = FakeClient(upload_errors=[http_error(500) for _ in range(3)])
    rig = make(tmp_path, client, jobs=("1", "2"), max_attempts=3)
    for _ in range(2):
        result = rig.deliver()
        assert result.verdict is Verdict.RETRY and result.counts_as_attempt
        assert client.fails == []
        rig.retry_later(result)
    last = rig.deliver()
    assert last.verdict is Verdict.REJECTED
    assert last.reason is not None and "upload failed 3 times" in last.reason
    # Every attempt stopped at job 1: job 2 never saw a byte and is left waiting, for another
    # file; only the job the attempts ran out on is failed.
    assert client.failed == ["1"]
    assert all("upload failed 3 times" in message for _, message in client.fails)
    assert rig.states() == {"1": REJECTED, "2": RELEASED}
    assert client.uploaded_to == ["1", "1", "1"]


# --- validated while sent (upload.validate_while_sending) -----------------------------------------

# Big enough to be validated while sent (STREAM_MIN_SIZE), and many times the final block
# (64 KiB) that the first upload withholds until the file passed.
BIG = b"Email,name\n" + b"".join(b"u%d@example.com,U %d\n" % (n, n) for n in range(60_000))


def counted(calls: list[int]) -> Callable[..., CSVReport]:
    def validate(path: str | os.PathLike[str], **options: Any) -> CSVReport:
        calls.append(1)
        return validate_csv(path, **options)
    return validate


def test_the_first_upload_validates_while_it_sends_and_the_others_match_its_hash(
    tmp_path: Path
) -> None:
    validations: list[int] = []
    rig = make(tmp_path, FakeClient(), content=BIG, jobs=("1", "2"), stream=True,
               validate=counted(validations))
    assert rig.deliver().verdict is Verdict.DELIVERED
    assert validations == [], "one read: no validation before the first upload"
    first, second = rig.client.uploads
    assert first.expected is None, "the first upload is validated as it is sent"
    assert second.expected == ExpectedBody(size=len(BIG), sha256=sha256(BIG),
                                           mtime_ns=rig.path.stat().st_mtime_ns)
    assert rig.client.taken == {"1": [BIG], "2": [BIG]}
    assert rig.journal.file(rig.file_id).sha256 == sha256(BIG)
    assert {d.sha256 for d in rig.journal.deliveries(rig.file_id)} == {sha256(BIG)}


def test_a_streamed_bom_file_is_sent_after_its_bom(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(), content=b"\xef\xbb\xbf" + BIG, jobs=("1", "2"),
               stream=True)
    assert rig.deliver().verdict is Verdict.DELIVERED
    assert rig.client.taken == {"1": [BIG], "2": [BIG]}
    assert rig.client.uploads[1].expected is not None
    assert rig.client.uploads[1].expected.offset == 3
    assert rig.journal.file(rig.file_id).sha256 == sha256(BIG)


@pytest.mark.parametrize("where", ["early", "in the final block"])
def test_a_problem_found_while_sending_stops_the_upload_and_fails_every_job(
    tmp_path: Path, where: str
) -> None:
    lines = BIG.splitlines(keepends=True)
    bad = 100 if where == "early" else len(lines) - 3
    lines[bad] = b"broken@example.com\n"
    rig = make(tmp_path, FakeClient(), content=b"".join(lines), jobs=("1", "2"), stream=True)
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert rig.client.uploaded_to == ["1"], "the first upload started, the second never did"
    assert rig.client.taken == {}, "the body never went through whole"
    assert rig.client.failed == ["1", "2"]
    for _, message in rig.client.fails:
        assert f"line {bad + 1}: expected 2 fields, found 1" in message
    assert rig.states() == {"1": REJECTED, "2": REJECTED}


def test_a_job_whose_column_is_missing_is_failed_and_the_next_job_gets_the_file(
    tmp_path: Path
) -> None:
    wants_phone = Job.from_json({"jobId": 1, "status": WAITING.value,
                                 "identityMappings": {"Phone": "PHONE"}})
    rig = make(tmp_path, FakeClient(), content=BIG, jobs=("1", "2"), stream=True)
    assert rig.deliver({"1": wants_phone, "2": job("2")}).verdict is Verdict.REJECTED
    assert rig.client.taken == {"2": [BIG]}
    assert rig.client.failed == ["1"]
    assert "column 'Phone'" in rig.client.fails[0][1]
    assert rig.states() == {"1": REJECTED, "2": UPLOADED}


def test_a_file_changed_between_its_first_and_second_job_never_completes_the_second(
    tmp_path: Path
) -> None:
    def rewrite(job_id: str) -> None:
        if job_id == "2":
            rig.path.write_bytes(BIG.replace(b"u1@", b"x1@"))  # the same size, other bytes

    rig = make(tmp_path, FakeClient(before_upload=rewrite), content=BIG, jobs=("1", "2"),
               stream=True)
    result = rig.deliver()
    assert result.verdict is Verdict.REJECTED
    assert rig.client.taken == {"1": [BIG]}
    assert rig.states() == {"1": UPLOADED, "2": RELEASED}
    assert result.reason is not None and "changed after job(s) 1 received it" in result.reason


def test_a_retry_after_the_streamed_upload_failed_streams_again(tmp_path: Path) -> None:
    rig = make(tmp_path, FakeClient(upload_errors=[http_error(503)]), content=BIG, stream=True)
    result = rig.deliver()
    rig.retry_later(result)
    assert rig.deliver().verdict is Verdict.DELIVERED
    assert [call.expected for call in rig.client.uploads] == [None, None]
    assert rig.client.taken == {"1": [BIG]}


def test_a_small_file_is_validated_before_it_is_sent(tmp_path: Path) -> None:
    validations: list[int] = []
    rig = make(tmp_path, FakeClient(), content=VALID, stream=True, validate=counted(validations))
    assert rig.deliver().verdict is Verdict.DELIVERED
    assert validations == [1]
    assert rig.client.uploads[0].expected is not None
