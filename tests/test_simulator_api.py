"""Every call of the jobs API against the simulator, through the real ExchangeClient."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pushagent.errors import BadRequest, Conflict, NotFound, OperationRefused
from pushagent.exchange import ExchangeClient, JobStatus, RetryPolicy
from pushagent.simulator import Simulator

KEY = "sim-account-key"
BIG_ID = 8000000000000001152
WAITING = "WAITING_TO_RECIEVE_DATA"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(data_dir=tmp_path / "sim", complete_after=0.0) as simulator:
        yield simulator


@pytest.fixture
def client(sim: Simulator) -> Iterator[ExchangeClient]:
    with ExchangeClient(sim.url, KEY, retry=RetryPolicy(max_attempts=1)) as exchange:
        yield exchange


def _csv(tmp_path: Path, text: str, name: str = "segment.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def _raw_get(sim: Simulator, path: str, **params: str) -> requests.Response:
    return requests.get(
        sim.url + path, params=params, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )


def test_list_jobs_filters_by_category_endpoint_and_status(
    sim: Simulator, client: ExchangeClient
) -> None:
    waiting = sim.add_job(producerEndpointID=85)
    sim.add_job(producerEndpointID=86, destinationEndpointID=9)
    sim.add_job(producerEndpointID=85, status="COMPLETE")
    sim.add_job(producerEndpointID=85, jobCategory="IDENTITY_IMPORT")

    found = client.list_jobs(
        "SEGMENT_EXPORT", endpoint_id=85, status=JobStatus.WAITING_TO_RECEIVE_DATA
    )

    assert [job.job_id for job in found] == [waiting["jobId"]]
    assert found[0].status_raw == WAITING
    assert len(client.list_jobs("SEGMENT_EXPORT")) == 3
    assert len(client.list_jobs("IDENTITY_IMPORT", endpoint_id=85)) == 1


def test_status_filter_accepts_both_spellings(sim: Simulator) -> None:
    sim.add_job()
    sim.add_job(status="RUNNING")

    for spelling in ("WAITING_TO_RECIEVE_DATA", "WAITING_TO_RECEIVE_DATA"):
        answer = _raw_get(sim, "/v1/jobs/SEGMENT_EXPORT", status=spelling)
        assert answer.status_code == 200
        assert [job["status"] for job in answer.json()] == [WAITING]


def test_extra_fields_only_when_asked(sim: Simulator, client: ExchangeClient) -> None:
    sim.add_job(started=1471005788694, scheduleDetails={"runNow": True})

    plain = client.list_jobs("SEGMENT_EXPORT")[0]
    extra = client.list_jobs("SEGMENT_EXPORT", extra_fields=True)[0]

    assert not {"started", "ended", "scheduleDetails"} & set(plain.raw)
    assert extra.started == 1471005788694
    assert extra.raw["scheduleDetails"] == {"runNow": True}
    assert "ended" in extra.raw


def test_producer_segment_id_string_only_when_asked(
    sim: Simulator, client: ExchangeClient
) -> None:
    sim.add_job(producerSegmentIDString="newsletter")

    assert client.list_jobs("SEGMENT_EXPORT")[0].producer_segment_id_string is None
    with_string = client.list_jobs("SEGMENT_EXPORT", include_producer_segment_id_string=True)
    assert with_string[0].producer_segment_id_string == "newsletter"


def test_get_job_answers_an_array_and_keeps_huge_ids_exact(
    sim: Simulator, client: ExchangeClient
) -> None:
    sim.add_job(jobId=BIG_ID + 1, producerSegmentID=BIG_ID)

    raw = _raw_get(sim, f"/v1/jobs/SEGMENT_EXPORT/{BIG_ID + 1}")
    job = client.get_job("SEGMENT_EXPORT", BIG_ID + 1)

    assert raw.status_code == 200
    assert f'"producerSegmentID": {BIG_ID}' in raw.text
    assert isinstance(raw.json(), list)
    assert len(raw.json()) == 1
    assert job.job_id == BIG_ID + 1
    assert job.producer_segment_id == BIG_ID


def test_unknown_category_is_400_and_unknown_job_404(
    sim: Simulator, client: ExchangeClient
) -> None:
    job = sim.add_job()

    with pytest.raises(BadRequest):
        client.list_jobs("SEGMENT_IMPORT")
    with pytest.raises(BadRequest):
        client.list_scheduled_jobs("NOPE")
    with pytest.raises(NotFound):
        client.get_job("SEGMENT_EXPORT", 999999)
    with pytest.raises(NotFound):
        client.get_job("IDENTITY_IMPORT", job["jobId"])
    with pytest.raises(NotFound):
        client.upload_data(424242, _csv(sim.data_dir, "Email\na@example.com\n"))


def test_upload_is_stored_once_then_refused_with_409(
    sim: Simulator, client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job()["jobId"]
    text = "Email\nann@example.com\nbob@example.com\n"

    result = client.upload_data(job_id, _csv(tmp_path, text))

    assert result.status_code == 200
    assert result.response_text == str(job_id)
    (upload,) = sim.uploads(job_id)
    assert (upload.bytes, upload.records) == (len(text), 2)
    assert upload.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert upload.content_type == "text/csv"
    assert sim.upload_data(job_id, 0) == text.encode()
    completed = sim.job(job_id)
    assert completed["status"] == "COMPLETE"
    assert completed["sourceRecordCount"] == 2

    with pytest.raises(Conflict) as refused:
        client.upload_data(job_id, _csv(tmp_path, "Email\ncat@example.com\n", "again.csv"))

    assert refused.value.status == 409
    assert "COMPLETE" in (refused.value.server_message or "")
    assert sim.job(job_id)["status"] == "COMPLETE"
    assert len(sim.uploads(job_id)) == 1


def test_job_runs_then_completes_after_the_configured_delay(
    exchange_simulator: Simulator, tmp_path: Path
) -> None:
    job_id = exchange_simulator.add_job()["jobId"]
    with ExchangeClient(exchange_simulator.url, KEY) as exchange:
        exchange.upload_data(job_id, _csv(tmp_path, "Email\na@example.com\n"))
        assert exchange.get_job("SEGMENT_EXPORT", job_id).status is JobStatus.RUNNING

        deadline = time.monotonic() + 5
        while exchange.get_job("SEGMENT_EXPORT", job_id).status is not JobStatus.COMPLETE:
            assert time.monotonic() < deadline, "the job never reached COMPLETE"
            time.sleep(0.05)
        assert exchange.get_job("SEGMENT_EXPORT", job_id).source_record_count == 1


@pytest.mark.parametrize(
    ("text", "records"),
    [("Email\n", 0), ("Email\na@x.io", 1), ("Email\r\na@x.io\r\nb@x.io\r\n", 2)],
)
def test_records_are_the_lines_after_the_header(
    sim: Simulator, client: ExchangeClient, tmp_path: Path, text: str, records: int
) -> None:
    job_id = sim.add_job()["jobId"]

    client.upload_data(job_id, _csv(tmp_path, text))

    assert sim.uploads(job_id)[0].records == records


def test_an_identity_import_job_waits_takes_an_upload_and_can_be_failed(
    sim: Simulator, client: ExchangeClient, tmp_path: Path
) -> None:
    imported = sim.add_job(jobCategory="IDENTITY_IMPORT")
    failed = sim.add_job(jobCategory="IDENTITY_IMPORT")
    assert imported["jobName"] == "IDENTITY_IMPORT"
    assert imported["destinationEndpointID"] is None  # the identity store only
    listed = client.list_jobs("IDENTITY_IMPORT", endpoint_id=85, status=WAITING)
    assert [job.job_id for job in listed] == [imported["jobId"], failed["jobId"]]
    client.upload_data(imported["jobId"], _csv(tmp_path, "Email\na@example.com\n"))
    assert [u.records for u in sim.uploads(imported["jobId"])] == [1]
    client.fail_job(failed["jobId"], "no file tonight")
    assert client.get_job("IDENTITY_IMPORT", failed["jobId"]).status is JobStatus.ERROR


def test_empty_upload_is_refused_and_the_job_keeps_waiting(
    sim: Simulator, client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job()["jobId"]

    with pytest.raises(BadRequest):
        client.upload_data(job_id, _csv(tmp_path, ""))

    assert sim.uploads(job_id) == []
    assert sim.job(job_id)["status"] == WAITING


def test_fail_needs_an_error_message(sim: Simulator) -> None:
    job_id = sim.add_job()["jobId"]
    url = f"{sim.url}/v1/jobs/{job_id}/status/fail"
    auth = {"Authorization": f"Bearer {KEY}"}

    without_body = requests.put(url, headers=auth, timeout=10)
    empty_message = requests.put(url, headers=auth, json={"errorMessage": " "}, timeout=10)
    not_json = requests.put(url, headers=auth, data=b"{broken", timeout=10)

    assert [without_body.status_code, empty_message.status_code, not_json.status_code] == [
        400,
        400,
        400,
    ]
    assert "errorMessage" in without_body.json()["message"]
    assert sim.job(job_id)["status"] == WAITING


def test_fail_moves_a_waiting_job_to_error_once(sim: Simulator, client: ExchangeClient) -> None:
    job_id = sim.add_job()["jobId"]

    client.fail_job(job_id, "vip.csv line 3: no Email column")

    job = client.get_job("SEGMENT_EXPORT", job_id)
    assert job.status is JobStatus.ERROR
    assert job.error_details == "vip.csv line 3: no Email column"
    with pytest.raises(OperationRefused):
        client.fail_job(job_id, "again")
    assert sim.job(job_id)["errorDetails"] == "vip.csv line 3: no Email column"


def test_download_delete_and_complete_a_ready_job(
    sim: Simulator, client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job(
        status="READY_FOR_DOWNLOAD",
        segmentDataFiles=["part1.csv", "part 2/b.csv"],
        segmentData={"part1.csv": "Email\njane@example.com\n"},
        identityMappings={"Email": "EMAIL_SHA256"},
        attributeMappings={"FirstName": "firstName"},
        sampleRows=3,
    )["jobId"]

    size = client.download_segment_file(job_id, "part1.csv", tmp_path / "one.csv")
    client.download_segment_file(job_id, "part 2/b.csv", tmp_path / "two.csv")
    client.delete_segment_file(job_id, "part1.csv")

    assert (tmp_path / "one.csv").read_text() == "Email\njane@example.com\n"
    assert size == len("Email\njane@example.com\n")
    generated = (tmp_path / "two.csv").read_text().splitlines()
    assert generated[0] == "Email,FirstName"
    assert len(generated) == 4
    with pytest.raises(NotFound):
        client.download_segment_file(job_id, "part1.csv", tmp_path / "again.csv")
    with pytest.raises(NotFound):
        client.delete_segment_file(job_id, "part1.csv")
    assert client.get_job("SEGMENT_EXPORT", job_id).segment_data_files == ["part 2/b.csv"]

    client.complete_job(job_id)

    assert sim.job(job_id)["status"] == "COMPLETE"
    assert sim.job(job_id)["segmentDataFiles"] == []
    assert not any((sim.data_dir / "segments" / str(job_id)).iterdir())
    with pytest.raises(NotFound):
        client.download_segment_file(job_id, "part 2/b.csv", tmp_path / "late.csv")
    with pytest.raises(OperationRefused):
        client.complete_job(job_id)


def test_download_from_a_job_not_ready_is_refused(
    sim: Simulator, client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job(status="PENDING", segmentDataFiles=["a.csv"])["jobId"]

    with pytest.raises(Conflict):
        client.download_segment_file(job_id, "a.csv", tmp_path / "a.csv")


def test_complete_refuses_a_waiting_job(sim: Simulator, client: ExchangeClient) -> None:
    job_id = sim.add_job()["jobId"]

    with pytest.raises(OperationRefused):
        client.complete_job(job_id)

    assert sim.job(job_id)["status"] == WAITING


def test_scheduled_jobs_are_listed_and_deleted(sim: Simulator, client: ExchangeClient) -> None:
    mine = sim.add_scheduled_job(producerEndpointID=85)
    other = sim.add_scheduled_job(producerEndpointID=12)

    everything = client.list_scheduled_jobs()
    for_85 = client.list_scheduled_jobs("SEGMENT_EXPORT", endpoint_id=85)
    client.delete_scheduled_job(mine["jobId"])

    assert {job.job_id for job in everything} == {mine["jobId"], other["jobId"]}
    assert [job.job_id for job in for_85] == [mine["jobId"]]
    assert for_85[0].state == "SCHEDULED"
    assert for_85[0].active == 1
    assert [job["jobId"] for job in sim.scheduled_jobs()] == [other["jobId"]]
    with pytest.raises(NotFound):
        client.delete_scheduled_job(mine["jobId"])
