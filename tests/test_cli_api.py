"""``pushagent jobs|files|scheduled``: every API call as a command, against the simulator."""

from __future__ import annotations

import csv
import gzip
import io
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pushagent.cli import main
from pushagent.env import Environment
from pushagent.simulator import Simulator

KEY = "ops-test-key-3f9a1c77"
BIG_SEGMENT = 8000000000000001152
VALID = "Email,firstName\nana@example.com,Ana\nbo@example.com,Bo\n"


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*argv: str, environ: dict[str, str] | None = None, tty: bool = False) -> Result:
    """``pushagent argv...`` in-process, with its own stdout/stderr and environment."""
    stdout, stderr = io.StringIO(), TTY() if tty else io.StringIO()
    code = main(list(argv), env=Environment(stdout=stdout, stderr=stderr, environ=environ or {}))
    return Result(code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim", complete_after=0.2) as simulator:
        yield simulator


def api(sim: Simulator, *argv: str, key: str = KEY, tty: bool = False) -> Result:
    """A command with the key and base URL from the environment, as a script would run it."""
    return run_cli(
        *argv, environ={"EXCHANGE_API_KEY": key, "EXCHANGE_BASE_URL": sim.url}, tty=tty
    )


def waiting_job(sim: Simulator, **fields: object) -> int:
    wire = {"producerEndpointID": 85, "producerSegmentID": 45311,
            "identityMappings": {"Email": "EMAIL_SHA256"}, **fields}
    return int(sim.add_job(**wire)["jobId"])


def csv_file(tmp_path: Path, text: str = VALID, name: str = "seg.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- jobs list / show --------------------------------------------------------------------------


def test_jobs_list_shows_a_table_of_the_jobs(sim: Simulator) -> None:
    job = waiting_job(sim, destinationSegmentName="VIP customers")
    result = api(sim, "jobs", "list", "segment_export")
    assert result.code == 0, result.err
    header, row = result.out.splitlines()
    assert header.split("  ")[0] == "JOB ID"
    assert row.split()[:3] == [str(job), "WAITING_TO_RECIEVE_DATA", "85"]
    assert "VIP customers" in row and "Email" in row


def test_jobs_list_json_is_the_api_json_with_exact_big_ids(sim: Simulator) -> None:
    job = waiting_job(sim, producerSegmentID=BIG_SEGMENT, producerSegmentIDString="news")
    result = api(sim, "jobs", "list", "SEGMENT_EXPORT", "--json", "--include-segment-id-string")
    assert result.code == 0, result.err
    (listed,) = result.json()
    assert listed["jobId"] == job
    assert listed["producerSegmentID"] == BIG_SEGMENT
    assert f'"producerSegmentID": {BIG_SEGMENT}' in result.out
    assert listed["producerSegmentIDString"] == "news"


def test_jobs_list_filters_by_endpoint_and_status(sim: Simulator) -> None:
    wanted = waiting_job(sim)
    waiting_job(sim, producerEndpointID=86)
    running = waiting_job(sim)
    sim.set_status(running, "RUNNING")
    result = api(sim, "jobs", "list", "SEGMENT_EXPORT", "--endpoint", "85",
                 "--status", "waiting_to_receive_data", "--json")
    assert [job["jobId"] for job in result.json()] == [wanted]
    query = sim.request_log()[-1]["query"]
    assert query == {"endpointId": "85", "status": "WAITING_TO_RECIEVE_DATA"}


def test_jobs_list_with_no_jobs_says_so(sim: Simulator) -> None:
    result = api(sim, "jobs", "list", "SEGMENT_EXPORT")
    assert (result.code, result.out) == (0, "(no jobs)\n")


def test_jobs_show_prints_every_field_and_the_columns_needed(sim: Simulator) -> None:
    job = waiting_job(sim, attributeMappings={"firstName": "FIRST_NAME"})
    result = api(sim, "jobs", "show", "SEGMENT_EXPORT", str(job))
    assert result.code == 0, result.err
    assert "jobId:" in result.out and str(job) in result.out
    assert "columns the file needs: Email, firstName" in result.out


def test_jobs_show_json_is_the_job_as_sent(sim: Simulator) -> None:
    job = waiting_job(sim, someNewField={"added": "by Acoustic"})
    result = api(sim, "jobs", "show", "SEGMENT_EXPORT", str(job), "--json")
    shown = result.json()
    assert shown["jobId"] == job
    assert shown["someNewField"] == {"added": "by Acoustic"}


# --- jobs upload ---------------------------------------------------------------------------------


def test_jobs_upload_validates_then_sends_the_file(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    path = csv_file(tmp_path)
    result = api(sim, "jobs", "upload", str(job), str(path))
    assert result.code == 0, result.err
    assert result.out == f"uploaded {len(VALID)} bytes of {path} to job {job} (HTTP 200)\n"
    assert sim.upload_data(job, 0) == VALID.encode()
    assert sim.uploads(job)[0].content_type == "text/csv"


def test_jobs_upload_json_reports_the_result(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    result = api(sim, "jobs", "upload", str(job), str(csv_file(tmp_path)), "--json")
    assert result.json() == {
        "ok": True, "job_id": job, "file": str(tmp_path / "seg.csv"), "converted_from": None,
        "bytes_sent": len(VALID), "status_code": 200, "response_text": str(job),
    }


def test_jobs_upload_sends_an_excel_or_compressed_export_converted_as_the_agent_does(
    sim: Simulator, tmp_path: Path
) -> None:
    rows = [["Email", "firstName"], ["zoë@example.com", "Zoë"], ["bo@example.com", 'Bo "B", Jr']]
    excel = tmp_path / "unicode-text.csv"  # Excel's "Unicode Text": UTF-16LE, BOM, tab, CRLF
    excel.write_bytes("\ufeff".encode("utf-16-le")
                      + "".join("\t".join(row) + "\r\n" for row in rows).encode("utf-16-le"))
    packed = tmp_path / "seg.csv.gz"
    packed.write_bytes(gzip.compress(VALID.encode()))
    originals = {path: path.read_bytes() for path in (excel, packed)}
    for path, expected in ((excel, rows), (packed, list(csv.reader(io.StringIO(VALID))))):
        job = waiting_job(sim)
        result = api(sim, "jobs", "upload", str(job), str(path), "--json")
        assert result.code == 0, result.err
        assert result.json()["converted_from"], result.out
        sent = sim.upload_data(job, 0)
        assert list(csv.reader(io.StringIO(sent.decode("utf-8"), newline=""))) == expected
        assert result.json()["bytes_sent"] == len(sent)
    assert {path: path.read_bytes() for path in originals} == originals, "the files are as given"


def test_jobs_upload_refuses_an_archive_it_cannot_read_and_sends_nothing(
    sim: Simulator, tmp_path: Path
) -> None:
    job = waiting_job(sim)
    path = tmp_path / "seg.csv.gz"
    path.write_bytes(b"Email\nana@example.com\n")
    result = api(sim, "jobs", "upload", str(job), str(path))
    assert result.code == 1
    assert result.err.startswith(f"pushagent: error: {path}: ") and "not a valid gzip" in result.err
    assert sim.uploads(job) == []


def test_a_definite_answer_is_not_called_maybe_delivered_but_silence_is(
    sim: Simulator, tmp_path: Path
) -> None:
    job = waiting_job(sim)
    path = csv_file(tmp_path)
    sim.add_fault(method="POST", path=rf"^/v1/jobs/{job}/data$", status=503, count=1)
    refused = api(sim, "jobs", "upload", str(job), str(path))
    assert refused.code == 5 and "HTTP 503" in refused.err
    assert "may or may not" not in refused.err
    sim.add_fault(method="POST", path=rf"^/v1/jobs/{job}/data$", drop_after=True, count=1)
    silent = api(sim, "jobs", "upload", str(job), str(path))
    assert silent.code == 5
    assert "may or may not have reached the Exchange" in silent.err
    assert sim.upload_data(job, 0) == VALID.encode(), "the silent upload did land"


def test_an_invalid_file_is_not_sent(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    path = csv_file(tmp_path, "Email,firstName\nana@example.com\n")
    result = api(sim, "jobs", "upload", str(job), str(path))
    assert result.code == 1
    assert result.err == (
        f"pushagent: error: {path}: line 2: expected 2 fields, found 1; nothing was sent "
        "(--no-validate sends it as it is)\n"
    )
    assert sim.uploads(job) == []


def test_a_file_without_a_mapped_column_is_not_sent(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim, sourceIdentifiers=["CustomerId"])
    result = api(sim, "jobs", "upload", str(job), str(csv_file(tmp_path)))
    assert result.code == 1
    assert f"column 'CustomerId' required by job {job} is missing" in result.err
    assert sim.uploads(job) == []


def test_a_job_not_waiting_gets_nothing(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    sim.set_status(job, "CANCELLED")
    result = api(sim, "jobs", "upload", str(job), str(csv_file(tmp_path)))
    assert result.code == 1
    assert f"job {job} is CANCELLED, not WAITING_TO_RECIEVE_DATA" in result.err
    # Sending anyway would get 409: the hint is where to find a waiting job, not --no-validate.
    assert "--no-validate" not in result.err
    assert "pushagent jobs list SEGMENT_EXPORT --status WAITING_TO_RECIEVE_DATA" in result.err
    assert sim.uploads(job) == []


def test_no_validate_sends_the_file_as_it_is(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    path = csv_file(tmp_path, "not,really\ncsv\n")
    result = api(sim, "jobs", "upload", str(job), str(path), "--no-validate",
                 "--content-type", "text/plain")
    assert result.code == 0, result.err
    assert sim.upload_data(job, 0) == b"not,really\ncsv\n"
    assert sim.uploads(job)[0].content_type == "text/plain"
    assert not any(r["method"] == "GET" for r in sim.request_log())


def test_an_upload_the_server_refuses_is_a_failure(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    sim.set_status(job, "RUNNING")
    result = api(sim, "jobs", "upload", str(job), str(csv_file(tmp_path)), "--no-validate")
    assert result.code == 1
    assert result.err.startswith(f"pushagent: error: POST /v1/jobs/{job}/data -> HTTP 409")


def test_upload_draws_a_progress_bar_on_a_terminal(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    result = api(sim, "jobs", "upload", str(job), str(csv_file(tmp_path)), tty=True)
    assert result.code == 0
    assert f"\rjob {job}  [" in result.err and "100%" in result.err
    assert result.err.endswith("\n")


def test_upload_draws_nothing_when_not_a_terminal(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    result = api(sim, "jobs", "upload", str(job), str(csv_file(tmp_path)))
    assert result.err == ""


def test_upload_of_a_missing_file_is_a_usage_error(sim: Simulator, tmp_path: Path) -> None:
    result = api(sim, "jobs", "upload", "1", str(tmp_path / "nope.csv"))
    assert result.code == 2
    assert "nope.csv: no such file" in result.err


# --- jobs fail / complete ------------------------------------------------------------------------


def test_jobs_fail_marks_the_job_failed_with_the_message(sim: Simulator) -> None:
    job = waiting_job(sim)
    result = api(sim, "jobs", "fail", str(job), "--message", "export broke tonight", "--yes")
    assert (result.code, result.out) == (0, f"job {job} marked failed\n")
    assert sim.job(job)["status"] == "ERROR"
    assert "export broke tonight" in str(sim.job(job)["errorDetails"])


def test_jobs_fail_needs_a_message_with_text(sim: Simulator) -> None:
    result = api(sim, "jobs", "fail", str(waiting_job(sim)), "--message", "  ", "-y")
    assert result.code == 2
    assert "non-empty error message" in result.err


def test_jobs_complete(sim: Simulator) -> None:
    job = waiting_job(sim, status="READY_FOR_DOWNLOAD", segmentDataFiles=["a.csv"])
    result = api(sim, "jobs", "complete", str(job), "--json", "--yes")
    assert result.json() == {"ok": True, "job_id": job}
    assert sim.job(job)["status"] == "COMPLETE"


# --- files -------------------------------------------------------------------------------------


def ready_job(sim: Simulator) -> int:
    return waiting_job(
        sim, status="READY_FOR_DOWNLOAD", segmentDataFiles=["part1.csv"],
        segmentData={"part1.csv": "Email\njane@example.com\n"},
    )


def test_files_get_downloads_to_the_path(sim: Simulator, tmp_path: Path) -> None:
    job = ready_job(sim)
    target = tmp_path / "out.csv"
    result = api(sim, "files", "get", str(job), "part1.csv", "-o", str(target))
    assert result.code == 0, result.err
    assert target.read_text() == "Email\njane@example.com\n"
    assert result.out == f"wrote 23 bytes to {target}\n"


def test_files_get_into_a_folder_keeps_the_name_and_never_overwrites(
    sim: Simulator, tmp_path: Path
) -> None:
    job = ready_job(sim)
    assert api(sim, "files", "get", str(job), "part1.csv", "-o", str(tmp_path)).code == 0
    assert (tmp_path / "part1.csv").exists()
    again = api(sim, "files", "get", str(job), "part1.csv", "-o", str(tmp_path))
    assert again.code == 2
    assert "exists; pass --force" in again.err
    forced = api(sim, "files", "get", str(job), "part1.csv", "-o", str(tmp_path), "--force")
    assert forced.code == 0


def test_files_get_shows_progress_on_a_terminal(sim: Simulator, tmp_path: Path) -> None:
    job = ready_job(sim)
    result = api(sim, "files", "get", str(job), "part1.csv", "-o", str(tmp_path), tty=True)
    assert result.err.startswith("\rpart1.csv  23 B  ")


def test_files_delete_then_get_is_not_found(sim: Simulator, tmp_path: Path) -> None:
    job = ready_job(sim)
    result = api(sim, "files", "delete", str(job), "part1.csv", "--yes")
    assert (result.code, result.out) == (0, f"deleted part1.csv of job {job}\n")
    gone = api(sim, "files", "get", str(job), "part1.csv", "-o", str(tmp_path / "x.csv"))
    assert gone.code == 4
    assert not (tmp_path / "x.csv").exists()


# --- scheduled ---------------------------------------------------------------------------------


def test_scheduled_list_and_delete(sim: Simulator) -> None:
    scheduled = sim.add_scheduled_job(jobId=301, jobName="NIGHTLY", producerEndpointID=85)
    listed = api(sim, "scheduled", "list", "--endpoint", "85")
    assert listed.code == 0
    assert listed.out.splitlines()[1].split()[:5] == ["301", "SCHEDULED", "SEGMENT_EXPORT",
                                                     "NIGHTLY", "yes"]
    as_json = api(sim, "scheduled", "list", "--json")
    assert as_json.json() == [sim.scheduled_jobs()[0]]
    deleted = api(sim, "scheduled", "delete", str(scheduled["jobId"]), "--yes")
    assert deleted.code == 0
    assert sim.scheduled_jobs() == []
    assert api(sim, "scheduled", "delete", "301", "--yes").code == 4


# --- errors and exit codes ---------------------------------------------------------------------


def test_a_wrong_key_exits_3_with_one_line(sim: Simulator) -> None:
    result = api(sim, "jobs", "list", "SEGMENT_EXPORT", key="not-the-key")
    assert result.code == 3
    assert result.err.count("\n") == 1
    assert result.err.startswith("pushagent: error: GET /v1/jobs/SEGMENT_EXPORT -> HTTP 401")


def test_an_unknown_job_exits_4(sim: Simulator) -> None:
    result = api(sim, "jobs", "show", "SEGMENT_EXPORT", "999")
    assert result.code == 4
    assert "HTTP 404" in result.err


def test_an_unreachable_exchange_exits_5() -> None:
    # Bound but not listening: refused, and held so no test beside this one can take it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        result = run_cli("jobs", "list", "SEGMENT_EXPORT", "--base-url",
                         f"http://127.0.0.1:{port}", environ={"EXCHANGE_API_KEY": KEY})
    assert result.code == 5
    assert "could not reach the Exchange" in result.err


def test_no_key_and_no_config_is_a_usage_error() -> None:
    result = run_cli("jobs", "list", "SEGMENT_EXPORT", "--base-url", "http://127.0.0.1:9")
    assert result.code == 2
    assert "EXCHANGE_API_KEY not set" in result.err


def test_a_job_id_must_be_a_number() -> None:
    result = run_cli("jobs", "show", "SEGMENT_EXPORT", "abc")
    assert result.code == 2


def test_a_group_without_an_action_prints_its_help() -> None:
    result = run_cli("jobs")
    assert result.code == 2
    assert "list" in result.err and "upload" in result.err


def test_the_key_never_appears_at_debug(sim: Simulator, tmp_path: Path) -> None:
    job = waiting_job(sim)
    path = csv_file(tmp_path)
    outputs = [
        api(sim, "-v", "jobs", "list", "SEGMENT_EXPORT", "--json"),
        api(sim, "-v", "jobs", "upload", str(job), str(path)),
        api(sim, "-v", "jobs", "show", "SEGMENT_EXPORT", str(job)),
        api(sim, "-v", "jobs", "show", "SEGMENT_EXPORT", "999"),
        api(sim, "-v", "jobs", "list", "SEGMENT_EXPORT", key=KEY + "-wrong"),
    ]
    assert "DEBUG" in outputs[0].err and "GET /v1/jobs/SEGMENT_EXPORT" in outputs[0].err
    for result in outputs:
        assert KEY not in result.out + result.err
