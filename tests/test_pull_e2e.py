"""The pull side of the real ``pushagent run`` process against the simulator, with real folders."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pushagent.simulator import Simulator
from tests.e2e import KEY, AgentHome, assert_never, drop_atomically, received, wait_for
from tests.e2e import waiting_job as push_job
from tests.faultkit import folder_outage
from tests.test_cli_api import run_cli

pytestmark = pytest.mark.e2e

PULL_ENDPOINT = 7
PARTS = {
    "segment-1-part1.csv": "Email,name\na@example.com,A\nb@example.com,B\n",
    "segment-1-part2.csv": "Email,name\nc@example.com,C\n",
    "segment-1-part3.csv": "Email,name\nd@example.com,D\ne@example.com,E\n",
}


class PullHome(AgentHome):
    """An agent home with a pull: section (and, with ``push``, the folders of the push side)."""

    def __init__(self, root: Path, url: str, *, push: bool = False, pull: str = "") -> None:
        settings = (f"pull:\n  endpoint_id: {PULL_ENDPOINT}\n  outbox: ./outbox\n"
                    "  poll_seconds: 0.3\n  initial_backoff: 0.2\n  max_backoff: 1\n" + pull)
        super().__init__(root, url, extra=settings)
        self.outbox = root / "outbox"
        self.outbox.mkdir()
        if not push:
            text = self.config.read_text()
            self.config.write_text(
                "\n".join(line for line in text.splitlines() if not line.startswith("folders:"))
                + "\n"
            )

    def job_folder(self, job_id: int) -> Path:
        return self.outbox / str(job_id)

    def job_json(self, job_id: int) -> dict[str, Any]:
        return dict(json.loads((self.job_folder(job_id) / "job.json").read_text()))

    def status(self) -> dict[str, Any]:
        return dict(run_cli("status", "--state-dir", str(self.root / "state"), "--json").json())


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim", complete_after=0.2) as simulator:
        yield simulator


@pytest.fixture
def home(tmp_path: Path, sim: Simulator) -> Iterator[PullHome]:
    h = PullHome(tmp_path / "agent", sim.url)
    yield h
    if h.process is not None:
        h.kill9()


def ready_job(sim: Simulator, files: dict[str, str] | None = None, **fields: Any) -> int:
    files = PARTS if files is None else files
    wire = {"status": "READY_FOR_DOWNLOAD", "producerEndpointID": 86,
            "destinationEndpointID": PULL_ENDPOINT, "segmentDataFiles": list(files),
            "segmentData": files, **fields}
    job = sim.add_job(**wire)
    return int(job["jobId"])


def calls(sim: Simulator, method: str, job_id: int, tail: str = "") -> list[dict[str, Any]]:
    prefix = f"/v1/jobs/{job_id}/"
    return [r for r in sim.request_log()
            if r["method"] == method and r["path"].startswith(prefix) and r["path"].endswith(tail)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*")]


def test_a_job_with_three_files_lands_whole_then_is_deleted_and_completed(
    home: PullHome, sim: Simulator
) -> None:
    job = ready_job(sim, producerSegmentID=6001, destinationSegmentName="VIP")
    other = ready_job(sim, destinationEndpointID=9)  # another destination's job: not ours
    home.start()
    wait_for(lambda: sim.job(job)["status"] == "COMPLETE", what="the job completed")
    folder = home.job_folder(job)
    for name, text in PARTS.items():
        assert (folder / name).read_bytes() == text.encode()
    document = home.job_json(job)
    assert document["job_id"] == job
    assert document["job"]["destinationSegmentName"] == "VIP"
    assert document["job"]["producerSegmentID"] == 6001
    assert [(f["name"], f["file"], f["size"], f["sha256"]) for f in document["files"]] == [
        (name, name, len(text.encode()), sha256(text.encode())) for name, text in PARTS.items()
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*PARTS, "job.json"])
    # Every file fetched once, then deleted, then the job completed: in that order.
    log = [(r["method"], r["path"]) for r in sim.request_log()
           if r["path"].startswith(f"/v1/jobs/{job}/")]
    gets = [("GET", f"/v1/jobs/{job}/segmentDataFiles/{name}") for name in PARTS]
    deletes = [("DELETE", f"/v1/jobs/{job}/segmentDataFiles/{name}") for name in PARTS]
    assert log == [*gets, *deletes, ("PUT", f"/v1/jobs/{job}/status/complete")]
    assert sim.job_state(job)["segmentFilesPresent"] == []
    assert sim.job(other)["status"] == "READY_FOR_DOWNLOAD"
    assert not home.job_folder(other).exists()
    assert no_temporaries(home.outbox)
    status = home.status()
    assert [(j["job_id"], j["state"]) for j in status["pull"]["recent"]] == [(str(job), "done")]
    assert status["last_contact"] is not None
    assert home.stop() == 0
    assert "Traceback" not in home.log() and KEY not in home.log()


def test_merge_files_writes_one_header_and_refuses_parts_whose_headers_differ(
    tmp_path: Path, sim: Simulator
) -> None:
    home = PullHome(tmp_path / "agent", sim.url, pull="  merge_files: true\n")
    same = ready_job(sim)
    differ = ready_job(sim, {"x-1.csv": "Email\na@example.com\n",
                             "x-2.csv": "Email,Phone\nb@example.com,555\n"})
    result = home.run_once()
    assert result.returncode == 0, result.stdout + result.stderr
    merged = (home.job_folder(same) / "segment.csv").read_bytes()
    rows = [line for text in PARTS.values() for line in text.splitlines()[1:]]
    assert merged == ("Email,name\n" + "\n".join(rows) + "\n").encode()
    assert home.job_json(same)["merged"] == {
        "file": "segment.csv", "size": len(merged), "sha256": sha256(merged)}
    refused = home.job_json(differ)
    assert refused["merged"] is None
    assert "x-2.csv has another header than x-1.csv" in refused["merge_refused"]
    assert not (home.job_folder(differ) / "segment.csv").exists()
    assert (home.job_folder(differ) / "x-2.csv").exists()
    # The parts are all safely here: the job is completed anyway, the reason kept in job.json.
    assert sim.job(differ)["status"] == "COMPLETE"
    assert f"pulled   job {same}" in result.stdout


def test_names_from_the_exchange_never_leave_the_job_folder(home: PullHome, sim: Simulator) -> None:
    job = ready_job(sim, {"../../escape.csv": "Email\na@example.com\n",
                          "sub/dir.csv": "Email\nb@example.com\n",
                          "line\nbreak.csv": "Email\nc@example.com\n",
                          "job.json": "Email\nd@example.com\n",
                          ".hidden.csv": "Email\ne@example.com\n"})
    result = home.run_once()
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.relative_to(home.outbox).as_posix() for p in home.outbox.rglob("*")) == [
        str(job), f"{job}/______escape.csv", f"{job}/_hidden.csv", f"{job}/job-2.json",
        f"{job}/job.json", f"{job}/line_break.csv", f"{job}/sub_dir.csv"]
    assert not (home.root / "escape.csv").exists()
    names = {f["name"]: f["file"] for f in home.job_json(job)["files"]}
    assert names["job.json"] == "job-2.json"
    assert (home.job_folder(job) / "job-2.json").read_text() == "Email\nd@example.com\n"


def test_kill_9_mid_download_resumes_without_a_partial_file_or_a_second_fetch(
    home: PullHome, sim: Simulator, tmp_path: Path
) -> None:
    big = tmp_path / "big.csv"
    with open(big, "wb") as out:
        out.write(b"Email,name\n")
        block = b"".join(b"user%07d@example.com,N%07d\n" % (n, n) for n in range(20000))
        for _ in range(200):  # ~ 160 MB
            out.write(block)
    files = {"p1.csv": "Email,name\na@example.com,A\n", "p2.csv": "", "p3.csv": "Email\nz@z.z\n"}
    job = int(sim.add_job(
        status="READY_FOR_DOWNLOAD", destinationEndpointID=PULL_ENDPOINT,
        segmentDataFiles=list(files), segmentData={k: v for k, v in files.items() if v},
        segmentDataPaths={"p2.csv": str(big)},
    )["jobId"])
    folder = home.job_folder(job)
    home.start()
    temp = folder / ".p2.csv.part"
    wait_for(lambda: temp.exists() and temp.stat().st_size > 0, timeout=30,
             what="the second file being written")
    home.kill9()
    assert not (folder / "p2.csv").exists(), "a partial file under its final name"
    assert (folder / "p1.csv").exists()
    assert calls(sim, "PUT", job, "/complete") == [] and calls(sim, "DELETE", job) == []
    home.start()
    wait_for(lambda: sim.job(job)["status"] == "COMPLETE", timeout=60, what="the job completed")
    assert (folder / "p2.csv").stat().st_size == big.stat().st_size
    document = home.job_json(job)
    assert {f["name"]: f["sha256"] for f in document["files"]}["p2.csv"] == sha256(
        big.read_bytes())
    # What was in place is not fetched again; the cut-short file is fetched whole, once more.
    assert len(calls(sim, "GET", job, "/p1.csv")) == 1
    assert len(calls(sim, "GET", job, "/p2.csv")) == 2
    assert len(calls(sim, "GET", job, "/p3.csv")) == 1
    assert no_temporaries(home.outbox)
    assert home.stop() == 0


def test_kill_9_between_the_download_and_the_complete_call(home: PullHome, sim: Simulator) -> None:
    job = ready_job(sim)
    sim.add_fault(method="PUT", path=rf"^/v1/jobs/{job}/status/complete$", delay=30)
    home.start()
    folder = home.job_folder(job)
    wait_for(lambda: len(calls(sim, "DELETE", job)) == 3, what="the files deleted")
    wait_for(lambda: not sim.faults(), what="the complete call held (its fault fired)")
    document = (folder / "job.json").read_bytes()
    home.kill9()
    sim.clear_faults()
    home.start()
    wait_for(lambda: home.status()["pull"]["recent"], what="the job done after the restart")
    assert sim.job(job)["status"] == "COMPLETE"
    assert (folder / "job.json").read_bytes() == document
    assert len(calls(sim, "DELETE", job)) == 3, "files deleted once, not again"
    for name in PARTS:
        assert len(calls(sim, "GET", job, f"/{name}")) == 1, name
    assert home.stop() == 0


def test_a_download_answered_404_is_reported_and_the_job_is_not_completed(
    home: PullHome, sim: Simulator
) -> None:
    job = ready_job(sim)
    sim.add_fault(method="GET", path=r"/segmentDataFiles/segment-1-part2\.csv$", status=404,
                  count=None)
    home.start()
    wait_for(lambda: "segment-1-part2.csv" in home.log() and "HTTP 404" in home.log(),
             what="an ERROR naming the file and the 404")
    wait_for(lambda: len(calls(sim, "GET", job, "/segment-1-part2.csv")) >= 3,
             what="retries of the download")
    error_lines = [line for line in home.log().splitlines() if "| ERROR" in line]
    assert any("segment-1-part2.csv" in line and "404" in line for line in error_lines)
    (pending,) = home.status()["pull"]["pending"]
    assert pending["job_id"] == str(job) and pending["state"] == "downloading"
    assert "segment-1-part2.csv" in pending["reason"] and "404" in pending["reason"]
    assert pending["attempts"] >= 2
    table = run_cli("status", "--state-dir", str(home.root / "state")).out
    assert "pull jobs (downloading or finishing: 1):" in table
    assert f"{job}  downloading  2/3" in table  # the other files are fetched meanwhile
    assert not (home.job_folder(job) / "job.json").exists()
    assert calls(sim, "PUT", job) == [] and calls(sim, "DELETE", job) == []
    assert sim.job(job)["status"] == "READY_FOR_DOWNLOAD"
    sim.clear_faults()
    wait_for(lambda: sim.job(job)["status"] == "COMPLETE", what="the job completed once it can")
    assert home.stop() == 0


def test_an_unwritable_outbox_leaves_the_job_untouched_and_is_retried(
    home: PullHome, sim: Simulator
) -> None:
    home.start()
    wait_for(lambda: any(r["path"] == "/v1/jobs/SEGMENT_EXPORT" for r in sim.request_log()),
             what="a first poll")
    with folder_outage(home.outbox):  # a regular file where the folder was: root cannot write
        job = ready_job(sim)
        wait_for(lambda: "cannot make" in home.log(), what="the outbox problem reported")
        assert_never(lambda: calls(sim, "PUT", job) or calls(sim, "DELETE", job), seconds=1.5,
                     what="a job touched at the Exchange while its files cannot be written")
        (pending,) = home.status()["pull"]["pending"]
        assert "cannot make" in pending["reason"]
    wait_for(lambda: sim.job(job)["status"] == "COMPLETE", what="the job done once it can")
    assert sorted(p.name for p in home.job_folder(job).iterdir()) == sorted([*PARTS, "job.json"])
    assert home.stop() == 0
    assert "Traceback" not in home.log()


def test_push_and_pull_in_one_agent(tmp_path: Path, sim: Simulator) -> None:
    home = PullHome(tmp_path / "agent", sim.url, push=True)
    waiting = push_job(sim)
    ready = ready_job(sim)
    home.start()
    data = b"Email\nx@example.com\n"
    drop_atomically(home.drop, "45311.csv", data)
    wait_for(lambda: (home.done / "45311.csv").exists(), what="the pushed file in done/")
    wait_for(lambda: sim.job(ready)["status"] == "COMPLETE", what="the pull job completed")
    assert received(sim, waiting) == [data]
    assert home.stop() == 0
    assert "Traceback" not in home.log()


def test_a_held_download_holds_up_neither_a_push_nor_the_stop(
    tmp_path: Path, sim: Simulator
) -> None:
    home = PullHome(tmp_path / "agent", sim.url, push=True)
    home.config.write_text(home.config.read_text().replace(
        "shutdown_grace_seconds: 10", "shutdown_grace_seconds: 1"))
    ready = ready_job(sim, {"held.csv": "Email\na@example.com\n"})
    sim.add_fault(method="GET", path=r"/segmentDataFiles/held\.csv$", delay=30)
    waiting = push_job(sim)
    home.start()
    wait_for(lambda: not sim.faults(), what="the download held by the server")
    data = b"Email\nx@example.com\n"
    drop_atomically(home.drop, "45311.csv", data)
    wait_for(lambda: (home.done / "45311.csv").exists(), timeout=10,
             what="the pushed file in done/ while the download hangs")
    assert received(sim, waiting) == [data]
    stopping = time.monotonic()
    assert home.stop() == 0
    assert time.monotonic() - stopping < 8, "the stop waited for the held download"
    assert not (home.job_folder(ready) / "held.csv").exists()
    home.start()
    wait_for(lambda: sim.job(ready)["status"] == "COMPLETE", what="the job done after a restart")
    assert (home.job_folder(ready) / "held.csv").read_text() == "Email\na@example.com\n"
    assert home.stop() == 0
    assert "Traceback" not in home.log()


@pytest.mark.slow
def test_a_2_gb_file_is_downloaded_with_flat_memory(
    home: PullHome, sim: Simulator, tmp_path: Path
) -> None:
    big = tmp_path / "two-gb.csv"
    digest = hashlib.sha256()
    with open(big, "wb") as out:
        header = b"Email,name\n"
        out.write(header)
        digest.update(header)
        block = b"".join(b"user%07d@example.com,N%07d\n" % (n, n) for n in range(40000))
        for _ in range((2 * 1024**3) // len(block) + 1):
            out.write(block)
            digest.update(block)
    size = big.stat().st_size
    assert size > 2 * 1024**3
    job = int(sim.add_job(status="READY_FOR_DOWNLOAD", destinationEndpointID=PULL_ENDPOINT,
                          segmentDataFiles=["big.csv"], segmentDataPaths={"big.csv": str(big)},
                          )["jobId"])
    process = home.start()
    wait_for(lambda: sim.job(job)["status"] == "COMPLETE", timeout=600, what="the job completed")
    peak_kib = _peak_rss_kib(process.pid)
    (entry,) = home.job_json(job)["files"]
    assert (entry["size"], entry["sha256"]) == (size, digest.hexdigest())
    assert home.stop() == 0
    # The whole agent (interpreter, libraries, journal) stays small whatever the file's size.
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB for a 2 GB download"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_a_pull_only_config_without_an_outbox_is_refused_naming_the_key(tmp_path: Path) -> None:
    home = PullHome(tmp_path / "agent", "http://127.0.0.1:9")
    os.rmdir(home.outbox)
    result = home.run_once()
    assert result.returncode == 2
    assert "pull.outbox" in result.stderr and "does not exist" in result.stderr


def test_check_covers_the_outbox_and_the_pull_endpoint(home: PullHome, sim: Simulator) -> None:
    ready_job(sim)
    result = run_cli("check", "-c", str(home.config), environ=home.env())
    lines = result.out.splitlines()
    assert result.code == 0, result.out + result.err
    assert f"ok   pull outbox {home.outbox}: writable" in lines
    assert (f"ok   pull {sim.url}: key accepted for endpoint {PULL_ENDPOINT}; 1 SEGMENT_EXPORT "
            "job(s) ready for download") in lines
    assert not any("drop folder" in line for line in lines)  # a pull-only agent has none
    bad = run_cli("check", "-c", str(home.config), environ={**home.env(),
                                                            "E2E_EXCHANGE_KEY": "wrong"})
    assert bad.code == 3
    assert any(line.startswith("FAIL pull ") and "HTTP 401" in line
               for line in bad.out.splitlines())
