"""A seeded randomized campaign for the pull side: the real ``pushagent run`` process (pull only)
against the simulator, with jobs READY_FOR_DOWNLOAD (small parts and large ones), injected
faults on the list, download, delete and complete calls, and kill -9 and SIGTERM at random.

After every kill -9, before the restart, the outbox is checked as a consumer would find it: no
file under a final name that is not the Exchange's file whole, and ``job.json`` only in a folder
whose files are all complete. At the end (faults cleared, every job let finish): each job
COMPLETE at the Exchange, its folder holding every file whole and ``job.json`` naming them with
their SHA-256, no temporary file left, no file deleted and no job completed at the Exchange
before its ``job.json`` was written, no traceback and no key in the log.

    python -m tests.pull_campaign --seeds 10           # seeds 0..9
    python -m tests.pull_campaign --seed 3 --keep      # one seed, its folder kept for a look
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pushagent.simulator import Simulator
from tests.campaign import Violation, run_seeds, seed_parser
from tests.e2e import KEY, AgentHome
from tests.faultkit import simulator

PULL_ENDPOINT = 7
READY = "READY_FOR_DOWNLOAD"
COMPLETE = "COMPLETE"
WATCHING = "pushagent downloading the jobs ready"  # the start line of a pull-only agent
SETTLE_DEADLINE = 60.0
JOB_JSON = "job.json"
MERGED = "segment.csv"


class StepKind(Enum):
    JOB = "job"
    FAULT = "fault"
    KILL9 = "kill -9"
    SIGTERM = "sigterm"
    PAUSE = "pause"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    parts: tuple[int, ...] = ()  # a JOB's files: rows of each (large ones are on disk)
    fault: dict[str, Any] | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        if self.kind is StepKind.JOB:
            return f"job: {len(self.parts)} file(s) of {', '.join(map(str, self.parts))} rows"
        if self.kind is StepKind.FAULT:
            return f"fault: {json.dumps(self.fault, sort_keys=True)}"
        if self.kind in (StepKind.KILL9, StepKind.SIGTERM):
            return f"{self.kind.value} after {self.seconds:.2f} s, then a restart"
        return f"pause {self.seconds:.2f} s"


def plan(seed: int, steps: int) -> list[Step]:
    rng = random.Random(seed)
    weights = {StepKind.JOB: 4, StepKind.FAULT: 3, StepKind.KILL9: 3, StepKind.SIGTERM: 1,
               StepKind.PAUSE: 2}
    chosen = [Step(StepKind.JOB, parts=_parts(rng))]
    while len(chosen) < steps:
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        if kind is StepKind.JOB:
            chosen.append(Step(kind, parts=_parts(rng)))
        elif kind is StepKind.FAULT:
            chosen.append(Step(kind, fault=_fault(rng)))
        elif kind in (StepKind.KILL9, StepKind.SIGTERM):
            chosen.append(Step(kind, seconds=rng.uniform(0, 1.2)))
        else:
            chosen.append(Step(kind, seconds=rng.uniform(0, 1.0)))
    return chosen


def _parts(rng: random.Random) -> tuple[int, ...]:
    return tuple(
        rng.choice((0, 1, 3, 20)) if rng.random() < 0.7 else rng.randint(200_000, 900_000)
        for _ in range(rng.randint(1, 4))
    )


def _fault(rng: random.Random) -> dict[str, Any]:
    method, path = rng.choice((
        ("GET", r"^/v1/jobs/SEGMENT_EXPORT$"),
        ("GET", r"/segmentDataFiles/"),
        ("GET", r"/segmentDataFiles/"),
        ("DELETE", r"/segmentDataFiles/"),
        ("PUT", r"/status/complete$"),
    ))
    what = rng.choice(("status", "drop", "drop_after", "delay"))
    spec: dict[str, Any] = {"method": method, "path": path, "count": rng.randint(1, 3)}
    if what == "status":
        spec["status"] = rng.choice((404, 429, 500, 502, 503))
    elif what == "delay":
        spec["delay"] = round(rng.uniform(0.2, 2.0), 2)
    else:
        spec[what] = True
    return spec


@dataclass
class PullResult:
    seed: int
    steps: list[Step]
    violations: list[Violation] = field(default_factory=list)
    log_tail: str = ""
    seconds: float = 0.0

    def report(self) -> str:
        lines = [
            f"seed {self.seed}: {len(self.violations)} violation(s) in {self.seconds:.1f} s "
            f"(reproduce: python -m tests.pull_campaign --seed {self.seed} "
            f"--steps {len(self.steps)})",
            "steps:", *(f"  {n:2}. {s.describe()}" for n, s in enumerate(self.steps)),
            *(f"VIOLATION [{v.rule}] {v.message}" for v in self.violations),
        ]
        if self.violations and self.log_tail:
            lines += ["agent log (tail):", *(f"  | {line}" for line in self.log_tail.splitlines())]
        return "\n".join(lines)


class PullHome(AgentHome):
    def __init__(self, root: Path, url: str, *, merge: bool) -> None:
        settings = (f"pull:\n  endpoint_id: {PULL_ENDPOINT}\n  outbox: ./outbox\n"
                    "  poll_seconds: 0.3\n  initial_backoff: 0.2\n  max_backoff: 1\n"
                    f"  merge_files: {'true' if merge else 'false'}\n")
        super().__init__(root, url, extra=settings, grace=2)
        self.outbox = root / "outbox"
        self.outbox.mkdir()
        text = self.config.read_text()
        self.config.write_text("\n".join(
            line for line in text.splitlines() if not line.startswith("folders:")) + "\n")


def part_bytes(job_tag: str, index: int, rows: int) -> bytes:
    lines = [b"Email,name\n"] + [
        b"u%d.%s.%d@example.com,N%d\n" % (n, job_tag.encode(), index, n) for n in range(rows)]
    return b"".join(lines)


class PullCampaign:
    def __init__(self, seed: int, steps: Sequence[Step], root: Path, sim: Simulator) -> None:
        self.seed = seed
        self.steps = list(steps)
        self.root = root
        self.sim = sim
        self.merge = random.Random(f"{seed}:merge").random() < 0.5
        self.home = PullHome(root / "agent", sim.url, merge=self.merge)
        self.sources = root / "sources"
        self.sources.mkdir()
        self.files: dict[int, dict[str, bytes]] = {}  # job -> name -> bytes
        self.result = PullResult(seed, self.steps)
        self.started_at = 0.0

    def violate(self, rule: str, message: str) -> None:
        if Violation(rule, message) not in self.result.violations:
            self.result.violations.append(Violation(rule, message))

    def run(self) -> PullResult:
        started = time.monotonic()
        try:
            self.start()
            for number, step in enumerate(self.steps):
                self.do(number, step)
            self.sim.clear_faults()
            if self.home.process is None or self.home.process.poll() is not None:
                self.start()
            self.settle()
            try:
                code = self.home.stop(signal.SIGTERM, timeout=20)
            except subprocess.TimeoutExpired:
                self.violate("sigterm", "the final stop took over 20 s")
                self.home.kill9()
            else:
                if code != 0:
                    self.violate("sigterm", f"the final stop exited {code}")
            self.check_outbox("at the end")
            self.check_end()
        finally:
            if self.home.process is not None:
                self.home.kill9()
            self.result.log_tail = "\n".join(self.home.log().splitlines()[-40:])
            self.result.seconds = time.monotonic() - started
        return self.result

    def start(self) -> None:
        started = self.home.log().count(WATCHING)
        self.home.start()
        deadline = time.monotonic() + 20
        while self.home.log().count(WATCHING) <= started:
            if self.home.process is None or self.home.process.poll() is not None \
                    or time.monotonic() > deadline:
                self.violate("starts", "the agent did not start")
                raise _Abort
            time.sleep(0.05)

    def do(self, number: int, step: Step) -> None:
        if self.home.process is not None and self.home.process.poll() is not None:
            self.violate("keeps running", f"before step {number}: the agent exited "
                         f"({self.home.process.returncode})")
            self.start()
        if step.kind is StepKind.JOB:
            self.add_job(number, step.parts)
        elif step.kind is StepKind.FAULT:
            assert step.fault is not None
            self.sim.add_fault(**step.fault)
        elif step.kind is StepKind.KILL9:
            time.sleep(step.seconds)
            self.home.kill9()
            self.check_outbox(f"after the kill -9 of step {number}")
            self.start()
        elif step.kind is StepKind.SIGTERM:
            time.sleep(step.seconds)
            try:
                code = self.home.stop(signal.SIGTERM, timeout=20)
            except subprocess.TimeoutExpired:
                self.violate("sigterm", f"step {number}: the stop took over 20 s")
                self.home.kill9()
            else:
                if code != 0:
                    self.violate("sigterm", f"step {number}: the stop exited {code}")
            self.check_outbox(f"after the SIGTERM of step {number}")
            self.start()
        else:
            time.sleep(step.seconds)

    def add_job(self, number: int, parts: Sequence[int]) -> None:
        tag = f"s{self.seed}n{number}"
        files = {f"{tag}-part{n}.csv": part_bytes(tag, n, rows) for n, rows in enumerate(parts)}
        inline = {k: v.decode() for k, v in files.items() if len(v) < 4096}
        paths = {}
        for name, data in files.items():
            if name not in inline:
                path = self.sources / name
                path.write_bytes(data)
                paths[name] = str(path)
        job = int(self.sim.add_job(
            status=READY, producerEndpointID=86, destinationEndpointID=PULL_ENDPOINT,
            segmentDataFiles=list(files), segmentData=inline, segmentDataPaths=paths,
        )["jobId"])
        self.files[job] = files

    def settle(self) -> None:
        deadline = time.monotonic() + SETTLE_DEADLINE
        while time.monotonic() < deadline:
            if all(self.sim.job(job)["status"] == COMPLETE for job in self.files):
                return
            if self.home.process is not None and self.home.process.poll() is not None:
                self.violate("keeps running", "the agent exited while settling")
                self.start()
            time.sleep(0.25)
        left = [job for job in self.files if self.sim.job(job)["status"] != COMPLETE]
        self.violate("settles", f"job(s) {left} not COMPLETE {SETTLE_DEADLINE:g} s after the "
                     "faults were cleared")

    # -- the promise -------------------------------------------------------------------------

    def check_outbox(self, when: str) -> None:
        """What a consumer finds: whole files under final names, job.json only when complete."""
        for job, files in self.files.items():
            folder = self.home.outbox / str(job)
            if not folder.is_dir():
                continue
            for entry in sorted(os.listdir(folder)):
                if entry.startswith("."):
                    continue
                data = (folder / entry).read_bytes()
                if entry in files:
                    if data != files[entry]:
                        self.violate("no partial file under a final name",
                                     f"{when}: {job}/{entry} holds {len(data)} B of "
                                     f"{len(files[entry])} B")
                elif entry == MERGED and self.merge:
                    self.check_merged(job, data, when)
                elif entry != JOB_JSON:
                    self.violate("no stray file", f"{when}: {job}/{entry} is no file of the job")
            if (folder / JOB_JSON).exists():
                self.check_job_json(job, folder, when)

    def check_merged(self, job: int, data: bytes, when: str) -> None:
        parts = list(self.files[job].values())
        expected = b"Email,name\n" + b"".join(p.split(b"\n", 1)[1] for p in parts)
        if data != expected:
            self.violate("no partial file under a final name",
                         f"{when}: {job}/{MERGED} holds {len(data)} B, the merge is "
                         f"{len(expected)} B")

    def check_job_json(self, job: int, folder: Path, when: str) -> None:
        try:
            document = json.loads((folder / JOB_JSON).read_text(encoding="utf-8"))
        except ValueError as error:
            self.violate("job.json is whole", f"{when}: {job}/{JOB_JSON}: {error}")
            return
        listed = {f["name"]: f for f in document.get("files", [])}
        for name, data in self.files[job].items():
            entry = listed.get(name)
            on_disk = folder / name
            if entry is None:
                self.violate("job.json names every file", f"{when}: {job}: {name} not listed")
            elif entry.get("sha256") != hashlib.sha256(data).hexdigest():
                self.violate("job.json names every file", f"{when}: {job}: {name}'s sha256 is "
                             "not the Exchange file's")
            if not on_disk.is_file() or on_disk.read_bytes() != data:
                self.violate("job.json only when complete",
                             f"{when}: {job}/{JOB_JSON} is written but {name} is not whole")
        if self.merge and document.get("merged") and not (folder / MERGED).is_file():
            self.violate("job.json only when complete",
                         f"{when}: {job}/{JOB_JSON} names {MERGED}, which is missing")

    def check_end(self) -> None:
        log = self.sim.request_log()
        for job in self.files:
            folder = self.home.outbox / str(job)
            if not (folder / JOB_JSON).is_file():
                self.violate("every job on disk", f"job {job} has no {JOB_JSON}")
                continue
            written = (folder / JOB_JSON).stat().st_mtime
            temporaries = [e for e in os.listdir(folder) if e.startswith(".")]
            if temporaries:
                self.violate("no temporary left", f"job {job}: {temporaries}")
            # A complete call may be sent again after a stop (the Exchange answers false, and
            # the job's status says it is done): only its timing is the promise.
            prefix = f"/v1/jobs/{job}/"
            for request in log:
                touches = request["method"] == "DELETE" or request["path"].endswith("/complete")
                if touches and request["path"].startswith(prefix) \
                        and request["time"] < written - 1.0:  # mtime granularity, clocks
                    self.violate("deleted or completed only when safe",
                                 f"job {job}: {request['method']} {request['path']} "
                                 f"{written - request['time']:.2f} s before {JOB_JSON}")
        text = self.home.log()
        if "Traceback" in text:
            at = text.index("Traceback")
            self.violate("no traceback", text[at : at + 1500])
        if KEY in text:
            self.violate("no key anywhere", "the API key is in the agent's log")


class _Abort(Exception):
    pass


def run_pull_campaign(seed: int, *, steps: int = 12, workdir: Path | None = None) -> PullResult:
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pullcamp-")))
        workdir.mkdir(parents=True, exist_ok=True)
        sim = stack.enter_context(simulator(workdir, complete_after=0.2))
        campaign = PullCampaign(seed, plan(seed, steps), workdir, sim)
        with contextlib.suppress(_Abort):
            campaign.run()
        return campaign.result


def main(argv: Sequence[str] | None = None) -> int:
    args = seed_parser("python -m tests.pull_campaign", __doc__, steps=12).parse_args(argv)
    return run_seeds(args, lambda seed, folder: run_pull_campaign(
        seed, steps=args.steps, workdir=folder), prefix="pullcamp")


if __name__ == "__main__":
    sys.exit(main())
