"""One claimed file to the jobs assigned to it: validate, upload once per job, or fail the jobs.

Runs in a worker thread. Every step is written to the journal before and after, so a crash at any
point resumes here: a delivery found ``uploading`` may have reached the server, and the job's own
status decides (a job no longer waiting already has its data).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

from loguru import logger

from pushagent.errors import (
    Conflict,
    ExchangeError,
    ExchangeUnavailable,
    NotAuthenticated,
    NotAuthorised,
    NotFound,
    OperationRefused,
    RateLimited,
    ServerError,
)
from pushagent.exchange import ExchangeClient, Job, JobCategory, JobStatus
from pushagent.journal import DeliveryRow, FileRow, Journal
from pushagent.metrics import AgentMetrics
from pushagent.validator import CSVReport, missing_columns, validate_csv

# A job that left the waiting state for one of these did not get our data.
NO_DATA_STATUSES = frozenset({JobStatus.ERROR, JobStatus.CANCELLED, JobStatus.NOTFOUND})


class Verdict(Enum):
    DELIVERED = "delivered"  # every assigned job has the data (or had it already): done/
    REJECTED = "rejected"  # invalid, or refused for good: jobs failed, file to failed/
    RETRY = "retry"  # a transient problem: stays claimed, tried again after a backoff
    REQUEUE = "requeue"  # every assigned job stopped waiting before it got data: wait again


@dataclass(frozen=True)
class DeliveryResult:
    verdict: Verdict
    reason: str | None = None
    retry_after: float | None = None
    counts_as_attempt: bool = True


@dataclass(frozen=True)
class UploadSettings:
    content_type: str
    max_bytes: int | None
    check_mapped_columns: bool
    max_attempts: int


T = TypeVar("T")


class _Retry(Exception):
    def __init__(self, reason: str, *, retry_after: float | None = None, counts: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.counts = counts


class Deliverer:
    def __init__(
        self,
        *,
        client: ExchangeClient,
        journal: Journal,
        settings: UploadSettings,
        metrics: AgentMetrics,
        clock: Callable[[], float] = time.monotonic,
        validate: Callable[..., CSVReport] = validate_csv,
    ) -> None:
        self._client = client
        self._journal = journal
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._validate = validate

    def deliver(self, file: FileRow, known_jobs: Mapping[str, Job]) -> DeliveryResult:
        log = logger.bind(file=file.rel_path, segment=file.segment)
        try:
            report = self._validate(Path(file.path), max_bytes=self._settings.max_bytes)
            if not report.ok:
                reason = f"{file.rel_path}: invalid CSV: " + "; ".join(report.problems)
                log.warning("rejected: {}", reason)
                self._fail_open_jobs(file, reason)
                return DeliveryResult(Verdict.REJECTED, reason)
            for delivery in self._journal.deliveries(file.id):
                if delivery.state in ("assigned", "uploading"):
                    self._deliver_one(file, delivery, report, known_jobs)
        except _Retry as retry:
            return self._retry_or_give_up(file, retry)
        return self._verdict(file)

    # --- one job --------------------------------------------------------------------------------

    def _deliver_one(
        self, file: FileRow, delivery: DeliveryRow, report: CSVReport, known: Mapping[str, Job]
    ) -> None:
        job_id = delivery.job_id
        log = logger.bind(file=file.rel_path, segment=file.segment, job=job_id)
        job = known.get(job_id)
        if delivery.state == "uploading" or job is None:
            # An earlier attempt may have reached the server: its status is the only witness.
            job = self._current_job(job_id)
            if not job.is_waiting:
                self._settle_stopped_job(file, job_id, job.status, log_reason="before upload")
                return
        missing = (
            missing_columns(report.header, job.required_columns())
            if self._settings.check_mapped_columns
            else []
        )
        if missing:
            reason = f"{file.rel_path}: " + "; ".join(missing)
            log.warning("rejected for job {}: {}", job_id, reason)
            self._fail_job(file, job_id, reason)
            return
        self._journal.upload_started(file.id, job_id)
        started = self._clock()
        log.info("uploading {} bytes to job {}", report.bytes, job_id)
        try:
            result = self._client.upload_data(
                job_id, file.path, content_type=self._settings.content_type, retry=False
            )
        except (Conflict, NotFound) as error:
            self._metrics.api_error(error.status)
            status = self._current_job(job_id).status
            self._settle_stopped_job(file, job_id, status, log_reason=str(error))
            return
        except (NotAuthenticated, NotAuthorised) as error:
            self._metrics.api_error(error.status)
            # Refused before anything was stored: this job is free to try again.
            self._journal.delivery_ended(file.id, job_id, "assigned", error=str(error))
            raise _retry_for(error) from error
        except (ExchangeUnavailable, ServerError, RateLimited) as error:
            self._metrics.api_error(error.status)
            self._journal.upload_interrupted(file.id, job_id, str(error))
            raise _retry_for(error) from error
        except ExchangeError as error:
            self._metrics.api_error(error.status)
            reason = f"{file.rel_path}: the Exchange refused the upload: {error}"
            log.warning("rejected for job {}: {}", job_id, reason)
            self._fail_job(file, job_id, reason)
            return
        elapsed = self._clock() - started
        self._journal.delivery_ended(file.id, job_id, "uploaded", nbytes=result.bytes_sent)
        self._metrics.bytes_uploaded.inc(result.bytes_sent)
        self._metrics.upload_seconds.observe(elapsed)
        log.bind(bytes=result.bytes_sent, duration=f"{elapsed:.3f}s").info(
            "uploaded to job {}", job_id
        )

    def _current_job(self, job_id: str) -> Job:
        """The job as the Exchange sees it now; one it answers 404 for was deleted."""
        try:
            return self._call(lambda: self._client.get_job(JobCategory.SEGMENT_EXPORT, job_id))
        except NotFound:
            return Job(job_id=int(job_id), status=JobStatus.NOTFOUND, raw={})

    def _settle_stopped_job(
        self, file: FileRow, job_id: str, status: JobStatus, *, log_reason: str
    ) -> None:
        log = logger.bind(file=file.rel_path, segment=file.segment, job=job_id)
        previous = {d.job_id: d.state for d in self._journal.deliveries(file.id)}.get(job_id)
        if previous == "uploading" and status not in NO_DATA_STATUSES:
            log.info("job {} is {}: it already has this file's data", job_id, status.name)
            self._journal.delivery_ended(
                file.id, job_id, "uploaded", error=f"assumed delivered: job {status.name}"
            )
        else:
            log.warning("job {} stopped waiting ({}): {}", job_id, status.name, log_reason)
            self._journal.delivery_ended(
                file.id, job_id, "gone", error=f"job {status.name} {log_reason}"
            )

    # --- failing jobs -----------------------------------------------------------------------------

    def _fail_open_jobs(self, file: FileRow, reason: str) -> None:
        for delivery in self._journal.deliveries(file.id):
            if delivery.state in ("assigned", "uploading"):
                self._fail_job(file, delivery.job_id, reason)

    def _fail_job(self, file: FileRow, job_id: str, reason: str) -> None:
        try:
            self._call(lambda: self._client.fail_job(job_id, reason))
        except (OperationRefused, NotFound):
            logger.bind(file=file.rel_path, job=job_id).warning(
                "job {} was no longer waiting; it could not be failed", job_id
            )
            state = "gone"
        else:
            logger.bind(file=file.rel_path, segment=file.segment, job=job_id).info(
                "failed job {}: {}", job_id, reason
            )
            state = "rejected"
        self._journal.delivery_ended(file.id, job_id, state, error=reason)

    # --- outcome ----------------------------------------------------------------------------------

    def _call(self, call: Callable[[], T]) -> T:
        """A status or fail call: transient failures become a retry of the whole file."""
        try:
            return call()
        except (
            ExchangeUnavailable,
            ServerError,
            RateLimited,
            NotAuthenticated,
            NotAuthorised,
        ) as e:
            self._metrics.api_error(e.status)
            raise _retry_for(e) from e

    def _retry_or_give_up(self, file: FileRow, retry: _Retry) -> DeliveryResult:
        attempts = file.attempts + (1 if retry.counts else 0)
        if retry.counts and attempts >= self._settings.max_attempts:
            reason = f"{file.rel_path}: upload failed {attempts} times; last error: {retry.reason}"
            try:
                self._fail_open_jobs(file, reason)
            except _Retry as again:
                return DeliveryResult(Verdict.RETRY, again.reason, again.retry_after, False)
            return self._verdict(file, reason=reason)
        return DeliveryResult(Verdict.RETRY, retry.reason, retry.retry_after, retry.counts)

    def _verdict(self, file: FileRow, *, reason: str | None = None) -> DeliveryResult:
        deliveries = self._journal.deliveries(file.id)
        states = {d.state for d in deliveries}
        if states & {"assigned", "uploading"}:
            return DeliveryResult(
                Verdict.RETRY, "some jobs still to be tried", counts_as_attempt=False
            )
        if "rejected" in states:
            reasons = [d.error for d in deliveries if d.state == "rejected" and d.error]
            return DeliveryResult(Verdict.REJECTED, reason or (reasons[0] if reasons else None))
        if "uploaded" in states:
            return DeliveryResult(Verdict.DELIVERED)
        return DeliveryResult(
            Verdict.REQUEUE, "every job assigned to it stopped waiting before the upload"
        )


def _retry_for(error: ExchangeError) -> _Retry:
    """Transient failures retry the file; only server errors count toward upload.max_attempts
    (an unreachable Exchange or a refused key is never the file's fault)."""
    if isinstance(error, (NotAuthenticated, NotAuthorised)):
        return _Retry(f"the Exchange refused the key: {error}", counts=False)
    return _Retry(
        str(error), retry_after=error.retry_after, counts=not isinstance(error, ExchangeUnavailable)
    )
