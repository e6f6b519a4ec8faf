"""One claimed file to the jobs assigned to it: validate, upload once per job, or fail the jobs.

Runs in a worker thread. Every step is written to the journal before and after, so a crash at any
point resumes here: a delivery found ``uploading`` may have reached the server, and the job's own
status decides. What an answer means comes from one table (``exchange.outcome.classify``): a
definite answer is never taken for a delivery, only silence after the body left is ambiguous.

A file not already UTF-8, comma-separated CSV is first converted into a staged copy
(``pushagent.intake``); the copy is then what is validated and sent. The bytes sent are the bytes
validated: validation records their size and SHA-256 (a UTF-8 byte order mark left out: the upload
starts after it), and the upload withholds its final block unless what it read hashes the same.
A file that changed since is sent back to settle; one that changed after a job already took it is
refused, since its jobs could no longer all get the same bytes.

With ``validate_while_sending`` (the default) the first upload of a file of ``STREAM_MIN_SIZE``
or more that is sent as it is reads it once: each block is validated and hashed
(``_ValidatingGate``), then sent, and the final block is withheld until the whole file has
passed. A problem found on the way stops the upload
before its final block (no server takes an incomplete body); the whole file is then validated
as before, and its jobs failed with that report. The file's other jobs get it from the file
again, checked against the first pass's hash. A smaller file, a converted file's staged copy,
and a file a job already took are validated first, then sent.
"""

from __future__ import annotations

import codecs
import dataclasses
import errno
import getpass
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

from loguru import logger

from pushagent.config import InputDialect
from pushagent.errors import ExchangeError, SourceChanged
from pushagent.exchange import ExchangeClient, Job, JobCategory, JobStatus
from pushagent.exchange.models import ExpectedBody, UploadResult
from pushagent.exchange.outcome import Outcome, classify, counts_as_attempt, is_redirect
from pushagent.intake import Source, prepare
from pushagent.journal import DeliveryRow, FileRow, Journal
from pushagent.lifecycle import OPEN_DELIVERIES, DeliveryState
from pushagent.metrics import AgentMetrics
from pushagent.readiness import open_for_writing
from pushagent.router import ListedJob
from pushagent.validator import (
    CSVCheck,
    CSVReport,
    missing_columns,
    sha256_of,
    validate_csv,
)

if TYPE_CHECKING:
    from loguru import Logger

# A smaller file is validated first (a few milliseconds), then sent: it would gain nothing, and
# a problem in it is found before the request starts rather than by cutting it.
STREAM_MIN_SIZE = 1024 * 1024
# A job that left the waiting state for one of these did not get our data.
NO_DATA_STATUSES = frozenset({JobStatus.ERROR, JobStatus.CANCELLED, JobStatus.NOTFOUND})


class Verdict(Enum):
    DELIVERED = "delivered"  # every job it reached has the data: done/
    REJECTED = "rejected"  # refused, with a reason: failed/ (its jobs failed when it was the file)
    RETRY = "retry"  # a transient problem: stays claimed, tried again after a backoff
    REQUEUE = "requeue"  # every assigned job stopped waiting before it got data: wait again
    RESETTLE = "resettle"  # it changed after it was claimed: wait until it is still again
    VANISHED = "vanished"  # someone removed it from the claim folder


@dataclass(frozen=True)
class DeliveryResult:
    verdict: Verdict
    reason: str | None = None
    retry_after: float | None = None
    counts_as_attempt: bool = True
    key_refused: bool = False


@dataclass(frozen=True)
class DeliverySettings:
    content_type: str
    max_bytes: int | None
    check_mapped_columns: bool
    max_attempts: int
    validate_while_sending: bool = True


@dataclass(frozen=True)
class _Snapshot:
    """What one attempt sends: ``report`` of the file ``send`` (the dropped file or its staged
    copy), and the dropped file's size and mtime, which must not change until it is done.
    ``report`` is None until the file is validated: the next upload validates while it sends."""

    report: CSVReport | None
    send: Path
    size: int
    mtime_ns: int


T = TypeVar("T")


class _Retry(Exception):
    def __init__(
        self, reason: str, *, retry_after: float | None = None, counts: bool,
        key_refused: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.counts = counts
        self.key_refused = key_refused


class _Invalid(Exception):
    """The bytes read so far cannot pass (a problem, the job's columns missing): the upload is
    stopped before its final block."""


class _ValidatingGate:
    """Validates and hashes an upload's blocks before they leave (``BodyGate``); the final block
    goes only once the whole file has passed, and its report is recorded (``on_valid``)."""

    def __init__(
        self, path: Path, *, max_bytes: int | None, required: Iterable[str] | None,
        on_valid: Callable[[CSVReport], None],
    ) -> None:
        self._path = path
        self._check = CSVCheck(max_bytes=max_bytes)
        self._required = required
        self._on_valid = on_valid
        self._opened: os.stat_result | None = None
        self.report: CSVReport | None = None

    def begin(self, head: bytes, opened: os.stat_result) -> int:
        self._opened = opened
        if self._check.refuse_size(opened.st_size):
            raise _Invalid("over the size limit")
        if head.startswith(codecs.BOM_UTF8):
            self._check.feed(codecs.BOM_UTF8)  # not sent: the body starts after it
            return len(codecs.BOM_UTF8)
        return 0

    def feed(self, block: bytes) -> None:
        self._check.feed(block)
        if self._check.problems:
            raise _Invalid("a problem")
        self._check_columns()

    def _check_columns(self) -> None:
        header = self._check.header
        if self._required is not None and header is not None:
            required, self._required = self._required, None
            if missing_columns(header, required):
                raise _Invalid("a column the job maps is missing")

    def release(self) -> str:
        assert self._opened is not None
        report = self._check.finish(self._path, size=self._opened.st_size,
                                    mtime_ns=self._opened.st_mtime_ns)
        if report.problems:
            raise _Invalid("a problem")
        self._check_columns()
        assert report.sha256 is not None, "a report without problems hashes it all"
        # On record before the upload can complete: a crash after it leaves the hash to check.
        self._on_valid(report)
        self.report = report
        return report.sha256


class _Stop(Exception):
    """Ends this attempt with a verdict that is not a retry."""

    def __init__(self, result: DeliveryResult) -> None:
        super().__init__(result.reason)
        self.result = result


class Deliverer:
    def __init__(
        self,
        *,
        client: ExchangeClient,
        journal: Journal,
        settings: DeliverySettings,
        metrics: AgentMetrics,
        clock: Callable[[], float] = time.monotonic,
        validate: Callable[..., CSVReport] = validate_csv,
        user: Callable[[], str] = getpass.getuser,
        stat: Callable[[str], os.stat_result] = os.stat,
        being_written: Callable[[Path], bool] = open_for_writing,
        dialect_for: Callable[[FileRow], InputDialect] = lambda file: InputDialect(),
        prepare_source: Callable[..., Source] = prepare,
    ) -> None:
        self._client = client
        self._journal = journal
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._validate = validate
        self._user = user
        self._stat = stat
        self._being_written = being_written
        self._dialect_for = dialect_for
        self._prepare = prepare_source

    def deliver(
        self, file: FileRow, known_jobs: Mapping[str, ListedJob],
        deliveries: Sequence[DeliveryRow] | None = None,
    ) -> DeliveryResult:
        """``deliveries``: the file's, when they were read with its row (its claim); else they
        are read here."""
        try:
            snapshot = self._read(file, stream=self._settings.validate_while_sending)
            if deliveries is None:
                deliveries = self._journal.deliveries(file.id)
            for delivery in deliveries:
                if delivery.state in OPEN_DELIVERIES:
                    snapshot = self._deliver_one(file, delivery, snapshot, known_jobs)
        except _Retry as retry:
            return self._retry_or_give_up(file, retry)
        except _Stop as stop:
            return stop.result
        verdict = self._verdict(file)
        if verdict.verdict is Verdict.DELIVERED:
            try:
                self._check_unchanged(file, snapshot)
            except _Stop as stop:
                return stop.result
        return verdict

    def _check_unchanged(self, file: FileRow, report: _Snapshot) -> None:
        """A dropper that writes on after its rename: what went out is no longer the file, so
        done/ must not keep it as if it had been delivered."""
        try:
            now = self._stat(file.path)
        except OSError:
            return  # the final move will tell
        if (now.st_size, now.st_mtime_ns) != (report.size, report.mtime_ns):
            taken = [d.job_id for d in self._journal.deliveries(file.id)
                     if d.state is DeliveryState.UPLOADED]
            reason = (
                f"changed after job(s) {', '.join(taken)} received it (size {report.size} -> "
                f"{now.st_size} bytes); the Exchange has the {report.size} bytes that were "
                "validated; the dropper must finish writing before it renames a file into the "
                "drop folder"
            )
            logger.bind(file=file.rel_path, segment=file.segment).warning("{}", reason)
            raise _Stop(DeliveryResult(Verdict.REJECTED, reason))

    # --- the file -------------------------------------------------------------------------------

    def _read(self, file: FileRow, *, stream: bool = False) -> _Snapshot:
        """Convert (if need be) and validate the file as it is now; raises _Stop or _Retry when
        it cannot be sent. With ``stream``, a file sent as it is (not converted), that no job
        has taken yet, is left to be validated while its first upload sends it."""
        path = Path(file.path)
        if self._being_written(path):
            # Renamed in (or found at a start) while its writer still holds it open: it waits,
            # in its claim folder, until the writer is done.
            self._changed(file, "its writer still holds it open")
        try:
            # Converted afresh on every attempt: the same original always gives the same bytes,
            # so a copy cut short by a crash is never trusted, and the hash still matches.
            source = self._prepare(path, dialect=self._dialect_for(file),
                                   max_bytes=self._settings.max_bytes)
            if source.changed:
                self._changed(file, source.changed)
            if stream and self._may_stream(file, source):
                return _Snapshot(None, source.send, source.size, source.mtime_ns)
            report = None if source.problem else self._validate(
                source.send, max_bytes=self._settings.max_bytes)
        except FileNotFoundError:
            raise _Stop(DeliveryResult(
                Verdict.VANISHED, f"{file.rel_path}: removed from {file.path} before delivery"
            )) from None
        except OSError as error:
            # The agent's own permissions or disk, not the file's content: no job is failed.
            writing = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
            if writing or str(error.filename or file.path) != file.path:
                reason = (
                    f"{file.rel_path}: cannot write its converted copy beside it "
                    f"({error.strerror or error}); free space in the state_dir or let user "
                    f"{self._user()} write there, and it is sent"
                )
            else:
                reason = (
                    f"{file.rel_path}: cannot read it ({error.strerror or error}; the agent "
                    f"runs as user {self._user()}); fix its permissions and it is sent"
                )
            _file_log(file).error("{}", reason)
            raise _Retry(reason, counts=True) from error
        if report is not None and report.changed:
            self._changed(file, report.changed)
        problems = report.problems if report is not None else (str(source.problem),)
        if problems:
            reason = f"invalid CSV: {'; '.join(problems)}"
            if source.converted_from is not None:
                reason += f" (in the copy converted from {source.converted_from})"
            _file_log(file).warning("rejected: {}", reason)
            self._fail_open_jobs(file, reason)
            raise _Stop(DeliveryResult(Verdict.REJECTED, reason))
        assert report is not None and report.sha256 is not None, "a valid report hashes it all"
        if file.sha256 != report.sha256:
            upgraded = report.offset and file.sha256 is not None and _whole_file_hash(
                source.send) == file.sha256
            if file.sha256 is not None and not upgraded:
                self._changed(file, f"its SHA-256 is not the one validated before, size now "
                                    f"{report.size} bytes", settle_if_untaken=False)
            self._journal.validated(file.id, size=report.size, sha256=report.sha256,
                                    converted_from=source.converted_from)
            if source.converted_from is not None:
                _file_log(file).info(
                    "converted from {} into {} bytes of UTF-8, comma-separated CSV",
                    source.converted_from, report.size)
        if source.send == path:  # the validator's own look at the file is the latest
            return _Snapshot(report, source.send, report.size, report.mtime_ns)
        return _Snapshot(report, source.send, source.size, source.mtime_ns)

    def _may_stream(self, file: FileRow, source: Source) -> bool:
        """Whether the first upload may validate ``source`` while it sends it: the dropped file
        itself, of ``STREAM_MIN_SIZE`` or more, within the size limit, and no job took it yet
        (else the bytes must first be shown to be the ones that job took)."""
        limit = self._settings.max_bytes
        return (source.converted_from is None and source.problem is None
                and source.size >= STREAM_MIN_SIZE and not (limit and source.size > limit)
                and not any(d.state is DeliveryState.UPLOADED
                            for d in self._journal.deliveries(file.id)))

    def _validated_while_sending(self, file: FileRow, report: CSVReport) -> None:
        if report.sha256 != file.sha256:
            assert report.sha256 is not None
            self._journal.validated(file.id, size=report.size, sha256=report.sha256,
                                    converted_from=None)

    def _changed(self, file: FileRow, what: str, *, settle_if_untaken: bool = True) -> None:
        """The bytes moved under us. Before any job took them: settle again. After: refuse.
        Returns only when no job took them and ``settle_if_untaken`` is False."""
        taken = [
            d.job_id for d in self._journal.deliveries(file.id)
            if d.state is DeliveryState.UPLOADED
        ]
        log = logger.bind(file=file.rel_path, segment=file.segment)
        hint = "the dropper must finish writing before it renames a file into the drop folder"
        if not taken and not settle_if_untaken:
            return
        if not taken:
            log.warning("{} changed after it was claimed ({}); {}", file.rel_path, what, hint)
            raise _Stop(DeliveryResult(Verdict.RESETTLE, f"changed after it was claimed ({what})"))
        reason = (
            f"changed after job(s) {', '.join(taken)} received it ({what}); the other jobs were "
            f"not sent different bytes; {hint}, then drop the complete file again"
        )
        log.warning("{}", reason)
        self._release_open(file, reason)
        raise _Stop(DeliveryResult(Verdict.REJECTED, reason))

    # --- one job --------------------------------------------------------------------------------

    def _deliver_one(
        self, file: FileRow, delivery: DeliveryRow, snapshot: _Snapshot,
        known: Mapping[str, ListedJob],
    ) -> _Snapshot:
        """Returns the snapshot the file's next jobs are sent: validated, once one upload has
        validated it while sending."""
        job_id, state, category = delivery.job_id, delivery.state, _category(delivery)
        job: Job | ListedJob | None = known.get(job_id)
        if state is DeliveryState.UPLOADING or job is None:
            # An earlier attempt may have reached the server: its status is the only witness.
            job = self._current_job(job_id, category)
            if not job.is_waiting:
                self._settle_stopped_job(file, job_id, state, job.status)
                return snapshot
        return self._to_job(file, delivery, job, snapshot)

    def _to_job(
        self, file: FileRow, delivery: DeliveryRow, job: Job | ListedJob, snapshot: _Snapshot,
    ) -> _Snapshot:
        """The file to a job that waits for it."""
        job_id, state, category = delivery.job_id, delivery.state, _category(delivery)
        if snapshot.report is None:
            return self._upload_validating(file, delivery, job, snapshot)
        if self._settings.check_mapped_columns:
            missing = missing_columns(snapshot.report.header, job.required_columns())
            if missing:
                reason = "; ".join(missing)
                logger.bind(file=file.rel_path, segment=file.segment, job=job_id,
                            category=category).warning("rejected for job {}: {}", job_id, reason)
                self._fail_job(file, job_id, reason, category)
                return snapshot
        if state is DeliveryState.ASSIGNED:
            self._journal.upload_started(file.id, job_id)
        self._upload(file, job_id, category, snapshot,
                     maybe_landed=state is DeliveryState.UPLOADING)
        return snapshot

    def _upload_validating(
        self, file: FileRow, delivery: DeliveryRow, job: Job | ListedJob, snapshot: _Snapshot,
    ) -> _Snapshot:
        """The first upload, validating the file as it goes. When validation stops it, the
        whole file is validated as before, and this job handled with that report."""
        job_id, state, category = delivery.job_id, delivery.state, _category(delivery)
        gate = _ValidatingGate(
            snapshot.send, max_bytes=self._settings.max_bytes,
            required=job.required_columns() if self._settings.check_mapped_columns else None,
            on_valid=lambda report: self._validated_while_sending(file, report),
        )
        if state is DeliveryState.ASSIGNED:
            self._journal.upload_started(file.id, job_id)
        try:
            self._upload(file, job_id, category, snapshot,
                         maybe_landed=state is DeliveryState.UPLOADING, gate=gate)
        except _Invalid as invalid:
            # Stopped before its final block: the job cannot have taken it.
            self._journal.delivery_ended(file.id, job_id, DeliveryState.ASSIGNED)
            logger.bind(file=file.rel_path, segment=file.segment, job=job_id).info(
                "stopped the upload to job {} before its last bytes ({}); validating the whole "
                "file", job_id, invalid)
            checked = self._read(file)
            again = dataclasses.replace(delivery, state=DeliveryState.ASSIGNED)
            return self._to_job(file, again, job, checked)
        if gate.report is None:  # the upload did not go through (a retry, a job gone)
            return snapshot
        return _Snapshot(gate.report, snapshot.send, gate.report.size, gate.report.mtime_ns)

    def _upload(
        self, file: FileRow, job_id: str, category: str, snapshot: _Snapshot, *,
        maybe_landed: bool, gate: _ValidatingGate | None = None,
    ) -> None:
        """``maybe_landed``: an earlier attempt got no answer, so the job may hold it already.
        With ``gate``, the file is validated while it is sent (_Invalid propagates)."""
        log = logger.bind(file=file.rel_path, segment=file.segment, job=job_id, category=category)
        started = self._clock()
        try:
            result = self._send(job_id, snapshot, gate)
        except SourceChanged as changed:
            self._journal.delivery_ended(file.id, job_id, DeliveryState.ASSIGNED,
                                         error=str(changed))
            self._changed(file, changed.detail)
        except ExchangeError as error:
            self._metrics.api_error(error.status)
            self._upload_failed(file, job_id, category, error, maybe_landed=maybe_landed)
            return
        elapsed = self._clock() - started
        self._journal.delivery_ended(file.id, job_id, DeliveryState.UPLOADED,
                                     nbytes=result.bytes_sent, sha256=result.sha256)
        self._metrics.bytes_uploaded.inc(result.bytes_sent)
        self._metrics.upload_seconds.observe(elapsed)
        self._metrics.job_uploads.labels(category=category).inc()
        log.bind(bytes=result.bytes_sent, duration=f"{elapsed:.3f}s").info(
            "uploaded to job {}", job_id
        )

    def _send(self, job_id: str, snapshot: _Snapshot, gate: _ValidatingGate | None) -> UploadResult:
        if gate is not None:
            logger.debug("uploading {} bytes to job {}, validated while sent", snapshot.size,
                         job_id)
            return self._client.upload_data(
                job_id, snapshot.send, content_type=self._settings.content_type, retry=False,
                gate=gate,
            )
        report = snapshot.report
        assert report is not None and report.sha256 is not None
        expected = ExpectedBody(size=report.size - report.offset, sha256=report.sha256,
                                mtime_ns=report.mtime_ns, offset=report.offset)
        logger.debug("uploading {} bytes to job {}", expected.size, job_id)
        return self._client.upload_data(
            job_id, snapshot.send, content_type=self._settings.content_type, retry=False,
            expected=expected,
        )

    def _upload_failed(
        self, file: FileRow, job_id: str, category: str, error: ExchangeError, *,
        maybe_landed: bool,
    ) -> None:
        log = logger.bind(file=file.rel_path, segment=file.segment, job=job_id, category=category)
        outcome = classify(error)
        if outcome is Outcome.AMBIGUOUS or (outcome is Outcome.GONE and maybe_landed):
            # No answer after the body left (now, or in an attempt before a crash): only the
            # job's status can tell whether that body is the one it took.
            log.warning("job {} may hold an earlier upload ({}); asking the job", job_id, error)
            job = self._current_job(job_id, category)
            if not job.is_waiting:
                self._settle_stopped_job(file, job_id, DeliveryState.UPLOADING, job.status)
                return
            if outcome is Outcome.AMBIGUOUS:
                # Still waiting: the body may yet arrive. The delivery stays UPLOADING, so the
                # next attempt asks first and a late 409 is read as ours.
                self._raise_retry(error)
        if outcome is Outcome.GONE:
            log.warning("job {} is gone or taken; the file waits for another job: {}",
                        job_id, error)
            self._journal.delivery_ended(file.id, job_id, DeliveryState.GONE, error=str(error))
        elif outcome is Outcome.REFUSED:
            reason = f"the Exchange refused the upload: {error.server_message or error}"
            log.warning("rejected for job {}: {}", job_id, reason)
            self._journal.delivery_ended(file.id, job_id, DeliveryState.ASSIGNED,
                                         error=str(error))
            self._fail_job(file, job_id, reason, category)
        else:
            self._journal.delivery_ended(file.id, job_id, DeliveryState.ASSIGNED,
                                         error=str(error))
            self._raise_retry(error)

    def _current_job(self, job_id: str, category: str) -> Job:
        """The job as the Exchange sees it now; one it answers 404 for was deleted."""
        try:
            return self._client.get_job(category, job_id)
        except ExchangeError as error:
            self._metrics.api_error(error.status)
            if classify(error) is Outcome.GONE:
                return Job(job_id=int(job_id), status=JobStatus.NOTFOUND, raw={})
            self._raise_retry(error)

    def _settle_stopped_job(
        self, file: FileRow, job_id: str, state: DeliveryState, status: JobStatus
    ) -> None:
        """The job no longer waits. It has our data only if our upload started and it did not
        end in a state that means "no data"."""
        log = logger.bind(file=file.rel_path, segment=file.segment, job=job_id)
        if state is DeliveryState.UPLOADING and status not in NO_DATA_STATUSES:
            log.info("job {} is {} after our upload started: it already has this file's data",
                     job_id, status.name)
            self._journal.delivery_ended(
                file.id, job_id, DeliveryState.UPLOADED, sha256=self._journal.file(file.id).sha256,
                error=f"confirmed by the job's status {status.name}",
            )
        else:
            log.warning("job {} stopped waiting ({}) before it got the file", job_id, status.name)
            self._journal.delivery_ended(file.id, job_id, DeliveryState.GONE,
                                         error=f"job {status.name} before the upload")

    # --- failing jobs -----------------------------------------------------------------------------

    def _fail_open_jobs(self, file: FileRow, reason: str) -> None:
        for delivery in self._journal.deliveries(file.id):
            if delivery.state in OPEN_DELIVERIES and not self._landed_before(file, delivery):
                if delivery.state is DeliveryState.UPLOADING:
                    self._journal.delivery_ended(file.id, delivery.job_id,
                                                 DeliveryState.ASSIGNED)
                self._fail_job(file, delivery.job_id, reason, _category(delivery))

    def _fail_job(self, file: FileRow, job_id: str, reason: str, category: str) -> None:
        log = logger.bind(file=file.rel_path, segment=file.segment, job=job_id, category=category)
        try:
            self._client.fail_job(job_id, f"{file.rel_path}: {reason}")
        except ExchangeError as error:
            self._metrics.api_error(error.status)
            outcome = classify(error)
            if outcome is Outcome.GONE:
                log.warning("job {} was no longer waiting; it could not be failed", job_id)
                self._journal.delivery_ended(file.id, job_id, DeliveryState.GONE, error=reason)
                return
            if outcome in (Outcome.RETRY, Outcome.KEY_REFUSED):
                self._raise_retry(error)
            log.error("the Exchange refused to fail job {}: {}", job_id, error)
        else:
            self._metrics.jobs_failed.labels(category=category).inc()
            log.info("failed job {}: {}", job_id, reason)
        self._journal.delivery_ended(file.id, job_id, DeliveryState.REJECTED, error=reason)

    def _release_open(self, file: FileRow, reason: str) -> None:
        """Jobs this file will not reach, for a reason that is not its content: left waiting.
        An upload a crash cut short may have landed: its job's status decides first."""
        for delivery in self._journal.deliveries(file.id):
            if delivery.state in OPEN_DELIVERIES and not self._landed_before(file, delivery):
                self._journal.delivery_ended(file.id, delivery.job_id, DeliveryState.RELEASED,
                                             error=reason)

    def _release_untried(self, file: FileRow, reason: str) -> None:
        """Jobs the attempts never reached (each attempt stopped at an earlier job's failure):
        left waiting, for another file; only the jobs it was tried on are failed."""
        for delivery in self._journal.deliveries(file.id):
            if delivery.state is DeliveryState.ASSIGNED and delivery.started_at is None:
                self._journal.delivery_ended(file.id, delivery.job_id, DeliveryState.RELEASED,
                                             error=f"never tried: {reason}")

    def _landed_before(self, file: FileRow, delivery: DeliveryRow) -> bool:
        """For an upload a crash or silence cut short: True when the job's status settled it
        (it stopped waiting); False for any delivery the job may still take."""
        if delivery.state is not DeliveryState.UPLOADING:
            return False
        job = self._current_job(delivery.job_id, _category(delivery))
        if job.is_waiting:
            return False
        self._settle_stopped_job(file, delivery.job_id, delivery.state, job.status)
        return True

    # --- outcome ----------------------------------------------------------------------------------

    def _raise_retry(self, error: ExchangeError) -> NoReturn:
        outcome = classify(error)
        if outcome is Outcome.KEY_REFUSED:
            raise _Retry(f"the Exchange refused the key: {error}", counts=False,
                         key_refused=True) from error
        if is_redirect(error):
            logger.error("{}: the base URL or a proxy is wrong; nothing was sent", error)
        raise _Retry(str(error), retry_after=error.retry_after,
                     counts=counts_as_attempt(error)) from error

    def _retry_or_give_up(self, file: FileRow, retry: _Retry) -> DeliveryResult:
        attempts = file.attempts + (1 if retry.counts else 0)
        if not (retry.counts and attempts >= self._settings.max_attempts):
            return DeliveryResult(Verdict.RETRY, retry.reason, retry.retry_after, retry.counts,
                                  retry.key_refused)
        reason = f"upload failed {attempts} times; last error: {retry.reason}"
        try:
            if _is_unreadable(retry):
                self._release_open(file, reason)
            else:
                self._release_untried(file, reason)
                self._fail_open_jobs(file, reason)
        except _Retry as again:
            return DeliveryResult(Verdict.RETRY, again.reason, again.retry_after, False,
                                  again.key_refused)
        verdict = self._verdict(file)
        if verdict.verdict is Verdict.REQUEUE and _is_unreadable(retry):
            return DeliveryResult(Verdict.REJECTED, reason)
        if verdict.verdict is Verdict.REJECTED:
            return DeliveryResult(Verdict.REJECTED, reason)
        return verdict

    def _verdict(self, file: FileRow) -> DeliveryResult:
        deliveries = self._journal.deliveries(file.id)
        states = {d.state for d in deliveries}
        if states & OPEN_DELIVERIES:
            return DeliveryResult(Verdict.RETRY, "some jobs still to be tried",
                                  counts_as_attempt=False)
        if DeliveryState.REJECTED in states:
            reasons = [d.error for d in deliveries if d.state is DeliveryState.REJECTED and d.error]
            return DeliveryResult(Verdict.REJECTED, reasons[0] if reasons else "refused")
        if DeliveryState.UPLOADED in states:
            return DeliveryResult(Verdict.DELIVERED)
        if DeliveryState.RELEASED in states:
            released = [d.error for d in deliveries if d.state is DeliveryState.RELEASED]
            return DeliveryResult(Verdict.REJECTED, released[0] or "not sent")
        return DeliveryResult(
            Verdict.REQUEUE, "every job assigned to it stopped waiting before the upload"
        )


def _file_log(file: FileRow) -> Logger:
    """A logger naming the file: bound where a line is written, not ahead of every file's
    read for lines that are rarely written."""
    return logger.bind(file=file.rel_path, segment=file.segment)


def _category(delivery: DeliveryRow) -> str:
    return delivery.category or JobCategory.SEGMENT_EXPORT.value


def _whole_file_hash(path: Path) -> str | None:
    """The SHA-256 of the whole file: what a journal before schema 4 recorded for a file with a
    UTF-8 byte order mark, which is now left out of the hash (and of the upload); a file it
    recorded so is the same file, not a changed one. None when it cannot be read."""
    try:
        return sha256_of(path)
    except OSError:
        return None


def _is_unreadable(retry: _Retry) -> bool:
    return isinstance(retry.__cause__, OSError)
