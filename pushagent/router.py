"""Which segment a dropped file belongs to, and which waiting jobs each pending file goes to."""

from __future__ import annotations

import re
from collections.abc import Collection, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from pushagent.exchange import Job

__all__ = ["Assignment", "JobIndex", "ListedJob", "PendingFile", "SegmentRouter", "WaitingJob",
    "plan_assignments"]


class WaitingJob(Protocol):
    @property
    def job_id(self) -> int: ...

    def segment_keys(self) -> Collection[str]: ...


@dataclass(frozen=True, slots=True)
class ListedJob:
    """What the agent keeps of a waiting job between list calls: its id, the names of its
    segment, the columns it maps. A few hundred bytes, where the whole answer's model of a job
    takes kilobytes: 20,000 waiting jobs stay within the agent's memory budget."""

    job_id: int
    keys: tuple[str, ...]  # a tuple of one or two takes a quarter of a frozenset's memory
    columns: tuple[str, ...]
    label: str  # the segment as a person would name it, for ``pushagent status``
    is_waiting: bool
    category: str = "SEGMENT_EXPORT"

    @classmethod
    def of(cls, job: Job, *, category: str | None = None) -> ListedJob:
        """``category``: the list call's, which a job that omits ``jobCategory`` still has."""
        label = job.producer_segment_id_string or str(job.producer_segment_id)
        keys = tuple(job.segment_keys())
        # The label is one of the keys: the same string object, not a copy per job.
        label = next((key for key in keys if key == label), label)
        return cls(job.job_id, keys, job.required_columns(), label, job.is_waiting,
                   category or job.job_category or "SEGMENT_EXPORT")

    def segment_keys(self) -> tuple[str, ...]:
        return self.keys

    def required_columns(self) -> tuple[str, ...]:
        return self.columns


# A CSV, or a compressed one (``pushagent.intake`` reads it).
DROP_SUFFIXES = (".csv", ".csv.gz", ".zip")


class SegmentRouter:
    """``<segment>.csv`` or ``<segment>/<name>.csv`` by default (or ``.csv.gz``, ``.zip``), or
    a regex with ``(?P<segment>)``.

    ``<segment>`` is a producerSegmentID, a producerSegmentIDString or a name from ``names``;
    ids stay exact strings (a real id is above 2**53, so never through a float).
    """

    def __init__(self, *, names: Mapping[str, str], pattern: re.Pattern[str] | None = None) -> None:
        self._names = names
        self._pattern = pattern

    def segment_of(self, relative: str) -> str | None:
        """``relative``: the file's path under the drop folder, ``/``-separated (as journalled)."""
        raw = self._raw(relative)
        if not raw:
            return None
        return self._names.get(raw, raw)

    def names_of(self, relative: str) -> tuple[str, ...]:
        """The names settings may know a file's segment by: as the file names it, the segment
        it resolves to, and the subfolder the file is in."""
        raw = self._raw(relative)
        names = [raw, self._names.get(raw, raw)] if raw else []
        folder, slash, _ = relative.partition("/")
        if slash:
            names.append(folder)
        return tuple(names)

    def _raw(self, relative: str) -> str | None:
        return self._from_pattern(relative) if self._pattern else self._from_layout(relative)

    def _from_pattern(self, relative: str) -> str | None:
        assert self._pattern is not None
        match = self._pattern.fullmatch(relative.rpartition("/")[2])
        return match.group("segment") if match else None

    @staticmethod
    def _from_layout(relative: str) -> str | None:
        parts = relative.split("/")
        name = parts[-1]
        lowered = name.lower()
        suffix = next((s for s in DROP_SUFFIXES if lowered.endswith(s)), None)
        if suffix is None:
            return None
        if len(parts) == 1:
            return name[: -len(suffix)]
        if len(parts) == 2:
            return parts[0]
        return None


@dataclass(frozen=True, slots=True)
class PendingFile:
    key: str
    segment: str
    since: float


@dataclass(frozen=True, slots=True)
class Assignment:
    file: PendingFile
    jobs: tuple[WaitingJob, ...]


class JobIndex:
    """Waiting jobs by every name of their segment, each list in job_id order; built once.

    The agent may keep one between polls and hand it to :func:`plan_assignments` on every pass.
    """

    def __init__(self, jobs: Iterable[WaitingJob]) -> None:
        self._jobs = tuple(sorted(jobs, key=lambda job: job.job_id))
        by_segment: dict[str, list[WaitingJob]] = {}
        for job in self._jobs:
            for key in job.segment_keys():
                by_segment.setdefault(key, []).append(job)
        self._by_segment = {key: tuple(jobs) for key, jobs in by_segment.items()}

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[WaitingJob]:
        return iter(self._jobs)

    def waiting_for(self, segment: str) -> tuple[WaitingJob, ...]:
        return self._by_segment.get(segment, ())

    def segments(self) -> frozenset[str]:
        """Every segment name (id and id string) some waiting job is listed under."""
        return frozenset(self._by_segment)

    def without_files(self, file_segments: Container[str]) -> list[WaitingJob]:
        """Jobs none of whose segment names has a file, for status; in job_id order."""
        return [
            job for job in self._jobs if not any(key in file_segments for key in job.segment_keys())
        ]


def plan_assignments(
    pending: Iterable[PendingFile],
    waiting: JobIndex | Iterable[WaitingJob],
    *,
    busy_jobs: Container[str],
) -> list[Assignment]:
    """Oldest file of each segment takes every free job waiting for that segment; the rest wait.

    A job is never given to two files in one plan, even when one file names its segment by id
    and another by id string: the older file wins. Files go oldest first (ties by key), jobs in
    job_id order. One sort of the files (and of the jobs, unless ``waiting`` is a kept
    :class:`JobIndex`), then each segment's jobs are looked at once: O(files + jobs).
    """
    index = waiting if isinstance(waiting, JobIndex) else JobIndex(waiting)
    taken: set[str] = set()
    # A segment's jobs are looked at by its oldest file only: a younger file of the same segment
    # would find the same jobs busy or taken, as ``taken`` only grows.
    looked_at: set[str] = set()
    plan: list[Assignment] = []
    for file in sorted(pending, key=lambda f: (f.since, f.key)):
        if file.segment in looked_at:
            continue
        looked_at.add(file.segment)
        jobs = tuple(
            job
            for job in index.waiting_for(file.segment)
            if str(job.job_id) not in busy_jobs and str(job.job_id) not in taken
        )
        if jobs:
            taken.update(str(job.job_id) for job in jobs)
            plan.append(Assignment(file=file, jobs=jobs))
    return plan
