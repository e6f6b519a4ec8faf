"""One poll's listing: the last poll's jobs are reused, so a poll never holds them twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pushagent.exchange import Job
from pushagent.listing import list_waiting

T = TypeVar("T")


class ListingClient:
    """Answers every list call with ``jobs`` (wire dicts) for the category asked."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self.calls: list[str] = []

    def list_jobs_as(self, convert: Callable[[Job], T], category: str, **_: Any) -> list[T]:
        self.calls.append(category)
        return [convert(Job.from_json({**job, "jobCategory": category})) for job in self.jobs]


def waiting(job_id: int, segment: int) -> dict[str, Any]:
    return {"jobId": job_id, "status": "WAITING_TO_RECIEVE_DATA", "producerSegmentID": segment}


def test_an_unchanged_job_is_the_last_polls_object_and_a_changed_one_is_new() -> None:
    client = ListingClient([waiting(1, 45311), waiting(2, 45312)])
    first = list_waiting(client, categories=["SEGMENT_EXPORT"], endpoint_id=85)
    known = {str(job.job_id): job for job in first.jobs}
    client.jobs = [waiting(1, 45311), waiting(2, 99999)]

    second = list_waiting(client, categories=["SEGMENT_EXPORT"], endpoint_id=85,
                          known=known)

    assert second.jobs[0] is known["1"]
    assert second.jobs[1] is not known["2"] and second.jobs[1].keys == ("99999",)


def test_the_same_job_id_in_another_category_is_not_reused() -> None:
    client = ListingClient([waiting(1, 45311)])
    first = list_waiting(client, categories=["SEGMENT_EXPORT"], endpoint_id=85)

    second = list_waiting(client, categories=["IDENTITY_IMPORT"], endpoint_id=85,
                          known={"1": first.jobs[0]})

    assert second.jobs[0].category == "IDENTITY_IMPORT"

