"""Parsing of Exchange job JSON into Job / ScheduledJob, and JobStatus spellings."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from pushagent.exchange import Job, JobCategory, JobStatus, RetryPolicy, ScheduledJob

BIG_SEGMENT_ID = 8000000000000001152  # > 2**53: a float would turn it into ...1152.0 or worse

REFERENCE_JOB: dict[str, Any] = {
    "jobCategory": "SEGMENT_EXPORT",
    "jobId": 1347,
    "scheduledJobId": 1234,
    "status": "WAITING_TO_RECIEVE_DATA",
    "jobName": "EXPORT_SEGMENT",
    "accountId": 2,
    "producerSegmentIDString": None,
    "segmentDataFiles": None,
    "segmentDataFormat": None,
    "destinationSegmentID": None,
    "destinationSegmentName": "myDestSegName",
    "destinationSegmentDescription": None,
    "destinationEndpointID": 7,
    "exportCategory": "mycat2",
    "producerEndpointID": 85,
    "producerSegmentID": 45311,
    "updateIdentities": False,
    "sourceIdentifiers": None,
    "destinationIdentifier": None,
    "attributeMappings": {},
    "identityMappings": {"Email": "workEmail"},
    "started": 1471005788694,
    "ended": 1471007416451,
    "scheduleDetails": {"runNow": True, "runRepeat": False},
    "translatedRecordCount": 27397,
    "sourceRecordCount": 27397,
    "destinationRecordCount": 27397,
}


def test_reference_example_parses_every_field() -> None:
    job = Job.from_json(REFERENCE_JOB)

    assert job.job_id == 1347
    assert job.job_category == "SEGMENT_EXPORT"
    assert job.scheduled_job_id == 1234
    assert job.status is JobStatus.WAITING_TO_RECEIVE_DATA
    assert job.status_raw == "WAITING_TO_RECIEVE_DATA"
    assert job.is_waiting
    assert job.job_name == "EXPORT_SEGMENT"
    assert job.account_id == 2
    assert job.producer_segment_id_string is None
    assert job.segment_data_files is None
    assert job.destination_segment_name == "myDestSegName"
    assert job.destination_endpoint_id == 7
    assert job.export_category == "mycat2"
    assert job.producer_endpoint_id == 85
    assert job.producer_segment_id == 45311
    assert job.update_identities is False
    assert job.attribute_mappings == {}
    assert job.identity_mappings == {"Email": "workEmail"}
    assert job.started == 1471005788694
    assert job.ended == 1471007416451
    assert job.schedule_details == {"runNow": True, "runRepeat": False}
    assert job.translated_record_count == 27397
    assert job.source_record_count == 27397
    assert job.destination_record_count == 27397
    assert job.raw == REFERENCE_JOB


def test_missing_fields_become_none_and_unknown_fields_stay_in_raw() -> None:
    job = Job.from_json({"jobId": 5, "brandNewField": {"nested": [1, 2]}})

    assert job.job_id == 5
    assert job.status is JobStatus.UNKNOWN
    assert job.status_raw is None
    assert job.producer_segment_id is None
    assert job.identity_mappings is None
    assert job.source_identifiers is None
    assert job.raw["brandNewField"] == {"nested": [1, 2]}
    assert not job.is_waiting


def test_oddly_typed_fields_do_not_crash() -> None:
    job = Job.from_json(
        {
            "jobId": "77",
            "producerEndpointID": "not a number",
            "producerSegmentID": True,
            "updateIdentities": "TRUE",
            "segmentDataFiles": "only-one.csv",
            "identityMappings": ["not", "a", "map"],
            "scheduleDetails": "soon",
            "errorDetails": {"code": 12, "text": "bad"},
            "started": 1.5,
        }
    )

    assert job.job_id == 77
    assert job.producer_endpoint_id is None
    assert job.producer_segment_id is None
    assert job.update_identities is True
    assert job.segment_data_files == ["only-one.csv"]
    assert job.identity_mappings is None
    assert job.schedule_details is None
    assert job.error_details is not None and json.loads(job.error_details)["code"] == 12
    assert job.started is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("WAITING_TO_RECIEVE_DATA", JobStatus.WAITING_TO_RECEIVE_DATA),
        ("WAITING_TO_RECEIVE_DATA", JobStatus.WAITING_TO_RECEIVE_DATA),
        ("waiting_to_recieve_data", JobStatus.WAITING_TO_RECEIVE_DATA),
        (" Waiting to receive data ", JobStatus.WAITING_TO_RECEIVE_DATA),
        ("READY_FOR_DOWNLOAD", JobStatus.READY_FOR_DOWNLOAD),
        ("complete", JobStatus.COMPLETE),
        ("CANCELLED", JobStatus.CANCELLED),
        ("NOTFOUND", JobStatus.NOTFOUND),
        ("ARCHIVED_FOREVER", JobStatus.UNKNOWN),
        ("", JobStatus.UNKNOWN),
        (None, JobStatus.UNKNOWN),
    ],
)
def test_status_parse(text: str | None, expected: JobStatus) -> None:
    assert JobStatus.parse(text) is expected


def test_waiting_status_value_is_the_documented_wire_spelling() -> None:
    assert JobStatus.WAITING_TO_RECEIVE_DATA.value == "WAITING_TO_RECIEVE_DATA"
    assert JobCategory.SEGMENT_EXPORT.value == "SEGMENT_EXPORT"


@pytest.mark.parametrize("spelling", ["WAITING_TO_RECIEVE_DATA", "WAITING_TO_RECEIVE_DATA"])
def test_both_waiting_spellings_in_a_job(spelling: str) -> None:
    job = Job.from_json({"jobId": 1, "status": spelling})

    assert job.status is JobStatus.WAITING_TO_RECEIVE_DATA
    assert job.status_raw == spelling
    assert job.is_waiting


def test_unknown_status_keeps_the_raw_text() -> None:
    job = Job.from_json({"jobId": 1, "status": "PAUSED_BY_OPERATOR", "subStatus": "PAUSED"})

    assert job.status is JobStatus.UNKNOWN
    assert job.status_raw == "PAUSED_BY_OPERATOR"
    assert job.sub_status == "PAUSED"


def test_big_integer_ids_stay_exact() -> None:
    text = (
        '{"jobId": 8000000000000001153, "producerSegmentID": 8000000000000001152, '
        '"producerEndpointID": "8000000000000001151", "accountId": 8000000000000001150.0}'
    )
    job = Job.from_json(json.loads(text, parse_float=Decimal))

    assert job.job_id == 8000000000000001153
    assert job.producer_segment_id == BIG_SEGMENT_ID
    assert job.producer_endpoint_id == 8000000000000001151
    assert job.account_id == 8000000000000001150
    assert job.segment_keys() == frozenset({"8000000000000001152"})


def test_a_float_id_beyond_two_to_the_53_is_not_trusted() -> None:
    job = Job.from_json({"jobId": 1, "producerSegmentID": float(BIG_SEGMENT_ID)})

    assert job.producer_segment_id is None


@pytest.mark.parametrize("bad", [{}, {"jobId": None}, {"jobId": "abc"}, {"jobId": True}])
def test_a_job_without_integer_id_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="jobId"):
        Job.from_json(bad)


def test_field_names_are_matched_case_insensitively() -> None:
    job = Job.from_json({"jobid": 3, "producerSegmentId": 9, "destinationEndpointId": 4})

    assert (job.job_id, job.producer_segment_id, job.destination_endpoint_id) == (3, 9, 4)


def test_segment_keys_from_numeric_and_string_ids() -> None:
    both = Job.from_json({"jobId": 1, "producerSegmentID": 45311, "producerSegmentIDString": "VIP"})
    numeric_only = Job.from_json({"jobId": 1, "producerSegmentID": 45311})
    neither = Job.from_json({"jobId": 1})

    assert both.segment_keys() == frozenset({"45311", "VIP"})
    assert numeric_only.segment_keys() == frozenset({"45311"})
    assert neither.segment_keys() == frozenset()


def test_required_columns_old_and_new_identity_generations() -> None:
    old = Job.from_json(
        {
            "jobId": 1,
            "identityMappings": {"Email": "EMAIL_SHA256"},
            "attributeMappings": {"firstName": "FIRST", "Email": "EMAIL"},
        }
    )
    new = Job.from_json(
        {"jobId": 2, "identityMappings": None, "sourceIdentifiers": ["email", "phone"]}
    )
    both = Job.from_json(
        {"jobId": 3, "identityMappings": {"email": "X"}, "sourceIdentifiers": ["email", "crmId"]}
    )

    assert old.required_columns() == ("Email", "firstName")
    assert new.required_columns() == ("email", "phone")
    assert both.required_columns() == ("email", "crmId")


def test_jobs_are_hashable_values() -> None:
    first = Job.from_json(REFERENCE_JOB)
    again = Job.from_json(dict(REFERENCE_JOB))

    assert first == again
    assert len({first, again}) == 1
    with pytest.raises(AttributeError):
        first.job_id = 2  # type: ignore[misc]


def test_scheduled_job_reference_example() -> None:
    obj = {
        "jobId": 301,
        "state": "SCHEDULED",
        "jobCategory": "SEGMENT_EXPORT",
        "jobName": "EXPORT_SEGMENT",
        "accountId": 2,
        "active": 1,
        "errorDetails": None,
        "later": "kept",
    }
    job = ScheduledJob.from_json(obj)

    assert job == ScheduledJob(
        job_id=301,
        state="SCHEDULED",
        job_category="SEGMENT_EXPORT",
        job_name="EXPORT_SEGMENT",
        account_id=2,
        active=1,
        error_details=None,
        raw=obj,
    )
    assert job.raw["later"] == "kept"


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"max_total_seconds": -1.0},
        {"initial_backoff": -0.1},
        {"max_backoff": -1.0},
        {"jitter": -0.5},
    ],
)
def test_retry_policy_rejects_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**bad)
