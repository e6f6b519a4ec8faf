"""The pull side: SEGMENT_EXPORT jobs READY_FOR_DOWNLOAD for the pull endpoint, to outbox/<jobId>/.

Runs in a thread of its own (or the main thread of a pull-only agent): its network calls never
hold up the push loop. For each job, every step is in the journal (``pushagent.pulljournal``)
before the next one starts, so a kill -9 anywhere resumes without harm:

1. each file of ``segmentDataFiles`` is streamed to a hidden temporary name in its job's folder,
   fsynced, its size checked, validated (problems are logged and kept, the file is kept too),
   renamed to its final (sanitized) name and the folder fsynced; only then is it DOWNLOADED.
   A temporary file left by a crash is removed at the next start; a file found under its final
   name is never fetched again (only a verified file is ever renamed there).
2. once every file is in place: ``segment.csv`` if ``merge_files`` (one header; parts whose
   headers differ are refused, with the reason), then ``job.json``, written last: its presence
   tells the consumer the job is complete. Then the job is ON_DISK.
3. only then, if configured, each file is deleted at the Exchange and the job completed.

Nothing here ever fails a pull job (the fail call is for jobs waiting for data): a download that
keeps failing leaves the job READY_FOR_DOWNLOAD and is retried with a capped backoff; a local
problem (disk full, an outbox that cannot be written) is retried too, and shown as a condition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from loguru import logger

from pushagent.conditions import Cause, Conditions
from pushagent.config import PullSettings
from pushagent.errors import ExchangeError, JournalUnavailable
from pushagent.exchange import ExchangeClient, Job, JobCategory, JobStatus
from pushagent.exchange.outcome import Outcome, classify
from pushagent.exchange.retry import backoff
from pushagent.journal import Journal
from pushagent.lifecycle import PullFileState, PullJobState
from pushagent.metrics import PullMetrics
from pushagent.names import local_file_name, printable
from pushagent.pulljournal import PullFileRow, PullJobRow, PullJournal
from pushagent.validator import CSVReport, sha256_of, validate_csv

JOB_JSON = "job.json"
MERGED = "segment.csv"
RESERVED_NAMES = frozenset({JOB_JSON, MERGED})
TEMP_PREFIX = "."
TEMP_SUFFIX = ".part"
HASH_CHUNK = 1 << 20
HEADER_LIMIT = 16 << 20  # a header longer than this cannot be compared: merge refused
IDLE_WAIT_SECONDS = 1.0
ABANDON_AFTER_SECONDS = 1.0


class _Retry(Exception):
    """This attempt at a job ends; the job stays as it is and is tried again after a backoff.
    ``step`` names what failed (for the metrics), ``local`` a problem of this machine."""

    def __init__(self, reason: str, *, step: str, local: bool = False,
                 retry_after: float | None = None, key_refused: bool = False,
                 logged: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step = step
        self.local = local
        self.retry_after = retry_after
        self.key_refused = key_refused
        self.logged = logged  # each file's ERROR line is out already


class _Gone(Exception):
    """The job stopped being ready before its files were all here."""


class _Aborted(Exception):
    """A cold stop cut a download short; the journal resumes it at the next start."""


@dataclass
class PullOutcomes:
    """What happened in this run, for ``run --once``'s summary."""

    done: list[str] = field(default_factory=list)
    gone: list[tuple[str, str]] = field(default_factory=list)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _header_end(stream: BinaryIO, path: Path) -> tuple[bytes, int]:
    """The header record of a CSV part (an RFC 4180 quoted field may hold a newline) without its
    line ending or BOM, and the offset where the data after it starts."""
    data = b""
    quoted = False
    while len(data) < HEADER_LIMIT:
        chunk = stream.read(64 * 1024)
        if not chunk:
            break
        start = len(data)
        data += chunk
        for index in range(start, len(data)):
            byte = data[index]
            if byte == 0x22:  # '"'
                quoted = not quoted
            elif byte == 0x0A and not quoted:  # '\n'
                header = data[:index].removeprefix(b"\xef\xbb\xbf").removesuffix(b"\r")
                return header, index + 1
    if len(data) >= HEADER_LIMIT:
        raise ValueError(f"{path.name}: no end of the header in its first {HEADER_LIMIT} bytes")
    return data.removeprefix(b"\xef\xbb\xbf").removesuffix(b"\r"), len(data)


def merge_parts(parts: list[Path], target: Path) -> tuple[int, str] | str:
    """Write ``target`` as the first part's header and every part's data rows, via a hidden
    temporary file, fsynced. Returns (size, sha256), or the reason it was refused."""
    headers: list[tuple[bytes, int]] = []
    for part in parts:
        with open(part, "rb") as stream:
            try:
                headers.append(_header_end(stream, part))
            except ValueError as error:
                return str(error)
    first = headers[0][0]
    for part, (header, _) in zip(parts[1:], headers[1:], strict=True):
        if header != first:
            return (f"{part.name} has another header than {parts[0].name} "
                    f"({printable(header[:200].decode(errors='replace'))!r} vs "
                    f"{printable(first[:200].decode(errors='replace'))!r}); the parts are kept "
                    "as they are")
    temp = target.with_name(f"{TEMP_PREFIX}{target.name}{TEMP_SUFFIX}")
    digest = hashlib.sha256()
    try:
        with open(temp, "wb") as out:
            for n, (part, (_, data_start)) in enumerate(zip(parts, headers, strict=True)):
                with open(part, "rb") as stream:
                    if n:
                        stream.seek(data_start)
                    last = b""
                    while chunk := stream.read(HASH_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        last = chunk[-1:]
                if last not in (b"", b"\n"):  # a part without a final newline: end its row
                    out.write(b"\n")
                    digest.update(b"\n")
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return size, digest.hexdigest()


class Puller:
    def __init__(
        self,
        settings: PullSettings,
        *,
        client: ExchangeClient,
        journal: Journal,
        metrics: PullMetrics,
        healthy_within: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        validate: Callable[..., CSVReport] = validate_csv,
        stop_event: threading.Event | None = None,
        grace_seconds: float = 30.0,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.outcomes = PullOutcomes()
        self.conditions = Conditions(clock=clock)
        # Set on a stop request: the client sleeps on it between retries, and so does the loop.
        self.stop_event = stop_event or threading.Event()
        self._abort = threading.Event()  # cold: a download in progress is cut short
        self._stop_requests = 0
        self._stop_lock = threading.Lock()
        self._grace = grace_seconds
        self._grace_timer: threading.Timer | None = None
        self._aborted_at: float | None = None
        self._client = client
        self._journal = PullJournal(journal)
        self._healthy_within = healthy_within
        self._clock = clock
        self._wall = wall
        self._validate = validate
        self._outbox = settings.outbox
        self._due: dict[str, float] = {}  # jobs taken on and not finished -> next attempt
        self._streaks: dict[str, int] = {}
        self._listed: set[str] | None = None  # ready at the last list call
        self._next_poll = 0.0
        self._poll_failures = 0
        self._key_refused_first = False
        self._poll_ok = False
        self.last_contact: float | None = None

    # --- the loop --------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Work until stopped; with ``once``, list once, try each ready job once, then return."""
        self._guarded(self._recover)
        while not self.stop_event.is_set():
            now = self._clock()
            if now >= self._next_poll:
                self._guarded(functools.partial(self._poll, now))
            for job_id in sorted(self._due, key=self._due.__getitem__):
                if self.stop_event.is_set() or (self._due[job_id] > now and not once):
                    continue
                self._guarded(functools.partial(self._work, job_id))
            self.metrics.jobs_pending.set(len(self._due))
            if once:
                break
            deadline = min([self._next_poll, *self._due.values()])
            self.stop_event.wait(min(max(0.0, deadline - self._clock()), IDLE_WAIT_SECONDS))
        self.metrics.jobs_pending.set(len(self._due))
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        if not once:
            return 0
        if self._key_refused_first:
            return 3
        return 1 if self._due or not self._poll_ok else 0

    def request_stop(self) -> None:
        """Warm stop first, cold when called again."""
        with self._stop_lock:
            self._stop_requests += 1
            cold = self._stop_requests > 1
        if cold:
            self.abort()
        else:
            self.stop_warm()

    def stop_warm(self) -> None:
        """No new step; a download in progress may finish within the grace, then is cut short
        (the journal resumes it at the next start). Asking again changes nothing."""
        with self._stop_lock:
            if self._grace_timer is None:
                self._grace_timer = threading.Timer(self._grace, self.abort)
                self._grace_timer.daemon = True
                self._grace_timer.start()
        self.stop_event.set()

    def abort(self) -> None:
        """Cut a download in progress short (it resumes from nothing at the next start)."""
        with self._stop_lock:
            if self._aborted_at is None:
                self._aborted_at = self._clock()
        self.stop_event.set()
        self._abort.set()

    def abandoned(self) -> bool:
        """Cut short a while ago and still not back: blocked in a socket, to be left behind."""
        aborted = self._aborted_at
        return aborted is not None and self._clock() - aborted > ABANDON_AFTER_SECONDS

    def health(self) -> tuple[bool, str]:
        reasons = self.conditions.reasons()
        if reasons:
            return False, "pull: " + "; ".join(reasons)
        if self.last_contact is None or self._wall() - self.last_contact > self._healthy_within:
            return False, (f"pull: the Exchange was not reached in the last "
                           f"{self._healthy_within:g} s")
        return True, "ok"

    def _guarded(self, work: Callable[[], None]) -> None:
        """A journal that cannot be written is a condition, and a bug is an ERROR: either way
        the pull side waits a moment and carries on."""
        try:
            work()
        except JournalUnavailable as error:
            self.conditions.raise_(Cause.STATE_DIR, f"{error}; no pull step is taken meanwhile")
            self._pause()
        except Exception as error:
            logger.opt(exception=error).error("pull: unexpected error; carrying on")
            self._pause()
        else:
            self.conditions.clear(Cause.STATE_DIR)

    def _pause(self) -> None:
        self._next_poll = max(self._next_poll, self._clock() + IDLE_WAIT_SECONDS)
        for job_id in self._due:
            self._due[job_id] = max(self._due[job_id], self._clock() + IDLE_WAIT_SECONDS)

    # --- restart -----------------------------------------------------------------------------

    def _recover(self) -> None:
        """Jobs a previous run left: temporary files of a cut-short download are removed (the
        final names only ever hold verified files), and every job is due now."""
        for row in self._journal.jobs(PullJobState.DOWNLOADING, PullJobState.ON_DISK):
            if row.state is PullJobState.DOWNLOADING:
                self._remove_temporaries(Path(row.folder))
            self._due[row.job_id] = self._clock()
            logger.bind(job=row.job_id).info("pull: resuming job {} ({})", row.job_id,
                                             row.state.value)

    @staticmethod
    def _remove_temporaries(folder: Path) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(folder):
                if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(TEMP_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    # --- listing -----------------------------------------------------------------------------

    def _poll(self, now: float) -> None:
        endpoint = self.settings.endpoint_id
        try:
            jobs = self._client.list_jobs(
                JobCategory.SEGMENT_EXPORT, endpoint_id=endpoint,
                status=JobStatus.READY_FOR_DOWNLOAD,
            )
        except ExchangeError as error:
            self._poll_failed(now, error)
            return
        self._poll_ok = True
        self._poll_failures = 0
        self._next_poll = now + self.settings.poll_seconds
        self.last_contact = self._wall()
        self.metrics.last_successful_poll.set(self.last_contact)
        self._journal.reached(self.last_contact)
        self.conditions.clear(Cause.KEY_REFUSED)
        self.conditions.clear(Cause.UNREACHABLE)
        ready = [job for job in jobs if job.status is JobStatus.READY_FOR_DOWNLOAD]
        self._listed = {str(job.job_id) for job in ready}
        known = self._journal.known(self._listed)
        for job in ready:
            job_id = str(job.job_id)
            if known.get(job_id) in (PullJobState.DONE, PullJobState.ON_DISK):
                continue  # done (a job left READY when complete_jobs is off), or finishing
            if not job.segment_data_files:
                logger.bind(job=job_id).debug("pull: job {} is ready with no segmentDataFiles "
                                              "yet; asked again next poll", job_id)
                continue
            self._take_on(job)

    def _poll_failed(self, now: float, error: ExchangeError) -> None:
        self._poll_failures += 1
        self.metrics.failures.labels(step="list").inc()
        delay = max(backoff(self._poll_failures, initial=self.settings.initial_backoff,
                            cap=max(self.settings.max_backoff, self.settings.poll_seconds)),
                    error.retry_after or 0.0)
        self._next_poll = now + delay
        what = f"cannot list the jobs ready for download (retrying in {delay:.1f} s): {error}"
        if classify(error) is Outcome.KEY_REFUSED:
            if self.last_contact is None and self._poll_failures == 1:
                self._key_refused_first = True
            cause = Cause.KEY_REFUSED
        else:
            cause = Cause.UNREACHABLE
        logger.error("pull: {}", what)
        self.conditions.raise_(cause, what, log=False)

    def _take_on(self, job: Job) -> None:
        job_id = str(job.job_id)
        existing = {f.name: f.local_name for f in self._journal.files(job_id)}
        taken = set(existing.values()) | set(RESERVED_NAMES)
        names = [
            (name, existing.get(name) or local_file_name(name, taken=taken))
            for name in dict.fromkeys(job.segment_data_files or [])
        ]
        self._journal.take_on(
            job_id, folder=str(self._outbox / local_file_name(job_id, taken=set())),
            job_json=json.dumps(job.raw, default=str), files=names,
        )
        if job_id not in self._due:
            self._due[job_id] = self._clock()
            logger.bind(job=job_id).info("pull: job {} is ready: {} file(s)", job_id, len(names))

    # --- one job -----------------------------------------------------------------------------

    def _work(self, job_id: str) -> None:
        row = self._journal.job(job_id)
        log = logger.bind(job=job_id)
        try:
            if row is not None and row.state is PullJobState.DOWNLOADING:
                self._download_all(row)
                row = self._journal.job(job_id)
            if row is not None and row.state is PullJobState.ON_DISK:
                self._finish_at_exchange(row)
        except _Retry as retry:
            self._retry_later(job_id, retry)
            return
        except _Gone as gone:
            reason = str(gone)
            log.warning("pull: job {} is no longer ready; files already here are kept: {}",
                        job_id, reason)
            self._journal.finish(job_id, PullJobState.GONE, reason=reason)
            self.outcomes.gone.append((job_id, reason))
        except _Aborted:
            log.warning("pull: job {}: stopped before it was finished; it resumes at the next "
                        "start", job_id)
            return
        except (JournalUnavailable, KeyboardInterrupt):
            raise
        except Exception as error:  # a bug: reported, and the job is tried again later
            log.opt(exception=error).error("pull: job {} failed unexpectedly", job_id)
            self._retry_later(job_id, _Retry(f"internal error: {error!r}", step="internal"))
            return
        self._due.pop(job_id, None)
        self._streaks.pop(job_id, None)
        self.conditions.clear(Cause.OUTBOX)

    def _retry_later(self, job_id: str, retry: _Retry) -> None:
        streak = self._streaks[job_id] = self._streaks.get(job_id, 0) + 1
        delay = max(backoff(streak, initial=self.settings.initial_backoff,
                            cap=self.settings.max_backoff), retry.retry_after or 0.0)
        self._due[job_id] = self._clock() + delay
        self.metrics.failures.labels(step=retry.step).inc()
        reason = f"retrying in {delay:.1f} s after: {retry.reason}"
        self._journal.failed_attempt(job_id, reason, next_attempt_at=self._wall() + delay)
        log = logger.bind(job=job_id)
        if retry.logged:
            log.warning("pull: job {}: {}", job_id, reason)
        else:
            log.error("pull: job {}: {}", job_id, reason)
        if retry.local:
            self.conditions.raise_(
                Cause.OUTBOX, f"the outbox {self._outbox} cannot be written ({retry.reason}); "
                "the jobs wait, untouched at the Exchange", log=False)
        if retry.key_refused:
            self.conditions.raise_(Cause.KEY_REFUSED, f"the Exchange refused the key: "
                                   f"{retry.reason}", log=False)

    def _download_all(self, row: PullJobRow) -> None:
        folder = Path(row.folder)
        if self._listed is not None and row.job_id not in self._listed:
            self._check_still_ready(row.job_id)
        try:
            folder.mkdir(exist_ok=True)
            if (folder / JOB_JSON).exists():  # written before a crash: the files are all here
                self._journal.on_disk(row.job_id)
                return
        except OSError as error:
            raise _Retry(f"cannot make {folder} ({error.strerror or error})", step="local",
                         local=True) from error
        failures: list[_Retry] = []
        for file in self._journal.files(row.job_id):
            if self.stop_event.is_set():
                raise _Aborted()
            final = folder / file.local_name
            if file.state is PullFileState.DOWNLOADED and not os.path.lexists(final):
                logger.bind(job=row.job_id, file=file.local_name).warning(
                    "pull: {} vanished before job.json was written; downloading it again",
                    final)
                self._journal.missing_again(row.job_id, file.name)
                file = dataclasses.replace(file, state=PullFileState.PENDING)
            if file.state is not PullFileState.PENDING:
                continue
            if os.path.lexists(final):
                # Renamed in before a crash, not yet journalled: only verified files are ever
                # renamed there, so it is kept, not fetched again.
                self._adopt(row.job_id, file, final)
                continue
            try:
                self._download(row.job_id, file, folder)
            except _Retry as retry:
                if retry.local:  # the outbox's problem is every file's
                    raise
                # The Exchange's answer for this file: the others are fetched meanwhile.
                failures.append(retry)
                logger.bind(job=row.job_id, file=file.local_name).error(
                    "pull: job {}: {}", row.job_id, retry.reason)
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more file(s))" if len(failures) > 1 else ""
            raise _Retry(first.reason + more, step=first.step, retry_after=first.retry_after,
                         key_refused=first.key_refused, logged=True)
        self._write_job_json(row, folder)
        self._journal.on_disk(row.job_id)
        self.metrics.jobs_downloaded.inc()
        logger.bind(job=row.job_id).info("pull: job {}: every file is in {}", row.job_id, folder)

    def _check_still_ready(self, job_id: str) -> None:
        """Not in the last list of ready jobs: ask the job itself before fetching more."""
        try:
            job = self._client.get_job(JobCategory.SEGMENT_EXPORT, job_id)
        except ExchangeError as error:
            if classify(error) is Outcome.GONE:
                raise _Gone(f"the Exchange no longer knows job {job_id} ({error})") from error
            raise self._remote(error, step="download") from error
        if job.status is not JobStatus.READY_FOR_DOWNLOAD:
            raise _Gone(f"job {job_id} is {job.status_raw or job.status.value}, not "
                        "READY_FOR_DOWNLOAD")

    def _download(self, job_id: str, file: PullFileRow, folder: Path) -> None:
        final = folder / file.local_name
        temp = folder / f"{TEMP_PREFIX}{file.local_name}{TEMP_SUFFIX}"
        log = logger.bind(job=job_id, file=file.local_name)
        log.info("pull: downloading {} of job {}", printable(file.name), job_id)
        started = self._clock()
        try:
            try:
                with open(temp, "wb") as out:
                    received = self._client.download_segment_file(
                        job_id, file.name, out, progress=self._check_abort)
                    out.flush()
                    os.fsync(out.fileno())
                    size = os.fstat(out.fileno()).st_size
            except OSError as error:
                raise _Retry(f"cannot write {temp} ({error.strerror or error})", step="local",
                             local=True) from error
            except ExchangeError as error:
                raise self._remote(error, step="download", name=file.name) from error
            except ValueError as error:  # a name no URL can carry ("..", "", ...)
                raise _Retry(f"{printable(file.name)!r} cannot be asked for ({error}); ask "
                             "Acoustic support", step="download") from error
            if size != received:
                raise _Retry(f"{file.name}: {size} bytes on disk after {received} received",
                             step="local", local=True)
            fetched = self._clock()
            problems, sha256 = self._verify(temp, file.name)
            try:
                os.replace(temp, final)
                fsync_folder(folder)
            except OSError as error:
                raise _Retry(f"cannot rename {temp} to {final.name} ({error.strerror or error})",
                             step="local", local=True) from error
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._journal.downloaded(job_id, file.name, size=size, sha256=sha256, problems=problems)
        download = fetched - started
        self.metrics.files_downloaded.inc()
        self.metrics.bytes_downloaded.inc(size)
        self.metrics.download_seconds.observe(download)
        log.bind(bytes=size, download=f"{download:.3f}s",
                 verify=f"{self._clock() - fetched:.3f}s").info("pull: downloaded to {}", final)

    def _adopt(self, job_id: str, file: PullFileRow, final: Path) -> None:
        try:
            size = final.stat().st_size
            problems, sha256 = self._verify(final, file.name)
        except OSError as error:
            raise _Retry(f"cannot read {final} ({error.strerror or error})", step="local",
                         local=True) from error
        self._journal.downloaded(job_id, file.name, size=size, sha256=sha256, problems=problems)

    def _verify(self, path: Path, name: str) -> tuple[str | None, str]:
        """The validator's problems (logged, kept with the file) and the file's SHA-256."""
        report = self._validate(path)
        problems = "; ".join(report.problems) if report.problems else None
        if problems:
            logger.bind(file=path.name).warning(
                "pull: {} has problems (the file is kept as the Exchange sent it): {}",
                printable(name), problems)
        return problems, report.sha256 or sha256_of(path)

    def _check_abort(self, _written: int) -> None:
        if self._abort.is_set():
            raise _Aborted()

    def _remote(self, error: ExchangeError, *, step: str, name: str | None = None) -> _Retry:
        what = f"{name}: {error}" if name else str(error)
        return _Retry(what, step=step, retry_after=error.retry_after,
                      key_refused=classify(error) is Outcome.KEY_REFUSED)

    def _write_job_json(self, row: PullJobRow, folder: Path) -> None:
        files = self._journal.files(row.job_id)
        merged: dict[str, object] | None = None
        refused: str | None = None
        try:
            if self.settings.merge_files:
                result = merge_parts([folder / f.local_name for f in files], folder / MERGED)
                if isinstance(result, str):
                    refused = result
                    logger.bind(job=row.job_id).warning("pull: job {}: merge refused: {}",
                                                        row.job_id, refused)
                else:
                    merged = {"file": MERGED, "size": result[0], "sha256": result[1]}
            document = {
                "job_id": int(row.job_id) if row.job_id.isdigit() else row.job_id,
                "job": json.loads(row.job_json),
                "files": [
                    {"name": f.name, "file": f.local_name, "size": f.size, "sha256": f.sha256,
                     "problems": f.problems}
                    for f in files
                ],
                "merged": merged,
                "merge_refused": refused,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall())),
            }
            temp = folder / f"{TEMP_PREFIX}{JOB_JSON}{TEMP_SUFFIX}"
            with open(temp, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2, ensure_ascii=False)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, folder / JOB_JSON)
            fsync_folder(folder)
        except OSError as error:
            raise _Retry(f"cannot write {folder / JOB_JSON} ({error.strerror or error})",
                         step="local", local=True) from error

    # --- the Exchange side, once the files are safe ---------------------------------------------

    def _finish_at_exchange(self, row: PullJobRow) -> None:
        log = logger.bind(job=row.job_id)
        if self.settings.delete_after_download:
            for file in self._journal.files(row.job_id):
                if file.state is PullFileState.DOWNLOADED:
                    self._delete(row.job_id, file)
        if self.settings.complete_jobs:
            self._complete(row.job_id)
        self._journal.finish(row.job_id, PullJobState.DONE)
        self.outcomes.done.append(row.job_id)
        log.info("pull: job {} done: its files are in {}", row.job_id, row.folder)

    def _delete(self, job_id: str, file: PullFileRow) -> None:
        try:
            self._client.delete_segment_file(job_id, file.name)
        except ExchangeError as error:
            if classify(error) is not Outcome.GONE:
                raise self._remote(error, step="delete", name=file.name) from error
            logger.bind(job=job_id).info("pull: {} was already gone from the Exchange ({})",
                                         printable(file.name), error)
        self._journal.deleted(job_id, file.name)

    def _complete(self, job_id: str) -> None:
        try:
            self._client.complete_job(job_id)
            return
        except ExchangeError as error:
            if classify(error) is not Outcome.GONE:
                raise self._remote(error, step="complete") from error
            refusal = error
        # Refused (or false): completed before a crash, or by someone else? The job decides.
        try:
            job = self._client.get_job(JobCategory.SEGMENT_EXPORT, job_id)
        except ExchangeError as error:
            if classify(error) is Outcome.GONE:
                return  # deleted: nothing left to complete
            raise self._remote(error, step="complete") from error
        if job.status is not JobStatus.COMPLETE:
            raise _Retry(f"{refusal}; the job is {job.status_raw}", step="complete")

