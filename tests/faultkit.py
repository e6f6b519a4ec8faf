"""Shared pieces of the fault suite (tests/test_faults_*.py): a configurable agent home, the
simulator, and ``assert_invariant``, the one promise every fault case checks.

The promise: every dropped file ends either uploaded exactly once to each job waiting for it, or
in failed/ with ``<name>.error.json`` (its jobs failed with a reason); nothing is lost, nothing
half-written is sent, the key never shows in the log, and the agent keeps running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pushagent.outcomes import report_path_for
from pushagent.simulator import Simulator
from tests.e2e import ENDPOINT, KEY, AgentHome, drop_atomically, received, wait_for, waiting_job

WAITING = "WAITING_TO_RECIEVE_DATA"
LIST_PATH = "/v1/jobs/SEGMENT_EXPORT"
# prove_alive's files go to this segment's folder, which the inventory leaves out.
PROBE_SEGMENT = 99_999_001

CONFIG = """\
exchange:
  base_url: {url}
  api_key: ${{E2E_EXCHANGE_KEY}}
  endpoint_id: {endpoint}
  read_timeout: {read_timeout}
  connect_timeout: 2
  retry: {{max_attempts: 2, max_total_seconds: 5, initial_backoff: 0.05, max_backoff: 0.2}}
folders: {{drop: ./drop, done: ./done, failed: ./failed}}
state_dir: ./state
segments:
{segments}
watch:
  settle_seconds: {settle}
  rescan_seconds: {rescan}
matching:
  poll_seconds: {poll}
  max_wait_seconds: 3600
upload:
  workers: {workers}
  initial_backoff: 0.2
  max_backoff: 1
  max_attempts: {max_attempts}
  shutdown_grace_seconds: {grace}
"""

Outcome = Literal["done", "failed", "aside", "pending"]


class FaultHome(AgentHome):
    """An ``AgentHome`` with the knobs the fault cases turn: the key the agent sends, workers,
    rescan and poll periods, read timeout, and extra ``segments:`` names (any text, quoted for
    YAML)."""

    def __init__(
        self,
        root: Path,
        url: str,
        *,
        key: str = KEY,
        settle: float = 0.4,
        rescan: float = 2.0,
        poll: float = 0.5,
        workers: int = 4,
        read_timeout: float = 30.0,
        max_attempts: int = 8,
        grace: float = 10.0,
        segments: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(root, url)
        self.key = key
        names = {"vip_customers": 45311, **(segments or {})}
        self.config.write_text(
            CONFIG.format(
                url=url,
                endpoint=ENDPOINT,
                read_timeout=read_timeout,
                segments="\n".join(f"  {json.dumps(n)}: {i}" for n, i in names.items()),
                settle=settle,
                rescan=rescan,
                poll=poll,
                workers=workers,
                max_attempts=max_attempts,
                grace=grace,
            ),
            encoding="utf-8",
        )
        self.state = root / "state"
        self.probes: list[bytes] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "E2E_EXCHANGE_KEY": self.key}

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def assert_running(self) -> None:
        """Fail at once, with the exit code and the log's last line, if the agent has ended: a
        wait for its progress would otherwise run to its deadline and blame slowness."""
        if self.process is not None and self.process.poll() is not None:
            last = self.log().rstrip().rsplit("\n", 1)[-1]
            raise AssertionError(f"the agent exited with {self.process.poll()}: {last}")

    def wait_started(self) -> None:
        wait_for(lambda: "pushagent watching" in self.log(), what="the agent to start")


@contextlib.contextmanager
def simulator(root: Path, **options: Any) -> Iterator[Simulator]:
    with Simulator(
        account_key=options.pop("account_key", KEY),
        data_dir=root / "sim-data",
        complete_after=options.pop("complete_after", 0.2),
        **options,
    ) as sim:
        yield sim


@contextlib.contextmanager
def running(home: FaultHome) -> Iterator[FaultHome]:
    """The agent process for the duration of a block; killed at the end whatever happened."""
    home.start()
    try:
        yield home
    finally:
        if home.process is not None:
            home.kill9()


def csv_rows(tag: str, rows: int = 3) -> bytes:
    """A small valid CSV whose bytes are unique to ``tag``."""
    lines = ["Email,tag"] + [f"user{n}.{tag}@example.com,{tag}" for n in range(rows)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def requests_to(
    sim: Simulator, method: str, path: str, *, since: float = 0.0
) -> list[dict[str, Any]]:
    """Logged API requests with ``method`` whose path matches the regex ``path``."""
    return [
        r
        for r in sim.request_log()
        if r["method"] == method and re.search(path, r["path"]) and r["time"] >= since
    ]


def list_calls(sim: Simulator, *, since: float = 0.0) -> list[dict[str, Any]]:
    return requests_to(sim, "GET", rf"^{LIST_PATH}$", since=since)


def fault_fired(sim: Simulator) -> bool:
    return any(fault["fired"] for fault in sim.faults())


def body_in_flight(url: str) -> int:
    """Bytes written to loopback sockets towards ``url``'s port that the server has not read
    yet: what the sender's kernel still holds plus what waits in the server's. A held upload's
    body passed to the kernel before a kill is delivered whole, and no further. Linux only."""
    port = int(url.rsplit(":", 1)[1])
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        tx_queue, rx_queue = (int(n, 16) for n in fields[4].split(":"))
        if fields[3] != "01":  # ESTABLISHED only
            continue
        if remote_port == port:
            total += tx_queue
        elif local_port == port:
            total += rx_queue
    return total


def journal(home: FaultHome, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
    """Read the agent's journal (read-only; the agent may be running or dead)."""
    uri = f"file:{home.state / 'journal.sqlite3'}?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, tuple(params)).fetchall()
    finally:
        db.close()


def status_json(home: FaultHome, *, recent: int = 1000) -> dict[str, Any]:
    """``pushagent status -c <config> --json``: the journal as the operator sees it (works
    whether the agent runs or not)."""
    shown = subprocess.run(
        [sys.executable, "-m", "pushagent", "status", "-c", str(home.config), "--json",
         "--recent", str(recent)],
        capture_output=True, text=True, env=home.env(), cwd=home.root, timeout=30, check=True,
    )
    return dict(json.loads(shown.stdout))


@contextlib.contextmanager
def folder_outage(folder: Path) -> Iterator[None]:
    """``folder`` made unusable in a way root cannot bypass: the folder is moved aside and a
    regular file takes its name, so mkdir, link and rename into it all fail. Restored after."""
    aside = folder.with_name(f"{folder.name}.outage")
    os.rename(folder, aside)
    folder.write_bytes(b"not a folder\n")
    try:
        yield
    finally:
        folder.unlink()
        os.rename(aside, folder)


# --- the invariant ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drop:
    """One dropped file and what must become of it.

    ``outcome``: "done" (uploaded once to each of ``jobs``, moved to done/), "failed" (in
    failed/ with its error report, each of ``jobs`` failed with a reason and given nothing),
    "aside" (never read: moved to failed/ with a report, ``jobs`` untouched and still waiting),
    "pending" (still in the drop folder, unchanged, ``jobs`` given nothing). ``uploaded``: for a
    "failed" drop, the jobs that did get it (once each) before another job of its refused it.
    """

    name: str
    data: bytes
    jobs: tuple[int, ...] = ()
    outcome: Outcome = "done"
    uploaded: tuple[int, ...] = ()


def entries(folder: Path) -> list[str]:
    """What a dropper would count in ``folder``: files, links, and directories named like a
    CSV (one entry each, not entered); error reports and hidden names left out."""
    found: list[str] = []
    if not folder.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for name in list(dirnames):
            path = here / name
            if path.is_symlink() or name.lower().endswith(".csv"):
                found.append(str(path.relative_to(folder)))
                dirnames.remove(name)
        for name in filenames:
            if not name.endswith(".error.json") and not name.startswith("."):
                found.append(str((here / name).relative_to(folder)))
    return sorted(found)


def _variants(name: str) -> re.Pattern[str]:
    """``name`` or the ``-2``, ``-3``... names the agent gives when it is taken."""
    path = Path(name)
    stem = re.escape(str(path.with_suffix(""))) if path.suffix else re.escape(name)
    return re.compile(rf"{stem}(-\d+)?{re.escape(path.suffix)}")


def _landed(folder: Path, drop: Drop) -> Path | None:
    """Where ``drop`` ended in ``folder``: its name (or a -N variant), holding its bytes."""
    pattern = _variants(drop.name)
    for name in entries(folder):
        if not pattern.fullmatch(name):
            continue
        path = folder / name
        if drop.outcome == "aside" or (path.is_file() and path.read_bytes() == drop.data):
            return path
    return None


def _check_job_untouched(sim: Simulator, job: int, drop: Drop) -> None:
    assert sim.uploads(job) == [], f"{drop.name}: job {job} got an upload"
    status = sim.job(job)["status"]
    assert status == WAITING, f"{drop.name}: job {job} is {status}, expected still waiting"


def _check_drop(home: FaultHome, sim: Simulator, drop: Drop) -> None:
    if drop.outcome == "done":
        assert _landed(home.done, drop), f"{drop.name} is not in done/ with its content"
        for job in drop.jobs:
            assert received(sim, job) == [drop.data], f"{drop.name}: job {job} did not get it once"
    elif drop.outcome in ("failed", "aside"):
        target = _landed(home.failed, drop)
        assert target, f"{drop.name} is not in failed/"
        report = report_path_for(target)
        assert report is not None, f"the report is missing beside {target.name}"
        reason = json.loads(report.read_text(encoding="utf-8"))["reason"]
        assert reason, f"{report.name} gives no reason"
        for job in drop.jobs:
            if drop.outcome == "aside":
                _check_job_untouched(sim, job, drop)
                continue
            state = sim.job(job)
            assert state["status"] == "ERROR", f"{drop.name}: job {job} is {state['status']}"
            assert state["errorDetails"], f"{drop.name}: job {job} was failed with no reason"
            assert sim.uploads(job) == [], f"{drop.name}: failed job {job} got an upload"
        for job in drop.uploaded:
            assert received(sim, job) == [drop.data], f"{drop.name}: job {job} did not get it once"
    else:
        path = home.drop / drop.name
        assert path.is_file() and path.read_bytes() == drop.data, f"{drop.name} left drop/"
        for job in drop.jobs:
            assert sim.uploads(job) == [], f"{drop.name}: job {job} got an upload"


def _check_all(home: FaultHome, sim: Simulator, drops: Sequence[Drop]) -> None:
    for drop in drops:
        _check_drop(home, sim, drop)
    sent = {d.data for d in drops if d.outcome == "done" or d.uploaded} | set(home.probes)
    for job in sim.jobs():
        uploads = received(sim, int(job["jobId"]))
        assert len(uploads) <= 1, f"job {job['jobId']} got {len(uploads)} uploads"
        for body in uploads:
            assert body in sent, f"job {job['jobId']} got bytes no finished drop holds"
    probes = f"{PROBE_SEGMENT}{os.sep}"
    counted = {
        name: len([e for e in entries(folder) if not e.startswith(probes)])
        for name, folder in (("done", home.done), ("failed", home.failed), ("pending", home.drop))
    }
    expected = {
        "done": sum(d.outcome == "done" for d in drops),
        "failed": sum(d.outcome in ("failed", "aside") for d in drops),
        "pending": sum(d.outcome == "pending" for d in drops),
    }
    assert counted == expected, f"file count {counted} != {expected}: a file lost or extra"
    stranded = entries(home.state / "claimed")
    assert stranded == [], f"files left in the claim area: {stranded}"


def prove_alive(home: FaultHome, sim: Simulator) -> None:
    """The agent still runs and still delivers: a fresh job and file go through end to end."""
    assert home.alive(), f"the agent exited with {home.process and home.process.poll()}"
    segment = PROBE_SEGMENT
    job = waiting_job(sim, segment=segment)
    data = csv_rows(f"alive-{time.monotonic_ns()}")
    home.probes.append(data)
    (home.drop / str(segment)).mkdir(exist_ok=True)
    drop_atomically(home.drop / str(segment), "probe.csv", data)
    wait_for(lambda: received(sim, job) == [data], timeout=20, what="the liveness probe upload")
    wait_for(
        lambda: any(p.read_bytes() == data for p in (home.done / str(segment)).glob("probe*.csv")),
        timeout=10,
        what="the liveness probe in done/",
    )


def assert_invariant(
    home: FaultHome,
    sim: Simulator,
    drops: Iterable[Drop],
    *,
    timeout: float = 20.0,
    alive: bool = True,
) -> None:
    """Wait up to ``timeout`` for every drop to reach its outcome, then hold the promise:
    each "done" drop uploaded exactly once to each of its jobs (bytes equal), each "failed" one
    in failed/ with a report and its jobs failed with a reason, no job anywhere with two uploads
    or with bytes no finished drop holds (nothing half-written sent), the files in done/,
    failed/ and drop/ adding up to ``drops`` with none stranded in the claim area (nothing
    lost), no traceback and no key in the log, and (``alive``) the agent still running and
    still delivering a new file."""
    drops = list(drops)
    deadline = time.monotonic() + timeout
    while True:
        try:
            _check_all(home, sim, drops)
            break
        except AssertionError:
            if alive:
                home.assert_running()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    log = home.log()
    assert "Traceback" not in log, "the agent logged a traceback"
    assert home.key not in log, "the API key is in the log"
    if alive:
        prove_alive(home, sim)
