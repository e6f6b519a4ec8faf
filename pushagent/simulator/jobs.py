"""Job definitions on the wire: the vocabulary of the API, defaults, and validation of seeds.

A job is kept as its wire JSON (camelCase, exactly the reference's field names) so whatever a
seed adds beyond the reference travels back unchanged, as the real service's growing responses do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pushagent.simulator.errors import SimulatorInputError

CATEGORIES = ("SEGMENT_EXPORT", "IDENTITY_IMPORT", "SEGMENT_POPULATE_DB")

# The service's own spelling; the reference's prose and some documents spell it correctly.
WAITING = "WAITING_TO_RECIEVE_DATA"
WAITING_ALIASES = frozenset({WAITING, "WAITING_TO_RECEIVE_DATA"})
RUNNING = "RUNNING"
COMPLETE = "COMPLETE"
ERROR = "ERROR"
READY_FOR_DOWNLOAD = "READY_FOR_DOWNLOAD"
STATUSES = (
    WAITING, "SCHEDULED", "PENDING", RUNNING, COMPLETE, ERROR, "CANCELLED", "NOTFOUND",
    READY_FOR_DOWNLOAD,
)

# Fields only a list call with extraFields=true returns.
EXTRA_FIELDS = ("started", "ended", "scheduleDetails")

# Seed-only keys: they describe the simulator's files and never appear on the wire.
SEGMENT_DATA_KEY = "segmentData"
SAMPLE_ROWS_KEY = "sampleRows"
DEFAULT_SAMPLE_ROWS = 10

_JOB_DEFAULTS: dict[str, Any] = {
    "jobCategory": "SEGMENT_EXPORT",
    "scheduledJobId": None,
    "status": WAITING,
    "subStatus": None,
    "jobName": "EXPORT_SEGMENT",
    "accountId": 2,
    "errorDetails": None,
    "segmentDataFiles": None,
    "segmentDataFormat": None,
    "destinationSegmentID": None,
    "destinationSegmentName": None,
    "destinationSegmentDescription": None,
    "destinationEndpointID": 7,
    "exportCategory": None,
    "producerEndpointID": 85,
    "producerSegmentID": 45311,
    "producerSegmentIDString": None,
    "attributeMappings": {},
    "identityMappings": {"Email": "EMAIL_SHA256"},
    "shareAction": "ADD",
    "updateIdentities": False,
    "sourceIdentifiers": None,
    "destinationIdentifier": None,
    "started": None,
    "ended": None,
    "scheduleDetails": None,
    "translatedRecordCount": None,
    "sourceRecordCount": None,
    "destinationRecordCount": None,
}

_SCHEDULED_DEFAULTS: dict[str, Any] = {
    "state": "SCHEDULED",
    "jobCategory": "SEGMENT_EXPORT",
    "jobName": "EXPORT_SEGMENT",
    "accountId": 2,
    "active": 1,
    "errorDetails": None,
    "producerEndpointID": 85,
}

_ENDPOINT_FIELDS = ("producerEndpointID", "destinationEndpointID")


def parse_status(text: object) -> str:
    """The wire spelling of a status given in either spelling and any case."""
    if not isinstance(text, str) or not text.strip():
        raise SimulatorInputError(
            f"status {text!r} is not a string; use one of {', '.join(STATUSES)}"
        )
    upper = text.strip().upper()
    if upper in WAITING_ALIASES:
        return WAITING
    if upper not in STATUSES:
        raise SimulatorInputError(f"unknown status {text!r}; use one of {', '.join(STATUSES)}")
    return upper


def parse_id(value: object, *, what: str) -> int:
    """An ID as an exact int: ints and digit strings only, never through a float."""
    if isinstance(value, bool):
        raise SimulatorInputError(f"{what} {value!r} is not an integer ID")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise SimulatorInputError(f"{what} {value!r} is not an integer ID; write it as a plain number")


def _optional_id(fields: dict[str, Any], name: str) -> None:
    if fields.get(name) is not None:
        fields[name] = parse_id(fields[name], what=name)


def endpoints_of(wire: Mapping[str, Any]) -> frozenset[int]:
    """The endpoints an endpoint-level key must own one of to see this job."""
    return frozenset(
        int(wire[name]) for name in _ENDPOINT_FIELDS if isinstance(wire.get(name), int)
    )


def normalise_job(
    fields: Mapping[str, Any], *, job_id: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """The job's full wire JSON with defaults filled, and its segment files' content.

    Returns ``(wire, contents)`` where ``contents`` maps each name of ``segmentDataFiles`` to the
    CSV text to serve: the seed's inline ``segmentData`` or generated sample rows.
    """
    given = dict(fields)
    inline = given.pop(SEGMENT_DATA_KEY, None) or {}
    sample_rows = given.pop(SAMPLE_ROWS_KEY, DEFAULT_SAMPLE_ROWS)
    if not isinstance(inline, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in inline.items()
    ):
        raise SimulatorInputError(f"{SEGMENT_DATA_KEY} must map file names to CSV text")
    if not isinstance(sample_rows, int) or isinstance(sample_rows, bool) or sample_rows < 0:
        raise SimulatorInputError(
            f"{SAMPLE_ROWS_KEY} must be a whole number >= 0, not {sample_rows!r}"
        )
    wire = {"jobId": job_id, **_JOB_DEFAULTS, **given}
    wire["jobId"] = job_id
    if wire["jobCategory"] not in CATEGORIES:
        raise SimulatorInputError(
            f"jobCategory {wire['jobCategory']!r} is unknown; use one of {', '.join(CATEGORIES)}"
        )
    wire["status"] = parse_status(wire["status"])
    for name in ("scheduledJobId", "accountId", "producerSegmentID", "destinationSegmentID",
                 *_ENDPOINT_FIELDS):
        _optional_id(wire, name)
    for name in ("identityMappings", "attributeMappings"):
        if wire[name] is not None and not isinstance(wire[name], Mapping):
            raise SimulatorInputError(f"{name} must be a mapping of column -> identity/attribute")
    names = list(wire["segmentDataFiles"] or [])
    if not all(isinstance(name, str) and name for name in names):
        raise SimulatorInputError("segmentDataFiles must be a list of non-empty file names")
    unknown = sorted(set(inline) - set(names))
    if unknown:
        raise SimulatorInputError(
            f"{SEGMENT_DATA_KEY} names files not in segmentDataFiles: {unknown}"
        )
    if names:
        wire["segmentDataFiles"] = names
        wire["segmentDataFormat"] = wire["segmentDataFormat"] or "text/csv"
    contents = {name: inline.get(name) or sample_csv(wire, rows=sample_rows) for name in names}
    return wire, contents


def normalise_scheduled_job(fields: Mapping[str, Any], *, job_id: int) -> dict[str, Any]:
    wire = {"jobId": job_id, **_SCHEDULED_DEFAULTS, **dict(fields)}
    wire["jobId"] = job_id
    if wire["jobCategory"] not in CATEGORIES:
        raise SimulatorInputError(
            f"jobCategory {wire['jobCategory']!r} is unknown; use one of {', '.join(CATEGORIES)}"
        )
    for name in ("accountId", *_ENDPOINT_FIELDS):
        _optional_id(wire, name)
    return wire


def sample_csv(wire: Mapping[str, Any], *, rows: int) -> str:
    """A small CSV whose columns are the job's mapped source columns."""
    columns: list[str] = []
    for mapping in (wire.get("identityMappings"), wire.get("attributeMappings")):
        for column in (mapping or {}):
            if column not in columns:
                columns.append(str(column))
    columns = columns or ["Email"]
    lines = [",".join(columns)]
    for row in range(1, rows + 1):
        lines.append(",".join(_sample_value(column, row) for column in columns))
    return "\n".join(lines) + "\n"


def _sample_value(column: str, row: int) -> str:
    if "mail" in column.lower():
        return f"person{row}@example.com"
    return f"{column.lower()}-{row}"
