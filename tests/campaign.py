"""A seeded randomized fault campaign (issue 9): the real ``pushagent run`` process against the
simulator, with awkward drops, injected server faults, kill -9 and SIGTERM at random moments.

A seed fixes the plan (``plan(seed, steps, mix=...)``); timing is real, so a run is reproducible
in what it does, not to the millisecond. The ``classic`` mix is issue 9's: SEGMENT_EXPORT jobs and
UTF-8 comma drops. The ``full`` mix (the default) adds IDENTITY_IMPORT jobs, drops in other
dialects (UTF-16 with a BOM, cp1252 in the segment set for it, ';', .csv.gz, .zip, a UTF-8 BOM,
and two that cannot be read) and kill -9 while a large file is being converted; each job must
then hold one upload whose rows, as csv reads UTF-8 comma CSV, are the original's, and done/ or
failed/ the original as dropped.

After the steps every fault is cleared, the agent is let settle, stopped with SIGTERM, and the
promise is checked from the simulator's stored uploads and request log, the folders, the agent's
journal and ``pushagent status``. Each broken rule is a ``Violation`` naming its evidence;
``CampaignResult.report()`` prints the seed and the steps.

    python -m tests.campaign --seeds 20 --steps 14     # seeds 0..19
    python -m tests.campaign --seed 7 --keep           # one seed, its folder kept for a look
    python -m tests.campaign --seeds 20 --mix classic  # issue 9's plans, as they were
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from loguru import logger

from pushagent.simulator import Simulator
from tests.e2e import KEY, waiting_job
from tests.faultkit import (
    WAITING,
    FaultHome,
    csv_rows,
    entries,
    journal,
    simulator,
    status_json,
)

SEGMENTS = (61001, 61002, 61003, 61004)
# The full mix's segment whose drops are cp1252 and ';' (set in input.segments): only its kind
# of drop goes there, and no other kind of drop goes there.
CP1252_SEGMENT = 61005
LIST_PATH = r"^/v1/jobs/SEGMENT_EXPORT$"
LIST_PATHS = (LIST_PATH, r"^/v1/jobs/IDENTITY_IMPORT$", r"^/v1/jobs/[A-Z_]+$")
EXPORT, IMPORT = "SEGMENT_EXPORT", "IDENTITY_IMPORT"
INPUT = f"""\
input:
  segments:
    "{CP1252_SEGMENT}": {{encoding: cp1252, delimiter: ";"}}
"""
REDIRECTS = (301, 302, 307)
# Statuses after which failing the job is a fair answer: the server refused the data for good.
# 401/403 (key), 404/409 (job state, checked again), 408/429 (try later) never are.
NOT_PERMANENT = frozenset({401, 403, 404, 408, 409, 429})
MAX_ATTEMPTS = 8
READ_TIMEOUT = 1.5
SETTLE = 0.6
GRACE = 3.0
SLOW_PAUSE = 0.1  # well inside SETTLE: a slow writer must never be taken mid-write
QUIET = 3.0  # nothing changed for this long (longer than any backoff or held answer): settled
SETTLE_DEADLINE = 30.0
REPORT_SUFFIX = ".error.json"
WATCHING = "pushagent watching"
# Deliveries a file gave up on without sending: the job answered that it is gone or taken (404,
# 409, 410; the file then goes to its other jobs), or the file's attempts never reached it. Such
# a job may stay waiting, or take another file.
LET_GO = frozenset({"gone", "released"})
CONVERSION_WAIT = 15.0  # for a large drop's conversion to start, after its job is listed
HOOK_TOKEN = "hook-token-5b7e21c4"  # in the webhook's URL and header: a secret like the key
NOTIFY = f"""\
notify:
  webhook_url: "{{url}}/hook/{HOOK_TOKEN}"
  headers: {{{{Authorization: "Bearer {HOOK_TOKEN}"}}}}
  after_seconds: 1
  max_attempts: 2
"""


class Webhook:
    """``notify.webhook_url`` on loopback, for the full mix: keeps every body, answers most
    posts 200, some 500, and holds some for a while (the agent must never wait on it)."""

    def __init__(self, seed: int) -> None:
        self.bodies: list[bytes] = []
        self._rng = random.Random(f"{seed}:hook")
        self._lock = threading.Lock()
        self._release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook._lock:
                    hook.bodies.append(body)
                    choice = hook._rng.random()
                if choice < 0.15:
                    hook._release.wait(3)
                self.send_response(500 if choice < 0.3 else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the agent hung up on a held answer: expected

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="webhook", daemon=True).start()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


class Mix(Enum):
    CLASSIC = "classic"  # issue 9's plans, unchanged: the CI seeds chosen then keep their mix
    FULL = "full"  # also IDENTITY_IMPORT jobs, other dialects, kill -9 during a conversion


class StepKind(Enum):
    JOBS = "jobs"
    DROP = "drop"
    FAULT = "fault"
    KILL9 = "kill -9"
    SIGTERM = "sigterm"
    PAUSE = "pause"
    CONVERT_KILL = "kill -9 while converting"
    RETRY = "pushagent retry --all"


class DropKind(Enum):
    VALID = "valid"
    RAGGED = "ragged row"
    NUL = "NUL byte"
    DUPLICATE = "same name again"
    APPENDED = "appended after the rename"
    LONG_NAME = "long name"
    NEWLINE_NAME = "newline in the name"
    UNREADABLE = "chmod 000"
    SLOW = "written slowly in place"
    # The full mix's: a converted copy is what is sent (a UTF-8 BOM: the bytes after it).
    UTF16 = "UTF-16LE with a BOM, tab-separated"
    CP1252 = "cp1252, ';'-separated, in the segment set for it"
    SEMICOLON = "UTF-8, ';'-separated"
    GZIP = ".csv.gz"
    ZIP = ".zip holding one CSV"
    UTF8_BOM = "UTF-8 with a BOM"
    CP1252_UNSET = "cp1252 where the encoding is auto"
    BAD_GZIP = "a .csv.gz cut short"
    DIALECT_APPENDED = "UTF-16 or .csv.gz, appended after the rename"
    DIALECT_SLOW = "UTF-16 written slowly in place"


CLASSIC_DROPS = tuple(DropKind)[:9]
INVALID = frozenset({DropKind.RAGGED, DropKind.NUL, DropKind.CP1252_UNSET, DropKind.BAD_GZIP})


@dataclass(frozen=True)
class Step:
    kind: StepKind
    segment: int = 0
    jobs: int = 0
    drop: DropKind | None = None
    fault: Mapping[str, Any] | None = None
    seconds: float = 0.0
    name_bytes: int = 0
    category: str = EXPORT
    rows: int = 0  # a CONVERT_KILL drop's rows
    delay: float = 0.0  # a CONVERT_KILL: from the conversion's start to the kill

    def describe(self) -> str:
        if self.kind is StepKind.JOBS:
            what = "" if self.category == EXPORT else f" {self.category}"
            return f"jobs: {self.jobs} waiting{what} job(s) for segment {self.segment}"
        if self.kind is StepKind.CONVERT_KILL:
            return (f"kill -9 {self.delay:.2f} s into converting {self.rows} UTF-16 rows for "
                    f"segment {self.segment}, restart after {self.seconds:.2f} s")
        if self.kind is StepKind.DROP and self.drop is not None:
            extra = f", {self.name_bytes}-byte name" if self.name_bytes else ""
            if self.drop in (DropKind.APPENDED, DropKind.DIALECT_APPENDED):
                extra += f", append after {self.seconds:.2f} s"
            return f"drop: {self.drop.value} for segment {self.segment}{extra}"
        if self.kind is StepKind.FAULT:
            return f"fault: {json.dumps(self.fault, sort_keys=True)}"
        if self.kind in (StepKind.KILL9, StepKind.SIGTERM):
            return f"{self.kind.value}, restart after {self.seconds:.2f} s"
        if self.kind is StepKind.RETRY:
            return "retry: pushagent retry --all, the agent running"
        return f"pause {self.seconds:.2f} s"


def plan(
    seed: int, steps: int, *, as_root: bool | None = None, mix: Mix = Mix.FULL
) -> list[Step]:
    """The campaign's steps for ``seed``: jobs first, then a random mix. ``as_root``: root reads
    any file, so chmod 000 drops become valid ones (default: whether this process is root).
    A ``Mix.CLASSIC`` plan draws exactly what issue 9's did, so its seeds replay as before."""
    rng = random.Random(seed)
    root = os.geteuid() == 0 if as_root is None else as_root
    full = mix is Mix.FULL
    chosen = [Step(StepKind.JOBS, segment=s, jobs=rng.choice((1, 1, 2))) for s in SEGMENTS[:2]]
    weights = {
        StepKind.JOBS: 2, StepKind.DROP: 7, StepKind.FAULT: 4,
        StepKind.KILL9: 1, StepKind.SIGTERM: 1, StepKind.PAUSE: 2,
    }
    if full:
        weights[StepKind.CONVERT_KILL] = 1
        weights[StepKind.RETRY] = 1
    segments = (*SEGMENTS, CP1252_SEGMENT) if full else SEGMENTS
    drops = list(DropKind) if full else list(CLASSIC_DROPS)
    while len(chosen) < steps:
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        segment = rng.choice(segments)
        if kind is StepKind.JOBS:
            category = rng.choice((EXPORT, EXPORT, IMPORT)) if full else EXPORT
            chosen.append(
                Step(kind, segment=segment, jobs=rng.choice((1, 1, 2)), category=category)
            )
        elif kind is StepKind.CONVERT_KILL:
            chosen.append(Step(
                kind, segment=rng.choice(SEGMENTS), rows=rng.randint(100_000, 250_000),
                delay=rng.uniform(0, 0.6), seconds=rng.uniform(0, 0.5),
            ))
        elif kind is StepKind.DROP:
            drop = rng.choice(drops)
            if drop is DropKind.UNREADABLE and root:
                drop = DropKind.VALID
            if full and (drop is DropKind.CP1252) != (segment == CP1252_SEGMENT):
                segment = CP1252_SEGMENT if drop is DropKind.CP1252 else rng.choice(SEGMENTS)
            chosen.append(
                Step(
                    kind, segment=segment, drop=drop,
                    seconds=rng.uniform(0, 1.5)
                    if drop in (DropKind.APPENDED, DropKind.DIALECT_APPENDED) else 0.0,
                    name_bytes=rng.randint(240, 254) if drop is DropKind.LONG_NAME else 0,
                )
            )
        elif kind is StepKind.FAULT:
            chosen.append(Step(kind, fault=_fault(rng, full=full)))
        elif kind in (StepKind.KILL9, StepKind.SIGTERM):
            chosen.append(Step(kind, seconds=rng.uniform(0, 0.5)))
        elif kind is StepKind.RETRY:
            chosen.append(Step(kind))
        else:
            chosen.append(Step(kind, seconds=rng.uniform(0, 1.0)))
    return chosen


def _fault(rng: random.Random, *, full: bool) -> dict[str, Any]:
    """A fault on uploads (any job, or one job by position in the campaign's list) or list calls
    (the full mix's: of either category, or both). ``job``: an index into the jobs created so
    far, resolved when the step runs."""
    target: dict[str, Any] = (
        {"method": "GET", "path": rng.choice(LIST_PATHS) if full else LIST_PATH}
        if rng.random() < 0.3
        else {"method": "POST", "path": r"/data$", "job": rng.randrange(64)}
    )
    if target["method"] == "POST" and rng.random() < 0.4:
        del target["job"]  # any upload
    what = rng.choice(("status", "status", "redirect", "drop", "drop_after", "delay"))
    spec: dict[str, Any] = {**target, "count": rng.randint(1, 3)}
    if what == "status":
        spec["status"] = rng.randint(400, 599)
    elif what == "redirect":
        spec["status"] = rng.choice(REDIRECTS)
    elif what == "drop":
        spec["drop"] = True
    elif what == "drop_after":
        spec["drop_after"] = True
    else:
        spec["delay"] = round(rng.uniform(0.2, 2.5), 2)
    return spec


# --- what was dropped -------------------------------------------------------------------------


@dataclass
class Dropped:
    """One dropped file: its name under drop/, its bytes at the rename (``initial``) and its
    final bytes (differ only for an append after the rename), and whether it is valid CSV.
    ``rows``: for a file in another dialect, what it holds as csv reads it in that dialect; an
    upload of it is UTF-8 comma CSV (no BOM) with exactly these rows."""

    rel_path: str
    kind: DropKind
    segment: int
    initial: bytes
    final: bytes
    valid: bool
    skipped: str | None = None  # why the dropper never dropped it
    rows: list[list[str]] | None = None
    final_rows: list[list[str]] | None = None  # an append after the rename: the rows then

    @property
    def acceptable(self) -> set[bytes]:
        """What an accepted upload of this file may hold, byte for byte: the complete file as
        renamed in, or its final content; never a mix. A converted one is told by its rows."""
        return {self.initial, self.final} if self.valid and self.rows is None else set()


def written(rows: Sequence[Sequence[str]], *, delimiter: str = ",", quote_all: bool = False) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n",
               quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerows(rows)
    return out.getvalue()


def canonical_rows(body: bytes) -> list[list[str]] | None:
    """The rows of an upload as the Exchange reads it (UTF-8 without a BOM, commas); None when
    it is not that."""
    if body.startswith(codecs.BOM_UTF8):
        return None
    try:
        return list(csv.reader(io.StringIO(body.decode("utf-8"), newline=""), strict=True))
    except (UnicodeDecodeError, csv.Error):
        return None


def zipped(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return out.getvalue()


NOTES = ("", "plain", "a;b", "1,5", 'say "hi"', "two\r\nlines", "tab\there", "pipe|d", "Anaïs €")


def dialect_rows(tag: str, count: int, rng: random.Random) -> list[list[str]]:
    """Rows every dialect can hold (cp1252 included) with the awkward bits: quotes, the other
    delimiters, quoted line breaks, accents."""
    return [["Email", "name", "note"]] + [
        [f"user{n}.{tag}@example.com", f"Zoë{n}", rng.choice(NOTES)] for n in range(count)
    ]


def dialect_drop(
    kind: DropKind, tag: str, segment: int, rng: random.Random
) -> tuple[str, bytes, list[list[str]]]:
    """(name under drop/, bytes, rows) of a full-mix drop of ``kind``."""
    rows = dialect_rows(tag, 1 + rng.randrange(30), rng)
    name = f"{segment}/d-{tag}.csv"
    if kind is DropKind.DIALECT_APPENDED and rng.random() < 0.5:
        return f"{name}.gz", gzip.compress(written(rows).encode()), rows
    if kind in (DropKind.UTF16, DropKind.DIALECT_APPENDED, DropKind.DIALECT_SLOW):
        return name, codecs.BOM_UTF16_LE + written(rows, delimiter="\t").encode("utf-16-le"), rows
    if kind in (DropKind.CP1252, DropKind.CP1252_UNSET):
        return name, written(rows, delimiter=";").encode("cp1252"), rows
    if kind is DropKind.SEMICOLON:
        return name, written(rows, delimiter=";").encode(), rows
    if kind is DropKind.UTF8_BOM:
        return name, codecs.BOM_UTF8 + written(rows, quote_all=rng.random() < 0.5).encode(), rows
    inner = written(rows, delimiter=rng.choice((",", ";", "\t"))).encode()
    if kind is DropKind.ZIP:
        return f"{segment}/d-{tag}.zip", zipped(f"export/d-{tag}.csv", inner), rows
    packed = gzip.compress(inner)
    if kind is DropKind.BAD_GZIP:
        packed = packed[: -rng.randint(4, 12)]
    return f"{name}.gz", packed, rows


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str
    evidence: str = ""


@dataclass
class CampaignResult:
    seed: int
    steps: list[Step]
    drops: list[Dropped] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repeats: dict[tuple[str, str], int] = field(default_factory=dict)
    log_tail: str = ""
    seconds: float = 0.0
    classic: bool = False

    def report(self) -> str:
        lines = [
            f"seed {self.seed}: {len(self.violations)} violation(s) in {self.seconds:.1f} s "
            f"(reproduce: python -m tests.campaign --seed {self.seed} --steps {len(self.steps)}"
            f"{' --mix classic' if self.classic else ''})",
            "steps:",
            *(f"  {n:2}. {step.describe()}" for n, step in enumerate(self.steps)),
            "drops:",
            *(
                f"  {d.rel_path!r} ({d.kind.value}, {len(d.final)} B"
                f"{', skipped: ' + d.skipped if d.skipped else ''})"
                for d in self.drops
            ),
            *(f"note: {note}" for note in self.notes),
        ]
        for violation in self.violations:
            times = self.repeats.get((violation.rule, violation.message), 1)
            again = f" ({times} times)" if times > 1 else ""
            lines.append(f"VIOLATION [{violation.rule}] {violation.message}{again}")
            if violation.evidence:
                lines.extend(f"    {line}" for line in violation.evidence.splitlines())
        if self.violations and self.log_tail:
            lines += ["agent log (tail):", *(f"  | {line}" for line in self.log_tail.splitlines())]
        return "\n".join(lines)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


# --- running it -------------------------------------------------------------------------------


class CampaignHome(FaultHome):
    """A ``FaultHome`` whose agent may import pushagent from ``agent_path`` (another checkout
    or an exported commit) while the campaign itself uses this tree's simulator."""

    def __init__(
        self, root: Path, url: str, *, agent_path: Path | None, extra: str = ""
    ) -> None:
        super().__init__(
            root, url, settle=SETTLE, rescan=1.0, poll=0.3, workers=2,
            read_timeout=READ_TIMEOUT, max_attempts=MAX_ATTEMPTS, grace=GRACE,
        )
        if extra:
            with open(self.config, "a", encoding="utf-8") as config:
                config.write(extra)
        self.agent_path = agent_path

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.agent_path is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.agent_path), env.get("PYTHONPATH")) if p
            )
        return env


class Campaign:
    def __init__(
        self, seed: int, steps: Sequence[Step], root: Path, sim: Simulator,
        *, agent_path: Path | None = None, mix: Mix = Mix.FULL,
    ) -> None:
        self.seed = seed
        self.steps = list(steps)
        self.root = root
        self.sim = sim
        self.rng = random.Random(f"{seed}:run")  # choices that depend on what happened
        self.hook = Webhook(seed) if mix is Mix.FULL else None
        extra = INPUT + NOTIFY.format(url=self.hook.url) if self.hook is not None else ""
        self.home = CampaignHome(root / "agent", sim.url, agent_path=agent_path, extra=extra)
        self.stage = root / "stage"
        self.stage.mkdir()
        self.jobs: list[int] = []
        self.job_segment: dict[int, int] = {}
        self.result = CampaignResult(seed=seed, steps=self.steps, classic=mix is Mix.CLASSIC)
        self.writers: list[threading.Thread] = []
        self.started_at = 0.0
        self._rows: dict[bytes, list[list[str]] | None] = {}  # canonical_rows, per upload

    def violate(self, rule: str, message: str, evidence: str = "") -> None:
        """Record a broken rule; the same one again (a crash loop) only counts up."""
        key = (rule, message)
        self.result.repeats[key] = self.result.repeats.get(key, 0) + 1
        if self.result.repeats[key] == 1:
            self.result.violations.append(Violation(rule, message, evidence))

    def run(self) -> CampaignResult:
        started = time.monotonic()
        try:
            self.start_agent()
            for number, step in enumerate(self.steps):
                self.check_alive(f"before step {number}")
                self.do(number, step)
            for writer in self.writers:
                writer.join(5)
            self.sim.clear_faults()
            self.check_alive("after the steps")
            if self.home.process is None:
                self.start_agent()
            if not self.settle():
                self.violate(
                    "settles", f"still changing, or files unexplained, after {SETTLE_DEADLINE} s",
                    self.folders(),
                )
            self.stop_agent("the final stop")
            self.check()
        finally:
            if self.home.process is not None:
                self.home.kill9()
            if self.hook is not None:
                self.hook.close()
            self.result.log_tail = "\n".join(self.home.log().splitlines()[-60:])
            self.result.seconds = time.monotonic() - started
        return self.result

    # -- the agent ----------------------------------------------------------------------------

    def start_agent(self) -> None:
        """Start the agent and wait until it says it watches (the log is appended across
        restarts: a new line is counted), so a signal never lands before its handlers."""
        started = self.home.log().count(WATCHING)
        self.home.start()
        self.started_at = time.monotonic()
        deadline = time.monotonic() + 20
        while self.home.log().count(WATCHING) <= started:
            if not self.home.alive() or time.monotonic() > deadline:
                self.violate("starts", "the agent did not start", self.home.log()[-3000:])
                raise _Abort
            time.sleep(0.05)

    def stop_agent(self, when: str) -> None:
        try:
            code = self.home.stop(signal.SIGTERM, timeout=GRACE + 15)
        except subprocess.TimeoutExpired:
            self.violate("sigterm", f"{when}: the agent did not exit within {GRACE + 15:g} s")
            self.home.kill9()
            return
        if code != 0:
            self.violate("sigterm", f"{when}: SIGTERM exit code {code}, expected 0")

    def check_alive(self, when: str) -> None:
        process = self.home.process
        if process is not None and process.poll() is not None:
            self.violate(
                "keeps running", f"{when}: the agent exited ({process.returncode})",
                "\n".join(self.home.log().splitlines()[-3:]),
            )
            self.home.process = None
            self.start_agent()

    # -- one step -----------------------------------------------------------------------------

    def do(self, number: int, step: Step) -> None:
        if step.kind is StepKind.JOBS:
            for _ in range(step.jobs):
                self.add_job(step.segment, step.category)
        elif step.kind is StepKind.DROP:
            self.drop(number, step)
        elif step.kind is StepKind.CONVERT_KILL:
            self.kill_while_converting(number, step)
        elif step.kind is StepKind.RETRY:
            self.retry_failed(number)
        elif step.kind is StepKind.FAULT:
            assert step.fault is not None
            spec = dict(step.fault)
            job = spec.pop("job", None)
            if job is not None:
                if not self.jobs:
                    return
                spec["path"] = rf"^/v1/jobs/{self.jobs[job % len(self.jobs)]}/data$"
            self.sim.add_fault(**spec)
        elif step.kind is StepKind.KILL9:
            self.home.kill9()
            time.sleep(step.seconds)
            self.start_agent()
        elif step.kind is StepKind.SIGTERM:
            self.stop_agent(f"step {number}")
            time.sleep(step.seconds)
            self.start_agent()
        else:
            time.sleep(step.seconds)

    def add_job(self, segment: int, category: str) -> int:
        fields = {} if category == EXPORT else {"jobCategory": category}
        job = waiting_job(self.sim, segment, **fields)
        self.jobs.append(job)
        self.job_segment[job] = segment
        return job

    def retry_failed(self, number: int) -> None:
        """The operator's ``pushagent retry --all`` while the agent runs: every file in failed/
        back to the drop folder (the campaign follows files by their bytes)."""
        done = subprocess.run(
            [sys.executable, "-m", "pushagent", "retry", "-c", str(self.home.config), "--all"],
            capture_output=True, text=True, env=self.home.env(), cwd=self.home.root, timeout=60,
        )
        said = done.stdout + done.stderr
        if done.returncode != 0 or "Traceback" in said:
            self.violate("retry works", f"step {number}: pushagent retry --all exited "
                         f"{done.returncode}", said[-2000:])
        if KEY in said:
            self.violate("no key anywhere", "pushagent retry printed the API key")

    def kill_while_converting(self, number: int, step: Step) -> None:
        """A large UTF-16 drop with a job waiting for it; kill -9 ``step.delay`` after its
        converted copy is started (a ``.tmp`` in the claim area), then a restart."""
        tag = f"s{self.seed}n{number}"
        self.add_job(step.segment, EXPORT)
        rows = [["Email", "name", "note"]] + [
            [f"user{n}.{tag}@example.com", f"Ü{n}", "a;b" if n % 7 else 'x "y"\nz']
            for n in range(step.rows)
        ]
        data = codecs.BOM_UTF16_LE + written(rows, delimiter="\t").encode("utf-16-le")
        name = f"{step.segment}/big-{tag}.csv"
        self.result.drops.append(
            Dropped(name, DropKind.UTF16, step.segment, data, data, True, rows=rows)
        )
        staged = self.stage / f"{tag}.csv"
        staged.write_bytes(data)
        (self.home.drop / str(step.segment)).mkdir(exist_ok=True)
        os.rename(staged, self.home.drop / name)
        deadline = time.monotonic() + CONVERSION_WAIT
        while not any(e.endswith(".tmp") for e in entries(self.claimed)):
            if time.monotonic() > deadline:
                self.result.notes.append(f"step {number}: no conversion seen; killed anyway")
                break
            time.sleep(0.01)
        time.sleep(step.delay)
        self.home.kill9()
        time.sleep(step.seconds)
        self.start_agent()

    def drop(self, number: int, step: Step) -> None:
        assert step.drop is not None
        tag = f"s{self.seed}n{number}"
        folder = self.home.drop / str(step.segment)
        folder.mkdir(exist_ok=True)
        kind = step.drop
        data = csv_rows(tag, rows=1 + self.rng.randrange(20))
        name = f"{step.segment}/c-{tag}.csv"
        rows: list[list[str]] | None = None
        if kind not in CLASSIC_DROPS:
            name, data, rows = dialect_drop(kind, tag, step.segment, self.rng)
        elif kind is DropKind.RAGGED:
            data = f"Email,tag\nx.{tag}@example.com,{tag}\ny.{tag}@example.com\n".encode()
        elif kind is DropKind.NUL:
            data = f"Email,tag\nx.{tag}@example.com,a\x00{tag}\n".encode()
        elif kind is DropKind.LONG_NAME:
            stem = f"long-{tag}-"
            name = f"{step.segment}/{stem}{'x' * (step.name_bytes - len(stem) - 4)}.csv"
        elif kind is DropKind.NEWLINE_NAME:
            name = f"{step.segment}/line\nbreak-{tag}.csv"
        elif kind is DropKind.DUPLICATE:
            # A plain .csv name outside the cp1252 segment: the new bytes are UTF-8 comma CSV.
            taken = [
                d.rel_path for d in self.result.drops
                if not d.skipped and not (self.home.drop / d.rel_path).exists()
                and d.rel_path.endswith(".csv") and d.segment != CP1252_SEGMENT
            ]
            if not taken:
                self.result.drops.append(
                    Dropped(name, kind, step.segment, data, data, True, "no name taken yet")
                )
                return
            name = self.rng.choice(taken)
        dropped = Dropped(name, kind, int(name.split("/")[0]), data, data, kind not in INVALID,
                          rows=rows)
        self.result.drops.append(dropped)
        target = self.home.drop / name
        target.parent.mkdir(exist_ok=True)
        if kind in (DropKind.SLOW, DropKind.DIALECT_SLOW):
            self.write_slowly(target, data)
        elif kind is DropKind.APPENDED:
            self.drop_and_append(dropped, target, step.seconds, tag)
        elif kind is DropKind.DIALECT_APPENDED:
            assert rows is not None
            late = [f"late.{tag}@example.com", "Late", "appended"]
            dropped.final_rows = [*rows, late]
            # A second gzip member is read on as the same stream; UTF-16 goes on without a BOM.
            extra = gzip.compress(written([late]).encode()) if name.endswith(".gz") else \
                written([late], delimiter="\t").encode("utf-16-le")
            self.drop_and_append(dropped, target, step.seconds, tag, extra=extra)
        else:
            # Staged outside the drop folder: a long name leaves no room for a temporary suffix.
            staged = self.stage / f"{tag}.csv"
            staged.write_bytes(data)
            if kind is DropKind.UNREADABLE:
                staged.chmod(0)
            os.rename(staged, target)

    def write_slowly(self, target: Path, data: bytes) -> None:
        pieces = max(2, min(5, data.count(b"\n")))
        step = -(-len(data) // pieces)
        with open(target, "wb") as stream:
            for start in range(0, len(data), step):
                stream.write(data[start : start + step])
                stream.flush()
                time.sleep(SLOW_PAUSE)

    def drop_and_append(
        self, dropped: Dropped, target: Path, pause: float, tag: str, *, extra: bytes | None = None
    ) -> None:
        """Renamed in complete, then written to again through the handle still open: the
        dropper that breaks the write-then-rename rule."""
        extra = f"late.{tag}@example.com,{tag}\n".encode() if extra is None else extra
        dropped.final = dropped.initial + extra
        staged = self.stage / f"{tag}.csv"
        stream = open(staged, "wb")  # noqa: SIM115 - held open past the rename, on purpose
        stream.write(dropped.initial)
        stream.flush()
        os.rename(staged, target)

        def append() -> None:
            time.sleep(pause)
            with stream:
                stream.write(extra)

        writer = threading.Thread(target=append, name=f"append-{tag}", daemon=True)
        writer.start()
        self.writers.append(writer)

    # -- settling -----------------------------------------------------------------------------

    def snapshot(self) -> tuple[object, ...]:
        jobs = tuple(
            (job["jobId"], job["status"], len(self.sim.uploads(int(job["jobId"]))))
            for job in self.sim.jobs()
        )
        folders = tuple(
            tuple(entries(folder))
            for folder in (self.home.drop, self.home.done, self.home.failed, self.claimed)
        )
        return jobs, folders

    @property
    def claimed(self) -> Path:
        return self.home.state / "claimed"

    def settle(self) -> bool:
        """Poll until nothing changed for QUIET seconds and every file left in drop/ or the
        claim area shows in ``pushagent status`` with a reason."""
        deadline = time.monotonic() + SETTLE_DEADLINE
        last: tuple[object, ...] | None = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            self.check_alive("while settling")
            now = self.snapshot()
            if now != last:
                last, since = now, time.monotonic()
            # Quiet while the agent ran: a restart (after a crash) starts the count again.
            elif time.monotonic() - max(since, self.started_at) >= QUIET and not self.unexplained():
                return True
            time.sleep(0.25)
        return False

    def pending_reasons(self) -> dict[str, str]:
        """realpath of each pending file (drop/ or claim area) -> the reason status shows."""
        shown = status_json(self.home)
        found: dict[str, str] = {}
        for row in [*shown.get("pending", []), *shown.get("in_flight", [])]:
            reason = str(row.get("reason") or "")
            found[os.path.realpath(row["path"])] = reason
            found[os.path.realpath(self.home.drop / row["rel_path"])] = reason
        return found

    def leftovers(self) -> list[Path]:
        return [self.home.drop / e for e in entries(self.home.drop)] + [
            self.claimed / e for e in entries(self.claimed)
        ]

    def unexplained(self) -> list[Path]:
        left = self.leftovers()
        if not left:
            return []
        try:
            reasons = self.pending_reasons()
        except (subprocess.SubprocessError, ValueError):
            return left
        return [path for path in left if not reasons.get(os.path.realpath(path))]

    def folders(self) -> str:
        return "\n".join(
            f"{label}: {entries(folder)!r}"
            for label, folder in (
                ("drop", self.home.drop), ("claimed", self.claimed),
                ("done", self.home.done), ("failed", self.home.failed),
            )
        )

    # -- the promise --------------------------------------------------------------------------

    def check(self) -> None:
        for path in self.home.root.rglob("*"):  # chmod 000 drops: read them back to compare
            if path.is_file() and not path.is_symlink() and not stat.S_IMODE(path.stat().st_mode):
                path.chmod(0o600)
        where = self.locate()
        uploads = self.check_uploads()
        self.check_done(uploads)
        self.check_others(where)
        self.check_errors()
        self.check_log()

    def locate(self) -> dict[str, list[Path]]:
        """Every file under done/, failed/, drop/ and the claim area, by the hash of its bytes."""
        found: dict[str, list[Path]] = {}
        for folder in (self.home.done, self.home.failed, self.home.drop, self.claimed):
            for name in entries(folder):
                path = folder / name
                if path.is_file() and not path.is_symlink():
                    found.setdefault(sha(path.read_bytes()), []).append(path)
        return found

    def rows_of(self, body: bytes) -> list[list[str]] | None:
        if body not in self._rows:
            self._rows[body] = canonical_rows(body)
        return self._rows[body]

    def source_of(self, body: bytes) -> Dropped | None:
        """The valid drop an upload is whole of: byte for byte, or (converted) row for row."""
        for dropped in self.result.drops:
            if not dropped.skipped and body in dropped.acceptable:
                return dropped
        rows = None
        for dropped in self.result.drops:
            if dropped.skipped or not dropped.valid or dropped.rows is None:
                continue
            rows = self.rows_of(body) if rows is None else rows
            if rows in (dropped.rows, dropped.final_rows):
                return dropped
        return None

    def delivered_as(self, original: bytes, body: bytes | None) -> bool:
        """Whether an upload holding ``body`` is a delivery of the file holding ``original``."""
        if body is None:
            return False
        if body == original:
            return True
        source = self.source_of(body)
        return source is not None and source.rows is not None and original in (
            source.initial, source.final)

    def check_uploads(self) -> dict[int, bytes]:
        """Each job's one accepted upload (job id -> bytes); checks count and content."""
        invalid = {d.final: d for d in self.result.drops if not d.valid and not d.skipped}
        accepted: dict[int, bytes] = {}
        for job in self.sim.jobs():
            job_id = int(job["jobId"])
            bodies = [self.sim.upload_data(job_id, n) for n in range(len(self.sim.uploads(job_id)))]
            if len(bodies) > 1:
                self.violate(
                    "one upload per job", f"job {job_id} holds {len(bodies)} accepted uploads",
                    "\n".join(f"upload {n}: {len(b)} B sha {sha(b)}" for n, b in enumerate(bodies))
                    + "\n" + self.requests_for(job_id),
                )
            for body in bodies:
                if body in invalid:
                    self.violate(
                        "only valid CSV is sent",
                        f"job {job_id} accepted {invalid[body].rel_path!r}, which is invalid "
                        f"({invalid[body].kind.value})",
                    )
                elif (source := self.source_of(body)) is None:
                    self.violate(
                        "only complete files are sent",
                        f"job {job_id} accepted {len(body)} B (sha {sha(body)}) that no dropped "
                        "file held whole (byte for byte, or converted: row for row)",
                        self.closest(body),
                    )
                elif self.job_segment.get(job_id) != source.segment:
                    self.violate(
                        "right segment", f"job {job_id} (segment {self.job_segment.get(job_id)}) "
                        f"got {source.rel_path!r}",
                    )
            if bodies:
                accepted[job_id] = bodies[0]
        return accepted

    def closest(self, body: bytes) -> str:
        for dropped in self.result.drops:
            if body and (dropped.final.startswith(body) or body.startswith(dropped.initial)):
                return (
                    f"a prefix/extension of {dropped.rel_path!r} ({dropped.kind.value}): "
                    f"initial {len(dropped.initial)} B, final {len(dropped.final)} B"
                )
        rows = self.rows_of(body)
        for dropped in self.result.drops:
            # The same header and first email (each drop's emails carry its tag).
            if rows and dropped.rows and rows[:1] == dropped.rows[:1] and \
                    [r[:1] for r in rows[1:2]] == [r[:1] for r in dropped.rows[1:2]]:
                differ = next((n for n, (a, b) in enumerate(zip(rows, dropped.rows, strict=False))
                               if a != b), min(len(rows), len(dropped.rows)))
                return (
                    f"converted from {dropped.rel_path!r} ({dropped.kind.value})? {len(rows)} "
                    f"rows sent, {len(dropped.rows)} dropped; first difference at row {differ}: "
                    f"{rows[differ:differ + 1]!r} vs {dropped.rows[differ:differ + 1]!r}"
                )
        return f"first bytes: {body[:80]!r}"

    def assigned_jobs(self, path: Path) -> list[tuple[str, str]] | None:
        """(job id, delivery state) of the journal's deliveries of the file now at ``path``;
        None when the journal cannot say (a changed schema: the check falls back)."""
        try:
            rows = journal(
                self.home,
                "SELECT deliveries.job_id, deliveries.state, files.path, files.final_path "
                "FROM files JOIN deliveries ON files.id = deliveries.file_id",
            )
        except sqlite3.Error:
            return None
        real = os.path.realpath(path)
        return [
            (str(row["job_id"]), str(row["state"]))
            for row in rows
            if real in {os.path.realpath(p) for p in (row["path"], row["final_path"]) if p}
        ]

    def check_done(self, accepted: dict[int, bytes]) -> None:
        statuses = {int(j["jobId"]): j["status"] for j in self.sim.jobs()}
        for name in entries(self.home.done):
            path = self.home.done / name
            data = path.read_bytes() if path.is_file() else b""
            assigned = self.assigned_jobs(path)
            if not any(self.delivered_as(data, body) for body in accepted.values()):
                jobs = sorted({int(job) for job, _ in assigned or [] if job.isdigit()})
                self.violate(
                    "done means sent", f"done/{name!r} ({len(data)} B, sha {sha(data)}) is not "
                    f"what any job accepted; the journal assigned it to {assigned}",
                    "\n".join(
                        [self.closest_upload(data, accepted), *map(self.requests_for, jobs)]
                    ),
                )
                continue
            if assigned is None:
                self.result.notes.append("journal unreadable: done/ checked against any job")
                continue
            for job, state in assigned:
                if not job.isdigit() or int(job) not in statuses or state in LET_GO:
                    continue
                held = accepted.get(int(job))
                if not self.delivered_as(data, held) and statuses[int(job)] == WAITING:
                    self.violate(
                        "done means sent to each job",
                        f"done/{name!r} was assigned to job {job} ({state}), which never got it "
                        "and still waits", self.requests_for(int(job)),
                    )
                elif held is not None and not self.delivered_as(data, held):
                    self.violate(
                        "done means sent to each job",
                        f"done/{name!r} was assigned to job {job} ({state}), which holds other "
                        "bytes", self.requests_for(int(job)),
                    )

    def closest_upload(self, data: bytes, accepted: dict[int, bytes]) -> str:
        for job_id, body in accepted.items():
            if data.startswith(body) or body.startswith(data):
                return f"job {job_id} holds {len(body)} B of it: the file changed after the upload"
        return ""

    def reports(self) -> list[tuple[Path, dict[str, Any]]]:
        found: list[tuple[Path, dict[str, Any]]] = []
        for path in self.home.failed.rglob(f"*{REPORT_SUFFIX}"):
            try:
                found.append((path, json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError) as error:
                self.violate("failed has a report", f"{path.name!r} is unreadable: {error}")
        return found

    def check_others(self, where: dict[str, list[Path]]) -> None:
        reports = self.reports()
        reasons: dict[str, str] | None = None
        for dropped in self.result.drops:
            if dropped.skipped:
                continue
            places = where.get(sha(dropped.final), [])
            if not places:
                self.violate(
                    "nothing lost", f"{dropped.rel_path!r} ({dropped.kind.value}, sha "
                    f"{sha(dropped.final)}) is in none of done/, failed/, drop/, the claim area",
                    self.folders(),
                )
                continue
            for place in places:
                if place.is_relative_to(self.home.failed):
                    report = Path(f"{place}{REPORT_SUFFIX}")
                    by_name = [r for p, r in reports if p == report]
                    by_field = [r for _, r in reports if r.get("file") == dropped.rel_path]
                    chosen = by_name or by_field
                    if not chosen:
                        self.violate(
                            "failed has a report", f"{place.relative_to(self.home.root)!s:.120} "
                            f"({dropped.rel_path!r}) has no {REPORT_SUFFIX}",
                        )
                    elif not str(chosen[0].get("reason") or "").strip():
                        self.violate("failed has a report", f"the report on {dropped.rel_path!r} "
                                     "gives no reason")
                elif place.is_relative_to(self.home.drop) or place.is_relative_to(self.claimed):
                    if reasons is None:
                        try:
                            reasons = self.pending_reasons()
                        except (subprocess.SubprocessError, ValueError) as error:
                            self.violate("pending has a reason", f"status failed: {error}")
                            reasons = {}
                    reason = reasons.get(os.path.realpath(place))
                    if not reason:
                        self.violate(
                            "pending has a reason", f"{dropped.rel_path!r} left at "
                            f"{place.relative_to(self.home.root)!s:.120} with no reason in status",
                        )
                    elif place.is_relative_to(self.claimed):
                        # Allowed (pending with a reason), but worth a look: claimed files
                        # normally move on once their jobs are served.
                        self.result.notes.append(
                            f"{dropped.rel_path!r} ({dropped.kind.value}) left in the claim area: "
                            f"{reason[:300]}"
                        )
                    self.check_not_stalled(dropped, place)

    def check_not_stalled(self, dropped: Dropped, place: Path) -> None:
        """A readable file left pending while a job of its segment still waits with nothing."""
        if dropped.kind is DropKind.UNREADABLE:
            return
        waiting = [
            int(j["jobId"]) for j in self.sim.jobs()
            if j["status"] == WAITING
            and self.job_segment.get(int(j["jobId"])) == dropped.segment
        ]
        if waiting:
            self.violate(
                "a waiting job is served",
                f"{dropped.rel_path!r} ({dropped.kind.value}) is still pending at "
                f"{place.relative_to(self.home.root)!s:.120} while job(s) {waiting} of its segment "
                "wait", "\n".join(self.requests_for(job) for job in waiting),
            )

    def check_errors(self) -> None:
        """A job is failed only when a file for it is invalid (or unreadable), the server refused
        the data for good, or the agent's attempts ran out against injected faults."""
        bad_files = {_unnumbered(d.rel_path) for d in self.result.drops
                     if not d.valid or d.kind is DropKind.UNREADABLE}
        # Which files each job was given: from the reports in failed/ and from the journal (a
        # file whose move to failed/ has not happened yet has no report).
        blamed: dict[str, set[str]] = {}
        for _, report in self.reports():
            for job in report.get("job_ids") or []:
                blamed.setdefault(str(job), set()).add(str(report.get("file")))
        with contextlib.suppress(sqlite3.Error):
            for row in journal(
                self.home, "SELECT files.rel_path, deliveries.job_id FROM files "
                "JOIN deliveries ON files.id = deliveries.file_id",
            ):
                blamed.setdefault(str(row["job_id"]), set()).add(str(row["rel_path"]))
        log = self.sim.request_log()
        for job in self.sim.jobs():
            if job["status"] != "ERROR":
                continue
            job_id = int(job["jobId"])
            if not str(job.get("errorDetails") or "").strip():
                self.violate("failed with a reason", f"job {job_id} was failed with no reason")
            if KEY in str(job.get("errorDetails")):
                self.violate("no key anywhere", f"job {job_id}'s errorDetails hold the API key")
            data_path = f"/v1/jobs/{job_id}/data"
            posts = [r for r in log if r["method"] == "POST" and r["path"] == data_path]
            refused = [r for r in posts if r["status"] and 400 <= r["status"] < 500
                       and r["status"] not in NOT_PERMANENT]
            tries = [r for r in posts if r["fault"] is not None]
            named = {_unnumbered(name) for name in blamed.get(str(job_id), set())}
            if named & bad_files or refused or len(tries) >= MAX_ATTEMPTS:
                continue
            self.violate(
                "jobs failed only for bad files",
                f"job {job_id} (segment {self.job_segment.get(job_id)}) is ERROR: "
                f"{job.get('errorDetails')!r}",
                f"reports naming it: {sorted(blamed.get(str(job_id), set()))}\n"
                + self.requests_for(job_id),
            )

    def requests_for(self, job_id: int) -> str:
        lines = [
            f"{r['method']} {r['path']} -> {r['status']} (fault: {r['fault']}, "
            f"{r['body_bytes']} B)"
            for r in self.sim.request_log()
            if f"/{job_id}/" in f"{r['path']}/"
        ]
        return f"requests about job {job_id}:\n  " + "\n  ".join(lines or ["(none)"])

    def check_log(self) -> None:
        log = self.home.log()
        if "Traceback" in log:
            at = log.index("Traceback")
            self.violate("no traceback", "the agent logged a traceback", log[at : at + 2500])
        if KEY in log:
            self.violate("no key anywhere", "the API key is in the agent's log")
        if HOOK_TOKEN in log:
            at = log.index(HOOK_TOKEN)
            self.violate("no key anywhere", "the webhook's secret is in the agent's log",
                         log[max(0, at - 300) : at + 100])
        for body in self.hook.bodies if self.hook is not None else []:
            if KEY.encode() in body or HOOK_TOKEN.encode() in body:
                self.violate("no key anywhere", "a notification holds a secret", body[:500].decode(
                    errors="replace"))
            try:
                json.loads(body)
            except ValueError:
                self.violate("notifications are JSON",
                             f"a notification is not JSON: {body[:200]!r}")


class _Abort(Exception):
    """The agent cannot run at all: the campaign stops with what it has."""


def _unnumbered(rel_path: str) -> str:
    """A name without the ``-2``, ``-3``... the agent or ``retry`` adds when it is taken."""
    return re.sub(r"-\d+(?=(\.csv\.gz|\.[^./]*)$)", "", rel_path)


def run_campaign(
    seed: int, *, steps: int = 14, workdir: Path | None = None, agent_path: Path | None = None,
    mix: Mix = Mix.FULL,
) -> CampaignResult:
    """Run one seed's ``mix`` plan in ``workdir`` (a fresh temporary folder, removed after, when
    None); ``agent_path``: where the agent process imports pushagent from (default: as
    installed)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="campaign-")))
        workdir.mkdir(parents=True, exist_ok=True)
        sim = stack.enter_context(simulator(workdir, complete_after=0.2))
        campaign = Campaign(seed, plan(seed, steps, mix=mix), workdir, sim,
                            agent_path=agent_path, mix=mix)
        with contextlib.suppress(_Abort):
            campaign.run()
        stack.callback(_make_removable, workdir)
        return campaign.result


def _make_removable(root: Path) -> None:
    """chmod 000 files and folders would stop the temporary folder's removal as non-root."""
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if not path.is_symlink():
                path.chmod(0o700)


class SeedResult(Protocol):
    violations: list[Violation]
    seconds: float

    def report(self) -> str: ...


def seed_parser(prog: str, description: str | None, *, steps: int) -> argparse.ArgumentParser:
    """The options every campaign takes: which seeds, how many steps, keep, quiet."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="run this one seed")
    which.add_argument("--seeds", type=int, default=5, help="run seeds FIRST..FIRST+N-1")
    parser.add_argument("--first", type=int, default=0, help="the first seed of --seeds")
    parser.add_argument("--steps", type=int, default=steps,
                        help=f"steps per seed (default {steps})")
    parser.add_argument("--keep", action="store_true", help="keep each seed's folder")
    parser.add_argument("--quiet", action="store_true", help="print only the failing seeds")
    return parser


def run_seeds(
    args: argparse.Namespace, run: Callable[[int, Path | None], SeedResult], *, prefix: str
) -> int:
    """Each seed ``seed_parser`` asked for, through ``run(seed, workdir)``; prints each report
    (or one line per passing seed with --quiet), then the failing seeds; 1 if any failed."""
    # The simulator logs every request at DEBUG; the report is what matters here.
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    failing: list[int] = []
    for seed in seeds:
        with kept_folder(args.keep, seed, prefix=prefix) as folder:
            result = run(seed, folder)
        if result.violations:
            failing.append(seed)
        if result.violations or not args.quiet:
            print(result.report(), flush=True)
        else:
            print(f"seed {seed}: ok in {result.seconds:.1f} s", flush=True)
    print(f"{len(failing)} of {len(seeds)} seed(s) broke the promise: {failing}")
    return 1 if failing else 0


@contextlib.contextmanager
def kept_folder(keep: bool, seed: int, *, prefix: str) -> Iterator[Path | None]:
    """With ``keep``, a folder for the seed's run that stays (and is named) afterwards."""
    if not keep:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}-seed{seed}-"))
    yield folder
    print(f"kept: {folder}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = seed_parser("python -m tests.campaign", __doc__, steps=14)
    parser.add_argument("--mix", choices=[m.value for m in Mix], default=Mix.FULL.value,
                        help="full (default): with IDENTITY_IMPORT jobs, other dialects and "
                             "kill -9 while converting; classic: issue 9's plans")
    parser.add_argument("--agent-path", type=Path, metavar="DIR",
                        help="run the agent with pushagent imported from DIR (e.g. a `git "
                             "archive` of another commit); the simulator stays this tree's")
    args = parser.parse_args(argv)
    return run_seeds(args, lambda seed, folder: run_campaign(
        seed, steps=args.steps, workdir=folder, agent_path=args.agent_path, mix=Mix(args.mix),
    ), prefix="campaign")


if __name__ == "__main__":
    sys.exit(main())
