"""One poll of the waiting jobs: one list call per configured category, never one per file.

The category is a path parameter of the list call, so SEGMENT_EXPORT and IDENTITY_IMPORT jobs
are two calls. A category whose call fails does not hold up the others: its jobs are simply not
offered this poll (their files wait), and the failure is reported by category. Only when every
category failed is the poll a failure as a whole (the loop backs off).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pushagent.errors import ExchangeError
from pushagent.exchange import ExchangeClient, Job, JobStatus
from pushagent.router import ListedJob


@dataclass(frozen=True)
class Listing:
    jobs: list[ListedJob]
    # category -> the error of its list call, for the categories that failed this poll
    errors: dict[str, ExchangeError] = field(default_factory=dict)


def list_waiting(
    client: ExchangeClient,
    *,
    categories: Iterable[str],
    endpoint_id: int | str,
    known: Mapping[str, ListedJob] | None = None,
) -> Listing:
    """The jobs of every category waiting for ``endpoint_id``'s data; raises the first error
    when no category could be listed. A job equal to one in ``known`` (the last poll's, by job
    id) is that same object: 20,000 waiting jobs are held once, not twice, while a poll runs."""
    jobs: list[ListedJob] = []
    errors: dict[str, ExchangeError] = {}
    chosen = tuple(categories)
    for category in chosen:
        try:
            jobs.extend(client.list_jobs_as(
                functools.partial(_listed, category=category, known=known or {}),
                category,
                endpoint_id=endpoint_id,
                status=JobStatus.WAITING_TO_RECEIVE_DATA,
                include_producer_segment_id_string=True,
            ))
        except ExchangeError as error:
            errors[category] = error
    if chosen and len(errors) == len(chosen):
        raise next(iter(errors.values()))
    return Listing(jobs, errors)


def _listed(job: Job, *, category: str, known: Mapping[str, ListedJob]) -> ListedJob:
    listed = ListedJob.of(job, category=category)
    same = known.get(str(listed.job_id))
    return same if same == listed else listed
