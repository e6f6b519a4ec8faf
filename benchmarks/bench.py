"""pushagent under load, measured in one run and printed as one table with targets.

    python benchmarks/bench.py                              # 1 GB file, 50 drops, 1000-file burst
    python benchmarks/bench.py --size-gb 0.2 --drops 20 --burst 200 --keep

Starts the simulator (``pushagent simulator`` in a subprocess) and one agent (``pushagent run``)
with the default settings, in a work folder on one disk (``--workdir``, default a temporary
folder), then measures:

- large file, two shapes (mostly unquoted rows with LF; CRM-shaped: a BOM, CRLF, every field
  quoted): rename of a generated CSV into the drop folder -> validated while sent -> uploaded ->
  in done/, next to a streamed ``curl -T`` to the same simulator, each best of ``--repeat``; then
  the same through the simulator's receive throttle (``--link-mbps``, a stand-in for a real
  link), best of ``--link-repeat``; and the agent's peak RSS (VmHWM);
- validation: ``validate_csv`` next to a bare ``csv.reader`` loop over the same file, each in a
  fresh process (benchmarks/validation_speed.py);
- latency: rename of a tiny file -> start of its upload request at the simulator (the request
  log's ``time``, taken when the request line and headers have been read), a job already waiting;
- burst: many small files for as many waiting jobs: time, files per second, list-jobs calls.

Scale phases, each with its own simulator and agent(s):

    python benchmarks/bench.py --phases startup,storm,stop              # 20,000 / 5,000 files
    python benchmarks/bench.py --phases startup,storm,stop --files 2000 --storm 1000 \
        --storm-small 200                                                 # about a minute
    python benchmarks/bench.py --phases startup --profile /tmp/agent-prof # py-spy stacks

- startup: ``--files`` files already in the drop folder when the agent starts, each named for
  its own segment with one waiting job (a file goes to every job waiting for its segment, so
  20,000 deliveries need 20,000 segments): start -> first upload, files per second start ->
  last in done/, peak RSS, CPU seconds of agent and simulator;
- storm: ``--storm-small`` then ``--storm`` files renamed into the running agent's drop folder
  in one loop: files per second, list-jobs calls for each;
- stop: two SIGTERMs 50 ms apart during a held list call, during the planning pass after a
  list call returns ``--stop-files`` jobs for as many waiting files, and during a held upload:
  seconds from the first signal to the exit.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import dataclasses
import hashlib
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import validation_speed

from pushagent.agent import MIN_POLL_GAP_SECONDS
from pushagent.config import UploadSettings
from pushagent.simulator import SimulatorControl

KEY = "bench-account-key-41c9"
ENDPOINT = 85
CURL = "/usr/bin/curl"
LIST_PATH = "/v1/jobs/SEGMENT_EXPORT"
UPLOAD_WORKERS = UploadSettings().workers  # the agent runs with the default
SHARED_PHASES = ("large", "validation", "latency", "burst")  # one simulator, one agent
SCALE_PHASES = ("startup", "storm", "stop")  # each its own simulator and agent(s)
PHASES = SHARED_PHASES + SCALE_PHASES
# --profile: where py-spy writes each agent's collapsed stacks (None: no profiling).
PROFILE_DIR: Path | None = None
POLL = 0.005  # how often the benchmark looks for an outcome: well below what it measures
SLOW_POLL = 0.05  # the same for a probe that costs a control call or a scan of 20,000 files

AGENT_CONFIG = """\
exchange:
  base_url: {url}
  api_key: ${{BENCH_EXCHANGE_KEY}}
  endpoint_id: {endpoint}
folders: {{drop: ./drop, done: ./done, failed: ./failed}}
state_dir: ./state
"""


@dataclass(frozen=True)
class Row:
    measure: str
    value: str
    target: str
    passed: bool | None  # None: context, no target


# --- processes ----------------------------------------------------------------------------------


def wait_until(
    probe: Callable[[], Any], *, timeout: float, what: str, every: float = POLL
) -> Any:
    """``probe()`` once it is truthy. ``every``: the pause between probes; a probe that costs
    the simulator or the agent's disk something is made less often, not to slow what it
    measures."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@contextmanager
def profiled(process: subprocess.Popen[bytes], out: Path) -> Iterator[None]:
    """py-spy sampling ``process`` (the thread holding the GIL: where Python's CPU goes) until
    it exits or the block ends; collapsed stacks in ``out`` (``--profile``; py-spy must be on
    the PATH or beside this Python)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with open(out.with_suffix(".log"), "wb") as log:
        sampler = subprocess.Popen(
            [spy, "record", "--pid", str(process.pid), "--format", "raw", "--rate", "200", "--gil",
             "--output", str(out)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        sampler.wait(timeout=60)


@contextmanager
def simulator_process(work: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    work.mkdir(parents=True, exist_ok=True)
    out = work / "simulator.out"
    with open(out, "wb") as stdout, open(work / "simulator.log", "wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pushagent",
                "simulator",
                "--port",
                "0",
                "--data-dir",
                str(work / "sim-data"),
                "--account-key",
                KEY,
                "--complete-after",
                "0.2",
            ],
            stdout=stdout,
            stderr=stderr,
        )
    try:
        first = wait_until(
            lambda: out.read_text().splitlines()[:1] if out.read_text().endswith("\n") else None,
            timeout=30,
            what="the simulator's first line",
        )[0]
        yield first.rsplit(" ", 1)[1], process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def agent_home(home: Path, url: str) -> None:
    """drop/, done/, failed/ and agent.yaml (the default settings) in ``home``."""
    for name in ("drop", "done", "failed"):
        (home / name).mkdir(parents=True, exist_ok=True)
    (home / "agent.yaml").write_text(AGENT_CONFIG.format(url=url, endpoint=ENDPOINT))


@contextmanager
def agent_process(
    home: Path, url: str, *, wait_started: bool = True
) -> Iterator[subprocess.Popen[bytes]]:
    """``pushagent run`` in ``home`` (set up by ``agent_home`` unless it already is); stopped
    with one SIGTERM (a warm stop) at the end, unless it has exited already."""
    config = home / "agent.yaml"
    if not config.exists():
        agent_home(home, url)
    log = home / "agent.log"
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "pushagent", "run", "-c", str(config)],
            stdout=stream,
            stderr=subprocess.STDOUT,
            cwd=home,
            env={**os.environ, "BENCH_EXCHANGE_KEY": KEY},
        )
    sampling = contextlib.ExitStack()
    if PROFILE_DIR is not None:
        out = PROFILE_DIR / f"{home.parent.name}-{home.name}.txt"
        sampling.enter_context(profiled(process, out))
    try:
        if wait_started:
            wait_until(
                lambda: "pushagent watching" in log.read_text(errors="replace"),
                timeout=30,
                what="the agent to start",
            )
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        sampling.close()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"bench: no VmHWM in /proc/{pid}/status")


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    return (
        f"{model}, {os.cpu_count()} cores, {memory} RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


# --- the work -----------------------------------------------------------------------------------


def generate_csv(path: Path, *, size: int, mix: validation_speed.Mix) -> tuple[str, str]:
    """A CSV of realistic rows (by default some quoted fields, rare line breaks), a block
    repeated, in ``mix``'s shape (a UTF-8 BOM, every field quoted, its line ending); the sha256
    of what the agent sends (after a BOM) and of the whole file (what curl sends)."""
    rng = random.Random(11)
    block = "".join(validation_speed._row(rng, n, mix) for n in range(20_000)).encode()
    names = validation_speed.HEADER.strip().split(",")
    if mix.quote_all:
        names = [f'"{name}"' for name in names]
    header = (",".join(names) + mix.eol).encode()
    bom = codecs.BOM_UTF8 if mix.bom else b""
    sent = hashlib.sha256(header)
    with open(path, "wb") as out:
        out.write(bom + header)
        written = len(bom) + len(header)
        while written < size:
            out.write(block)
            sent.update(block)
            written += len(block)
    whole = hashlib.sha256(bom)
    whole.update(header)
    if bom:  # the file hashed again: only the BOM differs, at its start
        with open(path, "rb") as stream:
            stream.seek(len(bom) + len(header))
            while chunk := stream.read(1 << 20):
                whole.update(chunk)
        return sent.hexdigest(), whole.hexdigest()
    return sent.hexdigest(), sent.hexdigest()


class Bench:
    def __init__(
        self, work: Path, url: str, agent: subprocess.Popen[bytes], *, mix: validation_speed.Mix
    ) -> None:
        self.mix = mix
        self.work = work
        self.url = url
        self.sim = SimulatorControl(url)
        self.agent = agent
        self.home = work / "agent"
        self.stage = work / "stage"  # same disk as the drop folder: a rename, not a copy
        self.stage.mkdir()
        self._segment = 700_000
        self.large_digest = ""

    def job(self) -> tuple[int, int]:
        self._segment += 1
        job = self.sim.add_job(
            producerEndpointID=ENDPOINT,
            producerSegmentID=self._segment,
            identityMappings={"Email": "EMAIL_SHA256"},
        )
        return int(job["jobId"]), self._segment

    def forget_uploads(self, job: int) -> None:
        """The simulator keeps uploads on disk: remove them between phases."""
        for upload in self.sim.uploads(job):
            Path(upload.path).unlink(missing_ok=True)

    def delivered(self, job: int, done: Path) -> bool:
        """The simulator holds the job's upload and the file is in done/."""
        return done.exists() and bool(self.sim.uploads(job))

    def posts(self, job: int) -> list[dict[str, Any]]:
        path = f"/v1/jobs/{job}/data"
        return [r for r in self.sim.request_log() if r["method"] == "POST" and r["path"] == path]

    def drop(self, source: Path, segment: int) -> tuple[float, Path]:
        target = self.home / "drop" / f"{segment}.csv"
        renamed = time.time()
        os.rename(source, target)
        return renamed, self.home / "done" / f"{segment}.csv"

    # -- large file ---------------------------------------------------------------------------

    def curl(self, path: Path, digest: str, *how: str) -> float | str:
        """Seconds for curl to upload ``path`` to a fresh job (``how``: curl's body options), or
        why curl could not (``--data-binary @file`` loads the whole file, and gives up past
        about 2 GB)."""
        job, _ = self.job()
        started = time.perf_counter()
        curl = subprocess.run(
            [
                CURL,
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                *how,
                "-H",
                f"Authorization: Bearer {KEY}",
                "-H",
                "Content-Type: text/csv",
                f"{self.url}/v1/jobs/{job}/data",
            ],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        if curl.returncode != 0:
            return curl.stderr.splitlines()[0] if curl.stderr else f"exit {curl.returncode}"
        if curl.stdout != "200" or self.sim.uploads(job)[0].sha256 != digest:
            raise SystemExit(f"bench: curl upload failed: HTTP {curl.stdout} {curl.stderr}")
        self.forget_uploads(job)
        return seconds

    def upload_seconds(self, job: int) -> float:
        """The agent's own timing of the POST alone, from its log line "uploaded to job N"."""
        log = (self.home / "agent.log").read_text(errors="replace")
        found = re.search(rf"uploaded to job {job} .*duration=([0-9.]+)s", log)
        if found is None:
            raise SystemExit(f"bench: no 'uploaded to job {job}' line in the agent log")
        return float(found.group(1))

    def agent_upload(self, path: Path, digest: str) -> tuple[float, float, Path]:
        """Seconds from the rename of ``path`` into the drop folder to its upload stored and the
        file in done/, the POST's own share of that, and where the file is now."""
        job, segment = self.job()
        started = time.perf_counter()
        _, done = self.drop(path, segment)
        wait_until(partial(self.delivered, job, done), timeout=3600, what="the large file")
        seconds = time.perf_counter() - started
        if self.sim.uploads(job)[0].sha256 != digest:
            raise SystemExit("bench: the agent's upload differs from the file")
        self.forget_uploads(job)
        return seconds, self.upload_seconds(job), done

    def large_file(
        self, shape: str, mix: validation_speed.Mix, size: int, *, repeat: int,
        link_repeat: int, link_rate: int,
    ) -> tuple[list[Row], Path]:
        """The agent and ``curl -T`` in turn, ``repeat`` times on loopback, then
        ``link_repeat`` times through the simulator's receive throttle at ``link_rate`` bytes
        per second; each contender's best kept (the simulator writes every upload to disk, and
        on a shared VM single runs vary by 2x)."""
        path = self.stage / f"large-{shape.split()[0]}.csv"
        print(f"generating {size / 1e9:.2f} GB of CSV ({shape}) ...", file=sys.stderr)
        sent, whole = generate_csv(path, size=size, mix=mix)
        self.large_digest = sent
        size = path.stat().st_size
        mb = size / 1e6
        rows: list[Row] = []
        for link in (0, link_rate):
            where = f"a {link / 1e6:.0f} MB/s link" if link else "loopback"
            rounds = link_repeat if link else repeat
            streamed, agent_seconds, posting = self.contest(
                path, (sent, whole), link=link, rounds=rounds, what=f"{shape}, {where}"
            )
            ratio = agent_seconds / streamed
            target = 1.1 if link else 2.0
            label = f"large file {size / 1e9:.2f} GB, {shape}, {where}"
            rows += [
                Row(f"{label}: curl -T (streamed), best of {rounds}", self.speed(streamed, mb),
                    "", None),
                Row(f"{label}: agent, rename -> validated while sent -> done/",
                    self.speed(agent_seconds, mb), "", None),
                Row(f"{label}: agent / curl -T", f"{ratio:.2f}x", f"<= {target}x",
                    ratio <= target),
                Row(f"{label}: of which the agent's POST", self.speed(posting, mb), "", None),
            ]
        rss = peak_rss_mib(self.agent.pid)
        rows.append(Row(f"agent peak RSS (VmHWM) after the {shape} files", f"{rss:.1f} MiB",
                        "<= 100 MiB", rss <= 100))
        return rows, path

    def contest(
        self, path: Path, digests: tuple[str, str], *, link: int, rounds: int, what: str
    ) -> tuple[float, float, float]:
        """Best seconds of ``curl -T``, of the agent, and of the agent's POST alone."""
        sent, whole = digests
        streams: list[float | str] = []
        agents: list[tuple[float, float]] = []

        def agent() -> None:
            seconds, posting, done = self.agent_upload(path, sent)
            agents.append((seconds, posting))
            os.rename(done, path)

        contenders: list[Callable[[], None]] = [
            lambda: streams.append(self.curl(path, whole, "-T", str(path), "-X", "POST")),
            agent,
        ]
        self.sim.set_max_bytes_per_second(link)
        try:
            for round_ in range(rounds):
                print(f"large file, {what}: round {round_ + 1} of {rounds} ...", file=sys.stderr)
                # Each round starts with the other contender: neither always runs right after
                # the simulator wrote a gigabyte.
                for n in range(len(contenders)):
                    contenders[(round_ + n) % len(contenders)]()
        finally:
            self.sim.set_max_bytes_per_second(0)
        failed = [s for s in streams if isinstance(s, str)]
        if failed:
            raise SystemExit(f"bench: curl -T failed: {failed[0]}")
        agent_seconds, posting = min(agents)
        return min(s for s in streams if isinstance(s, float)), agent_seconds, posting

    @staticmethod
    def speed(seconds: float, mb: float) -> str:
        return f"{seconds:.2f} s ({mb / seconds:.0f} MB/s)"

    def large_files_at_once(self, path: Path, digest: str, count: int) -> list[Row]:
        """``count`` copies of the large file dropped together: one per upload worker, each
        validated and sent at the same time, the worst case for memory."""
        print(f"{count} large files at once ...", file=sys.stderr)
        jobs = [self.job() for _ in range(count)]
        copies = []
        for n in range(count):
            copy = self.stage / f"large-{n}.csv"
            os.link(path, copy)  # same bytes, no disk space: the agent moves, never writes
            copies.append(copy)
        started = time.perf_counter()
        done = [
            self.drop(copy, segment)[1] for copy, (_, segment) in zip(copies, jobs, strict=True)
        ]
        for (job, _), target in zip(jobs, done, strict=True):
            wait_until(
                partial(self.delivered, job, target), timeout=3600, what=f"the file for job {job}"
            )
            if self.sim.uploads(job)[0].sha256 != digest:
                raise SystemExit(f"bench: the agent's upload to job {job} differs from the file")
            self.forget_uploads(job)
            target.unlink()
        seconds = time.perf_counter() - started
        rss = peak_rss_mib(self.agent.pid)
        return [
            Row(
                f"{count} large files at once (one per upload worker)", f"{seconds:.2f} s", "", None
            ),
            Row(
                f"agent peak RSS (VmHWM) after {count} large files at once",
                f"{rss:.1f} MiB",
                "<= 100 MiB",
                rss <= 100,
            ),
        ]

    # -- validation ---------------------------------------------------------------------------

    def validation(self, path: Path) -> list[Row]:
        print("validation: csv.reader, then validate_csv ...", file=sys.stderr)
        # validation_speed's peak RSS is left out: ru_maxrss survives fork and exec on Linux, so
        # a child started from this (larger) process reports this process's size.
        bare, _, _ = validation_speed._run("csv", path)
        checked, _, detail = validation_speed._run("validate", path)
        if "problems=[]" not in detail:
            raise SystemExit(f"bench: the generated file is not valid: {detail}")
        mb = path.stat().st_size / 1e6
        speed = bare / checked
        return [
            Row(
                "validation: bare csv.reader loop", f"{bare:.2f} s ({mb / bare:.0f} MB/s)", "", None
            ),
            Row(
                "validation: validate_csv",
                f"{checked:.2f} s ({mb / checked:.0f} MB/s)",
                "",
                None,
            ),
            Row(
                "validation: validate_csv speed / csv.reader speed",
                f"{speed:.2f}x",
                ">= 1.0x",
                speed >= 1.0,
            ),
        ]

    # -- latency ------------------------------------------------------------------------------

    def latency(self, drops: int) -> list[Row]:
        print(f"latency: {drops} drops ...", file=sys.stderr)
        latencies: list[float] = []
        for n in range(drops):
            job, segment = self.job()
            source = self.stage / f".tiny-{n}.csv"
            source.write_bytes(f"Email\nlatency{n}@example.com\n".encode())
            renamed, done = self.drop(source, segment)
            post = wait_until(partial(self.posts, job), timeout=30, what=f"upload {n}")[0]
            latencies.append(post["time"] - renamed)
            wait_until(done.exists, timeout=30, what=f"drop {n} in done/")
            done.unlink()
        latencies.sort()
        median = statistics.median(latencies)
        p95 = latencies[min(len(latencies) - 1, round(0.95 * len(latencies)) - 1)]
        return [
            Row(
                f"latency, rename -> upload starts ({drops} drops): median",
                f"{median:.3f} s",
                "<= 0.5 s",
                median <= 0.5,
            ),
            Row("latency: p95", f"{p95:.3f} s", "<= 1 s", p95 <= 1.0),
            Row("latency: max", f"{latencies[-1]:.3f} s", "", None),
        ]

    # -- burst --------------------------------------------------------------------------------

    def burst(self, count: int) -> tuple[float, int]:
        """Seconds from the first rename to the last file in done/, and list calls meanwhile."""
        jobs = [self.job() for _ in range(count)]
        sources = []
        for n, (_, segment) in enumerate(jobs):
            source = self.stage / f".burst-{n}.csv"
            source.write_bytes(f"Email\nburst{segment}@example.com\n".encode())
            sources.append((source, segment))
        self.sim.clear_request_log()
        done = self.home / "done"
        started = time.perf_counter()
        for source, segment in sources:
            self.drop(source, segment)
        wait_until(
            lambda: count_entries(done) >= count,
            timeout=600,
            what=f"{count} files in done/",
            every=SLOW_POLL,
        )
        seconds = time.perf_counter() - started
        log = self.sim.request_log()
        lists = sum(1 for r in log if r["method"] == "GET" and r["path"] == LIST_PATH)
        posts = [r for r in log if r["method"] == "POST"]
        if len(posts) != count or any(r["status"] != 200 for r in posts):
            raise SystemExit(f"bench: {len(posts)} uploads for {count} files, or some failed")
        for _, segment in sources:
            (done / f"{segment}.csv").unlink()
        for job, _ in jobs:
            self.forget_uploads(job)
        return seconds, lists

    def bursts(self, count: int) -> list[Row]:
        small = max(10, count // 10)
        print(f"burst: {small} files, then {count} ...", file=sys.stderr)
        small_seconds, small_lists = self.burst(small)
        seconds, lists = self.burst(count)
        rate = count / seconds
        # One list call serves every pending file: the calls follow the time, not the files.
        bound = 3 + seconds / MIN_POLL_GAP_SECONDS
        return [
            Row(f"burst: {count} files for {count} waiting jobs", f"{seconds:.2f} s", "", None),
            Row("burst: files per second", f"{rate:.0f}/s", ">= 100/s", rate >= 100),
            Row(
                f"burst: list-jobs calls ({small} files: {small_lists} in {small_seconds:.2f} s)",
                f"{lists}",
                f"<= {bound:.0f} (time-bound)",
                lists <= bound,
            ),
        ]


# --- scale: many files at start, a storm, cold stops -----------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def add_jobs(url: str, segments: range, *, threads: int = 4) -> None:
    """A waiting job for each segment, created through the control API from a few
    connections at once (the simulator is a threaded server)."""
    print(f"creating {len(segments)} waiting jobs ...", file=sys.stderr)
    shares = [segments[n::threads] for n in range(threads)]

    def create(share: range) -> None:
        control = SimulatorControl(url)
        for segment in share:
            control.add_job(
                producerEndpointID=ENDPOINT,
                producerSegmentID=segment,
                identityMappings={"Email": "EMAIL_SHA256"},
            )
        control.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(create, shares))


def write_drops(folder: Path, segments: range) -> None:
    """One small valid CSV per segment, named ``<segment>.csv``."""
    for segment in segments:
        (folder / f"{segment}.csv").write_bytes(f"Email\nuser{segment}@example.com\n".encode())


def count_entries(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for _ in entries)


def journal_count(home: Path, state: str) -> int:
    """Files in ``state`` in the agent's journal, read-only (0 before the journal exists)."""
    path = home / "state" / "journal.sqlite3"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT count(*) FROM files WHERE state = ?", (state,)).fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not written yet
        return 0
    finally:
        db.close()


def list_calls(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in log if r["method"] == "GET" and r["path"] == LIST_PATH]


def startup(work: Path, files: int) -> list[Row]:
    """``files`` files already in the drop folder, each for its own segment with a waiting job,
    when the agent starts: start -> first upload, files per second start -> last in done/, peak
    RSS, and the CPU each process spent (the simulator's share of the machine)."""
    with simulator_process(work) as (url, simulator):
        segments = range(800_001, 800_001 + files)
        add_jobs(url, segments)
        home = work / "agent"
        agent_home(home, url)
        write_drops(home / "drop", segments)
        sim = SimulatorControl(url)
        sim.clear_request_log()
        sim_cpu = cpu_seconds(simulator.pid)
        print(f"startup: {files} files waiting in the drop folder ...", file=sys.stderr)
        started = time.time()
        with agent_process(home, url, wait_started=False) as agent:
            posts = wait_until(
                lambda: [r for r in sim.request_log() if r["method"] == "POST"],
                timeout=600,
                what="the first upload",
                every=SLOW_POLL,
            )
            first = min(r["time"] for r in posts) - started
            done = home / "done"
            wait_until(
                lambda: count_entries(done) >= files,
                timeout=3600,
                what=f"{files} files in done/",
                every=SLOW_POLL,
            )
            seconds = time.time() - started
            rss = peak_rss_mib(agent.pid)
            agent_cpu = cpu_seconds(agent.pid)
            sim_cpu = cpu_seconds(simulator.pid) - sim_cpu
            log = sim.request_log()  # the last MAX_ENTRIES requests: enough for the list calls
        lists = len(list_calls(log))
    rate = files / seconds
    return [
        Row(
            f"startup: {files} files present, own segment + waiting job each: start -> first "
            "upload",
            f"{first:.2f} s",
            "<= 5 s",
            first <= 5.0,
        ),
        Row(
            "startup: files delivered per second, start -> last in done/",
            f"{rate:.0f}/s ({seconds:.1f} s)",
            ">= 200/s",
            rate >= 200,
        ),
        Row(f"startup: agent peak RSS (VmHWM), {files} files", f"{rss:.1f} MiB", "<= 100 MiB",
            rss <= 100),
        Row(
            "startup: CPU seconds agent / simulator (2 cores)",
            f"{agent_cpu:.1f} / {sim_cpu:.1f}",
            "",
            None,
        ),
        Row("startup: list-jobs calls during the run (last 10,000 requests)", f"{lists}", "",
            None),
    ]


def storm(work: Path, small: int, count: int) -> list[Row]:
    """``small`` then ``count`` files renamed into the drop folder in one loop, each for a
    waiting job, while the agent runs: files per second and list calls for each."""
    with simulator_process(work) as (url, simulator), agent_process(work / "agent", url) as agent:
        bench = Bench(work, url, agent, mix=validation_speed.Mix(
                quoted_share=0.0, multiline_share=0.0, quote_all=False, eol="\n"
            ))
        print(f"storm: {small} files ...", file=sys.stderr)
        small_seconds, small_lists = bench.burst(small)
        print(f"storm: {count} files ...", file=sys.stderr)
        sim_cpu, agent_cpu = cpu_seconds(simulator.pid), cpu_seconds(agent.pid)
        seconds, lists = bench.burst(count)
        sim_cpu = cpu_seconds(simulator.pid) - sim_cpu
        agent_cpu = cpu_seconds(agent.pid) - agent_cpu
    rate, small_rate = count / seconds, small / small_seconds
    # The calls must follow the time, not the files: five times the files may take five times
    # as long, so the bound is the small storm's calls per second over the big storm's time,
    # doubled for the waves readiness makes; one call per file would be far above it.
    bound = max(3.0, 2 * small_lists * seconds / small_seconds)
    return [
        Row(f"storm: {small} files renamed in at once", f"{small_rate:.0f}/s "
            f"({small_seconds:.2f} s)", "", None),
        Row(f"storm: {count} files renamed in at once: files per second",
            f"{rate:.0f}/s ({seconds:.2f} s)", ">= 300/s", rate >= 300),
        Row(
            f"storm: list-jobs calls, {small} files -> {count} files",
            f"{small_lists} -> {lists}",
            f"<= {bound:.0f} (not per file)",
            lists <= bound,
        ),
        Row(f"storm: CPU seconds agent / simulator, {count} files",
            f"{agent_cpu:.1f} / {sim_cpu:.1f}", "", None),
    ]


class StopCase(Enum):
    LIST = "held list call"
    PLANNING = "planning pass"
    UPLOAD = "held upload"


def cold_stop(agent: subprocess.Popen[bytes]) -> float:
    """Two SIGTERMs (warm, then cold) 50 ms apart; seconds from the first to the exit (a warm
    stop with no upload in progress may end it before the second)."""
    sent = time.perf_counter()
    agent.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=120)
    except subprocess.TimeoutExpired:
        agent.kill()
        agent.wait()
        return float("inf")
    return time.perf_counter() - sent


def stop_held(work: Path, sim: SimulatorControl, url: str, case: StopCase) -> float:
    """Cold stop while the agent's list call (or its one upload) is held by a delay fault."""
    home = work / case.name.lower()
    agent_home(home, url)
    segment = 900_001 if case is StopCase.LIST else 900_002
    job = sim.add_job(
        producerEndpointID=ENDPOINT,
        producerSegmentID=segment,
        identityMappings={"Email": "EMAIL_SHA256"},
    )["jobId"]
    path = LIST_PATH if case is StopCase.LIST else f"/v1/jobs/{job}/data"
    sim.add_fault(method="*", path=f"^{path}$", count=None, delay=60)
    write_drops(home / "drop", range(segment, segment + 1))
    with agent_process(home, url) as agent:
        wait_until(
            lambda: any(f["fired"] for f in sim.faults()),
            timeout=60,
            what=f"the agent's {case.value}",
        )
        time.sleep(0.2)  # well inside the call: the worker is blocked on the socket
        seconds = cold_stop(agent)
    sim.clear_faults()
    return seconds


def stop_planning(work: Path, sim: SimulatorControl, url: str, files: int) -> float:
    """Cold stop right after a list call returns ``files`` waiting jobs to an agent with
    ``files`` waiting files: list calls answer no jobs until every file waits, then the jobs."""
    home = work / "planning"
    agent_home(home, url)
    segments = range(1_000_001, 1_000_001 + files)
    add_jobs(url, segments)
    write_drops(home / "drop", segments)
    sim.add_fault(method="GET", path=f"^{LIST_PATH}$", count=None, status=200, body="[]")
    with agent_process(home, url) as agent:
        wait_until(
            lambda: journal_count(home, "waiting") >= files,
            timeout=600,
            what=f"{files} files waiting",
            every=SLOW_POLL,
        )
        sim.clear_request_log()
        sim.clear_faults()  # the next poll (matching.poll_seconds) gets the jobs
        wait_until(
            lambda: [r for r in list_calls(sim.request_log()) if r["fault"] is None],
            timeout=60,
            what="a list call answered with the jobs",
            every=SLOW_POLL,
        )
        # The pass has begun once it claimed a file; a stop before that (while the answer is
        # still being read) would not be one during the pass.
        wait_until(
            lambda: journal_count(home, "claimed"), timeout=120, what="the first claim"
        )
        return cold_stop(agent)


def cold_stops(work: Path, files: int) -> list[Row]:
    rows = []
    with simulator_process(work) as (url, _):
        sim = SimulatorControl(url)
        for case in StopCase:
            print(f"cold stop: {case.value} ...", file=sys.stderr)
            if case is StopCase.PLANNING:
                seconds = stop_planning(work, sim, url, files)
                what = f"{case.value} ({files} jobs, {files} waiting files)"
            else:
                seconds = stop_held(work, sim, url, case)
                what = case.value
            rows.append(
                Row(f"cold stop (2 SIGTERMs) during a {what}", f"{seconds:.2f} s", "<= 1 s",
                    seconds <= 1.0)
            )
    return rows


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("measure", "value", "target")]
    head = ("measure", "value", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    line = "+".join("-" * (w + 2) for w in [*widths, 6])
    print(line)
    print(" | ".join(h.ljust(w) for h, w in zip([*head, "result"], [*widths, 6], strict=True)))
    print(line)
    for r in rows:
        result = "" if r.passed is None else ("PASS" if r.passed else "MISS")
        print(
            " | ".join(
                v.ljust(w)
                for v, w in zip((r.measure, r.value, r.target, result), [*widths, 6], strict=True)
            )
        )
    print(line)


def shared_phases(work: Path, phases: set[str], args: argparse.Namespace) -> list[Row]:
    """large, validation, latency and burst: one simulator and one agent, in that order."""
    rows: list[Row] = []
    with simulator_process(work) as (url, _), agent_process(work / "agent", url) as agent:
        mix = validation_speed.Mix(
            quoted_share=args.quoted_share,
            multiline_share=args.multiline_share,
            quote_all=False,
            eol="\n",
        )
        bench = Bench(work, url, agent, mix=mix)
        if "large" in phases:
            # The two shapes of issue 14: plain unquoted rows; a CRM export (a BOM, CRLF, every
            # field quoted, and --quoted-share of the rows with commas and quotes inside).
            plain = validation_speed.Mix(0.0, 0.0, False, "\n")
            crm = dataclasses.replace(mix, quote_all=True, eol="\r\n", bom=True)
            size = int(args.size_gb * 1e9)
            options = {"repeat": args.repeat, "link_repeat": args.link_repeat,
                       "link_rate": int(args.link_mbps * 1e6)}
            found, large = bench.large_file("CRM-shaped (BOM, CRLF, all quoted)", crm, size,
                                            **options)
            rows += found
            large.unlink()
            found, large = bench.large_file("plain unquoted rows, LF", plain, size, **options)
            rows += found
            rows += bench.large_files_at_once(large, bench.large_digest, UPLOAD_WORKERS)
            if "validation" in phases:
                rows += bench.validation(large)
            large.unlink()
        if "latency" in phases:
            rows += bench.latency(args.drops)
        if "burst" in phases:
            rows += bench.bursts(args.burst)
        rss = peak_rss_mib(agent.pid)
        rows.append(
            Row("agent peak RSS (VmHWM) at the end", f"{rss:.1f} MiB", "<= 100 MiB", rss <= 100)
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="large file size (1.0)")
    parser.add_argument("--drops", type=int, default=50, help="drops timed for latency (50)")
    parser.add_argument("--burst", type=int, default=1000, help="files in the burst (1000)")
    parser.add_argument(
        "--quoted-share",
        type=float,
        default=0.1,
        help="large file: share of rows with quoted fields (0.1)",
    )
    parser.add_argument(
        "--multiline-share",
        type=float,
        default=0.001,
        help="large file: share of rows with a line break in a field (0.001)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="large-file uploads per contender on loopback, best kept (3)",
    )
    parser.add_argument(
        "--link-mbps", type=float, default=50.0,
        help="large file: the simulator's receive throttle for the link rows, MB/s (50)",
    )
    parser.add_argument(
        "--link-repeat", type=int, default=1,
        help="large-file uploads per contender through the throttle, best kept (1)",
    )
    parser.add_argument(
        "--files", type=int, default=20_000, help="startup: files present at start (20000)"
    )
    parser.add_argument(
        "--storm", type=int, default=5000, help="storm: files renamed in at once (5000)"
    )
    parser.add_argument(
        "--storm-small", type=int, default=1000, help="storm: the smaller storm first (1000)"
    )
    parser.add_argument(
        "--stop-files",
        type=int,
        help="stop: jobs and waiting files for the planning-pass case (default: --files)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample every agent process with py-spy into this folder (collapsed stacks)",
    )
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (validation needs large)",
    )
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if phases - set(PHASES):
        parser.error(f"unknown phases {sorted(phases - set(PHASES))}; use {', '.join(PHASES)}")
    if "large" in phases and not Path(CURL).exists():
        raise SystemExit(f"bench: {CURL} is needed for the reference upload")
    if args.profile is not None:
        global PROFILE_DIR
        PROFILE_DIR = args.profile.resolve()
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pushagent-bench-", dir=args.workdir))
    print(f"work folder: {work}", file=sys.stderr)
    rows: list[Row] = []
    try:
        if phases & set(SHARED_PHASES):
            rows += shared_phases(work / "shared", phases, args)
        if "startup" in phases:
            rows += startup(work / "startup", args.files)
        if "storm" in phases:
            rows += storm(work / "storm", args.storm_small, args.storm)
        if "stop" in phases:
            rows += cold_stops(work / "stop", args.stop_files or args.files)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {machine()}")
    print_table(rows)
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
