"""Running the real ``pushagent`` process against the simulator, with real files and events."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pushagent.simulator import Simulator

T = TypeVar("T")

KEY = "e2e-account-key-7d1f0a"
ENDPOINT = 85

CONFIG = """\
exchange:
  base_url: {url}
  api_key: ${{E2E_EXCHANGE_KEY}}
  endpoint_id: {endpoint}
  retry: {{max_attempts: 2, max_total_seconds: 5, initial_backoff: 0.05, max_backoff: 0.2}}
  read_timeout: {read_timeout}
folders: {{drop: ./drop, done: ./done, failed: ./failed}}
state_dir: ./state
segments:
  vip_customers: 45311
watch:
  settle_seconds: {settle}
  rescan_seconds: 2
  trigger_suffix: {trigger}
matching:
  poll_seconds: 0.5
  max_wait_seconds: {max_wait}
upload:
  workers: 4
  initial_backoff: 0.2
  max_backoff: 1
  max_attempts: {max_attempts}
  shutdown_grace_seconds: {grace}
{extra}"""


def waiting_job(sim: Simulator, segment: int = 45311, **fields: object) -> int:
    job = sim.add_job(
        producerEndpointID=ENDPOINT,
        producerSegmentID=segment,
        identityMappings={"Email": "EMAIL_SHA256"},
        **fields,
    )
    return int(job["jobId"])


def received(sim: Simulator, job_id: int) -> list[bytes]:
    return [sim.upload_data(job_id, n) for n in range(len(sim.uploads(job_id)))]


def wait_for(probe: Callable[[], T], *, timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def assert_never(probe: Callable[[], object], *, seconds: float, what: str) -> None:
    """``probe`` stays falsy for ``seconds``: the agent had time to do the wrong thing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert not probe(), f"{what} happened"
        time.sleep(0.05)


def drop_atomically(folder: Path, name: str, data: bytes) -> Path:
    """Write under a hidden temporary name, then rename in: the well-behaved dropper."""
    partial = folder / f".{name}.part"
    partial.write_bytes(data)
    target = folder / name
    os.rename(partial, target)
    return target


class AgentHome:
    """A folder with drop/, done/, failed/, state/ and agent.yaml pointing at ``url``."""

    def __init__(
        self,
        root: Path,
        url: str,
        *,
        settle: float = 0.5,
        max_wait: float = 3600,
        max_attempts: int = 8,
        grace: float = 10,
        read_timeout: float = 30,
        extra: str = "",
        trigger: str | None = None,
    ) -> None:
        self.root = root
        for name in ("drop", "done", "failed"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.config = root / "agent.yaml"
        self.config.write_text(
            CONFIG.format(
                url=url,
                endpoint=ENDPOINT,
                settle=settle,
                max_wait=max_wait,
                max_attempts=max_attempts,
                grace=grace,
                read_timeout=read_timeout,
                extra=extra,
                trigger=trigger or "null",
            )
        )
        self.drop, self.done, self.failed = root / "drop", root / "done", root / "failed"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "agent.log"

    def env(self) -> dict[str, str]:
        return {**os.environ, "E2E_EXCHANGE_KEY": KEY}

    def start(self, *extra_args: str) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:  # appended across restarts
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pushagent",
                    "-v",
                    "run",
                    "-c",
                    str(self.config),
                    *extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.root,
            )
        return self.process

    def run_once(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pushagent", "run", "-c", str(self.config), "--once"],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.root,
            timeout=timeout,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def served_url(self) -> str:
        """Where the agent serves /healthz and /metrics, from its log: with ``metrics.port: 0``
        it takes a free port itself, so tests running side by side never race for one."""
        found = wait_for(lambda: re.search(r"serving (http://\S+)/healthz", self.log()),
                         what="the agent to serve /healthz")
        return found.group(1)

    def names(self, folder: Path) -> list[str]:
        return sorted(
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if not p.is_dir() or p.is_symlink() or p.name.lower().endswith(".csv")
        )
