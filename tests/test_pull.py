"""The puller in-process, with a small fake Exchange; and merging parts under one header."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from pushagent.config import PullSettings
from pushagent.errors import ExchangeError, NotAuthenticated, OperationRefused, ServerError
from pushagent.exchange import Job, JobStatus
from pushagent.journal import Journal
from pushagent.lifecycle import PullJobState
from pushagent.metrics import AgentMetrics, PullMetrics
from pushagent.pull import Puller, merge_parts
from pushagent.pulljournal import PullJournal

READY = JobStatus.READY_FOR_DOWNLOAD


class FakeExchange:
    """Jobs READY_FOR_DOWNLOAD with their files; ``complete_answers`` are raised in turn."""

    def __init__(self, files: dict[str, bytes], *, job_id: int = 2001) -> None:
        self.job_id = job_id
        self.files = dict(files)
        self.status = READY
        self.list_error: ExchangeError | None = None
        self.complete_errors: list[ExchangeError] = []
        self.calls: list[str] = []

    def job(self) -> Job:
        return Job.from_json({"jobId": self.job_id, "status": self.status.value,
                              "segmentDataFiles": list(self.files)})

    def list_jobs(self, category: Any, **filters: Any) -> list[Job]:
        self.calls.append("list")
        if self.list_error is not None:
            raise self.list_error
        return [self.job()] if self.status is READY else []

    def get_job(self, category: Any, job_id: int | str) -> Job:
        self.calls.append("get")
        return self.job()

    def download_segment_file(self, job_id: int | str, name: str, sink: BinaryIO,
                              *, progress: Any = None) -> int:
        self.calls.append(f"download {name}")
        sink.write(self.files[name])
        return len(self.files[name])

    def delete_segment_file(self, job_id: int | str, name: str) -> None:
        self.calls.append(f"delete {name}")

    def complete_job(self, job_id: int | str) -> None:
        self.calls.append("complete")
        if self.complete_errors:
            raise self.complete_errors.pop(0)
        self.status = JobStatus.COMPLETE


def make(tmp_path: Path, exchange: FakeExchange) -> tuple[Puller, Journal]:
    (tmp_path / "outbox").mkdir(exist_ok=True)
    journal = Journal.for_state_dir(tmp_path)
    settings = PullSettings(endpoint_id=7, outbox=tmp_path / "outbox", initial_backoff=0.01,
                            max_backoff=0.02)
    puller = Puller(settings, client=exchange, journal=journal,  # type: ignore[arg-type]
                    metrics=PullMetrics(AgentMetrics().registry))
    return puller, journal


def refused(path: str) -> OperationRefused:
    return OperationRefused("the Exchange answered false", method="PUT", url=path, status=200)


def test_a_refused_complete_of_a_job_already_complete_is_done(tmp_path: Path) -> None:
    exchange = FakeExchange({"a.csv": b"Email\na@b.c\n"})
    exchange.complete_errors = [refused("/v1/jobs/2001/status/complete")]
    puller, journal = make(tmp_path, exchange)
    # Someone completed it meanwhile: the answer is false, and the job says COMPLETE.
    original = exchange.get_job

    def completed(category: Any, job_id: int | str) -> Job:
        exchange.status = JobStatus.COMPLETE
        return original(category, job_id)

    exchange.get_job = completed  # type: ignore[method-assign]
    assert puller.run(once=True) == 0
    assert PullJournal(journal).job("2001").state is PullJobState.DONE  # type: ignore[union-attr]


def test_a_refused_complete_of_a_job_still_ready_is_retried_not_done(tmp_path: Path) -> None:
    exchange = FakeExchange({"a.csv": b"Email\na@b.c\n"})
    exchange.complete_errors = [refused("/v1/jobs/2001/status/complete")]
    puller, journal = make(tmp_path, exchange)
    assert puller.run(once=True) == 1
    row = PullJournal(journal).job("2001")
    assert row is not None and row.state is PullJobState.ON_DISK
    assert "answered false" in (row.reason or "") and "READY_FOR_DOWNLOAD" in (row.reason or "")
    # The next run completes it, without fetching anything again.
    assert puller.run(once=True) == 0
    assert exchange.calls.count("download a.csv") == 1
    assert exchange.calls.count("delete a.csv") == 1


def test_a_server_error_on_complete_is_retried(tmp_path: Path) -> None:
    exchange = FakeExchange({"a.csv": b"Email\na@b.c\n"})
    exchange.complete_errors = [ServerError("failed", method="PUT", url="/x", status=503)]
    puller, _ = make(tmp_path, exchange)
    assert puller.run(once=True) == 1
    assert puller.run(once=True) == 0
    assert exchange.calls.count("complete") == 2


def test_a_key_refused_at_the_first_list_exits_3_and_is_unhealthy(tmp_path: Path) -> None:
    exchange = FakeExchange({"a.csv": b"Email\n"})
    exchange.list_error = NotAuthenticated("no", method="GET", url="/v1/jobs/SEGMENT_EXPORT",
                                           status=401)
    puller, _ = make(tmp_path, exchange)
    assert puller.run(once=True) == 3
    healthy, reason = puller.health()
    assert not healthy and "HTTP 401" in reason


def test_a_job_no_longer_ready_before_its_download_is_gone(tmp_path: Path) -> None:
    exchange = FakeExchange({"a.csv": b"Email\n", "b.csv": b"Email\n"})
    puller, journal = make(tmp_path, exchange)
    pulls = PullJournal(journal)
    pulls.take_on("2001", folder=str(tmp_path / "outbox" / "2001"), job_json="{}",
                  files=[("a.csv", "a.csv"), ("b.csv", "b.csv")])
    exchange.status = JobStatus.CANCELLED
    assert puller.run(once=True) == 0  # listed nothing; the job it had is asked and is gone
    row = pulls.job("2001")
    assert row is not None and row.state is PullJobState.GONE
    assert "CANCELLED" in (row.reason or "")
    assert not [call for call in exchange.calls if call.startswith("download")]


# --- merging ----------------------------------------------------------------------------------


def parts(tmp_path: Path, *contents: bytes) -> list[Path]:
    paths = []
    for n, content in enumerate(contents, start=1):
        path = tmp_path / f"part{n}.csv"
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_parts_merge_under_the_first_header_even_without_final_newlines(tmp_path: Path) -> None:
    files = parts(tmp_path, b"\xef\xbb\xbfEmail,Note\r\na@x,1\r\n",
                  b'Email,Note\r\nb@x,"two\r\nlines"', b"Email,Note\nc@x,3\n")
    target = tmp_path / "segment.csv"
    result = merge_parts(files, target)
    expected = b'\xef\xbb\xbfEmail,Note\r\na@x,1\r\nb@x,"two\r\nlines"\nc@x,3\n'
    assert target.read_bytes() == expected
    assert result == (len(expected), hashlib.sha256(expected).hexdigest())


def test_a_quoted_newline_in_a_header_is_part_of_the_header(tmp_path: Path) -> None:
    files = parts(tmp_path, b'"E\nmail",N\na,1\n', b'"E\nmail",N\nb,2\n')
    merge_parts(files, tmp_path / "segment.csv")
    assert (tmp_path / "segment.csv").read_bytes() == b'"E\nmail",N\na,1\nb,2\n'


@pytest.mark.parametrize("second", [b"Email,Phone\nb,2\n", b"email,note\nb,2\n"])
def test_parts_with_another_header_are_refused_and_nothing_is_written(
    tmp_path: Path, second: bytes
) -> None:
    files = parts(tmp_path, b"Email,note\na,1\n", second)
    reason = merge_parts(files, tmp_path / "segment.csv")
    assert isinstance(reason, str) and "part2.csv has another header than part1.csv" in reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part1.csv", "part2.csv"]
