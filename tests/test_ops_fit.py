"""Issue 12, ops fit: a quiet library, mistakes caught early, commands that fit habits."""

from __future__ import annotations

import gzip
import json
import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

import pushagent
from pushagent import logs
from pushagent.exchange import ExchangeClient
from pushagent.journal import Journal
from pushagent.outcomes import report_path_for
from pushagent.simulator import Simulator
from tests.e2e import ENDPOINT, KEY, AgentHome, drop_atomically, wait_for

ROOT = Path(__file__).resolve().parent.parent


def pushagent_cli(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
    stdin: str | None = None, timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """The real ``python -m pushagent`` process, as a user meets it."""
    return subprocess.run(
        [sys.executable, "-m", "pushagent", *argv], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, input=stdin if stdin is not None else "",
        timeout=timeout,
    )


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim") as simulator:
        yield simulator


# --- a quiet, tidy library ----------------------------------------------------------------------


def test_the_library_logs_nothing_when_imported_and_used(sim: Simulator) -> None:
    script = (
        "from pushagent.exchange import ExchangeClient\n"
        f"with ExchangeClient({sim.url!r}, {KEY!r}) as client:\n"
        "    client.list_jobs('SEGMENT_EXPORT')\n"
        "print('listed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "listed"
    assert done.stderr == ""  # no loguru DEBUG line such as 'GET ... -> HTTP 200'


def test_the_cli_still_logs(sim: Simulator) -> None:
    done = pushagent_cli("-v", "jobs", "list", "SEGMENT_EXPORT",
                         env={"EXCHANGE_API_KEY": KEY, "EXCHANGE_BASE_URL": sim.url})
    assert done.returncode == 0, done.stderr
    assert "HTTP 200" in done.stderr


def test_one_version_source() -> None:
    assert pushagent.__version__ == version("pushagent")
    done = pushagent_cli("--version")
    assert done.stdout.strip() == f"pushagent {version('pushagent')}"
    assert "version = " not in (ROOT / "pushagent" / "__init__.py").read_text()


@pytest.mark.parametrize("module", [
    "pushagent", "pushagent.exchange", "pushagent.simulator", "pushagent.output",
    "pushagent.units", "pushagent.notify", "pushagent.throttle", "pushagent.config",
    "pushagent.errors", "pushagent.router", "pushagent.segments", "pushagent.logs",
])
def test_public_modules_declare_all(module: str) -> None:
    imported = __import__(module, fromlist=["__all__"])
    assert imported.__all__
    for name in imported.__all__:
        assert hasattr(imported, name), name


def test_a_closed_client_releases_its_key_from_the_masking_set(sim: Simulator) -> None:
    before = logs.secrets_held()
    for n in range(20):
        with ExchangeClient(sim.url, f"{KEY}-{n}"):
            pass
    assert logs.secrets_held() == before


def test_the_validator_and_simulator_do_not_reach_into_the_cli_layers() -> None:
    validator = (ROOT / "pushagent" / "validator.py").read_text()
    assert "pushagent.output" not in validator
    for path in (ROOT / "pushagent" / "simulator").glob("*.py"):
        assert "import ConfigError" not in path.read_text(), path.name


# --- mistakes caught early -----------------------------------------------------------------------


def agent_home(tmp_path: Path, sim: Simulator, **options: object) -> AgentHome:
    (tmp_path / "agent" / "state").mkdir(parents=True, exist_ok=True)
    return AgentHome(tmp_path / "agent", sim.url, **options)  # type: ignore[arg-type]


def test_a_typo_in_a_segment_name_is_warned_at_once_and_shown_in_status(
    tmp_path: Path, sim: Simulator
) -> None:
    home = agent_home(tmp_path, sim)
    sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=777,
                producerSegmentIDString="churn_risk")
    home.start()
    try:
        drop_atomically(home.drop, "vip_customer.csv", b"Email\na@example.com\n")
        drop_atomically(home.drop, "churn_risk.csv", b"Email\na@example.com\n")
        drop_atomically(home.drop, "churn_rsk.csv", b"Email\na@example.com\n")
        wait_for(lambda: "did you mean 'churn_risk'?" in home.log(), what="the churn warning")
        wait_for(lambda: "did you mean 'vip_customers'?" in home.log(), what="the vip warning")
        warnings = [line for line in home.log().splitlines() if "| WARNING |" in line]
        assert any("segment 'vip_customer' is not a number" in line
                   and "file=vip_customer.csv" in line for line in warnings), warnings
        assert not any("churn_risk.csv" in line for line in warnings)  # a known id string
        status = pushagent_cli("status", "-c", str(home.config), "--wide")
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stdout.splitlines() if "vip_customer.csv" in line)
        assert "waiting for a job for segment vip_customer: segment 'vip_customer' is not" in row
        assert "did you mean 'vip_customers'?" in row
    finally:
        home.stop()
    assert "segment=None" not in home.log()


def test_check_lists_the_segments_waiting_and_names_matching_none(
    tmp_path: Path, sim: Simulator
) -> None:
    home = agent_home(tmp_path, sim, extra="")
    home.config.write_text(home.config.read_text().replace(
        "  vip_customers: 45311\n", "  vip_customers: 45311\n  churn: 99\n"))
    sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)
    sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)
    sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=12,
                producerSegmentIDString="winback")
    done = pushagent_cli("check", "-c", str(home.config), env={"E2E_EXCHANGE_KEY": KEY})
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert ("ok   segments: jobs wait for segment 45311 (vip_customers): 2 job(s), "
            "winback: 1 job(s)") in lines
    assert any(line.startswith("warn segments: churn (99) under segments: match no waiting job")
               for line in lines), lines


def test_check_warns_when_the_endpoint_has_no_job(tmp_path: Path, sim: Simulator) -> None:
    home = agent_home(tmp_path, sim)
    sim.add_job(producerEndpointID=ENDPOINT + 1, producerSegmentID=45311)
    done = pushagent_cli("check", "-c", str(home.config), env={"E2E_EXCHANGE_KEY": KEY})
    assert done.returncode == 0, done.stdout + done.stderr  # a warning, not a failure
    warning = next(line for line in done.stdout.splitlines() if line.startswith("warn jobs:"))
    assert ("no SEGMENT_EXPORT or IDENTITY_IMPORT job is waiting for data on endpoint "
            f"{ENDPOINT}") in warning
    assert f"1 wait on other endpoints ({ENDPOINT + 1})" in warning
    assert "pushagent jobs list SEGMENT_EXPORT -c" in warning


def test_an_endpoint_key_with_no_job_gets_the_warning_not_a_failure(tmp_path: Path) -> None:
    endpoint_key = "endpoint-85-key"
    with Simulator(account_key=KEY, endpoint_keys={endpoint_key: ENDPOINT},
                   data_dir=tmp_path / "sim") as sim:
        home = agent_home(tmp_path, sim)
        sim.add_job(producerEndpointID=ENDPOINT + 1, producerSegmentID=45311)
        done = pushagent_cli("check", "-c", str(home.config),
                             env={"E2E_EXCHANGE_KEY": endpoint_key})
    assert done.returncode == 0, done.stdout + done.stderr
    warning = next(line for line in done.stdout.splitlines() if line.startswith("warn jobs:"))
    assert ("no SEGMENT_EXPORT or IDENTITY_IMPORT job is waiting for data on endpoint "
            f"{ENDPOINT};") in warning


def test_a_key_file_others_may_read_is_warned_in_check_and_at_start(
    tmp_path: Path, sim: Simulator
) -> None:
    home = agent_home(tmp_path, sim)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    home.config.write_text(home.config.read_text().replace(
        "api_key: ${E2E_EXCHANGE_KEY}", f"api_key_file: {key_file}"))
    done = pushagent_cli("check", "-c", str(home.config))
    assert f"warn key file: the key file {key_file} is readable by its group and every user " \
           f"(mode 0644); make it readable by the agent's user only: chmod 600 {key_file}" \
        in done.stdout.splitlines(), done.stdout
    once = pushagent_cli("run", "-c", str(home.config), "--once")
    assert f"the key file {key_file} is readable by its group and every user" in once.stderr
    key_file.chmod(0o600)
    assert "key file" not in pushagent_cli("check", "-c", str(home.config)).stdout
    assert KEY not in done.stdout + done.stderr + once.stdout + once.stderr


def test_every_missing_folder_is_reported_at_once(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "exchange: {base_url: 'http://127.0.0.1:9', api_key: k, endpoint_id: 1}\n"
        "folders: {drop: ./in, done: ./ok, failed: ./bad}\n"
        "state_dir: ./state\n"
    )
    done = pushagent_cli("check", "-c", str(config))
    assert done.returncode == 2
    assert "3 folders do not exist" in done.stderr
    for name in ("in", "ok", "bad"):
        assert str(tmp_path / name) in done.stderr
    assert f"mkdir -p {tmp_path / 'in'} {tmp_path / 'ok'} {tmp_path / 'bad'}" in done.stderr
    assert "Traceback" not in done.stderr


# --- commands that fit habits --------------------------------------------------------------------


def test_verbosity_and_json_options_work_after_the_command(tmp_path: Path, sim: Simulator) -> None:
    home = agent_home(tmp_path, sim)
    env = {"E2E_EXCHANGE_KEY": KEY}
    verbose = pushagent_cli("run", "-c", str(home.config), "--once", "-v", env=env)
    assert verbose.returncode == 0, verbose.stderr
    assert "| DEBUG   |" in verbose.stderr
    quiet = pushagent_cli("run", "-c", str(home.config), "--once", "-q", env=env)
    assert quiet.returncode == 0, quiet.stderr
    assert "| INFO    |" not in quiet.stderr and "pushagent watching" not in quiet.stderr
    before = pushagent_cli("--json", "status", "-c", str(home.config))
    after = pushagent_cli("status", "-c", str(home.config), "--json")
    assert before.returncode == after.returncode == 0, before.stderr + after.stderr
    assert json.loads(before.stdout)["state_dir"] == json.loads(after.stdout)["state_dir"]
    no_json = pushagent_cli("--json", "run", "-c", str(home.config), "--once", env=env)
    assert no_json.returncode == 2
    assert "--json: 'run' prints no JSON" in no_json.stderr


def test_status_and_validate_need_no_key_variable(tmp_path: Path, sim: Simulator) -> None:
    home = agent_home(tmp_path, sim, extra="notify:\n  headers: {X-Token: '${HOOK_TOKEN}'}\n")
    csv = tmp_path / "ok.csv"
    csv.write_text("Email\na@example.com\n")
    env = {k: v for k, v in os.environ.items() if k != "E2E_EXCHANGE_KEY"}
    for argv in (("status", "-c", str(home.config)), ("validate", "-c", str(home.config),
                                                      str(csv))):
        done = subprocess.run([sys.executable, "-m", "pushagent", *argv], capture_output=True,
                              text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
    # Calling the Exchange still needs it, and says so.
    job = sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)
    done = subprocess.run(
        [sys.executable, "-m", "pushagent", "validate", "-c", str(home.config), str(csv),
         "--job", str(job["jobId"])], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "E2E_EXCHANGE_KEY is not set" in done.stderr


def test_retry_moves_failed_files_back_and_the_agent_delivers_them(
    tmp_path: Path, sim: Simulator
) -> None:
    home = agent_home(tmp_path, sim)
    env = {"E2E_EXCHANGE_KEY": KEY}
    (home.drop / "45311").mkdir()
    (home.drop / "45311" / "vip.csv").write_text("Email\na@example.com\n")
    (home.drop / "other.csv").write_text("Email\nb@example.com\n")
    home.config.write_text(home.config.read_text().replace("max_wait_seconds: 3600",
                                                           "max_wait_seconds: 0.5"))

    def failed_for_want_of_a_job() -> bool:
        pushagent_cli("run", "-c", str(home.config), "--once", env=env)
        return (home.failed / "45311" / "vip.csv.error.json").exists()

    wait_for(failed_for_want_of_a_job, timeout=30, what="vip.csv to fail for want of a job")
    assert (home.failed / "45311" / "vip.csv").exists()
    assert (home.failed / "other.csv.error.json").exists()
    report = json.loads((home.failed / "45311" / "vip.csv.error.json").read_text())
    hint = report["reason"].split("then put the file back with: ")[1]
    assert hint == f"pushagent retry -c {home.config} 45311/vip.csv"

    done = pushagent_cli(*hint.split()[1:])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"retried  {home.failed / '45311' / 'vip.csv'} -> "
                                   f"{home.drop / '45311' / 'vip.csv'}")
    assert (home.drop / "45311" / "vip.csv").read_text() == "Email\na@example.com\n"
    assert not (home.failed / "45311" / "vip.csv").exists()
    assert not (home.failed / "45311" / "vip.csv.error.json").exists()
    status = json.loads(pushagent_cli("status", "-c", str(home.config), "--json").stdout)
    (noted,) = [row for row in status["recent"] if row["rel_path"] == "45311/vip.csv"]
    assert noted["reason"].startswith("retried at ")
    assert "moved back to the drop folder as 45311/vip.csv; it had failed: no job" \
        in noted["reason"]

    job = sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)
    delivered = pushagent_cli("run", "-c", str(home.config), "--once", env=env)
    assert "done     45311/vip.csv" in delivered.stdout, delivered.stdout + delivered.stderr
    assert sim.upload_data(int(job["jobId"]), 0) == b"Email\na@example.com\n"

    every = pushagent_cli("retry", "-c", str(home.config), "--all", "--json")
    assert every.returncode == 0, every.stderr
    assert [Path(f["now_at"]).name for f in json.loads(every.stdout)["files"]] == ["other.csv"]
    assert sorted(p.name for p in home.failed.rglob("*") if p.is_file()) == []


def test_retried_csv_gz_files_of_one_name_both_go_back_as_drops_of_their_segment(
    tmp_path: Path, sim: Simulator
) -> None:
    # Two failures of one daily export name: failed/ and then the drop folder hold a second
    # name for it. Found while adding retry to the campaign: the counter went before '.gz'
    # ('x.csv-2.gz'), a name no drop has, so the retried file failed again as unroutable.
    home = agent_home(tmp_path, sim)
    env = {"E2E_EXCHANGE_KEY": KEY}
    (home.drop / "45311").mkdir()
    config = home.config.read_text()
    home.config.write_text(config.replace("max_wait_seconds: 3600", "max_wait_seconds: 0.5"))
    exports = [f"Email\nday{n}@example.com\n".encode() for n in range(2)]
    for count, data in enumerate(exports, start=1):
        drop_atomically(home.drop / "45311", "x.csv.gz", gzip.compress(data))

        def failed_for_want_of_a_job(count: int = count) -> bool:
            pushagent_cli("run", "-c", str(home.config), "--once", env=env)
            return len(list((home.failed / "45311").glob("*.error.json"))) == count

        wait_for(failed_for_want_of_a_job, timeout=30, what="x.csv.gz to fail for want of a job")
    failed = sorted(p.name for p in (home.failed / "45311").iterdir())
    assert failed == ["x-2.csv.gz", "x-2.csv.gz.error.json", "x.csv.gz", "x.csv.gz.error.json"]

    home.config.write_text(config)  # jobs come now: they may wait
    done = pushagent_cli("retry", "-c", str(home.config), "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (home.drop / "45311").iterdir()) == ["x-2.csv.gz", "x.csv.gz"]
    jobs = [int(sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)["jobId"])]
    for _ in range(2):
        ran = pushagent_cli("run", "-c", str(home.config), "--once", env=env)
        assert "failed" not in ran.stdout, ran.stdout + ran.stderr
        if len(jobs) == 1:
            jobs.append(int(sim.add_job(producerEndpointID=ENDPOINT,
                                        producerSegmentID=45311)["jobId"]))
    received = sorted(sim.upload_data(job, 0) for job in jobs)
    assert received == sorted(exports)
    assert list(home.failed.rglob("*.gz")) == []


def test_retry_never_renames_a_file_into_another_segment(tmp_path: Path, sim: Simulator) -> None:
    # '45311.csv' failed twice; both retried at once, the second found the first still in the
    # drop folder and went back as '45311-2.csv': segment '45311-2', a job that never comes.
    home = agent_home(tmp_path, sim)
    env = {"E2E_EXCHANGE_KEY": KEY}
    config = home.config.read_text()
    home.config.write_text(config.replace("max_wait_seconds: 3600", "max_wait_seconds: 0.5"))
    exports = [f"Email\nday{n}@example.com\n".encode() for n in range(2)]
    for count, data in enumerate(exports, start=1):
        drop_atomically(home.drop, "45311.csv", data)

        def failed_for_want_of_a_job(count: int = count) -> bool:
            pushagent_cli("run", "-c", str(home.config), "--once", env=env)
            return len(list(home.failed.glob("*.error.json"))) == count

        wait_for(failed_for_want_of_a_job, timeout=30, what="45311.csv to fail for want of a job")
    home.config.write_text(config)

    done = pushagent_cli("retry", "-c", str(home.config), "--all")
    assert done.returncode == 1, done.stdout + done.stderr
    assert [p.name for p in home.drop.iterdir() if not p.name.startswith(".")] == ["45311.csv"]
    (refused,) = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert "another segment" in refused and "retry it once" in refused
    (left,) = [p for p in home.failed.iterdir() if p.suffix == ".csv"]
    assert report_path_for(left) is not None  # still failed, with its reason

    jobs = [int(sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)["jobId"])]
    ran = pushagent_cli("run", "-c", str(home.config), "--once", env=env)
    assert "done     45311.csv" in ran.stdout, ran.stdout + ran.stderr
    again = pushagent_cli("retry", "-c", str(home.config), "--all")  # the name is free now
    assert again.returncode == 0, again.stdout + again.stderr
    jobs.append(int(sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311)["jobId"]))
    ran = pushagent_cli("run", "-c", str(home.config), "--once", env=env)
    assert "done     45311.csv" in ran.stdout, ran.stdout + ran.stderr
    assert sorted(sim.upload_data(job, 0) for job in jobs) == sorted(exports)


def test_retry_refuses_a_file_outside_failed(tmp_path: Path, sim: Simulator) -> None:
    home = agent_home(tmp_path, sim)
    stray = tmp_path / "stray.csv"
    stray.write_text("x\n")
    done = pushagent_cli("retry", "-c", str(home.config), str(stray))
    assert done.returncode == 2
    assert "is not in the failed folder" in done.stderr
    assert stray.exists()


def run_on_a_terminal(argv: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """The command with a real pseudo-terminal as stdin, answering ``answer`` to its question."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "pushagent", *argv], stdin=terminal,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **env},
        )
        os.write(controller, answer.encode() + b"\n")
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    return process.returncode, out + err


@pytest.mark.parametrize("action", [
    ["jobs", "complete", "{job}"],
    ["jobs", "fail", "{job}", "-m", "export broke"],
    ["files", "delete", "{job}", "part1.csv"],
    ["scheduled", "delete", "{scheduled}"],
])
def test_destructive_calls_ask_on_a_terminal_and_need_yes_without_one(
    sim: Simulator, action: list[str]
) -> None:
    status = "WAITING_TO_RECIEVE_DATA" if "fail" in action else "READY_FOR_DOWNLOAD"
    job = sim.add_job(producerEndpointID=ENDPOINT, status=status,
                      segmentDataFiles=["part1.csv"])["jobId"]
    scheduled = sim.add_scheduled_job()["jobId"]
    argv = [part.format(job=job, scheduled=scheduled) for part in action]
    env = {"EXCHANGE_API_KEY": KEY, "EXCHANGE_BASE_URL": sim.url}
    calls = len(sim.request_log())

    refused = pushagent_cli(*argv, env=env)  # no terminal (stdin is a pipe), no --yes
    assert refused.returncode == 2
    assert "cannot be undone; pass --yes to do it" in refused.stderr
    code, said = run_on_a_terminal(argv, env, "n")
    assert code == 1 and "This cannot be undone. [y/N]" in said
    assert "not confirmed; nothing was done" in said
    assert len(sim.request_log()) == calls  # neither touched the Exchange

    code, said = run_on_a_terminal(argv, env, "y")
    assert code == 0, said
    assert len(sim.request_log()) > calls


def test_yes_skips_the_question(sim: Simulator) -> None:
    job = sim.add_job(producerEndpointID=ENDPOINT, status="READY_FOR_DOWNLOAD")["jobId"]
    done = pushagent_cli("jobs", "complete", str(job), "--yes",
                         env={"EXCHANGE_API_KEY": KEY, "EXCHANGE_BASE_URL": sim.url})
    assert done.returncode == 0, done.stderr
    assert sim.job(int(job))["status"] == "COMPLETE"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_generated(shell: str) -> None:
    done = pushagent_cli("completion", shell)
    assert done.returncode == 0, done.stderr
    assert "pushagent" in done.stdout and "_ARGCOMPLETE" in done.stdout


def test_completion_answers_from_the_parser(tmp_path: Path) -> None:
    answers = tmp_path / "answers"
    for line, expected in (("pushagent st", "status"), ("pushagent jobs li", "list"),
                           ("pushagent retry --a", "--all"), ("pushagent completion f", "fish")):
        done = pushagent_cli(env={
            "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_STDOUT_FILENAME": str(answers),
        })
        assert done.returncode == 0, done.stderr
        assert expected in answers.read_text().split(), (line, answers.read_text())


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_the_bash_script_registers_the_completion() -> None:
    script = pushagent_cli("completion", "bash").stdout
    done = subprocess.run(["bash", "-c", f"{script}\ncomplete -p pushagent"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pushagent" in done.stdout


# --- less noise ----------------------------------------------------------------------------------


LONG_REASON = ("waiting for a job for segment 45311: the Exchange answered 503 three times "
               "in a row and then went quiet; retrying")


def journal_with_a_long_reason(state: Path, drop: Path) -> None:
    journal = Journal.for_state_dir(state)
    try:
        row = journal.note_settling("45311.csv", drop / "45311.csv", size=10)
        journal.mark_waiting(row, segment="45311", reason=LONG_REASON)
    finally:
        journal.close()


def test_status_shows_whole_reasons_when_the_terminal_is_wide_enough(
    tmp_path: Path, sim: Simulator
) -> None:
    home = agent_home(tmp_path, sim)
    journal_with_a_long_reason(tmp_path / "agent" / "state", home.drop)
    wide = pushagent_cli("status", "-c", str(home.config), env={"COLUMNS": "250"})
    assert wide.returncode == 0, wide.stderr
    assert LONG_REASON in wide.stdout
    narrow = pushagent_cli("status", "-c", str(home.config), env={"COLUMNS": "100"})
    assert LONG_REASON not in narrow.stdout and LONG_REASON[:40] in narrow.stdout
    assert "…" in narrow.stdout
    forced = pushagent_cli("status", "-c", str(home.config), "--wide", env={"COLUMNS": "100"})
    assert LONG_REASON in forced.stdout


def test_a_rejected_file_logs_no_segment_none_and_its_reason_once(
    tmp_path: Path, sim: Simulator
) -> None:
    home = agent_home(tmp_path, sim)
    (home.drop / "notes.txt").write_text("hello\n")  # no segment: rejected unread
    done = pushagent_cli("run", "-c", str(home.config), "--once",
                         env={"E2E_EXCHANGE_KEY": KEY})
    assert "segment=None" not in done.stderr
    (summary,) = [line for line in done.stdout.splitlines() if "notes.txt" in line]
    assert summary.startswith("failed   notes.txt: cannot tell which segment")
    assert summary.count("notes.txt") == 1


def test_the_demo_says_nothing_of_zero_uploads() -> None:
    done = pushagent_cli("demo", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 upload" not in done.stdout + done.stderr
    assert "stopping: no upload in progress" in done.stderr
