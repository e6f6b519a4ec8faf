"""``pushagent status``: what the agent is doing, read from its journal while it runs.

Read-only: the journal is SQLite in WAL mode, so reading never blocks the agent, and the state
lock is only probed (a shared, non-blocking flock, released at once), never held.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pushagent.config import load_config
from pushagent.env import Environment
from pushagent.errors import ConfigError, JournalUnavailable, PushAgentError
from pushagent.journal import DeliveryRow, FileRow, Journal, StateLock
from pushagent.lifecycle import PENDING, DeliveryState, FileState, PullFileState, PullJobState
from pushagent.output import (
    add_json_flag,
    format_age,
    format_bytes,
    format_time,
    print_json,
    print_table,
    terminal_width,
)
from pushagent.pulljournal import PullFileRow, PullJobRow, PullJournal


@dataclass(frozen=True)
class LockHolder:
    running: bool
    pid: int | None


@dataclass(frozen=True)
class Snapshot:
    state_dir: Path
    agent: LockHolder
    last_contact: float | None
    pending: list[tuple[FileRow, list[DeliveryRow]]]
    in_flight: list[tuple[FileRow, list[DeliveryRow]]]
    recent: list[FileRow]
    idle_jobs: list[dict[str, Any]]
    pull_pending: list[tuple[PullJobRow, list[PullFileRow]]] = dataclasses.field(
        default_factory=list)
    pull_recent: list[PullJobRow] = dataclasses.field(default_factory=list)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show pending, in-flight and recently finished files",
        description=(
            "Read the agent's journal (safe while the agent runs) and show: whether an agent "
            "holds the state_dir, when the Exchange was last reached, the files waiting (with "
            "why: settling, waiting for a job, retrying after an error and when), the uploads "
            "in flight, and the files recently moved to done/ or failed/. Never needs the key, "
            "with -c or --state-dir."
        ),
        epilog="Exit codes: 0 shown; 1 the journal cannot be read; 2 usage or configuration "
               "error.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", type=Path, help="the agent's YAML file")
    source.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="the agent's state_dir, instead of -c")
    parser.add_argument("--recent", type=int, default=10, metavar="N",
                        help="how many recently finished files to show (default 10)")
    parser.add_argument("--wide", action="store_true",
                        help="show every reason whole, however wide (default: whole when the "
                             "table fits the terminal's COLUMNS)")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    if args.recent < 0:
        raise ConfigError(f"--recent must be 0 or more, not {args.recent}")
    if args.config is not None:
        state_dir = load_config(args.config, environ=env.environ, need_key=False).state_dir
    else:
        state_dir = args.state_dir
    snapshot = read_snapshot(state_dir, recent=args.recent)
    if args.json:
        print_json(as_json(snapshot, now=time.time()), env.stdout)
    else:
        width = 0 if args.wide else terminal_width(env.environ, env.stdout)
        render(snapshot, env, now=time.time(), width=width)
    return 0


def lock_holder(lock_path: Path) -> LockHolder:
    """Whether a process holds the agent's flock, and the pid it wrote; never creates the file."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return LockHolder(running=False, pid=None)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return LockHolder(running=True, pid=int(text) if text.isdigit() else None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return LockHolder(running=False, pid=None)
    finally:
        os.close(fd)


def read_snapshot(state_dir: Path, *, recent: int) -> Snapshot:
    if not state_dir.is_dir():
        raise ConfigError(f"state_dir {state_dir} does not exist; has the agent ever run here?")
    holder = lock_holder(StateLock(state_dir).path)
    try:
        journal = Journal.for_state_dir(state_dir)
    except JournalUnavailable as error:
        raise PushAgentError(
            f"{state_dir}: cannot open the journal ({error}); run status as the agent's user"
        ) from error
    try:
        rows = [(row, journal.deliveries(row.id)) for row in journal.files(*PENDING)]
        last = journal.meta("last_contact")
        idle_jobs = json.loads(journal.meta("jobs_without_file") or "[]")
        finished = journal.recently_finished(limit=recent) if recent else []
        pulls = PullJournal(journal)
        pull_pending = [(job, pulls.files(job.job_id))
                        for job in pulls.jobs(PullJobState.DOWNLOADING, PullJobState.ON_DISK)]
        pull_recent = pulls.recently_finished(limit=recent) if recent else []
    except (sqlite3.Error, JournalUnavailable) as error:
        raise PushAgentError(f"{state_dir}: cannot read the journal ({error})") from error
    finally:
        journal.close()
    in_flight = [item for item in rows if _uploading(item[1])]
    pending = [item for item in rows if not _uploading(item[1])]
    return Snapshot(
        state_dir=state_dir, agent=holder,
        last_contact=float(last) if last is not None else None,
        pending=pending, in_flight=in_flight, recent=finished, idle_jobs=idle_jobs,
        pull_pending=pull_pending, pull_recent=pull_recent,
    )


def _uploading(deliveries: list[DeliveryRow]) -> bool:
    return any(delivery.state is DeliveryState.UPLOADING for delivery in deliveries)


def _file_json(row: FileRow, deliveries: list[DeliveryRow] | None = None) -> dict[str, Any]:
    data = {**dataclasses.asdict(row), "state": row.state.value}
    if deliveries is not None:
        data["deliveries"] = [
            {**dataclasses.asdict(delivery), "state": delivery.state.value}
            for delivery in deliveries
        ]
    return data


def as_json(snapshot: Snapshot, *, now: float) -> dict[str, Any]:
    last = snapshot.last_contact
    return {
        "state_dir": str(snapshot.state_dir),
        "agent": dataclasses.asdict(snapshot.agent),
        "last_contact": last,
        "last_contact_age_seconds": None if last is None else round(now - last, 3),
        "pending": [_file_json(row, deliveries) for row, deliveries in snapshot.pending],
        "in_flight": [_file_json(row, deliveries) for row, deliveries in snapshot.in_flight],
        "recent": [_file_json(row) for row in snapshot.recent],
        "jobs_without_file": snapshot.idle_jobs,
        "pull": {
            "pending": [
                {**_pull_json(job), "files": [_pull_json(f) for f in files]}
                for job, files in snapshot.pull_pending
            ],
            "recent": [_pull_json(job) for job in snapshot.pull_recent],
        },
    }


def _pull_json(row: PullJobRow | PullFileRow) -> dict[str, Any]:
    return {**dataclasses.asdict(row), "state": row.state.value}


def _jobs(deliveries: list[DeliveryRow]) -> str:
    return ", ".join(
        f"{_category(d.category)}/{d.job_id} ({d.state.value})" for d in deliveries
    ) or "-"


def _category(category: str | None) -> str:
    """Journals of before categories hold SEGMENT_EXPORT jobs only."""
    return category or "SEGMENT_EXPORT"


def _next_attempt(row: FileRow | PullJobRow, now: float) -> str | None:
    if row.next_attempt_at is None:
        return None
    delta = row.next_attempt_at - now
    return f"in {format_age(delta)}" if delta > 0 else "due now"


def render(snapshot: Snapshot, env: Environment, *, now: float, width: int | None = None) -> None:
    out = env.stdout
    agent = snapshot.agent
    if agent.running:
        pid = agent.pid or "unknown"
        print(f"agent:     running (pid {pid}) on {snapshot.state_dir}", file=out)
    else:
        print(f"agent:     not running on {snapshot.state_dir}", file=out)
    last = snapshot.last_contact
    if last is None:
        print("exchange:  never reached", file=out)
    else:
        print(f"exchange:  last reached {format_age(now - last)} ago ({format_time(last)})",
              file=out)

    print(f"\npending ({len(snapshot.pending)}):", file=out)
    print_table(
        ("STATE", "FILE", "SEGMENT", "SIZE", "SEEN", "ATTEMPTS", "NEXT", "JOBS", "REASON"),
        [
            (row.state.value, row.rel_path, row.segment,
             format_bytes(row.size) if row.size else None, f"{format_age(now - row.seen_at)} ago",
             row.attempts, _next_attempt(row, now), _jobs(deliveries), row.reason)
            for row, deliveries in snapshot.pending
        ],
        out, empty="(none)", width=width,
    )

    print(f"\nin flight ({len(snapshot.in_flight)}):", file=out)
    print_table(
        ("FILE", "SEGMENT", "SIZE", "JOBS", "UPLOADING FOR", "CONVERTED FROM"),
        [
            (row.rel_path, row.segment, format_bytes(row.size) if row.size else None,
             _jobs(deliveries), _uploading_for(deliveries, now), row.converted_from)
            for row, deliveries in snapshot.in_flight
        ],
        out, empty="(none)", width=width,
    )

    print(f"\njobs waiting with no file ({len(snapshot.idle_jobs)}):", file=out)
    print_table(
        ("JOB", "SEGMENT", "WAITING FOR"),
        [(f"{_category(job.get('category'))}/{job['job_id']}", job["segment"],
          format_age(now - job["since"]))
         for job in snapshot.idle_jobs],
        out, empty="(none)", width=width,
    )

    print(f"\nrecently finished ({len(snapshot.recent)}):", file=out)
    print_table(
        ("STATE", "FILE", "FINISHED", "NOW AT", "CONVERTED FROM", "REASON"),
        [
            (row.state.value, row.rel_path,
             f"{format_age(now - row.finished_at)} ago" if row.finished_at else None,
             row.final_path, row.converted_from,
             row.reason if row.state is FileState.FAILED else None)
            for row in snapshot.recent
        ],
        out, empty="(none)", width=width,
    )
    if snapshot.pull_pending or snapshot.pull_recent:
        _render_pull(snapshot, env, now=now)


def _render_pull(snapshot: Snapshot, env: Environment, *, now: float) -> None:
    """Shown once the agent ever took a pull job on: a push-only agent's status is unchanged."""
    out = env.stdout
    print(f"\npull jobs (downloading or finishing: {len(snapshot.pull_pending)}):", file=out)
    print_table(
        ("JOB", "STATE", "FILES HERE", "SEEN", "ATTEMPTS", "NEXT", "REASON"),
        [
            (job.job_id, job.state.value,
             f"{sum(f.state is not PullFileState.PENDING for f in files)}/{len(files)}",
             f"{format_age(now - job.seen_at)} ago", job.attempts,
             _next_attempt(job, now), job.reason)
            for job, files in snapshot.pull_pending
        ],
        out, empty="(none)",
    )
    print(f"\nrecently pulled ({len(snapshot.pull_recent)}):", file=out)
    print_table(
        ("JOB", "STATE", "FINISHED", "FOLDER", "REASON"),
        [
            (job.job_id, job.state.value,
             f"{format_age(now - job.finished_at)} ago" if job.finished_at else None,
             job.folder, job.reason)
            for job in snapshot.pull_recent
        ],
        out, empty="(none)",
    )


def _uploading_for(deliveries: list[DeliveryRow], now: float) -> str | None:
    started = [
        d.started_at for d in deliveries
        if d.state is DeliveryState.UPLOADING and d.started_at
    ]
    return format_age(now - min(started)) if started else None
