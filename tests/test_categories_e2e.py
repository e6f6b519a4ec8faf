"""Every job category that waits for a push producer's data, served by the real agent process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.simulator import Simulator
from tests.e2e import KEY, AgentHome, drop_atomically, received, wait_for, waiting_job
from tests.test_cli_api import run_cli
from tests.test_health import _scrape

pytestmark = pytest.mark.e2e

VALID = b"Email,firstName\nana@example.com,Ana\n"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim", complete_after=0.2) as simulator:
        yield simulator


@pytest.fixture
def home(tmp_path: Path, sim: Simulator) -> Iterator[AgentHome]:
    h = AgentHome(tmp_path / "agent", sim.url)
    yield h
    if h.process is not None:
        h.kill9()


def identity_import(sim: Simulator, segment: int = 45311, **fields: object) -> int:
    return waiting_job(sim, segment, jobCategory="IDENTITY_IMPORT", **fields)


def list_calls(sim: Simulator, category: str) -> int:
    return sum(
        1 for r in sim.request_log()
        if r["method"] == "GET" and r["path"] == f"/v1/jobs/{category}"
    )


def labelled(text: str, name: str, category: str) -> float | None:
    prefix = f'{name}{{category="{category}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def test_an_identity_import_job_gets_the_file_of_its_segment_and_metrics_name_it(
    tmp_path: Path, sim: Simulator
) -> None:
    home = AgentHome(tmp_path / "agent", sim.url,
                     extra="metrics: {enabled: true, host: 127.0.0.1, port: 0}\n")
    identity = identity_import(sim)
    export = waiting_job(sim)
    other = identity_import(sim, segment=777)
    assert sim.job(identity)["jobCategory"] == "IDENTITY_IMPORT"
    home.start()
    try:
        base = home.served_url()
        listed = wait_for(
            lambda: (t := _scrape(f"{base}/metrics"))
            and labelled(t, "pushagent_jobs_waiting", "IDENTITY_IMPORT") is not None and t,
            what="the first poll in the metrics",
        )
        assert labelled(listed, "pushagent_jobs_waiting", "IDENTITY_IMPORT") == 2
        assert labelled(listed, "pushagent_jobs_waiting", "SEGMENT_EXPORT") == 1
        drop_atomically(home.drop, "45311.csv", VALID)
        wait_for(lambda: (home.done / "45311.csv").exists(), what="45311.csv in done/")
        assert received(sim, identity) == [VALID]
        assert received(sim, export) == [VALID]
        assert received(sim, other) == []
        text = wait_for(
            lambda: (t := _scrape(f"{base}/metrics"))
            and labelled(t, "pushagent_job_uploads_total", "IDENTITY_IMPORT") == 1 and t,
            what="the identity import upload counted",
        )
        assert labelled(text, "pushagent_job_uploads_total", "SEGMENT_EXPORT") == 1
    finally:
        assert home.stop() == 0
    # Every line about a job names its category.
    assert any(f"uploaded to job {identity}" in line and "category=IDENTITY_IMPORT" in line
               for line in home.log().splitlines())
    assert "Traceback" not in home.log()


def test_each_poll_lists_each_category_once_never_once_per_file(
    home: AgentHome, sim: Simulator
) -> None:
    for n in range(30):  # no job waits for these: each poll re-checks all of them
        drop_atomically(home.drop, f"{9000 + n}.csv", VALID)
    home.start()
    wait_for(lambda: list_calls(sim, "IDENTITY_IMPORT") >= 6, what="six polls")
    started = time.monotonic()
    before = {c: list_calls(sim, c) for c in ("SEGMENT_EXPORT", "IDENTITY_IMPORT")}
    wait_for(lambda: list_calls(sim, "SEGMENT_EXPORT") >= before["SEGMENT_EXPORT"] + 4,
             what="four more polls")
    elapsed = time.monotonic() - started
    after = {c: list_calls(sim, c) for c in ("SEGMENT_EXPORT", "IDENTITY_IMPORT")}
    assert abs(after["SEGMENT_EXPORT"] - after["IDENTITY_IMPORT"]) <= 1
    # poll_seconds is 0.5: the calls follow the clock, not the 30 waiting files.
    for category in after:
        assert after[category] - before[category] <= elapsed / 0.5 + 2, category
    assert not any(r["path"].startswith("/v1/jobs/SEGMENT_POPULATE_DB") for r in sim.request_log())
    job = identity_import(sim, segment=9007)
    wait_for(lambda: (home.done / "9007.csv").exists(), what="9007.csv in done/")
    assert received(sim, job) == [VALID]


def test_a_refused_file_fails_an_identity_import_job_and_the_report_names_the_category(
    home: AgentHome, sim: Simulator
) -> None:
    job = identity_import(sim)
    idle = identity_import(sim, segment=777)
    home.start()
    drop_atomically(home.drop, "45311.csv", b"Phone\n555-0100\n")
    report_path = home.failed / "45311.csv.error.json"
    wait_for(report_path.exists, what="the error report")
    report = json.loads(report_path.read_text())
    assert report["jobs"] == [
        {"job_id": str(job), "category": "IDENTITY_IMPORT", "state": "rejected"}
    ]
    state = sim.job(job)
    assert state["status"] == "ERROR"
    assert "Email" in state["errorDetails"]
    assert any(f"failed job {job}" in line and "category=IDENTITY_IMPORT" in line
               for line in home.log().splitlines())
    wait_for(lambda: f"IDENTITY_IMPORT/{idle}" in run_cli(
        "status", "--state-dir", str(home.root / "state")).out,
        what="the job with no file in status, with its category")
    status = run_cli("status", "--state-dir", str(home.root / "state"), "--json").json()
    assert status["jobs_without_file"][0]["category"] == "IDENTITY_IMPORT"


def test_a_category_that_cannot_be_listed_holds_up_neither_the_other_nor_itself_for_long(
    home: AgentHome, sim: Simulator
) -> None:
    sim.add_fault(method="GET", path="^/v1/jobs/IDENTITY_IMPORT$", status=500, count=None)
    export, identity = waiting_job(sim), identity_import(sim, segment=777)
    home.start()
    drop_atomically(home.drop, "45311.csv", VALID)
    drop_atomically(home.drop, "777.csv", VALID)
    wait_for(lambda: (home.done / "45311.csv").exists(), what="the export's file in done/")
    assert received(sim, export) == [VALID]
    wait_for(lambda: "cannot list the waiting IDENTITY_IMPORT jobs" in home.log(),
             what="an ERROR naming the category")
    assert (home.drop / "777.csv").exists()
    assert received(sim, identity) == []
    sim.clear_faults()
    wait_for(lambda: (home.done / "777.csv").exists(), what="the import's file in done/")
    assert received(sim, identity) == [VALID]
    assert home.stop() == 0
    assert "Traceback" not in home.log()


def test_categories_left_out_of_the_config_are_not_listed(tmp_path: Path, sim: Simulator) -> None:
    home = AgentHome(tmp_path / "agent", sim.url, extra="")
    text = home.config.read_text().replace(
        "  max_wait_seconds:", "  categories: [IDENTITY_IMPORT]\n  max_wait_seconds:")
    home.config.write_text(text)
    export, identity = waiting_job(sim), identity_import(sim)
    home.start()
    drop_atomically(home.drop, "45311.csv", VALID)
    wait_for(lambda: (home.done / "45311.csv").exists(), what="the file in done/")
    assert received(sim, identity) == [VALID]
    assert received(sim, export) == []
    assert list_calls(sim, "SEGMENT_EXPORT") == 0
    home.stop()


def test_a_category_the_key_may_not_list_does_not_slow_the_other_down(
    home: AgentHome, sim: Simulator
) -> None:
    # Were a refusal backed off, polls would soon be 30 s apart.
    home.config.write_text(home.config.read_text().replace("max_backoff: 1\n",
                                                           "max_backoff: 30\n"))
    sim.add_fault(method="GET", path="^/v1/jobs/IDENTITY_IMPORT$", status=403, count=None)
    drop_atomically(home.drop, "777.csv", VALID)  # a file waiting: polls every 0.5 s
    home.start()
    wait_for(lambda: list_calls(sim, "SEGMENT_EXPORT") >= 2, what="two polls")
    before = list_calls(sim, "SEGMENT_EXPORT")
    # A refusal is a setup problem, not a load one: the other category keeps its pace.
    wait_for(lambda: list_calls(sim, "SEGMENT_EXPORT") >= before + 6, timeout=10,
             what="six more polls at poll_seconds' pace")
    assert "leave the category out of matching.categories" in home.log()
    job = waiting_job(sim, segment=777)
    wait_for(lambda: (home.done / "777.csv").exists(), what="777.csv in done/")
    assert received(sim, job) == [VALID]
