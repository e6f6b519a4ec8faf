"""The agent loop: drop folder -> ready -> matched to waiting jobs -> delivered, or failed.

Everything decides here, in one thread, and nothing here waits: watchdog handlers, upload workers
and the list-call worker only post to ``inbox``; every pass over files and jobs is linear; the
wait between passes ends at the next deadline (settle, retry, poll) or at the next message.
Stopping: the first SIGTERM/SIGINT is a warm stop (take no new file, let uploads run for
``shutdown_grace_seconds``), the second a cold stop (return now; the journal resumes the rest).
Disk and journal faults are conditions (``pushagent.conditions``), not crashes.
"""

from __future__ import annotations

import errno
import functools
import heapq
import json
import os
import queue
import shlex
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from loguru import logger

from pushagent.conditions import Cause, Conditions
from pushagent.config import AgentConfig, NotifySettings
from pushagent.droplock import LOCK_NAME
from pushagent.errors import ExchangeError, ExchangeUnavailable, JournalUnavailable
from pushagent.exchange import ExchangeClient
from pushagent.exchange.outcome import Outcome, classify
from pushagent.exchange.retry import backoff
from pushagent.intake import remove_staged
from pushagent.journal import DeliveryRow, FileRow, Journal
from pushagent.lifecycle import DeliveryState, FileState
from pushagent.listing import Listing, list_waiting
from pushagent.metrics import AgentMetrics
from pushagent.names import printable
from pushagent.notify import Notifier
from pushagent.outcomes import (
    report_path_for,
    same_entry,
    write_error_report,
)
from pushagent.placement import Placer
from pushagent.pool import Finished, WorkerPool
from pushagent.readiness import Candidate, ReadinessTracker, open_for_writing
from pushagent.router import (
    Assignment,
    JobIndex,
    ListedJob,
    PendingFile,
    SegmentRouter,
    plan_assignments,
)
from pushagent.segments import SegmentCatalogue
from pushagent.uploader import Deliverer, DeliveryResult, DeliverySettings, Verdict
from pushagent.watcher import DropWatcher, WatchEvent, scan_drop_folder

# After new files become ready, list the waiting jobs at most this often: a burst of a thousand
# files costs a handful of list calls, not a thousand.
MIN_POLL_GAP_SECONDS = 0.2
IDLE_WAIT_SECONDS = 1.0
CLAIMS_PER_WORKER = 4
READY_LINES_MAX = 100  # more files ready at once: one INFO line for them all
MOVE_RETRY_MAX_SECONDS = 30.0
PRUNE_INTERVAL_SECONDS = 86400.0
EXPIRY_CHECK_SECONDS = 60.0
JOBS_WITHOUT_FILE_SHOWN = 500
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})


@dataclass
class _Stop:
    cold: bool


@dataclass(frozen=True)
class _Polled:
    finished: Finished[Listing]


@dataclass
class Outcomes:
    """What finished during this run, for ``run --once``'s summary."""

    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


class _Schedule:
    """Files to start again at a time: a heap with lazy removal, so a pass costs O(due)."""

    def __init__(self) -> None:
        self._due: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []

    def add(self, file_id: int, due: float) -> None:
        self._due[file_id] = due
        heapq.heappush(self._heap, (due, file_id))

    def pop_due(self, now: float) -> list[int]:
        due: list[int] = []
        while self._heap and self._heap[0][0] <= now:
            when, file_id = heapq.heappop(self._heap)
            if self._due.get(file_id) == when:
                del self._due[file_id]
                due.append(file_id)
        return due

    def next(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._due)


@dataclass(frozen=True, slots=True)
class WaitingFile:
    """What the loop keeps of a file waiting for a job: about half its journal row's memory,
    which counts with 20,000 files waiting at once."""

    id: int
    rel_path: str
    path: str
    segment: str | None
    mtime: float | None
    ready_at: float | None
    in_claim_area: bool

    @classmethod
    def of(cls, row: FileRow) -> WaitingFile:
        return cls(row.id, row.rel_path, row.path, row.segment, row.mtime, row.ready_at,
                   row.in_claim_area)


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
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._notifier = notifier or Notifier(NotifySettings())  # none given: does nothing
        # Set on the first stop request; the client sleeps on it between retries, so a stop
        # never waits out a backoff.
        self.stop_event = stop_event or threading.Event()
        self._stop_requests = 0
        self._stop_lock = threading.Lock()
        self.metrics = metrics or AgentMetrics()
        self.outcomes = Outcomes()
        self.conditions = Conditions(clock=clock)
        self._client = client
        self._journal = journal
        self._clock = clock
        self._wall = wall
        self._inbox: queue.Queue[WatchEvent | Finished[DeliveryResult] | _Polled | _Stop] = (
            queue.Queue()
        )
        folders, self._endpoint = config.push_side()
        self._folders = folders
        self._drop = folders.drop
        self._drop_prefix = os.path.join(str(self._drop), "")
        self._watcher = DropWatcher(self._drop, self._inbox.put, polling=config.watch.polling)
        self._readiness = ReadinessTracker(
            settle_seconds=config.watch.settle_seconds,
            ignore=config.watch.ignore,
            trigger_suffix=config.watch.trigger_suffix,
            clock=clock,
            # Asking opens the file, an event in a watched folder: the drop folder's files are
            # asked once claimed (by the deliverer), where nobody watches.
            being_written=self._writer_holds_claimed,
        )
        self._placer = Placer(
            journal=journal,
            done=folders.done,
            failed=folders.failed,
            claimed=config.state_dir / "claimed",
            trigger_suffix=config.watch.trigger_suffix,
            wall=wall,
        )
        self._router = SegmentRouter(names=config.segments, pattern=config.watch.filename_pattern)
        self._catalogue = SegmentCatalogue(config.segments)
        self._doubted: set[int] = set()  # waiting files already warned about their segment
        self._deliverer = Deliverer(
            client=client,
            journal=journal,
            metrics=self.metrics,
            clock=clock,
            settings=DeliverySettings(
                content_type=config.upload.content_type,
                max_bytes=config.validation.max_bytes or None,
                check_mapped_columns=config.validation.check_mapped_columns,
                max_attempts=config.upload.max_attempts,
                validate_while_sending=config.upload.validate_while_sending,
            ),
            dialect_for=lambda row: config.input.for_segment(
                *self._router.names_of(row.rel_path)),
        )
        self._uploads: WorkerPool[DeliveryResult] = WorkerPool(
            size=config.upload.workers, report=self._inbox.put, name="upload"
        )
        self._lister: WorkerPool[Listing] = WorkerPool(
            size=1, report=lambda done: self._inbox.put(_Polled(done)), name="list"
        )
        self._segments: dict[Path, str | None] = {}  # settling drop paths -> segment
        self._unrecorded: list[tuple[str, Path]] = []  # newly settling, not yet journalled
        self._waiting: dict[int, WaitingFile] = {}
        # Keyed by the row's own path string: a Path per waiting file would add 300 bytes each.
        self._waiting_paths: dict[str, int] = {}
        self._resettling: dict[Path, int] = {}  # claimed files settling again
        self._schedule = _Schedule()
        self._finishing: dict[int, DeliveryResult] = {}  # the final move is left to retry
        self._in_flight: set[int] = set()
        self._reasons: dict[int, str] = {}
        self._streaks: dict[int, int] = {}
        self._jobs: dict[str, ListedJob] = {}
        self._to_claim: deque[Assignment] = deque()
        self._placed: deque[tuple[FileRow, str, Path | None, DeliveryResult]] = deque()
        self._job_index = JobIndex([])
        self._idle_since: dict[str, float] = {}
        self._idle_written: set[str] = set()
        self._fresh_files = False
        self._poll_in_flight = False
        self._polled_once = False
        self._poll_answered = False  # a list call ended, well or not
        self._last_poll_ok = False
        self._key_refused_first = False
        self._last_poll = float("-inf")
        self._next_poll = 0.0
        # The next poll waits out a backoff or a Retry-After: a fresh file does not bring it on.
        self._poll_backing_off = False
        self._poll_failures = 0
        self._next_rescan = 0.0
        self._next_prune = 0.0
        self._next_expiry = 0.0
        self._journal_retry_at = 0.0
        self._stopping: _Stop | None = None
        self._stop_deadline = float("inf")
        self._started_wall = wall()
        self.last_contact: float | None = None

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Work until stopped (or, with ``once``, until the folder's current files are handled)."""
        self._guarded(self._recover)
        self._watcher.start()
        try:
            while not self._should_exit(once):
                self._receive(timeout=self._wait_time())
                if self._stopping is None:
                    self._guarded(self._step)
                self._guarded(self._commit_placed)
                self._refresh_gauges()
        finally:
            self._watcher.stop()
            self._uploads.shutdown()
            self._lister.shutdown()
            self._refresh_gauges()
        return self._exit_code() if once else 0

    def _step(self) -> None:
        now = self._clock()
        if now < self._journal_retry_at:
            return
        if Cause.STATE_DIR in self.conditions:  # a cheap write tells whether space is back
            self._journal.set_meta("write_probe", str(self._wall()))
        self._rescan_if_due(now)
        self._admit(self._readiness.take_ready())
        if now >= self._next_expiry:
            self._expire_waiting()
            self._next_expiry = now + EXPIRY_CHECK_SECONDS
        for file_id in self._schedule.pop_due(now):
            self._start(file_id)
        self._poll_if_due(now)
        self._claim_some()

    def _guarded(self, work: Callable[[], None]) -> None:
        """A journal that cannot be written is a condition: wait, claim nothing, try again."""
        try:
            work()
        except JournalUnavailable as error:
            self.conditions.raise_(Cause.STATE_DIR, f"{error}; no new file is taken meanwhile")
            self._journal_retry_at = self._clock() + IDLE_WAIT_SECONDS
            self._next_rescan = min(self._next_rescan, self._clock() + IDLE_WAIT_SECONDS)
        else:
            if Cause.STATE_DIR in self.conditions and self._journal.writable:
                self.conditions.clear(Cause.STATE_DIR)

    def _exit_code(self) -> int:
        if self._key_refused_first:
            return 3
        cut_off = bool(self._waiting) and not self._last_poll_ok  # unreachable, or key refused
        left_retrying = bool(self._schedule or self._in_flight or self._finishing or cut_off)
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
        reasons = self.conditions.reasons()
        if reasons:
            return False, "; ".join(reasons)
        if self.last_contact is None or self._wall() - self.last_contact > healthy_within:
            return False, f"the Exchange was not reached in the last {healthy_within:g} s"
        return True, "ok"

    def _should_exit(self, once: bool) -> bool:
        if self._stopping is not None:
            return self._stopping.cold or not self._in_flight or self._clock() > self._stop_deadline
        if not once:
            return False
        settling = len(self._readiness) - self._readiness.waiting_for_trigger()
        moving = (
            self._in_flight or settling > 0 or self._fresh_files or self._poll_in_flight
            or self._to_claim
        )
        next_retry = self._schedule.next()
        retry_soon = next_retry is not None and next_retry <= self._clock() + 1
        first_poll_done = self._poll_answered or not self._waiting
        return not moving and not retry_soon and self._next_rescan > 0 and first_poll_done

    def _wait_time(self) -> float:
        if self._to_claim and len(self._in_flight) < self.config.upload.workers * CLAIMS_PER_WORKER:
            return 0.0
        deadlines = [self._next_rescan, self._next_poll_time()]
        for deadline in (self._schedule.next(), self._readiness.next_deadline()):
            if deadline is not None:
                deadlines.append(deadline)
        return min(max(0.0, min(deadlines) - self._clock()), IDLE_WAIT_SECONDS)

    def _receive(self, *, timeout: float) -> None:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._guarded(functools.partial(self._handle, item))
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
        self._guarded(self._record_settling)

    def _record_settling(self) -> None:
        """The files first seen by the events just handled, in one transaction (a storm of
        renames brings hundreds at a time). Lost with a failed write, as a single one would
        be: they are recorded when they are admitted anyway."""
        seen, self._unrecorded = self._unrecorded, []
        if seen:
            self._journal.note_settling_many(seen)

    def _handle(self, item: WatchEvent | Finished[DeliveryResult] | _Polled | _Stop) -> None:
        if isinstance(item, _Stop):
            self._begin_stop(item)
        elif isinstance(item, _Polled):
            self._poll_in_flight = False
            self._poll_answered = True
            self._last_poll_ok = item.finished.result is not None
            self._polled(item.finished)
        elif isinstance(item, Finished):
            self._in_flight.discard(item.key)
            try:
                self._settle(item)
            except JournalUnavailable:
                # Its verdict is lost with the write; delivering it again re-derives it from
                # the journal (done steps are never redone).
                self._schedule.add(item.key, self._clock() + IDLE_WAIT_SECONDS)
                raise
        elif item.kind == "scan-dir":
            self._observe_all()
        else:
            self._on_event(item)

    def _begin_stop(self, stop: _Stop) -> None:
        grace = self.config.upload.shutdown_grace_seconds
        if stop.cold:
            logger.warning(
                "second stop signal: leaving now; unfinished uploads resume at next start"
            )
        else:
            if self._in_flight:
                logger.info(
                    "stopping: no new files; waiting up to {:g} s for {} upload{} in progress",
                    grace, len(self._in_flight), "" if len(self._in_flight) == 1 else "s",
                )
            else:
                logger.info("stopping: no upload in progress")
            self._stop_deadline = self._clock() + grace
        self._stopping = stop

    # --- the drop folder --------------------------------------------------------------------------

    def _relative(self, path: Path) -> str:
        """``path`` under the drop folder, ``/``-separated, as journalled: the watcher and the
        scan name every path from the drop folder's own, so the prefix is cut, not worked out
        by os.path.relpath for every event."""
        text = str(path)
        if text.startswith(self._drop_prefix):
            return text[len(self._drop_prefix):]
        return os.path.relpath(text, self._drop)

    def _rescan_if_due(self, now: float) -> None:
        if now >= self._next_prune:
            pruned = self._journal.prune()
            if pruned:
                logger.info("journal: forgot {} files finished over 30 days ago", pruned)
            self._next_prune = now + PRUNE_INTERVAL_SECONDS
        if self._watcher.ensure_running() or now >= self._next_rescan:
            self._sweep_vanished()
            self._observe_all()
            # A trigger whose event was missed, and claimed files settling again, are looked at
            # again here: neither is in the scanned drop folder's new entries.
            for path in [*self._resettling, *self._readiness.paths_waiting_for_trigger()]:
                self._readiness.observe(path, event="scan")
            self._next_rescan = now + self.config.watch.rescan_seconds

    def _observe_all(self) -> None:
        new = (
            path for path in scan_drop_folder(self._drop, ignored=self._ignored)
            if path not in self._readiness and str(path) not in self._waiting_paths
        )
        relatives = ((self._relative(path), path) for path in new)
        seen = [(relative, path) for relative, path in relatives
                if self._observe(path, "scan", relative)]
        # One transaction for the lot: a start with 20,000 files present records them at once.
        self._journal.note_settling_many(seen)

    def _writer_holds_claimed(self, path: Path) -> bool:
        return path in self._resettling and open_for_writing(path)

    def _ignored(self, relative: str) -> bool:
        """The configured ignore patterns, and the drop-folder lock whatever they say."""
        return relative == LOCK_NAME or self._readiness.ignored(relative)

    def _on_event(self, event: WatchEvent) -> None:
        relative = self._relative(event.path)
        trigger = self.config.watch.trigger_suffix
        if trigger and relative.endswith(trigger):
            data = event.path.with_name(event.path.name[: -len(trigger)])
            if data in self._readiness:
                self._readiness.observe(data, event="scan")
            return
        if not self._ignored(relative):
            self._track(event.path, event.kind, relative)

    def _track(self, path: Path, event: str, relative: str) -> None:
        file_id = self._waiting_paths.get(str(path))
        if file_id is not None:
            if event != "written":
                return
            self._forget_waiting(file_id)
            self._journal.back_to_settling(file_id)
        if self._observe(path, event, relative):
            self._unrecorded.append((relative, path))  # recorded when the inbox is drained

    def _observe(self, path: Path, event: str, relative: str) -> bool:
        """Into the readiness tracker; True when it is tracked for the first time."""
        if not _storable(path):
            self._move_aside_unjournaled(path)
            return False
        self._readiness.observe(path, event=event)
        if path in self._readiness and path not in self._segments:
            self._segments[path] = self._router.segment_of(relative)
            return True
        return False

    def _move_aside_unjournaled(self, path: Path) -> None:
        try:
            shown, reason = self._placer.move_aside_unjournaled(path)
        except OSError as error:
            logger.error("{}: cannot move it to failed/: {}", printable(str(path)), error)
            return
        self.outcomes.failed.append((shown, reason))
        self.metrics.files_failed.inc()
        logger.warning("failed: {}", reason)

    def _sweep_vanished(self) -> None:
        """Forget files a dropper removed again before they were claimed."""
        gone = [
            (file_id, path, in_claim_area)
            for file_id, path, in_claim_area in self._journal.paths(FileState.SETTLING,
                                                                    FileState.WAITING)
            if not os.path.lexists(path)
        ]
        for file_id, path, in_claim_area in gone:
            if in_claim_area:
                self._journal.vanish(file_id, "removed from its claim folder by someone else")
            else:
                logger.bind(file=os.path.relpath(path, self._drop)).warning(
                    "removed from the drop folder before upload"
                )
                self._journal.forget(file_id)
            self._forget_waiting(file_id)
            self._segments.pop(Path(path), None)

    def _admit(self, ready: list[Candidate]) -> None:
        matched: list[tuple[str, Path, int, float, str]] = []
        for candidate in ready:
            if candidate.path in self._resettling:
                file_id = self._resettling.pop(candidate.path)
                self._journal.reclaim(file_id)
                self._schedule.add(file_id, self._clock())
                continue
            relative = self._relative(candidate.path)
            segment = self._segments.pop(candidate.path, None)
            self.metrics.files_seen.inc()
            if candidate.odd is None and segment is not None:
                matched.append((relative, candidate.path, candidate.size, candidate.mtime, segment))
                continue
            reason = candidate.odd or (
                "cannot tell which segment this file belongs to; name it "
                "<segment>.csv or <segment>/<name>.csv (a producerSegmentID, a "
                "producerSegmentIDString or a name under segments:), or set "
                "watch.filename_pattern"
            )
            file_id = self._journal.note_settling(
                relative, candidate.path, size=candidate.size, mtime=candidate.mtime
            )
            self._finish(self._journal.file(file_id), DeliveryResult(Verdict.REJECTED, reason))
        admitted = self._journal.admit_many(matched)
        # A start with 20,000 files present says so in one line, not 20,000 (a second of logging
        # before the first upload); each file's own line is still there at DEBUG.
        level = "INFO" if len(admitted) <= READY_LINES_MAX else "DEBUG"
        if level == "DEBUG":
            logger.info("{} files ready (each one's line at DEBUG)", len(admitted))
        for row in admitted:
            self._add_waiting(row)
            logger.bind(file=row.rel_path, segment=row.segment).log(level, "ready")
            # Before the first list of jobs, which id strings exist is not known yet.
            if self._polled_once and self._catalogue.doubt(row.segment or "") is not None:
                self._note_reason(row.id, self._waiting_reason(row))

    def _add_waiting(self, row: FileRow) -> None:
        if row.reason:
            self._reasons[row.id] = row.reason
        self._waiting[row.id] = WaitingFile.of(row)
        self._waiting_paths[row.path] = row.id
        self._fresh_files = True

    def _forget_waiting(self, file_id: int) -> None:
        self._doubted.discard(file_id)
        row = self._waiting.pop(file_id, None)
        if row is not None:
            self._waiting_paths.pop(row.path, None)

    def _expire_waiting(self) -> None:
        limit = self.config.matching.max_wait_seconds
        for row in list(self._waiting.values()):
            if row.ready_at is not None and self._wall() - row.ready_at > limit:
                reason = (
                    f"no job was waiting for segment {row.segment} within {limit:g} s "
                    "(matching.max_wait_seconds); check the segment export in the Exchange, "
                    f"then put the file back with: pushagent retry -c "
                    f"{shlex.quote(str(self.config.source))} {shlex.quote(row.rel_path)}"
                )
                self._finish(self._journal.file(row.id), DeliveryResult(Verdict.REJECTED, reason))
                self._forget_waiting(row.id)

    # --- the jobs ---------------------------------------------------------------------------------

    def _next_poll_time(self) -> float:
        if self._poll_in_flight:
            return float("inf")
        if self._waiting and self._fresh_files and not self._poll_backing_off:
            # A file ready just after a list call waits for the gap, not for the next poll; a
            # poll due sooner than the gap is not put off for it.
            return min(self._next_poll, self._last_poll + MIN_POLL_GAP_SECONDS)
        return self._next_poll

    def _poll_if_due(self, now: float) -> None:
        if self._poll_in_flight or now < self._next_poll_time():
            return
        self._poll_in_flight = True
        self._fresh_files = False
        self._last_poll = now
        self._lister.submit(0, functools.partial(
            list_waiting, self._client, categories=self.config.matching.categories,
            endpoint_id=self._endpoint, known=self._jobs,  # replaced, never changed in place
        ))

    def _polled(self, finished: Finished[Listing]) -> None:
        now = self._clock()
        if finished.result is None:
            self._poll_failed(now, finished.error)
            return
        self._polled_once = True
        self._poll_failures = self._poll_failures + 1 if finished.result.errors else 0
        interval = self.config.matching
        self._next_poll = now + (interval.poll_seconds if self._waiting
                                 else interval.idle_poll_seconds)
        self._poll_backing_off = False
        self.last_contact = self._wall()
        self.metrics.last_successful_poll.set(self.last_contact)
        self.conditions.clear(Cause.KEY_REFUSED)
        self.conditions.clear(Cause.UNREACHABLE)
        self._notifier.exchange_ok()
        self._journal.set_meta("last_contact", str(self.last_contact))
        self._note_unlisted(now, finished.result)
        waiting = [job for job in finished.result.jobs if job.is_waiting]
        self._jobs = {str(job.job_id): job for job in waiting}
        self._job_index = JobIndex(waiting)
        self._catalogue.learn(self._job_index.segments())
        reserved = self._journal.reserved_jobs()
        self._assign(reserved)
        self._note_jobs_without_file(reserved)

    def _note_unlisted(self, now: float, listing: Listing) -> None:
        """A category whose list call failed while another's worked: its jobs are not offered
        this poll, so their files wait; degraded until it lists again. After a 429, a 5xx or no
        answer the next poll backs off as after a failed one (a Retry-After is the key's,
        whatever the category); a refusal (a key that may not list one category) does not slow
        the other category down: the condition says which category to leave out."""
        for category in self.config.matching.categories:
            self.metrics.jobs_waiting.labels(category=category).set(
                sum(1 for job in listing.jobs if job.category == category and job.is_waiting)
            )
        if not listing.errors:
            self.conditions.clear(Cause.CATEGORY_UNLISTED)
            return
        upload = self.config.upload
        delay = backoff(self._poll_failures, initial=upload.initial_backoff,
                        cap=max(upload.max_backoff, self.config.matching.poll_seconds))
        for error in listing.errors.values():
            self.metrics.api_error(error.status)
            delay = max(delay, error.retry_after or 0.0)
        if any(error.retryable for error in listing.errors.values()):
            self._next_poll = max(self._next_poll, now + delay)
            self._poll_backing_off = True
        named = "; ".join(f"{category}: {error}" for category, error in listing.errors.items())
        self.conditions.raise_(
            Cause.CATEGORY_UNLISTED,
            f"cannot list the waiting {' and '.join(listing.errors)} jobs, so their files wait "
            f"({named}); if this endpoint has none, leave the category out of "
            "matching.categories",
        )

    def _note_jobs_without_file(self, reserved: set[str]) -> None:
        """Jobs that wait with no file: the first sign of a dropper that stopped, or of a typo
        in a segment name. Kept for ``pushagent status``, written only when the set changes."""
        idle = {job_id: job for job_id, job in self._jobs.items() if job_id not in reserved}
        now = self._wall()
        self._idle_since = {job_id: self._idle_since.get(job_id, now) for job_id in idle}
        if set(idle) != self._idle_written:
            self._idle_written = set(idle)
            listing = [
                {"job_id": job_id, "category": job.category, "segment": job.label,
                 "since": self._idle_since[job_id]}
                for job_id, job in sorted(idle.items())[:JOBS_WITHOUT_FILE_SHOWN]
            ]
            self._journal.set_meta("jobs_without_file", json.dumps(listing))

    def _poll_failed(self, now: float, error: BaseException | None) -> None:
        self._poll_failures += 1
        self._poll_backing_off = True
        upload = self.config.upload
        delay = backoff(self._poll_failures, initial=upload.initial_backoff,
                        cap=max(upload.max_backoff, self.config.matching.poll_seconds))
        if not isinstance(error, ExchangeError):
            logger.opt(exception=error).error("listing the waiting jobs failed unexpectedly")
            self._next_poll = now + delay
            return
        self.metrics.api_error(error.status)
        self._next_poll = now + max(delay, error.retry_after or 0.0)
        retry = f"retrying in {self._next_poll - now:.1f} s"
        if classify(error) is Outcome.KEY_REFUSED:
            if not self._polled_once and self._poll_failures == 1:
                self._key_refused_first = True
            cause, what = Cause.KEY_REFUSED, f"the Exchange refused the key ({retry}): {error}"
        else:
            label = "Exchange unreachable" if isinstance(error, ExchangeUnavailable) else "failed"
            cause, what = Cause.UNREACHABLE, f"{label} ({retry}): {error}"
        # Each failed poll is one line: polls back off, so an outage of days stays readable.
        logger.error("cannot list the waiting jobs: {}", what)
        self.conditions.raise_(cause, what, log=False)
        self._notifier.exchange_failing(what)
        for row in self._waiting.values():
            self._note_reason(row.id, what)

    def _assign(self, busy: set[str]) -> None:
        """Plans which file each free job gets (``busy``: jobs the journal holds for a file);
        the claims themselves are taken a few at a time by ``_claim_some``."""
        if self.conditions.blocks_claims:
            return
        older_settling = self._oldest_settling_by_segment()
        pending = [
            PendingFile(key=str(row.id), segment=row.segment or "", since=row.mtime or 0.0)
            for row in self._waiting.values()
            if older_settling.get(row.segment or "", float("inf")) >= (row.mtime or 0.0)
        ]
        plan = plan_assignments(pending, self._job_index, busy_jobs=busy)
        self._to_claim = deque(plan)
        planned = {a.file.key for a in plan}
        for row in self._waiting.values():
            if str(row.id) not in planned:
                self._note_reason(row.id, self._waiting_reason(row))

    def _waiting_reason(self, row: FileRow | WaitingFile) -> str:
        """Why a file waits; a segment that looks mistyped is warned about once per file."""
        reason = f"waiting for a job for segment {row.segment}"
        doubt = self._catalogue.doubt(row.segment or "")
        if doubt is None:
            return reason
        if row.id not in self._doubted:
            self._doubted.add(row.id)
            logger.bind(file=row.rel_path).warning("{}", doubt)
        return f"{reason}: {doubt}"

    def _claim_some(self) -> None:
        """Claims from the last plan, as many as the upload workers have room for (one journal
        write for them, then a move each), so a plan of 20,000 files never holds the loop (or
        a stop) for more than a moment, and files are claimed about as fast as the upload
        workers take them."""
        if self.conditions.blocks_claims or self._stopping is not None:
            return
        room = self.config.upload.workers * CLAIMS_PER_WORKER - len(self._in_flight)
        batch: list[tuple[WaitingFile, list[str]]] = []
        while self._to_claim and len(batch) < room:
            planned = self._to_claim.popleft()
            row = self._waiting.get(int(planned.file.key))
            if row is not None:
                batch.append((row, [str(job.job_id) for job in planned.jobs]))
        if batch:
            for claimed, deliveries in self._claim(batch):
                self._submit(claimed, deliveries)

    def _oldest_settling_by_segment(self) -> dict[str, float]:
        """Oldest first holds across readiness: a newer file waits while an older one of its
        segment is still being written."""
        return self._readiness.oldest_mtime_by(self._segments.get)

    def _note_reason(self, file_id: int, reason: str) -> None:
        """Why a file waits, for ``pushagent status``; written only when it changes."""
        if self._reasons.get(file_id) != reason:
            self._reasons[file_id] = reason
            self._journal.set_reason(file_id, reason)

    def _claim(
        self, batch: list[tuple[WaitingFile, list[str]]]
    ) -> list[tuple[FileRow, list[DeliveryRow]]]:
        """Move each file out of the drop folder, so a new drop under its name cannot mix in:
        the claims in one journal transaction first (a stop before a move is undone at the
        next start), then the moves. The claimed rows with their deliveries; a file that
        vanished first is not among them. A file leaves the waiting ones only once its claim
        is journalled."""
        claims = [
            (row.id,
             row.path if row.in_claim_area  # requeued: it waited in its claim folder
             else self._placer.claim_path(row.id, row.rel_path.rpartition("/")[2]),
             job_ids,
             {job_id: self._jobs[job_id].category for job_id in job_ids if job_id in self._jobs})
            for row, job_ids in batch
        ]
        rows = self._journal.claim_many(claims)
        claimed: list[tuple[FileRow, list[DeliveryRow]]] = []
        for (row, _), (claimed_row, deliveries) in zip(batch, rows, strict=True):
            self._forget_waiting(row.id)
            if not row.in_claim_area:
                try:
                    self._placer.claim(row.path, claimed_row.path)
                except FileNotFoundError:
                    logger.bind(file=row.rel_path).warning(
                        "removed from the drop folder before upload")
                    self._journal.vanish(row.id, "removed from the drop folder before upload")
                    continue
                self._placer.carry_trigger(row.path, claimed_row.path)
            claimed.append((claimed_row, deliveries))
        return claimed

    def _start(self, file_id: int) -> None:
        if file_id in self._finishing:
            result = self._finishing.pop(file_id)
            try:
                self._finish(self._journal.file(file_id), result)
            except JournalUnavailable:
                self._finishing[file_id] = result
                self._schedule.add(file_id, self._clock() + IDLE_WAIT_SECONDS)
                raise
            return
        self._submit(self._journal.file(file_id))

    def _submit(self, row: FileRow, deliveries: list[DeliveryRow] | None = None) -> None:
        """``deliveries``: the row's, as read with it (None: the worker reads them)."""
        jobs = self._jobs  # never changed in place, only replaced: a snapshot for the worker
        self._in_flight.add(row.id)
        self._uploads.submit(row.id, lambda: self._deliverer.deliver(row, jobs, deliveries))

    # --- outcomes ---------------------------------------------------------------------------------

    def _settle(self, finished: Finished[DeliveryResult]) -> None:
        row = self._journal.file(finished.key)
        result = finished.result
        if result is None:
            what = "journal unavailable" if isinstance(finished.error, JournalUnavailable) \
                else f"internal error: {finished.error!r}"
            result = DeliveryResult(Verdict.RETRY, what, counts_as_attempt=False)
        if result.key_refused:
            self.conditions.raise_(Cause.KEY_REFUSED, f"the Exchange refused the key: "
                                                      f"{result.reason}")
        if result.verdict is Verdict.RETRY:
            self._schedule_retry(row, result)
        elif result.verdict is Verdict.REQUEUE:
            # It may wait for days: its converted copy (made afresh at each attempt) goes now.
            remove_staged(Path(row.path))
            row = self._journal.mark_waiting(
                row.id, segment=row.segment or "",
                reason=f"waiting for a job for segment {row.segment}: {result.reason}",
            )
            self._add_waiting(row)
        elif result.verdict is Verdict.RESETTLE:
            self._journal.resettle(row.id, f"settling again: {result.reason}")
            self._resettling[Path(row.path)] = row.id
            self._readiness.observe(Path(row.path), event="written")
        elif result.verdict is Verdict.VANISHED:
            remove_staged(Path(row.path))
            logger.bind(file=row.rel_path).error("{}", result.reason)
            self._journal.vanish(row.id, result.reason or "removed before delivery")
        else:
            self._streaks.pop(row.id, None)
            self._finish(row, result)

    def _schedule_retry(self, row: FileRow, result: DeliveryResult) -> None:
        # Every retry in a row doubles the wait, counted or not: a refused key or a dead network
        # is asked less and less often, up to upload.max_backoff.
        delay = max(self._backoff(row.id), result.retry_after or 0.0)
        reason = f"retrying in {delay:.0f} s after: {result.reason}"
        if result.counts_as_attempt:
            self._journal.count_attempt(row.id, reason, next_attempt_at=self._wall() + delay)
        else:
            self._journal.set_reason(row.id, reason, next_attempt_at=self._wall() + delay)
        logger.bind(file=row.rel_path, segment=row.segment).warning("will retry: {}", result.reason)
        self._schedule.add(row.id, self._clock() + delay)

    def _backoff(self, file_id: int, *, cap: float | None = None) -> float:
        streak = self._streaks[file_id] = self._streaks.get(file_id, 0) + 1
        upload = self.config.upload
        return backoff(streak, initial=upload.initial_backoff,
                       cap=upload.max_backoff if cap is None else cap)

    def _finish(self, row: FileRow, result: DeliveryResult) -> None:
        """To done/ or failed/ (its report written first: never one without the other)."""
        delivered = result.verdict is Verdict.DELIVERED
        folder = self._placer.folder(delivered=delivered)
        try:
            target = self._placer.target(row, delivered=delivered)
            final_path = row.final_path if target is None else target
            if row.state not in (FileState.DELIVERED, FileState.REJECTED):
                # The verdict and the target in one write, before the move.
                state = FileState.DELIVERED if delivered else FileState.REJECTED
                self._journal.conclude(row.id, state, reason=result.reason, final_path=target)
                row = replace(row, state=state, reason=result.reason, final_path=final_path)
            elif target is not None:
                self._journal.intend_final(row.id, target)
                row = replace(row, final_path=final_path)
            report = self._placer.place(row, delivered=delivered, reason=result.reason)
        except OSError as error:
            delay = self._backoff(row.id, cap=MOVE_RETRY_MAX_SECONDS)
            message = f"cannot move the file to {folder} ({error}); retrying in {delay:.0f} s"
            if self._streaks[row.id] == 1:  # once per file; the condition repeats once a minute
                logger.bind(file=row.rel_path).error("{}", message)
            if error.errno in DISK_ERRNOS:
                self.conditions.raise_(
                    Cause.FINAL_FOLDER, f"{folder} cannot be written ({error.strerror}); "
                    "no new file is taken until it can"
                )
            self._finishing[row.id] = result
            self._schedule.add(row.id, self._clock() + delay)
            return
        self.conditions.clear(Cause.FINAL_FOLDER)
        self._streaks.pop(row.id, None)
        self._reasons.pop(row.id, None)
        assert row.final_path is not None
        self._placed.append((row, row.final_path, report, result))

    def _commit_placed(self) -> None:
        """The journal says done or failed only once the move is on disk: one fsync per folder
        for every file placed in this pass, then one journal transaction for them all."""
        self._placer.sync()
        placed = list(self._placed)
        self._journal.finish_many((row.id, target, report) for row, target, report, _ in placed)
        self._placed.clear()
        for row, target, _, result in placed:
            self._count_finished(row, target, result)

    def _count_finished(self, row: FileRow, target: str, result: DeliveryResult) -> None:
        delivered = result.verdict is Verdict.DELIVERED
        log = logger.bind(file=row.rel_path, segment=row.segment)
        if delivered:
            self.outcomes.done.append(row.rel_path)
            self.metrics.files_uploaded.inc()
            log.info("done: moved to {}", target)
        else:
            self.outcomes.failed.append((row.rel_path, result.reason or "failed"))
            self.metrics.files_failed.inc()
            log.warning("failed: moved to {}: {}", target, result.reason)
            if self._notifier.enabled:
                self._notify_failed(row, result.reason or "failed")

    def _notify_failed(self, row: FileRow, reason: str) -> None:
        failed_jobs = [delivery.job_id for delivery in self._journal.deliveries(row.id)
                       if delivery.state is DeliveryState.REJECTED]
        self._notifier.file_failed(row.rel_path, reason, failed_jobs=failed_jobs)
        for job_id in failed_jobs:
            self._notifier.job_failed(job_id, file=row.rel_path, reason=reason)

    def _refresh_gauges(self) -> None:
        pending = len(self._waiting) + len(self._schedule) + len(self._in_flight)
        self.metrics.pending_files.set(pending + len(self._readiness))

    # --- restart ----------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Resume what a previous run left. Settling and waiting rows in the drop folder stay
        (the first scan finds their files again and keeps their times); the rest goes on."""
        self._sweep_vanished()
        # Claimed rows first: one whose file never left the drop folder (stopped between the
        # claim's journal write and its move) is unclaimed to WAITING there, and must then go
        # back to settling below with the others, or the first scan admits it a second time.
        for row in self._journal.files(FileState.CLAIMED):
            self._recover_claimed(row)
        for row in self._journal.files(FileState.WAITING):
            if row.in_claim_area:
                self._add_waiting(row)
            else:  # the first scan finds it again, and it must be still before it is taken
                self._journal.back_to_settling(row.id)
        for row in self._journal.files(FileState.DELIVERED, FileState.REJECTED):
            verdict = Verdict.DELIVERED if row.state is FileState.DELIVERED else Verdict.REJECTED
            self._finishing[row.id] = DeliveryResult(verdict, row.reason)
            self._schedule.add(row.id, self._clock())
        for row in self._journal.files(FileState.RESETTLING):
            self._resettling[Path(row.path)] = row.id
            self._readiness.observe(Path(row.path), event="scan")

    def _recover_claimed(self, row: FileRow) -> None:
        dropped = self._drop / row.rel_path
        if not os.path.lexists(row.path):
            final = Path(row.final_path) if row.final_path else None
            if final is not None and os.path.lexists(final):
                # A journal of the first release: stopped after the final move.
                done = final.is_relative_to(self._folders.done)
                if not done and report_path_for(final) is None:
                    write_error_report(final, self._placer.report(row, row.reason))
                state = FileState.DELIVERED if done else FileState.REJECTED
                self._journal.conclude(row.id, state, reason=row.reason)
                self._journal.finish(row.id, final_path=final)
            elif os.path.lexists(dropped):  # stopped between the journal entry and the move
                self._journal.unclaim(row.id, dropped)
            else:
                logger.bind(file=row.rel_path).error("claimed file vanished from {}", row.path)
                self._journal.vanish(row.id, "removed from its claim folder by someone else")
            return
        if same_entry(dropped, Path(row.path)):
            os.unlink(dropped)  # stopped between the link and the unlink of the claim
        logger.bind(file=row.rel_path, segment=row.segment).info(
            "resuming a file claimed before the last stop"
        )
        self._schedule.add(row.id, self._clock())


def _storable(path: Path) -> bool:
    """SQLite text must be UTF-8; a name with undecodable bytes (surrogates) is not."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
