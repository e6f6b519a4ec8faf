"""Values the Exchange jobs API returns, parsed leniently.

Acoustic adds response fields at any time and older/newer servers differ in spelling and in which
identity fields they send, so parsing never fails on an unknown, missing or oddly typed field: it
becomes None and the whole object stays in ``raw``. The one exception is ``jobId``: a job without
a usable id cannot be acted on, so ``from_json`` raises ValueError for it.

IDs are big integers (``8000000000000001152`` > 2**53): they are kept as ``int`` and never pass
through ``float``. The client parses JSON with ``parse_float=Decimal``, so ``raw`` may hold
``Decimal`` for non-integer numbers (the API sends none today).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol


class JobCategory(str, Enum):
    SEGMENT_EXPORT = "SEGMENT_EXPORT"
    IDENTITY_IMPORT = "IDENTITY_IMPORT"
    SEGMENT_POPULATE_DB = "SEGMENT_POPULATE_DB"


class JobStatus(str, Enum):
    # The value is the wire spelling the list API documents and the service uses ("RECIEVE").
    WAITING_TO_RECEIVE_DATA = "WAITING_TO_RECIEVE_DATA"
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    NOTFOUND = "NOTFOUND"
    READY_FOR_DOWNLOAD = "READY_FOR_DOWNLOAD"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str | None) -> JobStatus:
        """Both spellings of the waiting status, any case; anything unrecognised is UNKNOWN."""
        if text is None:
            return cls.UNKNOWN
        exact = cls._value2member_map_.get(text)  # the wire spelling: every job of a list
        if exact is not None:
            return cls(exact)
        key = re.sub(r"[\s\-]+", "_", str(text).strip()).upper()
        if key == cls.WAITING_TO_RECEIVE_DATA.value:
            return cls.WAITING_TO_RECEIVE_DATA
        return cls.__members__.get(key, cls.UNKNOWN)


_INT_TEXT = re.compile(r"[+-]?\d+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_EXACT_FLOAT_LIMIT = 2**53


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    # A float is only trusted where every integer is exact; above 2**53 it may already be wrong.
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT_LIMIT:
        return int(value)
    return None


def _to_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _to_id(value: Any) -> int | str | None:
    """An ID some destinations spell as text: keep integers exact, keep other text as given."""
    number = _to_int(value)
    if number is not None:
        return number
    return value if isinstance(value, str) and value else None


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def _to_str_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for text in (_to_str(item) for item in value) if text is not None]
    return None


def _to_str_map(value: Any) -> dict[str, str | None] | None:
    if not isinstance(value, dict):
        return None
    return {str(key): _to_str(item) for key, item in value.items()}


def _to_dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


class _Fields:
    """Field lookup by exact name, then case-insensitively (``producerSegmentId`` vs ``...ID``);
    the keys are folded only once a name is not found as it is."""

    def __init__(self, obj: Mapping[str, Any]) -> None:
        self._obj = obj
        self._folded: dict[str, str] | None = None

    def get(self, name: str) -> Any:
        if name in self._obj:
            return self._obj[name]
        if self._folded is None:
            self._folded = {key.lower(): key for key in self._obj if isinstance(key, str)}
        key = self._folded.get(name.lower())
        return None if key is None else self._obj[key]


_JOB_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("job_category", "jobCategory", _to_str),
    ("scheduled_job_id", "scheduledJobId", _to_int),
    ("sub_status", "subStatus", _to_str),
    ("job_name", "jobName", _to_str),
    ("account_id", "accountId", _to_int),
    ("error_details", "errorDetails", _to_str),
    ("segment_data_files", "segmentDataFiles", _to_str_list),
    ("segment_data_format", "segmentDataFormat", _to_str),
    ("destination_segment_id", "destinationSegmentID", _to_id),
    ("destination_segment_name", "destinationSegmentName", _to_str),
    ("destination_segment_description", "destinationSegmentDescription", _to_str),
    ("destination_endpoint_id", "destinationEndpointID", _to_int),
    ("export_category", "exportCategory", _to_str),
    ("producer_endpoint_id", "producerEndpointID", _to_int),
    ("producer_segment_id", "producerSegmentID", _to_int),
    ("producer_segment_id_string", "producerSegmentIDString", _to_str),
    ("attribute_mappings", "attributeMappings", _to_str_map),
    ("identity_mappings", "identityMappings", _to_str_map),
    ("share_action", "shareAction", _to_str),
    ("update_identities", "updateIdentities", _to_bool),
    ("source_identifiers", "sourceIdentifiers", _to_str_list),
    ("destination_identifier", "destinationIdentifier", _to_str),
    ("started", "started", _to_int),
    ("ended", "ended", _to_int),
    ("schedule_details", "scheduleDetails", _to_dict),
    ("translated_record_count", "translatedRecordCount", _to_int),
    ("source_record_count", "sourceRecordCount", _to_int),
    ("destination_record_count", "destinationRecordCount", _to_int),
)


def _required_id(fields: _Fields, what: str) -> int:
    value = fields.get("jobId")
    job_id = _to_int(value)
    if job_id is None:
        raise ValueError(f"{what} has no integer jobId (got {type(value).__name__})")
    return job_id


@dataclass(frozen=True)
class Job:
    """One job as the Exchange reports it; ``raw`` is the whole JSON object, unknown fields kept."""

    job_id: int
    status: JobStatus = JobStatus.UNKNOWN
    status_raw: str | None = None
    job_category: str | None = None
    scheduled_job_id: int | None = None
    sub_status: str | None = None
    job_name: str | None = None
    account_id: int | None = None
    error_details: str | None = None
    segment_data_files: list[str] | None = None
    segment_data_format: str | None = None
    destination_segment_id: int | str | None = None
    destination_segment_name: str | None = None
    destination_segment_description: str | None = None
    destination_endpoint_id: int | None = None
    export_category: str | None = None
    producer_endpoint_id: int | None = None
    producer_segment_id: int | None = None
    producer_segment_id_string: str | None = None
    attribute_mappings: dict[str, str | None] | None = None
    identity_mappings: dict[str, str | None] | None = None
    share_action: str | None = None
    update_identities: bool | None = None
    source_identifiers: list[str] | None = None
    destination_identifier: str | None = None
    started: int | None = None
    ended: int | None = None
    schedule_details: dict[str, Any] | None = None
    translated_record_count: int | None = None
    source_record_count: int | None = None
    destination_record_count: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    # The dict/list fields make the generated hash fail; equal jobs always share an id.
    def __hash__(self) -> int:
        return hash((Job, self.job_id))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Job:
        fields = _Fields(obj)
        status_raw = _to_str(fields.get("status"))
        # An absent or null field keeps its default, None: what every converter makes of None.
        values = {name: convert(value) for name, wire, convert in _JOB_FIELDS
                  if (value := fields.get(wire)) is not None}
        return cls(
            job_id=_required_id(fields, "job"),
            status=JobStatus.parse(status_raw),
            status_raw=status_raw,
            raw=dict(obj),
            **values,
        )

    @property
    def is_waiting(self) -> bool:
        return self.status is JobStatus.WAITING_TO_RECEIVE_DATA

    def segment_keys(self) -> frozenset[str]:
        """The ways a drop folder may name this job's segment: numeric id and string id."""
        keys = set()
        if self.producer_segment_id is not None:
            keys.add(str(self.producer_segment_id))
        if self.producer_segment_id_string:
            keys.add(self.producer_segment_id_string)
        return frozenset(keys)

    def required_columns(self) -> tuple[str, ...]:
        """Source columns the job maps: identity and attribute mapping keys, source identifiers."""
        names = [
            *(self.identity_mappings or {}),
            *(self.attribute_mappings or {}),
            *(self.source_identifiers or []),
        ]
        return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class ScheduledJob:
    job_id: int
    state: str | None = None
    job_category: str | None = None
    job_name: str | None = None
    account_id: int | None = None
    active: int | None = None
    error_details: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def __hash__(self) -> int:
        return hash((ScheduledJob, self.job_id))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ScheduledJob:
        fields = _Fields(obj)
        return cls(
            job_id=_required_id(fields, "scheduled job"),
            state=_to_str(fields.get("state")),
            job_category=_to_str(fields.get("jobCategory")),
            job_name=_to_str(fields.get("jobName")),
            account_id=_to_int(fields.get("accountId")),
            active=_to_int(fields.get("active")),
            error_details=_to_str(fields.get("errorDetails")),
            raw=dict(obj),
        )


@dataclass(frozen=True)
class ExpectedBody:
    """The bytes an upload must send, as validation saw them: ``size`` bytes whose SHA-256 is
    ``sha256`` (hex), starting ``offset`` bytes into a file (a byte order mark left out) of
    ``offset + size`` bytes last modified at ``mtime_ns`` (None: not checked)."""

    size: int
    sha256: str
    mtime_ns: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"ExpectedBody.size must be >= 0, got {self.size}")
        if self.offset < 0:
            raise ValueError(f"ExpectedBody.offset must be >= 0, got {self.offset}")
        if not _SHA256_HEX.fullmatch(self.sha256):
            raise ValueError("ExpectedBody.sha256 must be 64 lowercase hex digits")


class BodyGate(Protocol):
    """Sees an upload's bytes before they leave (``upload_data(gate=...)``), so one read of the
    file can check, hash and send it. ``begin`` gets the file's first bytes (up to 3) and its
    stat at open, and returns how many of them the body skips (a UTF-8 byte order mark);
    ``feed`` gets every block before it is sent; ``release`` is called before the final block
    (``FINAL_BLOCK``), once every byte was fed and the file was found unchanged, and returns the
    SHA-256 (hex) of the body. An exception raised by any of them aborts the request before its
    final block, so no server can take the body as complete, and propagates."""

    def begin(self, head: bytes, opened: os.stat_result) -> int: ...

    def feed(self, block: bytes) -> None: ...

    def release(self) -> str: ...


@dataclass(frozen=True)
class UploadResult:
    """``sha256`` is the hex digest of exactly the bytes sent."""

    job_id: int | str
    bytes_sent: int
    status_code: int
    response_text: str
    sha256: str
