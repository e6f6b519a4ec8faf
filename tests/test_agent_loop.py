"""The agent loop in-process: a fake Exchange, a real journal and real folders in tmp_path.

Each test runs ``Agent.run`` in a thread and watches it from outside: what the fake Exchange was
asked and when, where each file stands in the journal and on disk, and ``Agent.health()``. Waits
poll a condition against a deadline. The few fixed windows measure something (CPU time), or are a
stretch in which something must NOT happen; none waits for a result to appear.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import yaml
from loguru import logger

from pushagent.agent import Agent
from pushagent.config import AgentConfig, load_config
from pushagent.errors import ExchangeError, ExchangeUnavailable, NotAuthenticated, RateLimited
from pushagent.exchange import BodyGate, ExpectedBody, Job, JobCategory, JobStatus, UploadResult
from pushagent.journal import Journal
from pushagent.lifecycle import FileState
from tests.fakes import run_gate

VALID = b"Email,name\na@example.com,A\n"
INVALID = b"Email,name\na@example.com\n"  # a row one field short
LIST_URL = "/v1/jobs/SEGMENT_EXPORT"
# A healthy loop waits on its inbox; this much CPU in a second of idling means it spins.
IDLE_CPU_SHARE = 0.10


def wait_for(condition: Callable[[], object], *, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.01)


@contextmanager
def stall_meter() -> Iterator[Callable[[float, float], float]]:
    """A thread that sleeps 10 ms at a time and notes how late each sleep ends. The callable it
    yields, ``stalled(a, b)``, sums that lateness over the sleeps overlapping ``a``..``b``
    (``time.monotonic()``): how long this process's threads were kept from running in that
    window (a loaded machine, the GIL), a share of any gap that no schedule of the agent's made."""
    sleeps: list[tuple[float, float]] = []  # (start, lateness)
    done = threading.Event()

    def measure() -> None:
        while not done.is_set():
            start = time.monotonic()
            time.sleep(0.01)
            sleeps.append((start, time.monotonic() - start - 0.01))

    def stalled(a: float, b: float) -> float:
        return sum(late for start, late in list(sleeps)
                   if start <= b and start + 0.01 + late >= a)

    thread = threading.Thread(target=measure, name="stall-meter", daemon=True)
    thread.start()
    try:
        yield stalled
    finally:
        done.set()
        thread.join()


def unreachable() -> ExchangeUnavailable:
    return ExchangeUnavailable("connection refused", method="GET", url=LIST_URL)


def key_refused() -> NotAuthenticated:
    return NotAuthenticated("answered 401", method="GET", url=LIST_URL, status=401)


class FakeExchange:
    """The four calls the agent makes, answered from a script and recorded with their time.

    A job waits until it receives a file or is failed, then leaves the list, as on the real
    Exchange. ``list_error``, while set, is what every list call raises. With ``hold_lists`` or
    ``hold_uploads`` those calls block until :meth:`release` (a server that never answers).
    Thread-safe: the agent calls it from its list and upload workers.
    """

    def __init__(self, *segments: int) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.hold_lists = False
        self.hold_uploads = False
        self.list_error: ExchangeError | None = None
        self.jobs: dict[str, Job] = {}
        self.list_calls: list[float] = []  # time.monotonic() as each call came in
        self.list_answers = 0
        self.upload_calls: list[str] = []  # job ids, as each upload came in
        self.uploads: dict[str, list[tuple[str, bytes]]] = {}  # job id -> (file name, bytes)
        self.fails: list[tuple[str, str]] = []
        self.active = 0  # calls inside the fake right now
        for segment in segments:
            self.add_job(segment)

    def add_job(self, segment: int) -> str:
        job_id = str(10_000 + len(self.jobs))
        self.jobs[job_id] = Job.from_json(
            {
                "jobId": int(job_id),
                "status": JobStatus.WAITING_TO_RECEIVE_DATA.value,
                "producerSegmentID": segment,
                "identityMappings": {"Email": "EMAIL_SHA256"},
            }
        )
        return job_id

    def release(self) -> None:
        self._released.set()

    @contextmanager
    def _call(self, *, held: bool) -> Iterator[None]:
        with self._lock:
            self.active += 1
        try:
            if held:
                self._released.wait()
            yield
        finally:
            with self._lock:
                self.active -= 1

    def _set_status(self, job_id: str, status: JobStatus) -> None:
        self.jobs[job_id] = dataclasses.replace(self.jobs[job_id], status=status)

    def list_jobs_as(
        self,
        convert: Callable[[Job], Any],
        category: JobCategory | str,
        **filters: Any,
    ) -> list[Any]:
        return [convert(job) for job in self.list_jobs(category, **filters)]

    def list_jobs(
        self,
        category: JobCategory | str,
        *,
        endpoint_id: int | str | None = None,
        status: JobStatus | str | None = None,
        extra_fields: bool = False,
        include_producer_segment_id_string: bool = False,
    ) -> list[Job]:
        assert category == JobCategory.SEGMENT_EXPORT
        assert status is JobStatus.WAITING_TO_RECEIVE_DATA
        with self._lock:
            self.list_calls.append(time.monotonic())
        with self._call(held=self.hold_lists):
            error = self.list_error
            if error is not None:
                raise error
            with self._lock:
                self.list_answers += 1
                return [job for job in self.jobs.values() if job.is_waiting]

    def get_job(self, category: JobCategory | str, job_id: int | str) -> Job:
        with self._call(held=False), self._lock:
            return self.jobs[str(job_id)]

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
        assert isinstance(source, (str, os.PathLike)), "the agent uploads by path"
        with self._lock:
            self.upload_calls.append(str(job_id))
        with self._call(held=self.hold_uploads):
            content = Path(source).read_bytes() if gate is None else run_gate(source, gate)
            with self._lock:
                assert self.jobs[str(job_id)].is_waiting, f"job {job_id} got a second upload"
                self.uploads.setdefault(str(job_id), []).append((Path(source).name, content))
                self._set_status(str(job_id), JobStatus.RUNNING)
            return UploadResult(
                job_id=job_id,
                bytes_sent=len(content),
                status_code=200,
                response_text="",
                sha256=hashlib.sha256(content).hexdigest(),
            )

    def fail_job(self, job_id: int | str, error_message: str) -> None:
        with self._call(held=False), self._lock:
            self.fails.append((str(job_id), error_message))
            self._set_status(str(job_id), JobStatus.ERROR)


class FullableJournal(Journal):
    """A real journal whose writes fail as SQLite's do on a full disk while ``full`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.full = threading.Event()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with super()._tx() as db:
            if self.full.is_set():
                raise sqlite3.OperationalError("database or disk is full")
            yield db


def base_settings() -> dict[str, Any]:
    return {
        "exchange": {
            "base_url": "http://127.0.0.1:9",
            "api_key": "test-key-never-sent",
            "endpoint_id": 85,
        },
        "folders": {"drop": "drop", "done": "done", "failed": "failed"},
        "state_dir": "state",
        "watch": {"settle_seconds": 0.05},
        # The fake serves SEGMENT_EXPORT only; every category is served in the e2e tests.
        "matching": {
            "poll_seconds": 0.2, "idle_poll_seconds": 60, "categories": ["SEGMENT_EXPORT"],
        },
        "upload": {"initial_backoff": 0.05, "max_backoff": 0.5},
    }


def write_config(folder: Path, sections: dict[str, dict[str, Any]]) -> AgentConfig:
    settings = base_settings()
    for section, values in sections.items():
        settings[section] = {**settings.get(section, {}), **values}
    for name in ("drop", "done", "failed"):
        (folder / name).mkdir(exist_ok=True)
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(settings))
    return load_config(path, environ={})


class AgentRun:
    """One Agent, its journal and its thread."""

    def __init__(self, config: AgentConfig, exchange: FakeExchange, journal: Journal) -> None:
        self.config = config
        self.exchange = exchange
        self.journal = journal
        self.agent = Agent(config, client=exchange, journal=journal)  # type: ignore[arg-type]
        self.code: int | None = None
        self._thread: threading.Thread | None = None

    def start(self, *, once: bool = False) -> AgentRun:
        def work() -> None:
            self.code = self.agent.run(once=once)

        self._thread = threading.Thread(target=work, name="agent-loop", daemon=True)
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """True once run() has returned."""
        assert self._thread is not None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop_cold(self) -> float:
        """Two stop requests; how long run() took to return after the first."""
        started = time.monotonic()
        self.agent.request_stop()
        self.agent.request_stop()
        assert self.join(5.0), "run() did not return within 5 s of a cold stop"
        return time.monotonic() - started

    def drop(self, name: str, content: bytes = VALID) -> Path:
        """Written under a hidden name, then renamed in: the dropper the README asks for."""
        target = self.config.folders.drop / name
        hidden = target.with_name(f".{name}.part")
        hidden.write_bytes(content)
        os.replace(hidden, target)
        return target

    def state_of(self, name: str) -> FileState | None:
        states = [row.state for row in self.journal.files(*FileState) if row.rel_path == name]
        return states[-1] if states else None

    def done(self) -> set[str]:
        return set(os.listdir(self.config.folders.done))

    def healthy(self) -> bool:
        return self.agent.health() == (True, "ok")

    def close(self) -> None:
        if self.running:
            self.agent.request_stop()
            self.agent.request_stop()
            self.join(5.0)
        self.exchange.release()
        # Held calls finish now: let them leave the fake before the journal goes.
        wait_for(lambda: self.exchange.active == 0, what="held calls to end", timeout=5.0)
        self.journal.close()


AgentFactory = Callable[..., AgentRun]


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[AgentFactory]:
    made: list[AgentRun] = []

    def make(
        exchange: FakeExchange, *, journal_type: type[Journal] = Journal, **sections: Any
    ) -> AgentRun:
        config = write_config(tmp_path, sections)
        run = AgentRun(config, exchange, journal_type(config.state_dir / "journal.sqlite3"))
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()


# --- 1. stopping never waits for the network ----------------------------------------------------


def test_a_cold_stop_returns_within_a_second_while_a_list_call_hangs(
    agents: AgentFactory,
) -> None:
    exchange = FakeExchange(45311)
    exchange.hold_lists = True
    run = agents(exchange).start()
    wait_for(lambda: exchange.list_calls, what="the first list call")

    assert run.stop_cold() < 1.0
    assert run.code == 0


def test_a_warm_stop_waits_for_a_hung_upload_and_a_second_stop_returns_at_once(
    agents: AgentFactory,
) -> None:
    exchange = FakeExchange(45311)
    exchange.hold_uploads = True
    run = agents(exchange, upload={"shutdown_grace_seconds": 30}).start()
    run.drop("45311.csv")
    wait_for(lambda: exchange.upload_calls, what="the upload to start")

    run.agent.request_stop()
    assert not run.join(0.3), "a warm stop must give the upload in progress its grace"
    started = time.monotonic()
    run.agent.request_stop()
    assert run.join(1.0), "a second stop must return at once, upload or not"
    assert time.monotonic() - started < 1.0
    assert run.code == 0
    # Left to the next start: still claimed, not in done/.
    assert run.state_of("45311.csv") is FileState.CLAIMED
    assert run.done() == set()


# --- 2. the loop never blocks on the network ----------------------------------------------------


def test_files_are_seen_and_made_ready_while_a_list_call_hangs(agents: AgentFactory) -> None:
    exchange = FakeExchange(45311)
    exchange.hold_lists = True
    run = agents(exchange).start()
    wait_for(lambda: exchange.list_calls, what="the first list call")

    run.drop("45311.csv")
    wait_for(
        lambda: run.state_of("45311.csv") is FileState.WAITING,
        what="the file dropped during the hung list call to be waiting",
    )
    assert run.done() == set() and exchange.upload_calls == []

    exchange.release()
    wait_for(lambda: run.done() == {"45311.csv"}, what="the file in done/ once the list answers")
    assert [data for _, data in exchange.uploads["10000"]] == [VALID]


# --- 3. a long outage ---------------------------------------------------------------------------


def test_a_long_outage_backs_off_up_to_the_cap_and_keeps_the_agent_running(
    agents: AgentFactory,
) -> None:
    cap = 0.05
    exchange = FakeExchange(45311)
    exchange.list_error = unreachable()
    with stall_meter() as stalled:
        run = agents(
            exchange,
            upload={"initial_backoff": 0.005, "max_backoff": cap},
            matching={"poll_seconds": cap},
        ).start()
        run.drop("45311.csv")
        wait_for(lambda: len(exchange.list_calls) >= 30, what="30 failed list calls", timeout=10)

        assert run.running
        calls = list(exchange.list_calls)
        # Each gap's bound grows by what the machine held this process back in it (measured
        # beside the agent): a run beside other tests on two cores stalls threads for tenths of
        # a second; a schedule of the agent's that waits past the cap does not hide in that.
        over = [
            f"{b - a:.3f} s (stalled {stalled(a, b):.3f} s)"
            for a, b in itertools.pairwise(calls)
            if b - a >= cap + 0.25 + stalled(a, b)
        ]
    assert not over, f"a poll waited past the cap of {cap} s: {over}"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # It does back off: once the streak is long, every wait is the cap, not a hammering loop.
    assert min(gaps[-10:]) >= cap * 0.9, gaps[-10:]
    healthy, reason = run.agent.health()
    assert not healthy and "unreachable" in reason
    # Unreachable fails nothing and moves nothing.
    assert run.state_of("45311.csv") is FileState.WAITING
    assert exchange.fails == [] and exchange.upload_calls == []
    assert os.listdir(run.config.folders.failed) == []


def test_thousands_of_failed_polls_in_a_row_never_end_the_loop(agents: AgentFactory) -> None:
    """A streak past 1024 would overflow an unclamped ``2 ** streak`` float product."""
    exchange = FakeExchange(45311)
    exchange.list_error = unreachable()
    run = agents(
        exchange,
        upload={"initial_backoff": 0.0001, "max_backoff": 0.0001},
        matching={"poll_seconds": 0.0001},
    ).start()
    wait_for(lambda: len(exchange.list_calls) > 1100, what="1,100 failed list calls", timeout=15)

    assert run.running
    exchange.list_error = None
    wait_for(run.healthy, what="health to turn green once the Exchange answers")


def test_new_files_during_an_outage_do_not_put_off_the_next_list_call(
    agents: AgentFactory,
) -> None:
    """A poll due 0.05 s after a failed one (the backoff's cap) once waited for the 0.2 s gap
    kept after a list call for files made ready meanwhile: with files arriving all the time,
    every gap was 0.2 s or more."""
    cap = 0.05
    exchange = FakeExchange(45311)
    exchange.list_error = unreachable()
    run = agents(
        exchange, upload={"initial_backoff": cap, "max_backoff": cap},
        matching={"poll_seconds": cap},
    ).start()
    wait_for(lambda: exchange.list_calls, what="the first list call")

    folder = run.config.folders.drop / "45311"
    folder.mkdir()
    deadline = time.monotonic() + 20
    n = 0
    while len(exchange.list_calls) < 21 and time.monotonic() < deadline:
        hidden = folder / f".f{n}.csv.part"  # a new file ready every 20 ms or so
        hidden.write_bytes(VALID)
        os.replace(hidden, folder / f"f{n}.csv")
        n += 1
        time.sleep(0.02)

    calls = exchange.list_calls[:21]
    assert len(calls) == 21, f"{len(calls)} list calls in 20 s"
    gaps = sorted(b - a for a, b in itertools.pairwise(calls))
    median = gaps[len(gaps) // 2]
    assert median < 0.15, f"the polls waited {median:.3f} s (median) with a cap of {cap} s"


def test_new_files_during_a_retry_after_do_not_bring_the_next_list_call_forward(
    agents: AgentFactory,
) -> None:
    """A file made ready just after a list call is matched after a short gap instead of at the
    next poll; that shortcut once also cut short a backoff and a Retry-After, so a stream of
    files during a rate limit (or an outage) sent a list call for each new file."""
    exchange = FakeExchange(45311)
    exchange.list_error = RateLimited(
        "slow down", method="GET", url=LIST_URL, status=429, retry_after=2.0
    )
    run = agents(exchange, upload={"initial_backoff": 0.05, "max_backoff": 0.1}).start()
    wait_for(lambda: exchange.list_calls, what="the first list call")
    first = exchange.list_calls[0]

    folder = run.config.folders.drop / "45311"
    folder.mkdir()
    for n in range(10):  # a new file ready every 0.1 s, for a second
        hidden = folder / f".f{n}.csv.part"
        hidden.write_bytes(VALID)
        os.replace(hidden, folder / f"f{n}.csv")
        time.sleep(0.1)
        assert len(exchange.list_calls) == 1, "a new file brought on a list call in Retry-After"

    exchange.list_error = None
    wait_for(lambda: exchange.uploads, what="an upload once the list answers")
    assert exchange.list_calls[1] - first >= 2.0, "the Retry-After was not waited out"


# --- 4. the idle heartbeat ------------------------------------------------------------------------


def test_an_idle_agent_lists_jobs_every_idle_poll_and_a_refused_key_turns_health_red(
    agents: AgentFactory,
) -> None:
    idle = 0.2
    exchange = FakeExchange(45311)
    run = agents(exchange, matching={"idle_poll_seconds": idle}).start()
    wait_for(run.healthy, what="health ok after the first list call")
    wait_for(lambda: len(exchange.list_calls) >= 5, what="five idle list calls")

    gaps = [b - a for a, b in zip(exchange.list_calls, exchange.list_calls[1:], strict=False)]
    assert max(gaps) < idle + 0.2, gaps
    assert min(gaps) >= idle * 0.9, gaps  # the idle interval, not a hammering loop
    assert run.healthy()

    exchange.list_error = key_refused()
    refused_at = time.monotonic()
    wait_for(lambda: not run.agent.health()[0], what="health to turn red", timeout=idle + 0.5)
    assert time.monotonic() - refused_at < idle + 0.2
    _, reason = run.agent.health()
    assert "refused the key" in reason and "unreachable" not in reason

    exchange.list_error = None
    wait_for(run.healthy, what="health back to ok once the key is accepted", timeout=2.0)


# --- 5. idle CPU ----------------------------------------------------------------------------------


def cpu_share_over(seconds: float) -> float:
    """Share of one CPU the whole process used over ``seconds`` of wall time."""
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(seconds)  # the measurement window
    return (time.process_time() - cpu) / (time.monotonic() - wall)


def test_an_idle_agent_sleeps_until_its_next_deadline(agents: AgentFactory) -> None:
    exchange = FakeExchange(45311)
    run = agents(exchange).start()
    wait_for(run.healthy, what="the first list call answered")

    share = cpu_share_over(1.0)
    assert share < IDLE_CPU_SHARE, f"idle agent used {share:.0%} of a CPU"
    assert run.running


def test_a_file_waiting_for_its_trigger_costs_no_cpu_and_goes_once_the_trigger_comes(
    agents: AgentFactory,
) -> None:
    exchange = FakeExchange(45311)
    run = agents(exchange, watch={"trigger_suffix": ".done"}).start()
    wait_for(run.healthy, what="the first list call answered")
    data = run.drop("45311.csv")
    wait_for(lambda: run.state_of("45311.csv") is FileState.SETTLING, what="the file seen")

    share = cpu_share_over(1.0)  # settle_seconds is 0.05: it waits for its trigger by now
    assert share < IDLE_CPU_SHARE, f"agent waiting for a trigger used {share:.0%} of a CPU"
    assert data.exists() and exchange.upload_calls == []
    assert run.state_of("45311.csv") is FileState.SETTLING

    data.with_name("45311.csv.done").touch()
    # The trigger travels with its file.
    wait_for(
        lambda: run.done() == {"45311.csv", "45311.csv.done"},
        what="the file in done/ after its trigger",
    )


def test_run_once_returns_leaving_a_file_that_waits_for_its_trigger(
    agents: AgentFactory,
) -> None:
    exchange = FakeExchange(45311)
    run = agents(exchange, watch={"trigger_suffix": ".done"})
    data = run.drop("45311.csv")

    run.start(once=True)
    assert run.join(5.0), "run(once=True) hung on a file waiting for its trigger"
    assert run.code == 0
    assert data.exists() and exchange.upload_calls == []
    assert run.state_of("45311.csv") is FileState.SETTLING


# --- 6. a full state_dir ------------------------------------------------------------------------


def test_a_full_state_dir_is_waited_out_and_the_files_go_once_it_clears(
    agents: AgentFactory,
) -> None:
    exchange = FakeExchange(45311, 45312)
    run = agents(exchange, journal_type=FullableJournal, matching={"idle_poll_seconds": 0.2})
    journal = run.journal
    assert isinstance(journal, FullableJournal)
    run.start()
    wait_for(run.healthy, what="health ok before the fault")

    journal.full.set()
    run.drop("45311.csv")
    run.drop("45312.csv")
    wait_for(lambda: not run.agent.health()[0], what="health to turn red", timeout=3.0)

    # Unfaulted, both files would be delivered well within this stretch (see the tests above);
    # with the journal full, nothing may be claimed or sent, the agent must stay up, and its
    # health must stay red, naming the state_dir, for as long as the fault lasts.
    window_end = time.monotonic() + 1.5
    while time.monotonic() < window_end:
        assert run.running
        assert exchange.upload_calls == [] and exchange.fails == []
        healthy, reason = run.agent.health()
        assert not healthy and str(run.config.state_dir) in reason, reason
        time.sleep(0.05)
    assert sorted(os.listdir(run.config.folders.drop)) == ["45311.csv", "45312.csv"]

    journal.full.clear()
    wait_for(lambda: run.done() == {"45311.csv", "45312.csv"}, what="both files in done/")
    wait_for(run.healthy, what="health back to ok")
    assert sorted(exchange.upload_calls) == ["10000", "10001"]


# --- 7. run(once=True) exit codes and outcomes --------------------------------------------------


def run_once(run: AgentRun) -> int:
    run.start(once=True)
    assert run.join(10.0), "run(once=True) did not return"
    assert run.code is not None
    return run.code


def test_once_exits_3_when_the_first_list_call_is_refused(agents: AgentFactory) -> None:
    exchange = FakeExchange(45311)
    exchange.list_error = key_refused()
    run = agents(exchange)
    run.drop("45311.csv")

    assert run_once(run) == 3
    assert (run.config.folders.drop / "45311.csv").exists()
    assert exchange.fails == [] and exchange.upload_calls == []


def test_once_exits_1_when_the_exchange_is_unreachable_and_a_file_waits(
    agents: AgentFactory,
) -> None:
    exchange = FakeExchange(45311)
    exchange.list_error = unreachable()
    run = agents(exchange)
    run.drop("45311.csv")

    assert run_once(run) == 1
    assert (run.config.folders.drop / "45311.csv").exists()
    assert os.listdir(run.config.folders.failed) == []
    assert exchange.fails == []
    assert run.agent.outcomes.done == [] and run.agent.outcomes.failed == []


def test_once_exits_0_when_everything_was_delivered(agents: AgentFactory) -> None:
    exchange = FakeExchange(45311, 45312)
    run = agents(exchange)
    run.drop("45311.csv")
    run.drop("45312.csv")

    assert run_once(run) == 0
    assert sorted(run.agent.outcomes.done) == ["45311.csv", "45312.csv"]
    assert run.agent.outcomes.failed == []
    assert run.done() == {"45311.csv", "45312.csv"}


def test_once_lists_every_finished_file_with_its_reason_and_exits_1_on_a_failure(
    agents: AgentFactory,
) -> None:
    exchange = FakeExchange(45311, 45312)
    run = agents(exchange)
    run.drop("45311.csv")
    run.drop("45312.csv", INVALID)
    run.drop("notes.txt", b"not a segment file\n")

    assert run_once(run) == 1
    assert run.agent.outcomes.done == ["45311.csv"]
    failed = dict(run.agent.outcomes.failed)
    assert set(failed) == {"45312.csv", "notes.txt"}
    assert "invalid CSV" in failed["45312.csv"]
    assert "cannot tell which segment" in failed["notes.txt"]
    assert [job_id for job_id, _ in exchange.fails] == ["10001"]
    assert "invalid CSV" in exchange.fails[0][1]


# --- 8. scale -----------------------------------------------------------------------------------


def test_two_thousand_files_at_once_cost_a_handful_of_list_calls(
    agents: AgentFactory, tmp_path: Path
) -> None:
    count = 2000
    segments = [100_000 + n for n in range(count)]
    exchange = FakeExchange(*segments)
    run = agents(exchange, matching={"poll_seconds": 5})
    staging = tmp_path / "staging"
    staging.mkdir()
    for segment in segments:
        (staging / f"{segment}.csv").write_bytes(VALID)
    run.start()
    wait_for(run.healthy, what="the first list call answered")
    calls_before = len(exchange.list_calls)

    for segment in segments:
        os.replace(staging / f"{segment}.csv", run.config.folders.drop / f"{segment}.csv")
    wait_for(lambda: len(run.done()) == count, what=f"{count} files in done/", timeout=60)

    calls = len(exchange.list_calls) - calls_before
    assert calls < 20, f"{calls} list calls for {count} files"
    assert len(exchange.uploads) == count
    assert all(len(got) == 1 for got in exchange.uploads.values())
    assert exchange.fails == []
    assert os.listdir(run.config.folders.drop) == []


@pytest.mark.parametrize(("count", "summaries", "file_lines"), [(3, 0, 3), (150, 1, 0)])
def test_many_files_ready_at_once_are_one_info_line_not_one_each(
    agents: AgentFactory, count: int, summaries: int, file_lines: int
) -> None:
    segments = [200_000 + n for n in range(count)]
    run = agents(FakeExchange(*segments))
    written_long_ago = time.time() - 3600  # all settled at the first scan: one batch
    for segment in segments:
        os.utime(run.drop(f"{segment}.csv"), (written_long_ago, written_long_ago))
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    try:
        assert run_once(run) == 0
    finally:
        logger.remove(handler)

    assert sum(line.strip() == f"{count} files ready (each one's line at DEBUG)"
               for line in lines) == summaries
    assert sum(line.strip() == "ready" for line in lines) == file_lines
    assert len(run.done()) == count


def test_claim_and_final_folders_removed_while_running_are_made_again(
    agents: AgentFactory,
) -> None:
    exchange = FakeExchange(45311, 45312)
    run = agents(exchange)
    run.drop("45311.csv")
    run.start()
    wait_for(lambda: run.done() == {"45311.csv"}, what="the first file in done/")
    claimed = run.config.state_dir / "claimed"
    claimed.rmdir()  # empty once the first file is done
    (run.config.folders.done / "45311.csv").unlink()
    run.config.folders.done.rmdir()

    run.drop("45312.csv")

    done = run.config.folders.done
    wait_for(lambda: done.is_dir() and run.done() == {"45312.csv"},
             what="the second file in done/")
    assert len(exchange.uploads) == 2
    assert all(len(got) == 1 for got in exchange.uploads.values())


# --- 9. a restart after kill -9 -----------------------------------------------------------------


def test_a_claim_journalled_but_never_moved_is_taken_again_at_the_next_start(
    agents: AgentFactory,
) -> None:
    """kill -9 between the claim's journal write and its move out of the drop folder: the next
    start puts the file back to waiting (``unclaim``), and the first scan then finds it in the
    drop folder like any other file. It once found it already waiting there and the agent exited
    with "journal: file N cannot go from waiting to waiting" (repeated kill -9 under load)."""
    exchange = FakeExchange(45311)
    run = agents(exchange)
    dropped = run.drop("45311.csv")
    stat = dropped.stat()
    # What the killed run left: waiting, then claimed in the journal, the file still dropped.
    (row,) = run.journal.admit_many(
        [("45311.csv", dropped, stat.st_size, stat.st_mtime, "45311")]
    )
    claim_path = run.config.state_dir / "claimed" / f"{row.id}-45311.csv"
    run.journal.claim(row.id, path=claim_path, job_ids=["10000"])
    assert run.state_of("45311.csv") is FileState.CLAIMED and dropped.exists()

    run.start()

    # The journal says done once the move is on disk, just after the file shows in done/.
    wait_for(lambda: run.state_of("45311.csv") is FileState.DONE or not run.running,
             what="the file done (or the agent to end)")
    assert run.running, "the agent ended at its start"
    assert run.done() == {"45311.csv"}
    assert [data for _, data in exchange.uploads["10000"]] == [VALID]
