"""``pushagent demo``: the whole product in one command, against the embedded simulator."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from pushagent.config import load_config
from pushagent.env import Environment
from pushagent.errors import PushAgentError
from pushagent.journal import Journal
from pushagent.service import build_service
from pushagent.simulator import Simulator

DEMO_KEY = "demo-account-key-0000"
DEMO_ENDPOINT = 85
DEMO_SEGMENT = 45311
DEMO_PULL_ENDPOINT = 7
DEADLINE_SECONDS = 30.0

CONFIG_TEMPLATE = """\
exchange:
  base_url: {url}
  api_key: ${{DEMO_EXCHANGE_KEY}}
  endpoint_id: {endpoint}
folders:
  drop: ./drop
  done: ./done
  failed: ./failed
state_dir: ./state
segments:
  vip_customers: {segment}
watch:
  settle_seconds: 0.5
matching:
  poll_seconds: 1
pull:
  endpoint_id: {pull_endpoint}
  outbox: ./inbox
  poll_seconds: 1
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="see the agent deliver a file to a local simulated Exchange",
        description=(
            "Start the Exchange simulator on a free loopback port with one SEGMENT_EXPORT job "
            "waiting for data and one ready for download, write an agent config in a temporary "
            "folder, drop the sample CSV, run the agent until the first job has its data and "
            "the second one's files are downloaded, and print what happened."
        ),
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder and print its path"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    out = env.stdout
    workdir = Path(tempfile.mkdtemp(prefix="pushagent-demo-"))
    try:
        with Simulator(account_key=DEMO_KEY, complete_after=0.5) as simulator:
            job = simulator.add_job(
                producerEndpointID=DEMO_ENDPOINT,
                producerSegmentID=DEMO_SEGMENT,
                destinationEndpointID=7,
                destinationSegmentName="VIP customers",
                identityMappings={"Email": "EMAIL_SHA256"},
            )
            job_id = job["jobId"]
            ready = simulator.add_job(
                producerEndpointID=86, producerSegmentID=6001,
                destinationEndpointID=DEMO_PULL_ENDPOINT, status="READY_FOR_DOWNLOAD",
                segmentDataFiles=["segment-part1.csv", "segment-part2.csv"], sampleRows=3,
            )
            print(f"1. simulator listening on {simulator.url}", file=out)
            print(f"   job {job_id} for segment {DEMO_SEGMENT}: {job['status']}", file=out)
            print(f"   job {ready['jobId']} for endpoint {DEMO_PULL_ENDPOINT}: "
                  f"{ready['status']}, {len(ready['segmentDataFiles'])} files", file=out)
            config_path = _write_config(workdir, simulator.url)
            config = load_config(
                config_path, environ={**env.environ, "DEMO_EXCHANGE_KEY": DEMO_KEY}
            )
            folders, _ = config.push_side()
            journal = Journal.for_state_dir(config.state_dir)
            service = build_service(config, journal=journal)
            worker = threading.Thread(target=service.run, name="demo-agent", daemon=True)
            worker.start()
            dropped = _drop_sample(folders.drop, "vip_customers.csv")
            print(f"2. dropped {dropped.name} in {folders.drop}", file=out)
            status = _wait_for_data(simulator, job_id)
            pulled = _wait_for_download(simulator, ready["jobId"], workdir / "inbox")
            service.request_stop()
            worker.join(timeout=10)
            journal.close()
            uploads = simulator.uploads(job_id)
            if not uploads:
                raise PushAgentError(
                    f"demo: job {job_id} received no data within {DEADLINE_SECONDS:g} s "
                    f"(job status {status}); run with -v to see the agent's log"
                )
            print(
                f"3. job {job_id}: {job['status']} -> {status}; received {uploads[0].bytes} "
                f"bytes, {uploads[0].records} rows",
                file=out,
            )
            done = sorted(p.name for p in folders.done.iterdir())
            print(f"4. {dropped.name} moved to done/: {', '.join(done)}", file=out)
            if not pulled:
                raise PushAgentError(
                    f"demo: job {ready['jobId']}'s files were not downloaded within "
                    f"{DEADLINE_SECONDS:g} s; run with -v to see the agent's log"
                )
            print(f"5. job {ready['jobId']}: downloaded to inbox/{ready['jobId']}/: "
                  f"{', '.join(pulled)}; now {simulator.job(ready['jobId'])['status']}",
                  file=out)
    finally:
        if args.keep:
            print(f"   files kept in {workdir}", file=out)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _write_config(workdir: Path, url: str) -> Path:
    for name in ("drop", "done", "failed"):
        (workdir / name).mkdir()
    path = workdir / "agent.yaml"
    (workdir / "inbox").mkdir()
    path.write_text(
        CONFIG_TEMPLATE.format(url=url, endpoint=DEMO_ENDPOINT, segment=DEMO_SEGMENT,
                               pull_endpoint=DEMO_PULL_ENDPOINT),
        encoding="utf-8",
    )
    return path


def _drop_sample(drop: Path, name: str) -> Path:
    """Write under a hidden name, then rename: how every dropper should deliver a file."""
    sample = resources.files("pushagent").joinpath("data/sample-segment.csv").read_bytes()
    partial = drop / f".{name}.part"
    partial.write_bytes(sample)
    target = drop / name
    os.rename(partial, target)
    return target


def _wait_for_data(simulator: Simulator, job_id: int) -> str:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        status = str(simulator.job(job_id)["status"])
        if (simulator.uploads(job_id) and status == "COMPLETE") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def _wait_for_download(simulator: Simulator, job_id: int, outbox: Path) -> list[str]:
    """The job's downloaded files once job.json (written last) is there and the job is
    complete; [] at the deadline."""
    folder = outbox / str(job_id)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not ((folder / "job.json").exists() and simulator.job(job_id)["status"] == "COMPLETE"):
        if time.monotonic() > deadline:
            return []
        time.sleep(0.1)
    return sorted(p.name for p in folder.iterdir())
