"""``pushagent check``, ``validate`` and ``status`` against the simulator and a real journal."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.commands.check import FAIL, OK, WARN, Finding, check_one_filesystem, exit_code
from pushagent.journal import Journal, StateLock
from pushagent.lifecycle import FileState
from pushagent.simulator import Simulator
from tests.e2e import ENDPOINT, KEY, AgentHome
from tests.test_cli_api import Result, run_cli

VALID = "Email,firstName\nana@example.com,Ana\n"
ENVIRON = {"E2E_EXCHANGE_KEY": KEY}


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim") as simulator:
        yield simulator


@pytest.fixture
def home(tmp_path: Path, sim: Simulator) -> AgentHome:
    (tmp_path / "agent" / "state").mkdir(parents=True)
    return AgentHome(tmp_path / "agent", sim.url)


def ops(*argv: str, environ: dict[str, str] = ENVIRON) -> Result:
    return run_cli(*argv, environ=environ)


# --- check -------------------------------------------------------------------------------------


def test_check_passes_with_writable_folders_and_a_working_key(
    home: AgentHome, sim: Simulator
) -> None:
    sim.add_job(producerEndpointID=ENDPOINT)
    sim.add_job(producerEndpointID=ENDPOINT)
    result = ops("check", "-c", str(home.config))
    assert result.code == 0, result.out + result.err
    lines = result.out.splitlines()
    assert f"ok   drop folder {home.drop}: writable" in lines
    assert f"ok   done folder {home.done}: writable" in lines
    assert f"ok   failed folder {home.failed}: writable" in lines
    assert any(line.startswith("ok   state_dir ") for line in lines)
    assert any(line.startswith("ok   filesystem: ") for line in lines)
    assert (
        f"ok   exchange {sim.url}: key accepted for endpoint {ENDPOINT}; 2 SEGMENT_EXPORT "
        "job(s), 0 IDENTITY_IMPORT job(s) waiting for data" in lines
    )
    assert lines[-1] == "all checks passed"
    assert os.listdir(home.drop) == []  # the probe file is gone
    calls = sim.request_log()  # one list call per category, as the agent makes each poll
    assert [call["path"] for call in calls] == ["/v1/jobs/SEGMENT_EXPORT",
                                                "/v1/jobs/IDENTITY_IMPORT"]
    for call in calls:
        assert call["query"] == {"endpointId": str(ENDPOINT), "status": "WAITING_TO_RECIEVE_DATA",
                                 "includeProducerSegmentIDString": "true"}


def test_check_with_a_wrong_key_fails_with_exit_3(home: AgentHome) -> None:
    result = ops("check", "-c", str(home.config), environ={"E2E_EXCHANGE_KEY": "wrong-key"})
    assert result.code == 3
    assert any(line.startswith("FAIL exchange ") and "HTTP 401" in line
               for line in result.out.splitlines())
    assert result.out.splitlines()[-1] == "1 check(s) failed"


def test_check_with_the_exchange_down_fails_with_exit_5(tmp_path: Path) -> None:
    # Bound but not listening: refused, and held so no test beside this one can take it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        (tmp_path / "state").mkdir()
        home = AgentHome(tmp_path, f"http://127.0.0.1:{port}")
        started = time.monotonic()
        result = ops("check", "-c", str(home.config))
    assert result.code == 5
    assert "could not reach the Exchange" in result.out
    assert time.monotonic() - started < 5  # one attempt, no retry budget


def test_check_json(home: AgentHome, sim: Simulator) -> None:
    sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)  # vip_customers' job
    result = ops("check", "-c", str(home.config), "--json")
    data = result.json()
    assert data["ok"] is True
    assert {c["status"] for c in data["checks"]} == {OK}


def test_check_a_config_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("exchange: [not, a, mapping]\n")
    result = ops("check", "-c", str(bad))
    assert result.code == 2
    assert result.err.startswith("pushagent: error: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_a_read_only_folder_fails(home: AgentHome) -> None:
    home.done.chmod(0o500)
    try:
        result = ops("check", "-c", str(home.config))
    finally:
        home.done.chmod(0o700)
    assert result.code == 1
    assert f"FAIL done folder {home.done}: not writable by this user" in result.out


def test_folders_on_two_filesystems_are_a_warning(tmp_path: Path) -> None:
    devices = {"drop": 1, "done": 1, "failed": 2, "state": 1}

    def stat(path: Path) -> os.stat_result:
        return os.stat_result((0, 0, devices[Path(path).name], 0, 0, 0, 0, 0, 0, 0))

    named = [(f"{name} folder", tmp_path / name) for name in devices]
    finding = check_one_filesystem(named, stat=stat)
    assert finding.status == WARN
    assert f"failed folder ({tmp_path / 'failed'}) not on the filesystem of the drop folder" in (
        finding.message
    )
    devices["failed"] = 1
    assert check_one_filesystem(named, stat=stat).status == OK


def test_exit_code_is_the_failures_own_when_they_agree() -> None:
    assert exit_code([Finding(OK, "a", "b"), Finding(WARN, "c", "d")]) == 0
    assert exit_code([Finding(FAIL, "x", "y", 3)]) == 3
    assert exit_code([Finding(FAIL, "x", "y", 3), Finding(FAIL, "z", "w", 1)]) == 1


# --- validate ----------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_validate_prints_ok_and_each_problem_with_its_line(tmp_path: Path) -> None:
    good = write(tmp_path, "good.csv", VALID)
    bad = write(tmp_path, "bad.csv", "Email,Email\na@example.com\n")
    result = ops("validate", str(good), str(bad))
    assert result.code == 1
    assert result.out.splitlines() == [
        f"ok   {good}: 1 data row, 2 columns (Email, firstName)",
        f"FAIL {bad}: line 1: column name 'Email' is used more than once (columns 1 and 2)",
        f"FAIL {bad}: line 2: expected 2 fields, found 1",
    ]


def test_validate_converts_another_dialect_first_as_the_agent_does(tmp_path: Path) -> None:
    excel = tmp_path / "excel.csv"
    excel.write_bytes("Email\tfirstName\r\na@example.com\tAnaïs\r\n".encode("utf-16"))
    code_page = tmp_path / "cp1252.csv"
    code_page.write_bytes("Email;firstName\na@example.com;Anaïs\n".encode("cp1252"))
    result = ops("validate", str(excel), str(code_page))
    assert result.code == 1
    assert result.out.splitlines() == [
        f"ok   {excel}: 1 data row, 2 columns (Email, firstName); converted from UTF-16LE with a "
        "byte order mark, tab-separated",
        f"FAIL {code_page}: line 2: byte 0xEF is not UTF-8; if your exporter writes "
        "Windows-1252, set input.encoding: cp1252 (or the code page it writes)",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp1252.csv", "excel.csv"]


def test_validate_exits_0_when_every_file_is_valid(tmp_path: Path) -> None:
    assert ops("validate", str(write(tmp_path, "a.csv", VALID))).code == 0


def test_validate_a_missing_file_is_invalid(tmp_path: Path) -> None:
    result = ops("validate", str(tmp_path / "nope.csv"))
    assert result.code == 1
    assert "nope.csv: cannot read it (No such file or directory)" in result.out


def test_validate_json(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.csv", "Email\n")
    data = ops("validate", "--json", str(bad)).json()
    assert data == {
        "ok": False, "job_id": None, "required_columns": [],
        "files": [{"path": str(bad), "converted_from": None, "ok": False,
                   "header": ["Email"], "data_rows": 0,
                   "bytes": 6, "problems": ["line 2: no data rows after the header (at least "
                                            "one is needed)"]}],
    }


def test_validate_with_a_config_uses_its_max_bytes(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "agent" / "state").mkdir(parents=True)
    home = AgentHome(tmp_path / "agent", sim.url, extra="validation:\n  max_bytes: 10\n")
    result = ops("validate", "-c", str(home.config), str(write(tmp_path, "a.csv", VALID)))
    assert result.code == 1
    assert "over the size limit of 10 bytes" in result.out
    assert sim.request_log() == []  # offline without --job


def test_validate_against_a_job_checks_its_mapped_columns(
    home: AgentHome, sim: Simulator, tmp_path: Path
) -> None:
    job = sim.add_job(producerEndpointID=ENDPOINT, identityMappings=None,
                      sourceIdentifiers=["CustomerId"])["jobId"]
    path = write(tmp_path, "a.csv", VALID)
    result = ops("validate", "-c", str(home.config), "--job", f"SEGMENT_EXPORT/{job}", str(path))
    assert result.code == 1
    assert result.out == (
        f"FAIL {path}: line 1: column 'CustomerId' required by job {job} is missing from the "
        "header\n"
    )
    with_env = run_cli("validate", "--job", str(job), "--base-url", sim.url, "--json", str(path),
                       environ={"EXCHANGE_API_KEY": KEY})
    assert with_env.json()["required_columns"] == ["CustomerId"]


def test_validate_an_unknown_job_exits_4(home: AgentHome, tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", VALID)
    assert ops("validate", "-c", str(home.config), "--job", "424242", str(path)).code == 4


# --- status ------------------------------------------------------------------------------------


def populate(state_dir: Path, drop: Path) -> None:
    """A journal as a running agent leaves it: one file of each kind."""
    journal = Journal.for_state_dir(state_dir)
    try:
        settling = journal.note_settling("new.csv", drop / "new.csv", size=10)
        assert settling
        waiting = journal.note_settling("45311.csv", drop / "45311.csv", size=2048)
        journal.mark_waiting(waiting, segment="45311", reason="waiting for a job for segment 45311")
        retrying = journal.note_settling("777.csv", drop / "777.csv", size=100)
        journal.mark_waiting(retrying, segment="777", reason="x")
        journal.claim(retrying, path=state_dir / "claimed" / "777.csv", job_ids=["5"])
        journal.count_attempt(retrying, "retrying in 30 s after: HTTP 503",
                              next_attempt_at=time.time() + 30)
        flying = journal.note_settling("vip.csv", drop / "vip.csv", size=5 * 1024 * 1024)
        journal.mark_waiting(flying, segment="vip", reason="x")
        journal.claim(flying, path=state_dir / "claimed" / "vip.csv", job_ids=["7", "8"])
        journal.upload_started(flying, "7")
        done = journal.note_settling("old.csv", drop / "old.csv", size=50)
        journal.mark_waiting(done, segment="45311", reason="x")
        journal.claim(done, path=state_dir / "claimed" / "old.csv", job_ids=[])
        journal.conclude(done, FileState.DELIVERED, reason=None)
        journal.finish(done, final_path=drop.parent / "done" / "old.csv")
        failed = journal.note_settling("bad.csv", drop / "bad.csv", size=50)
        journal.conclude(failed, FileState.REJECTED,
                         reason="invalid CSV: line 3: expected 4 fields, found 3")
        journal.finish(failed, final_path=drop.parent / "failed" / "bad.csv")
        journal.set_meta("last_contact", str(time.time() - 5))
    finally:
        journal.close()


def test_status_shows_pending_in_flight_and_recent(home: AgentHome, tmp_path: Path) -> None:
    state = tmp_path / "agent" / "state"
    populate(state, home.drop)
    result = ops("status", "-c", str(home.config))
    assert result.code == 0, result.err
    out = result.out
    assert f"agent:     not running on {state}" in out
    assert "exchange:  last reached 5 s ago (" in out
    pending = out.split("pending (3):\n")[1].split("\n\n")[0].splitlines()
    assert pending[0].split()[:3] == ["STATE", "FILE", "SEGMENT"]
    assert pending[1].split()[:2] == ["settling", "new.csv"]
    assert "waiting for a job for segment 45311" in pending[2]
    assert pending[3].split()[:2] == ["claimed", "777.csv"]
    assert "in 30 s" in pending[3] or "in 29 s" in pending[3]
    assert "retrying in 30 s after: HTTP 503" in pending[3]
    in_flight = out.split("in flight (1):\n")[1].split("\n\n")[0].splitlines()
    assert in_flight[1].split()[:4] == ["vip.csv", "vip", "5.0", "MiB"]
    assert "SEGMENT_EXPORT/7 (uploading), SEGMENT_EXPORT/8 (assigned)" in in_flight[1]
    recent = out.split("recently finished (2):\n")[1].splitlines()
    assert recent[1].split()[:2] == ["failed", "bad.csv"]
    assert "line 3: expected 4 fields, found 3" in recent[1]
    assert recent[2].split()[:2] == ["done", "old.csv"]


def test_status_json_and_the_lock_holder(home: AgentHome, tmp_path: Path) -> None:
    state = tmp_path / "agent" / "state"
    populate(state, home.drop)
    lock = StateLock(state)
    lock.acquire()
    try:
        data = ops("status", "--state-dir", str(state), "--json", environ={}).json()
    finally:
        lock.release()
    assert data["agent"] == {"running": True, "pid": os.getpid()}
    assert 4 < data["last_contact_age_seconds"] < 60
    assert [f["rel_path"] for f in data["pending"]] == [
        "new.csv", "45311.csv", "777.csv"]
    (flying,) = data["in_flight"]
    assert [(d["job_id"], d["state"]) for d in flying["deliveries"]] == [
        ("7", "uploading"), ("8", "assigned")]
    assert [f["state"] for f in data["recent"]] == ["failed", "done"]
    # The probe released the lock: an agent can start now.
    lock.acquire()
    lock.release()


def test_status_of_a_state_dir_never_used(tmp_path: Path) -> None:
    result = ops("status", "--state-dir", str(tmp_path), environ={})
    assert result.code == 0
    assert "agent:     not running" in result.out
    assert "exchange:  never reached" in result.out
    assert "pending (0):\n(none)" in result.out


def test_status_of_a_missing_state_dir_is_a_usage_error(tmp_path: Path) -> None:
    result = ops("status", "--state-dir", str(tmp_path / "nope"), environ={})
    assert result.code == 2
    assert "does not exist" in result.err
