"""The agent loop: drop folder -> ready -> matched to waiting jobs -> delivered, or failed.

Everything decides here, in one thread: watchdog handlers and workers only post to ``inbox``.
Stopping: the first SIGTERM/SIGINT is a warm stop (take no new file, let uploads run for
``shutdown_grace_seconds``), the second a cold stop (return now; the journal resumes the rest).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from loguru import logger

from pushagent.config import AgentConfig
from pushagent.errors import ExchangeError
from pushagent.exchange import ExchangeClient, Job, JobCategory, JobStatus
from pushagent.journal import FileRow, Journal
from pushagent.metrics import AgentMetrics
from pushagent.outcomes import (
    error_report_path,
    move_without_overwrite,
    same_entry,
    unique_target,
    write_error_report,
)
from pushagent.pool import Finished, WorkerPool
from pushagent.readiness import Candidate, ReadinessTracker
from pushagent.router import PendingFile, SegmentRouter, plan_assignments
from pushagent.uploader import Deliverer, DeliveryResult, UploadSettings, Verdict
from pushagent.watcher import DropWatcher, WatchEvent, scan_drop_folder

# After new files become ready, list the waiting jobs at most this often: a burst of a thousand
# files costs a handful of list calls, not a thousand.
MIN_POLL_GAP_SECONDS = 0.2
IDLE_WAIT_SECONDS = 1.0
MOVE_RETRY_MAX_SECONDS = 30.0
PRUNE_INTERVAL_SECONDS = 86400.0


@dataclass
class _Stop:
    cold: bool


@dataclass
class _Scheduled:
    due: float
    finish: DeliveryResult | None = None  # set when only the final move is left to retry


@dataclass
class Outcomes:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        client: ExchangeClient,
        journal: Journal,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.config = config
        # Set on the first stop request; the client sleeps on it between retries, so a stop
        # never waits out a backoff.
        self.stop_event = stop_event or threading.Event()
        self._stop_requests = 0
        self._stop_lock = threading.Lock()
        self._reasons: dict[int, str] = {}
        self._retry_streak: dict[int, int] = {}
        self.metrics = metrics or AgentMetrics()
        self.outcomes = Outcomes()
        self._client = client
        self._journal = journal
        self._clock = clock
        self._wall = wall
        self._inbox: queue.Queue[WatchEvent | Finished[DeliveryResult] | _Stop] = queue.Queue()
        self._drop = config.folders.drop
        self._watcher = DropWatcher(self._drop, self._inbox.put, polling=config.watch.polling)
        self._readiness = ReadinessTracker(
            settle_seconds=config.watch.settle_seconds,
            ignore=config.watch.ignore,
            trigger_suffix=config.watch.trigger_suffix,
            clock=clock,
        )
        self._router = SegmentRouter(names=config.segments, pattern=config.watch.filename_pattern)
        self._deliverer = Deliverer(
            client=client,
            journal=journal,
            metrics=self.metrics,
            clock=clock,
            settings=UploadSettings(
                content_type=config.upload.content_type,
                max_bytes=config.validation.max_bytes or None,
                check_mapped_columns=config.validation.check_mapped_columns,
                max_attempts=config.upload.max_attempts,
            ),
        )
        self._pool: WorkerPool[DeliveryResult] = WorkerPool(
            size=config.upload.workers, report=self._inbox.put, name="upload"
        )
        self._file_ids: dict[Path, int] = {}  # settling files -> journal id
        self._waiting: dict[int, FileRow] = {}
        self._scheduled: dict[int, _Scheduled] = {}
        self._in_flight: set[int] = set()
        self._jobs: dict[str, Job] = {}
        self._fresh_files = False
        self._last_poll = float("-inf")
        self._next_poll = 0.0
        self._poll_failures = 0
        self._next_rescan = 0.0
        self._next_prune = 0.0
        self._stopping: _Stop | None = None
        self._stop_deadline = float("inf")
        self.last_contact: float | None = None

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Work until stopped (or, with ``once``, until the folder's current files are handled)."""
        self._recover()
        self._watcher.start()
        try:
            while not self._should_exit(once):
                self._receive(timeout=self._wait_time())
                now = self._clock()
                if self._stopping is None:
                    self._rescan_if_due(now)
                    self._admit(self._readiness.take_ready())
                    self._expire_waiting()
                    self._dispatch(now)
                self._refresh_gauges()
        finally:
            self._watcher.stop()
            self._pool.shutdown()
            self._refresh_gauges()
        if not once:
            return 0  # a stop signal ends a long run normally, whatever files failed meanwhile
        left_retrying = bool(self._scheduled or self._in_flight)
        return 1 if self.outcomes.failed or left_retrying else 0

    def request_stop(self) -> None:
        """Warm stop first, cold stop when called again."""
        with self._stop_lock:  # two signals in quick succession must still be warm, then cold
            self._stop_requests += 1
            cold = self._stop_requests > 1
        self.stop_event.set()
        self._inbox.put(_Stop(cold=cold))

    def health(self) -> tuple[bool, str]:
        healthy_within = self.config.metrics.healthy_within_seconds
        if not self._watcher.running():
            return False, "the drop-folder watcher is not running"
        if self.last_contact is None or self._wall() - self.last_contact > healthy_within:
            return False, f"the Exchange was not reached in the last {healthy_within:g} s"
        return True, "ok"

    def _should_exit(self, once: bool) -> bool:
        if self._stopping is not None:
            return self._stopping.cold or not self._in_flight or self._clock() > self._stop_deadline
        if once:
            nothing_moving = not (self._in_flight or self._readiness.tracked() or self._fresh_files)
            nothing_due = all(s.due > self._clock() + 1 for s in self._scheduled.values())
            return nothing_moving and nothing_due and self._next_rescan > 0
        return False

    def _wait_time(self) -> float:
        deadlines = [self._next_rescan, *(s.due for s in self._scheduled.values())]
        if self._waiting:
            deadlines.append(self._next_poll)
            if self._fresh_files:
                # A file ready just after a list call waits for the gap, not for the next poll.
                deadlines.append(self._last_poll + MIN_POLL_GAP_SECONDS)
        settle = self._readiness.next_deadline()
        if settle is not None:
            deadlines.append(settle)
        return min(max(0.0, min(deadlines) - self._clock()), IDLE_WAIT_SECONDS)

    def _receive(self, *, timeout: float) -> None:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: WatchEvent | Finished[DeliveryResult] | _Stop) -> None:
        if isinstance(item, _Stop):
            self._begin_stop(item)
        elif isinstance(item, Finished):
            self._in_flight.discard(item.key)
            self._settle(item)
        elif item.kind == "scan-dir":
            self._observe_all()
        elif not self._readiness.ignored(self._relative(item.path)):
            self._track(item.path, item.kind)

    def _begin_stop(self, stop: _Stop) -> None:
        grace = self.config.upload.shutdown_grace_seconds
        if stop.cold:
            logger.warning(
                "second stop signal: leaving now; unfinished uploads resume at next start"
            )
        else:
            logger.info(
                "stopping: no new files; waiting up to {:g} s for {} upload(s) in progress",
                grace,
                len(self._in_flight),
            )
            self._stop_deadline = self._clock() + grace
        self._stopping = stop

    # --- the drop folder --------------------------------------------------------------------------

    def _relative(self, path: Path) -> PurePath:
        return PurePath(os.path.relpath(path, self._drop))

    def _rescan_if_due(self, now: float) -> None:
        if now >= self._next_prune:
            pruned = self._journal.prune()
            if pruned:
                logger.info("journal: forgot {} files finished over 30 days ago", pruned)
            self._next_prune = now + PRUNE_INTERVAL_SECONDS
        if self._watcher.ensure_running() or now >= self._next_rescan:
            self._sweep_vanished()
            self._observe_all()
            self._next_rescan = now + self.config.watch.rescan_seconds

    def _observe_all(self) -> None:
        known = set(self._readiness.tracked()) | {Path(r.path) for r in self._waiting.values()}
        for path in scan_drop_folder(self._drop, ignored=self._readiness.ignored):
            if path not in known:
                self._track(path, "scan")

    def _track(self, path: Path, event: str) -> None:
        if not _storable(path):
            self._move_aside_unjournaled(path)
            return
        self._readiness.observe(path, event=event)
        if path not in self._file_ids and path in self._readiness.tracked():
            relative = str(self._relative(path))
            self._file_ids[path] = self._journal.note_settling(relative, path, size=0, mtime=0.0)

    def _move_aside_unjournaled(self, path: Path) -> None:
        """A name that is not UTF-8 cannot enter the journal: it goes straight to failed/."""
        shown = os.fsencode(path.name).decode("utf-8", "backslashreplace")
        reason = f"{shown}: the file name is not valid UTF-8; rename it and drop it again"
        try:
            target = move_without_overwrite(path, self.config.folders.failed, PurePath(path.name))
            write_error_report(target, {"file": shown, "reason": reason, "time": self._now_iso()})
        except OSError as error:
            logger.error("{}: cannot move it to failed/: {}", shown, error)
            return
        self.outcomes.failed.append(shown)
        self.metrics.files_failed.inc()
        logger.warning("failed: {}", reason)

    def _sweep_vanished(self) -> None:
        """Forget files a dropper removed again before they were claimed."""
        for row in self._journal.files("settling", "waiting"):
            if not os.path.lexists(row.path):
                logger.bind(file=row.rel_path).warning("removed from the drop folder before upload")
                self._journal.forget(row.id)
                self._waiting.pop(row.id, None)
                self._file_ids.pop(Path(row.path), None)

    def _admit(self, ready: list[Candidate]) -> None:
        for candidate in ready:
            relative = self._relative(candidate.path)
            self._file_ids.pop(candidate.path, None)
            file_id = self._journal.note_settling(
                str(relative), candidate.path, size=candidate.size, mtime=candidate.mtime
            )
            self.metrics.files_seen.inc()
            segment = None if candidate.odd else self._router.segment_of(relative)
            if candidate.odd or segment is None:
                reason = (
                    f"{relative}: {candidate.odd}"
                    if candidate.odd
                    else f"{relative}: cannot tell which segment this file belongs to; name it "
                    "<segment>.csv or <segment>/<name>.csv (a producerSegmentID, a "
                    "producerSegmentIDString or a name under segments:), or set "
                    "watch.filename_pattern"
                )
                self._finish_unmatched(self._journal.file(file_id), reason)
                continue
            row = self._journal.mark_waiting(
                file_id, segment=segment, reason=f"waiting for a job for segment {segment}"
            )
            self._waiting[file_id] = row
            self._fresh_files = True
            logger.bind(file=str(relative), segment=segment).info("ready")

    def _expire_waiting(self) -> None:
        limit = self.config.matching.max_wait_seconds
        for row in list(self._waiting.values()):
            if row.ready_at is not None and self._wall() - row.ready_at > limit:
                del self._waiting[row.id]
                self._finish_unmatched(
                    row,
                    (
                        f"{row.rel_path}: no job was waiting for segment {row.segment} within "
                        f"{limit:g} s (matching.max_wait_seconds); check the segment export in "
                        "the Exchange, then drop the file again"
                    ),
                )

    # --- matching and dispatch --------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        for file_id, scheduled in list(self._scheduled.items()):
            if scheduled.due <= now and file_id not in self._in_flight:
                del self._scheduled[file_id]
                self._start(file_id, scheduled.finish)
        poll_due = now >= self._next_poll or (
            self._fresh_files and now - self._last_poll >= MIN_POLL_GAP_SECONDS
        )
        if self._waiting and poll_due and self._poll_jobs(now):
            self._assign()

    def _poll_jobs(self, now: float) -> bool:
        self._fresh_files = False
        self._last_poll = now
        try:
            jobs = self._client.list_jobs(
                JobCategory.SEGMENT_EXPORT,
                endpoint_id=self.config.exchange.endpoint_id,
                status=JobStatus.WAITING_TO_RECEIVE_DATA,
                include_producer_segment_id_string=True,
            )
        except ExchangeError as error:
            self.metrics.api_error(error.status)
            self._poll_failures += 1
            delay = self._backoff(self._poll_failures)
            self._next_poll = now + max(delay, error.retry_after or 0)
            logger.error("cannot list the waiting jobs (retrying in {:.1f} s): {}", delay, error)
            for row in self._waiting.values():
                self._note_reason(row.id, f"Exchange unreachable: {error}")
            return False
        self._poll_failures = 0
        self._next_poll = now + self.config.matching.poll_seconds
        self.last_contact = self._wall()
        self.metrics.last_successful_poll.set(self.last_contact)
        self._journal.set_meta("last_contact", str(self.last_contact))
        self._jobs = {str(job.job_id): job for job in jobs if job.is_waiting}
        return True

    def _assign(self) -> None:
        older_settling = self._oldest_settling_by_segment()
        pending = [
            PendingFile(key=str(row.id), segment=row.segment or "", since=row.mtime or 0.0)
            for row in self._waiting.values()
            if row.id not in self._in_flight
            and older_settling.get(row.segment or "", float("inf")) >= (row.mtime or 0.0)
        ]
        busy = self._journal.reserved_jobs()
        for assignment in plan_assignments(pending, list(self._jobs.values()), busy_jobs=busy):
            row = self._waiting.pop(int(assignment.file.key))
            job_ids = [str(job.job_id) for job in assignment.jobs]
            if not self._claim(row, job_ids):
                continue
            self._start(row.id, None)
        for row in self._waiting.values():
            self._note_reason(row.id, f"waiting for a job for segment {row.segment}")

    def _oldest_settling_by_segment(self) -> dict[str, float]:
        """Oldest first holds across readiness: a newer file waits while an older one of its
        segment is still being written."""
        oldest: dict[str, float] = {}
        for path, mtime in self._readiness.mtimes().items():
            segment = self._router.segment_of(self._relative(path))
            if segment is not None:
                oldest[segment] = min(mtime, oldest.get(segment, mtime))
        return oldest

    def _note_reason(self, file_id: int, reason: str) -> None:
        """Why a file waits, for ``pushagent status``; written only when it changes."""
        if self._reasons.get(file_id) != reason:
            self._reasons[file_id] = reason
            self._journal.set_reason(file_id, reason)

    def _claim(self, row: FileRow, job_ids: list[str]) -> bool:
        """Move the file out of the drop folder, so a new drop under its name cannot mix in."""
        if row.state == "claimed":
            self._journal.assign_more(row.id, job_ids)
            return True
        target = self._journal_dir("claimed") / str(row.id) / PurePath(row.rel_path).name
        self._journal.claim(row.id, path=target, job_ids=job_ids)
        try:
            moved = move_without_overwrite(Path(row.path), target.parent, PurePath(target.name))
        except FileNotFoundError:
            logger.bind(file=row.rel_path).warning("removed from the drop folder before upload")
            self._journal.drop_claim(row.id)
            return False
        assert moved == target, "claim folders are private to one file"
        self._carry_trigger(Path(row.path), target)
        return True

    def _carry_trigger(self, old: Path, new: Path) -> None:
        """The ``<name><trigger_suffix>`` marker travels with its file, so it never lingers."""
        suffix = self.config.watch.trigger_suffix
        if suffix:
            with contextlib.suppress(OSError):  # a marker: losing it loses no data
                os.replace(old.with_name(old.name + suffix), new.with_name(new.name + suffix))

    def _start(self, file_id: int, finish: DeliveryResult | None) -> None:
        row = self._journal.file(file_id)
        if finish is not None:
            self._finish(row, finish)
            return
        jobs = dict(self._jobs)
        self._in_flight.add(file_id)
        self._pool.submit(file_id, lambda: self._deliverer.deliver(row, jobs))

    # --- outcomes ---------------------------------------------------------------------------------

    def _settle(self, finished: Finished[DeliveryResult]) -> None:
        row = self._journal.file(finished.key)
        result = finished.result or DeliveryResult(
            Verdict.RETRY, f"internal error: {finished.error!r}", counts_as_attempt=True
        )
        if result.verdict is Verdict.RETRY:
            self._schedule_retry(row, result)
        elif result.verdict is Verdict.REQUEUE:
            self._waiting[row.id] = self._journal.file(row.id)
            self._journal.set_reason(
                row.id, f"waiting for a job for segment {row.segment}: {result.reason}"
            )
        else:
            self._retry_streak.pop(row.id, None)
            self._finish(row, result)

    def _schedule_retry(self, row: FileRow, result: DeliveryResult) -> None:
        # Every retry in a row doubles the wait, counted or not: a refused key or a dead network
        # is asked less and less often, up to upload.max_backoff.
        delay = max(self._backoff(self._next_streak(row.id)), result.retry_after or 0.0)
        reason = f"retrying in {delay:.0f} s after: {result.reason}"
        if result.counts_as_attempt:
            self._journal.count_attempt(row.id, reason, next_attempt_at=self._wall() + delay)
        else:
            self._journal.set_reason(row.id, reason, next_attempt_at=self._wall() + delay)
        logger.bind(file=row.rel_path, segment=row.segment).warning("will retry: {}", result.reason)
        self._scheduled[row.id] = _Scheduled(due=self._clock() + delay)

    def _next_streak(self, file_id: int) -> int:
        streak = self._retry_streak[file_id] = self._retry_streak.get(file_id, 0) + 1
        return streak

    def _backoff(self, streak: int, *, cap: float | None = None) -> float:
        """``upload.initial_backoff`` doubled per failure in a row, up to ``upload.max_backoff``."""
        limit = self.config.upload.max_backoff if cap is None else cap
        return float(min(limit, self.config.upload.initial_backoff * 2 ** (streak - 1)))

    def _finish(self, row: FileRow, result: DeliveryResult) -> None:
        delivered = result.verdict is Verdict.DELIVERED
        folder = self.config.folders.done if delivered else self.config.folders.failed
        try:
            target = self._move_final(row, folder)
            self._carry_trigger(Path(row.path), target)
            if row.state == "claimed":
                with contextlib.suppress(OSError):
                    Path(row.path).parent.rmdir()
            if not delivered:
                write_error_report(target, self._error_report(row, result.reason or "failed"))
        except OSError as error:
            # Doubling from upload.initial_backoff: a folder back within seconds is used within
            # seconds, a long outage is checked every MOVE_RETRY_MAX_SECONDS at most.
            delay = self._backoff(self._next_streak(row.id), cap=MOVE_RETRY_MAX_SECONDS)
            logger.bind(file=row.rel_path).error(
                "cannot move the file to {} ({}); retrying in {:.0f} s", folder, error, delay
            )
            self._scheduled[row.id] = _Scheduled(due=self._clock() + delay, finish=result)
            return
        self._retry_streak.pop(row.id, None)
        state = "done" if delivered else "failed"
        self._journal.finish(row.id, state=state, final_path=target, reason=result.reason)
        (self.outcomes.done if delivered else self.outcomes.failed).append(row.rel_path)
        (self.metrics.files_uploaded if delivered else self.metrics.files_failed).inc()
        log = logger.bind(file=row.rel_path, segment=row.segment)
        if delivered:
            log.info("done: moved to {}", target)
        else:
            log.warning("failed: moved to {}: {}", target, result.reason)
        self._refresh_gauges()

    def _move_final(self, row: FileRow, folder: Path) -> Path:
        source, relative = Path(row.path), PurePath(row.rel_path)
        intended = Path(row.final_path) if row.final_path else None
        if intended is not None and same_entry(source, intended):
            os.unlink(source)  # the last run stopped between the link and the unlink
            return intended
        self._journal.intend_final(row.id, unique_target(folder, relative))
        return move_without_overwrite(source, folder, relative)

    def _finish_unmatched(self, row: FileRow, reason: str) -> None:
        self._finish(row, DeliveryResult(Verdict.REJECTED, reason))

    def _error_report(self, row: FileRow, reason: str) -> dict[str, object]:
        deliveries = self._journal.deliveries(row.id)
        return {
            "file": row.rel_path,
            "segment": row.segment,
            "job_ids": [d.job_id for d in deliveries],
            "uploaded_to": [d.job_id for d in deliveries if d.state == "uploaded"],
            "reason": reason,
            "time": self._now_iso(),
        }

    def _now_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall()))

    def _refresh_gauges(self) -> None:
        pending = len(self._waiting) + len(self._scheduled) + len(self._in_flight)
        self.metrics.pending_files.set(pending + len(self._readiness.tracked()))

    def _journal_dir(self, name: str) -> Path:
        return self.config.state_dir / name

    # --- restart ----------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Resume what a previous run left. Settling and waiting rows stay (the first scan finds
        their files again and keeps their times); claimed files go back to work."""
        self._sweep_vanished()
        for row in self._journal.files("claimed"):
            dropped = self._drop / row.rel_path
            if not os.path.lexists(row.path):
                final = Path(row.final_path) if row.final_path else None
                if final is not None and os.path.lexists(final):  # stopped after the final move
                    self._record_finished(row, final)
                elif os.path.lexists(dropped):  # stopped between the journal entry and the move
                    self._journal.unclaim(row.id, dropped)
                else:
                    logger.bind(file=row.rel_path).error("claimed file vanished from {}", row.path)
                    self._journal.drop_claim(row.id)
                continue
            if same_entry(dropped, Path(row.path)):
                os.unlink(dropped)  # stopped between the link and the unlink of the claim
            logger.bind(file=row.rel_path, segment=row.segment).info(
                "resuming a file claimed before the last stop"
            )
            self._scheduled[row.id] = _Scheduled(due=self._clock())

    def _record_finished(self, row: FileRow, final: Path) -> None:
        delivered = final.is_relative_to(self.config.folders.done)
        if not delivered and not error_report_path(final).exists():
            write_error_report(final, self._error_report(row, row.reason or "failed"))
        state = "done" if delivered else "failed"
        self._journal.finish(row.id, state=state, final_path=final, reason=row.reason)
        logger.bind(file=row.rel_path).info("found in {} after the last stop", final)


def _storable(path: Path) -> bool:
    """SQLite text must be UTF-8; a name with undecodable bytes (surrogates) is not."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
