"""The pull side's download next to ``curl -o`` from the same simulator, printed as one table.

    python benchmarks/pull.py                     # a 1 GB file, best of 3
    python benchmarks/pull.py --size-gb 0.2 --repeat 2 --keep

Starts ``pushagent simulator`` in a subprocess, generates a CSV of ``--size-gb``, and for each
round seeds a job READY_FOR_DOWNLOAD holding it (``segmentDataPaths``), then:

- ``curl -o``: the file fetched by curl to the same disk (no fsync: curl never syncs);
- the agent: ``pushagent -v run --once`` with a pull-only config; its log line for the file
  gives the download (GET streamed to a hidden temporary file, fsync, size check) and, apart,
  the verification (validation, which hashes every byte); the whole run, process start to
  exit, is shown too. Each contender's best of ``--repeat`` is kept, and its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pushagent.simulator import SimulatorControl

KEY = "bench-pull-key"
ENDPOINT = 7
CURL = "/usr/bin/curl"
TARGET = 1.2

CONFIG = """\
exchange:
  base_url: {url}
  api_key: {key}
state_dir: ./state-{round}
pull:
  endpoint_id: {endpoint}
  outbox: ./outbox-{round}
  poll_seconds: 1
"""


def generate(path: Path, size: int) -> None:
    block = b"".join(b"user%07d@example.com,Name %07d,%d\n" % (n, n, n % 97) for n in range(50000))
    with open(path, "wb") as out:
        out.write(b"Email,name,score\n")
        while out.tell() < size:
            out.write(block)


def start_simulator(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pushagent", "simulator", "--account-key", KEY,
         "--data-dir", str(work / "sim")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    match = re.search(r"listening on (\S+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"bench: the simulator did not start: {line!r}")
    return process, match.group(1)


def ready_job(sim: SimulatorControl, source: Path) -> int:
    job = sim.add_job(status="READY_FOR_DOWNLOAD", destinationEndpointID=ENDPOINT,
                      segmentDataFiles=["big.csv"], segmentDataPaths={"big.csv": str(source)})
    return int(job["jobId"])


def curl_once(url: str, job: int, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [CURL, "-sS", "-f", "-o", str(target), "-H", f"Authorization: Bearer {KEY}",
         f"{url}/v1/jobs/{job}/segmentDataFiles/big.csv"],
        check=True,
    )
    return time.perf_counter() - started


def agent_once(work: Path, url: str, round_: int) -> tuple[float, float, float, float]:
    """(download, verify, whole run) seconds and peak RSS in MiB."""
    (work / f"outbox-{round_}").mkdir()
    config = work / f"agent-{round_}.yaml"
    config.write_text(CONFIG.format(url=url, key=KEY, round=round_, endpoint=ENDPOINT))
    started = time.perf_counter()
    # Peak RSS from /proc while it runs: a --once run exits before it could be read after.
    process = subprocess.Popen(
        [sys.executable, "-m", "pushagent", "-v", "run", "-c", str(config), "--once"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work,
    )
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, rss_mib(process.pid))
        time.sleep(0.05)
    whole = time.perf_counter() - started
    log = (process.stderr.read() if process.stderr else b"").decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"bench: the agent exited {process.returncode}:\n{log[-2000:]}")
    found = re.search(r"pull: downloaded to .*download=([\d.]+)s.*verify=([\d.]+)s", log)
    if not found:
        raise SystemExit(f"bench: no download line in the agent's log:\n{log[-2000:]}")
    return float(found.group(1)), float(found.group(2)), whole, peak


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pushagent-pull-bench-", dir=args.workdir))
    simulator, url = start_simulator(work)
    sim = SimulatorControl(url)
    try:
        source = work / "source.csv"
        generate(source, int(args.size_gb * 1e9))
        size = source.stat().st_size
        curls: list[float] = []
        agents: list[tuple[float, float, float, float]] = []
        for round_ in range(args.repeat):
            # Turns: curl first in even rounds, the agent first in odd ones.
            steps = [lambda r=round_: curls.append(
                         curl_once(url, ready_job(sim, source), work / f"curl-{r}.csv")),
                     lambda r=round_: (ready_job(sim, source),
                                       agents.append(agent_once(work, url, r)))]
            for step in (steps if round_ % 2 == 0 else steps[::-1]):
                step()
            for leftover in [*work.glob("curl-*.csv"), *work.glob("outbox-*/*/big.csv")]:
                leftover.unlink()
        curl = min(curls)
        download, verify, whole, _ = min(agents)
        peak = max(agent[3] for agent in agents)
        ratio = download / curl

        def speed(seconds: float) -> str:
            return f"{seconds:.2f} s ({size / seconds / 1e6:.0f} MB/s)"

        rows = [
            (f"pull: {size / 1e9:.2f} GB, best of {args.repeat}: curl -o", speed(curl), "", ""),
            ("pull: agent download (GET -> temp file, fsync, size check)", speed(download),
             "", ""),
            ("pull: agent download / curl -o", f"{ratio:.2f}x", f"<= {TARGET}x",
             "PASS" if ratio <= TARGET else "MISS"),
            ("pull: agent verify (validation, SHA-256) after the download", speed(verify), "",
             ""),
            ("pull: agent run --once, start to exit (list, download, verify, delete, complete)",
             speed(whole), "", ""),
            ("pull: agent peak RSS (VmHWM)", f"{peak:.1f} MiB", "<= 100 MiB",
             "PASS" if peak <= 100 else "MISS"),
        ]
        header = ("measure", "value", "target", "result")
        widths = [max(len(row[n]) for row in [header, *rows]) for n in range(4)]
        print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        print("-+-".join("-" * w for w in widths))
        for row in rows:
            print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        print(json.dumps({"curl_s": curls, "agent": agents}), file=sys.stderr)
    finally:
        sim.close()
        simulator.terminate()
        simulator.wait(timeout=10)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
