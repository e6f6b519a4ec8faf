"""Which segment a dropped file belongs to, and which waiting jobs each pending file goes to."""

from __future__ import annotations

import re
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol


class WaitingJob(Protocol):
    @property
    def job_id(self) -> int: ...

    def segment_keys(self) -> frozenset[str]: ...


class SegmentRouter:
    """``<segment>.csv`` or ``<segment>/<name>.csv`` by default, or a regex with ``(?P<segment>)``.

    ``<segment>`` is a producerSegmentID, a producerSegmentIDString or a name from ``names``;
    ids stay exact strings (a real id is above 2**53, so never through a float).
    """

    def __init__(self, *, names: Mapping[str, str], pattern: re.Pattern[str] | None = None) -> None:
        self._names = names
        self._pattern = pattern

    def segment_of(self, relative: PurePath) -> str | None:
        raw = self._from_pattern(relative) if self._pattern else self._from_layout(relative)
        if not raw:
            return None
        return self._names.get(raw, raw)

    def _from_pattern(self, relative: PurePath) -> str | None:
        assert self._pattern is not None
        match = self._pattern.fullmatch(relative.name)
        return match.group("segment") if match else None

    @staticmethod
    def _from_layout(relative: PurePath) -> str | None:
        if relative.suffix.lower() != ".csv":
            return None
        if len(relative.parts) == 1:
            return relative.stem
        if len(relative.parts) == 2:
            return relative.parts[0]
        return None


@dataclass(frozen=True)
class PendingFile:
    key: str
    segment: str
    since: float


@dataclass(frozen=True)
class Assignment:
    file: PendingFile
    jobs: tuple[WaitingJob, ...]


def plan_assignments(
    pending: Sequence[PendingFile], waiting: Sequence[WaitingJob], *, busy_jobs: Container[str]
) -> list[Assignment]:
    """Oldest file of each segment takes every free job waiting for that segment; the rest wait.

    A job is never given to two files in one plan, even when one file names its segment by id
    and another by id string: the older file wins.
    """
    taken: set[str] = set()
    served_segments: set[str] = set()
    plan: list[Assignment] = []
    for file in sorted(pending, key=lambda f: (f.since, f.key)):
        if file.segment in served_segments:
            continue
        jobs = tuple(
            job
            for job in sorted(waiting, key=lambda j: j.job_id)
            if file.segment in job.segment_keys()
            and str(job.job_id) not in busy_jobs
            and str(job.job_id) not in taken
        )
        if not jobs:
            continue
        served_segments.add(file.segment)
        taken.update(str(job.job_id) for job in jobs)
        plan.append(Assignment(file=file, jobs=jobs))
    return plan
