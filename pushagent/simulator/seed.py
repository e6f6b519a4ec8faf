"""Reading a seed file: YAML or JSON, a list of jobs or ``{jobs: [...], scheduledJobs: [...]}``.

Each job is a mapping of camelCase wire fields; anything left out gets the simulator's default.
Besides the wire fields a job may carry ``segmentData`` ({file name: CSV text}) and
``sampleRows`` (rows generated for segment files given no inline text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pushagent.simulator.errors import SimulatorInputError
from pushagent.simulator.jobs import normalise_job, normalise_scheduled_job, parse_id

_TOP_LEVEL_KEYS = ("jobs", "scheduledJobs")


@dataclass(frozen=True)
class Seed:
    jobs: tuple[Mapping[str, Any], ...]
    scheduled_jobs: tuple[Mapping[str, Any], ...]


def _entries(value: object, *, path: Path, key: str) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SimulatorInputError(f"{path}: {key} must be a list of jobs")
    for index, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise SimulatorInputError(f"{path}: {key}[{index}] must be a mapping of job fields")
    return tuple(value)


def _check(seed: Seed, *, path: Path) -> None:
    """Validate every entry now, so a bad seed fails naming its place in the file."""
    for key, entries, normalise in (
        ("jobs", seed.jobs, lambda job: normalise_job(job, job_id=0)),
        ("scheduledJobs", seed.scheduled_jobs, lambda job: normalise_scheduled_job(job, job_id=0)),
    ):
        seen: set[int] = set()
        for index, entry in enumerate(entries):
            try:
                normalise(entry)
                if entry.get("jobId") is not None:
                    job_id = parse_id(entry["jobId"], what="jobId")
                    if job_id in seen:
                        raise SimulatorInputError(f"jobId {job_id} is used twice")
                    seen.add(job_id)
            except SimulatorInputError as error:
                raise SimulatorInputError(f"{path}: {key}[{index}]: {error}") from error


def load_seed(path: Path) -> Seed:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SimulatorInputError(f"cannot read the jobs file {path}: {error.strerror}") from error
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise SimulatorInputError(f"{path} is not valid {kind}: {error}") from error
    if isinstance(data, list):
        seed = Seed(jobs=_entries(data, path=path, key="jobs"), scheduled_jobs=())
    elif isinstance(data, Mapping):
        unknown = sorted(set(data) - set(_TOP_LEVEL_KEYS))
        if unknown:
            raise SimulatorInputError(
                f"{path}: unknown top-level keys {unknown}; use jobs and scheduledJobs"
            )
        seed = Seed(
            jobs=_entries(data.get("jobs"), path=path, key="jobs"),
            scheduled_jobs=_entries(data.get("scheduledJobs"), path=path, key="scheduledJobs"),
        )
    else:
        raise SimulatorInputError(
            f"{path} must hold a list of jobs or a mapping with jobs: and scheduledJobs:"
        )
    _check(seed, path=path)
    return seed
