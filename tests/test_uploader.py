"""The deliverer's decisions, with a small fake client that records every call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pushagent.errors import (
    Conflict,
    ExchangeUnavailable,
    NotAuthenticated,
    NotAuthorised,
    ServerError,
)
from pushagent.exchange import Job, UploadResult
from pushagent.journal import FileRow, Journal
from pushagent.metrics import AgentMetrics
from pushagent.uploader import Deliverer, UploadSettings, Verdict

VALID = b"Email,name\na@example.com,A\n"


class FakeClient:
    """Answers from a script: ``upload_errors`` are raised in turn before uploads succeed."""

    def __init__(
        self,
        *,
        statuses: dict[str, str] | None = None,
        upload_errors: list[Exception] | None = None,
    ) -> None:
        self.statuses = statuses or {}
        self.upload_errors = list(upload_errors or [])
        self.calls: list[tuple[str, Any]] = []

    def get_job(self, category: Any, job_id: str) -> Job:
        self.calls.append(("get_job", job_id))
        status = self.statuses.get(job_id, "WAITING_TO_RECIEVE_DATA")
        return Job.from_json(
            {"jobId": int(job_id), "status": status, "identityMappings": {"Email": "EMAIL_SHA256"}}
        )

    def upload_data(self, job_id: str, source: str, **options: Any) -> UploadResult:
        self.calls.append(("upload", job_id))
        assert options["retry"] is False, "the agent retries itself, after a status check"
        if self.upload_errors:
            raise self.upload_errors.pop(0)
        size = Path(source).stat().st_size
        return UploadResult(job_id=job_id, bytes_sent=size, status_code=200, response_text="")

    def fail_job(self, job_id: str, message: str) -> None:
        self.calls.append(("fail", (job_id, message)))


def setup(
    tmp_path: Path, content: bytes, jobs: list[str], client: FakeClient, *, max_attempts: int = 3
) -> tuple[Deliverer, Journal, int]:
    journal = Journal.for_state_dir(tmp_path)
    path = tmp_path / "45311.csv"
    path.write_bytes(content)
    file_id = journal.note_settling("45311.csv", path, size=len(content), mtime=1.0)
    journal.mark_waiting(file_id, segment="45311", reason="waiting")
    journal.claim(file_id, path=path, job_ids=jobs)
    deliverer = Deliverer(
        client=client,  # type: ignore[arg-type]
        journal=journal,
        metrics=AgentMetrics(),
        settings=UploadSettings(
            content_type="text/csv",
            max_bytes=None,
            check_mapped_columns=True,
            max_attempts=max_attempts,
        ),
    )
    return deliverer, journal, file_id


def states(journal: Journal, file_id: int) -> dict[str, str]:
    return {d.job_id: d.state for d in journal.deliveries(file_id)}


def row(journal: Journal, file_id: int) -> FileRow:
    return journal.file(file_id)


def test_valid_file_goes_to_every_job(tmp_path: Path) -> None:
    client = FakeClient()
    deliverer, journal, file_id = setup(tmp_path, VALID, ["1", "2"], client)
    result = deliverer.deliver(row(journal, file_id), {})
    assert result.verdict is Verdict.DELIVERED
    assert [c for c in client.calls if c[0] == "upload"] == [("upload", "1"), ("upload", "2")]
    assert states(journal, file_id) == {"1": "uploaded", "2": "uploaded"}


def test_invalid_file_fails_each_job_with_the_line(tmp_path: Path) -> None:
    client = FakeClient()
    deliverer, journal, file_id = setup(
        tmp_path, b"Email,name\na@example.com\n", ["1", "2"], client
    )
    result = deliverer.deliver(row(journal, file_id), {})
    assert result.verdict is Verdict.REJECTED
    fails = [c[1] for c in client.calls if c[0] == "fail"]
    assert [job for job, _ in fails] == ["1", "2"]
    assert all("line 2: expected 2 fields, found 1" in message for _, message in fails)
    assert not any(c[0] == "upload" for c in client.calls)


def test_an_interrupted_upload_is_checked_before_it_is_sent_again(tmp_path: Path) -> None:
    client = FakeClient(
        upload_errors=[
            ExchangeUnavailable("connection reset", method="POST", url="/v1/jobs/1/data")
        ]
    )
    deliverer, journal, file_id = setup(tmp_path, VALID, ["1"], client)
    first = deliverer.deliver(row(journal, file_id), {})
    assert first.verdict is Verdict.RETRY and not first.counts_as_attempt
    assert states(journal, file_id) == {"1": "uploading"}
    client.statuses["1"] = "RUNNING"  # the lost upload had in fact arrived
    second = deliverer.deliver(row(journal, file_id), {})
    assert second.verdict is Verdict.DELIVERED
    assert [c for c in client.calls if c[0] == "upload"] == [("upload", "1")]


def test_a_job_that_stopped_waiting_sends_the_file_back_to_wait(tmp_path: Path) -> None:
    client = FakeClient(
        upload_errors=[Conflict("not waiting", method="POST", url="/x", status=409)]
    )
    client.statuses["1"] = "CANCELLED"
    deliverer, journal, file_id = setup(tmp_path, VALID, ["1"], client)
    job = Job.from_json({"jobId": 1, "status": "WAITING_TO_RECIEVE_DATA"})
    result = deliverer.deliver(row(journal, file_id), {"1": job})
    assert result.verdict is Verdict.REQUEUE
    assert states(journal, file_id) == {"1": "gone"}
    assert not any(c[0] == "fail" for c in client.calls)


def test_server_errors_count_and_then_fail_the_job(tmp_path: Path) -> None:
    errors: list[Exception] = [
        ServerError("boom", method="POST", url="/x", status=500) for _ in range(3)
    ]
    client = FakeClient(upload_errors=errors)
    deliverer, journal, file_id = setup(tmp_path, VALID, ["1"], client, max_attempts=2)
    first = deliverer.deliver(row(journal, file_id), {})
    assert first.verdict is Verdict.RETRY and first.counts_as_attempt
    journal.count_attempt(file_id, "retrying", next_attempt_at=0)
    second = deliverer.deliver(row(journal, file_id), {})
    assert second.verdict is Verdict.REJECTED
    assert second.reason is not None and "failed 2 times" in second.reason
    assert [c[1][0] for c in client.calls if c[0] == "fail"] == ["1"]


@pytest.mark.parametrize(
    "error",
    [
        NotAuthenticated("bad key", method="POST", url="/x", status=401),
        NotAuthorised("other endpoint", method="POST", url="/x", status=403),
    ],
)
def test_a_refused_key_never_fails_a_job(tmp_path: Path, error: Exception) -> None:
    client = FakeClient(upload_errors=[error])
    deliverer, journal, file_id = setup(tmp_path, VALID, ["1"], client, max_attempts=1)
    result = deliverer.deliver(row(journal, file_id), {})
    assert result.verdict is Verdict.RETRY and not result.counts_as_attempt
    assert states(journal, file_id) == {"1": "assigned"}
    assert not any(c[0] == "fail" for c in client.calls)
