"""``pushagent simulator`` as a process: its help, its first line, signals, and flat memory."""

from __future__ import annotations

import hashlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pushagent.exchange import ExchangeClient, RetryPolicy
from pushagent.simulator import SimulatorControl

COMMAND = [sys.executable, "-m", "pushagent", "simulator"]
EXAMPLE_SEED = Path(__file__).resolve().parent.parent / "examples" / "simulator-jobs.yaml"
OPTIONS = (
    "--host", "--port", "--jobs", "--account-key", "--endpoint-key", "--data-dir",
    "--complete-after", "--max-bytes-per-second",
)
FIRST_LINE = re.compile(r"^pushagent simulator listening on (http://127\.0\.0\.1:\d+)$")
MIB = 1024 * 1024


class _Lines:
    """stdout lines of a process, read by a thread so a test can wait with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._queue: queue.Queue[str] = queue.Queue()
        self._stdout = process.stdout
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self._stdout:
            self._queue.put(line.rstrip("\n"))

    def next(self, seconds: float) -> str:
        try:
            return self._queue.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(f"no line on stdout within {seconds} s") from None


@contextmanager
def _simulator_process(
    tmp_path: Path, *args: str
) -> Iterator[tuple[subprocess.Popen[str], str, _Lines]]:
    with (tmp_path / "simulator-stderr.log").open("w") as stderr:
        process = subprocess.Popen(
            [*COMMAND, *args], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        try:
            lines = _Lines(process)
            first = lines.next(20)
            match = FIRST_LINE.match(first)
            assert match, f"unexpected first line {first!r}"
            yield process, match.group(1), lines
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def _memory_kib(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def test_help_documents_every_option() -> None:
    result = subprocess.run(
        [*COMMAND, "--help"], capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 0
    for option in OPTIONS:
        assert option in result.stdout
    assert "KEY=ENDPOINT_ID" in result.stdout


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_process_prints_its_url_serves_seeded_jobs_and_exits_0_on_signal(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    with _simulator_process(
        tmp_path,
        "--jobs", str(EXAMPLE_SEED),
        "--account-key", "cli-account-key",
        "--endpoint-key", "cli-endpoint-85=85",
        "--data-dir", str(tmp_path / "data"),
    ) as (process, url, lines):
        second = lines.next(5)
        with ExchangeClient(url, "cli-endpoint-85") as client:
            visible = [job.job_id for job in client.list_jobs("SEGMENT_EXPORT")]
        process.send_signal(stop_signal)
        returncode = process.wait(15)
        last = lines.next(5)

    assert f"{url}/_sim/" in second
    assert visible == [1347, 1348]
    assert returncode == 0
    assert last == "pushagent simulator stopped"
    assert (tmp_path / "data" / "segments").is_dir()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--endpoint-key", "no-equals-sign"], "KEY=ENDPOINT_ID"),
        (["--jobs", "/nonexistent/seed.yaml"], "cannot read the jobs file"),
        (["--complete-after", "-1"], "--complete-after"),
        (["--max-bytes-per-second", "-5"], "--max-bytes-per-second"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], expected: str) -> None:
    result = subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=30, check=False
    )

    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def _write_big_csv(path: Path, *, mib: int) -> tuple[int, int, str]:
    """``mib`` blocks of 1 MiB of rows behind one header; returns (bytes, rows, sha256)."""
    row = b"someone.with.a.long.name@example.com,Firstname,Lastname,2024-01-01\n"
    block = row * (MIB // len(row))
    header = b"Email,FirstName,LastName,Since\n"
    digest = hashlib.sha256(header)
    with path.open("wb") as out:
        out.write(header)
        for _ in range(mib):
            out.write(block)
            digest.update(block)
    size = len(header) + mib * len(block)
    return size, mib * (MIB // len(row)), digest.hexdigest()


@pytest.mark.slow
def test_server_memory_stays_flat_for_a_500_mb_upload(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the server's memory")
    big = tmp_path / "big.csv"
    data_dir = tmp_path / "data"
    try:
        size, rows, sha256 = _write_big_csv(big, mib=500)
        with _simulator_process(
            tmp_path, "--data-dir", str(data_dir), "--complete-after", "0"
        ) as (process, url, _):
            control = SimulatorControl(url)
            warm_up = control.add_job()["jobId"]
            job_id = control.add_job()["jobId"]
            with ExchangeClient(
                url, "sim-account-key", retry=RetryPolicy(max_attempts=1), read_timeout=60
            ) as client:
                client.upload_data(warm_up, EXAMPLE_SEED)
                before = _memory_kib(process.pid)
                started = time.monotonic()
                result = client.upload_data(job_id, big)
                elapsed = time.monotonic() - started
            after = _memory_kib(process.pid)
            (upload,) = control.uploads(job_id)
            control.close()
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0

        assert result.bytes_sent == size
        assert (upload.bytes, upload.records, upload.sha256) == (size, rows, sha256)
        growth_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
        assert growth_mib < 50, f"server peak grew {growth_mib:.1f} MiB for {size} bytes"
        assert elapsed < 20
    finally:
        big.unlink(missing_ok=True)
        for stored in data_dir.glob("uploads/*/*"):
            stored.unlink()
