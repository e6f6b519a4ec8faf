"""Who may see and touch which job: account key, endpoint keys, missing and unknown keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pushagent.errors import NotAuthenticated, NotAuthorised, NotFound
from pushagent.exchange import ExchangeClient, RetryPolicy
from pushagent.simulator import Simulator

ACCOUNT_KEY = "account-key-0001"
KEY_85 = "endpoint-85-key"
KEY_7 = "endpoint-7-key"
ONE_ATTEMPT = RetryPolicy(max_attempts=1)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(
        data_dir=tmp_path / "sim",
        account_key=ACCOUNT_KEY,
        endpoint_keys={KEY_85: 85, KEY_7: 7},
        jobs=[
            {"jobId": 1, "producerEndpointID": 85, "destinationEndpointID": 7},
            {
                "jobId": 2,
                "producerEndpointID": 12,
                "destinationEndpointID": 99,
                "status": "READY_FOR_DOWNLOAD",
                "segmentDataFiles": ["a.csv"],
            },
        ],
        scheduled_jobs=[
            {"jobId": 301, "producerEndpointID": 85},
            {"jobId": 302, "producerEndpointID": 12},
        ],
    ) as simulator:
        yield simulator


def _client(sim: Simulator, key: str) -> ExchangeClient:
    return ExchangeClient(sim.url, key, retry=ONE_ATTEMPT)


def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "segment.csv"
    path.write_text("Email\na@example.com\n")
    return path


def test_account_key_sees_every_job(sim: Simulator) -> None:
    with _client(sim, ACCOUNT_KEY) as client:
        assert {job.job_id for job in client.list_jobs("SEGMENT_EXPORT")} == {1, 2}
        assert client.get_job("SEGMENT_EXPORT", 2).job_id == 2
        assert {job.job_id for job in client.list_scheduled_jobs()} == {301, 302}


def test_endpoint_key_sees_jobs_where_it_is_producer_or_destination(sim: Simulator) -> None:
    with _client(sim, KEY_85) as producer, _client(sim, KEY_7) as destination:
        assert [job.job_id for job in producer.list_jobs("SEGMENT_EXPORT")] == [1]
        assert [job.job_id for job in producer.list_jobs("SEGMENT_EXPORT", endpoint_id=85)] == [1]
        assert [job.job_id for job in destination.list_jobs("SEGMENT_EXPORT")] == [1]
        assert [job.job_id for job in producer.list_scheduled_jobs()] == [301]


def test_endpoint_key_may_not_list_another_endpoint(sim: Simulator) -> None:
    with _client(sim, KEY_85) as client:
        with pytest.raises(NotAuthorised) as listing:
            client.list_jobs("SEGMENT_EXPORT", endpoint_id=12)
        with pytest.raises(NotAuthorised):
            client.list_scheduled_jobs(endpoint_id=12)

    assert listing.value.status == 403


def test_endpoint_key_may_not_touch_another_endpoints_job(
    sim: Simulator, tmp_path: Path
) -> None:
    with _client(sim, KEY_85) as client:
        with pytest.raises(NotAuthorised):
            client.get_job("SEGMENT_EXPORT", 2)
        with pytest.raises(NotAuthorised):
            client.upload_data(2, _csv(tmp_path))
        with pytest.raises(NotAuthorised):
            client.fail_job(2, "not mine")
        with pytest.raises(NotAuthorised):
            client.complete_job(2)
        with pytest.raises(NotAuthorised):
            client.download_segment_file(2, "a.csv", tmp_path / "a.csv")
        with pytest.raises(NotAuthorised):
            client.delete_segment_file(2, "a.csv")
        with pytest.raises(NotAuthorised):
            client.delete_scheduled_job(302)

    assert sim.job(2)["status"] == "READY_FOR_DOWNLOAD"
    assert sim.job_state(2)["segmentFilesPresent"] == ["a.csv"]
    assert [job["jobId"] for job in sim.scheduled_jobs()] == [301, 302]


def test_endpoint_key_can_upload_to_its_own_job(sim: Simulator, tmp_path: Path) -> None:
    with _client(sim, KEY_85) as client:
        client.upload_data(1, _csv(tmp_path))

    assert len(sim.uploads(1)) == 1


def test_unknown_job_is_404_even_for_an_endpoint_key(sim: Simulator) -> None:
    with _client(sim, KEY_85) as client, pytest.raises(NotFound):
        client.get_job("SEGMENT_EXPORT", 3)


def test_unknown_key_is_401(sim: Simulator) -> None:
    with _client(sim, "not-a-key") as client:
        with pytest.raises(NotAuthenticated) as refused:
            client.list_jobs("SEGMENT_EXPORT")
        with pytest.raises(NotAuthenticated):
            client.list_jobs("NO_SUCH_CATEGORY")
        with pytest.raises(NotAuthenticated):
            client.get_job("SEGMENT_EXPORT", 424242)

    assert refused.value.status == 401
    assert "not-a-key" not in str(refused.value)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", f"Basic {ACCOUNT_KEY}"])
def test_missing_or_malformed_authorization_is_401(sim: Simulator, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}

    answer = requests.get(f"{sim.url}/v1/jobs/SEGMENT_EXPORT", headers=headers, timeout=10)

    assert answer.status_code == 401
    assert "Authorization" in answer.json()["message"]
