"""The simulator's jobs, their lifecycle and the uploads they received; safe to use from threads.

Lifecycle: a job waiting for data takes one upload at a time; a complete upload moves it to
RUNNING, and ``complete_after`` seconds later it reads as COMPLETE with ``sourceRecordCount``
filled. That last step is evaluated lazily on every read against the injected clock, so no
timer thread exists and tests can drive time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pushagent.simulator import jobs as wire_jobs
from pushagent.simulator.errors import SimulatorInputError

FIRST_JOB_ID = 1001
FIRST_SCHEDULED_JOB_ID = 301


@dataclass(frozen=True)
class Upload:
    """One accepted upload; ``index`` is its 0-based place in the job's list of uploads."""

    job_id: int
    index: int
    path: Path
    bytes: int
    records: int
    sha256: str
    content_type: str | None
    time: float

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "index": self.index,
            "path": str(self.path),
            "bytes": self.bytes,
            "records": self.records,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Upload:
        return cls(
            job_id=int(obj["job_id"]),
            index=int(obj["index"]),
            path=Path(obj["path"]),
            bytes=int(obj["bytes"]),
            records=int(obj["records"]),
            sha256=str(obj["sha256"]),
            content_type=obj.get("content_type"),
            time=float(obj["time"]),
        )


@dataclass(frozen=True)
class Refusal:
    """Why an operation was not done, as the HTTP status and message the API answers."""

    status: int
    message: str


@dataclass(frozen=True)
class UploadSlot:
    """An upload in progress: the body goes to ``part_path`` until it is complete."""

    job_id: int
    index: int
    part_path: Path
    final_path: Path


@dataclass
class _Record:
    wire: dict[str, Any]
    files: dict[str, Path]
    uploads: list[Upload] = field(default_factory=list)
    uploading: bool = False
    complete_at: float | None = None
    received_records: int | None = None


def _copy_json(value: Any) -> Any:
    """A deep copy of JSON-shaped data (dicts, lists, immutable leaves): what callers get, so
    they never change a job under the lock. Several times faster than ``copy.deepcopy``, which
    a list call over 20,000 jobs spent most of its time in."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


def _not_found(job_id: int) -> KeyError:
    return KeyError(f"the simulator has no job {job_id}")


class JobStore:
    def __init__(
        self,
        *,
        data_dir: Path,
        complete_after: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if complete_after < 0:
            raise SimulatorInputError(f"complete_after must be >= 0 seconds, not {complete_after}")
        self._data_dir = data_dir
        self._complete_after = complete_after
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._jobs: dict[int, _Record] = {}
        self._scheduled: dict[int, dict[str, Any]] = {}
        # The highest job ID so far: a new job's default ID without a pass over every job.
        self._last_job_id = FIRST_JOB_ID - 1

    # -- creating ---------------------------------------------------------------------------

    def add_job(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            if fields.get("jobId") is None:
                job_id = self._last_job_id + 1
            else:
                job_id = wire_jobs.parse_id(fields["jobId"], what="jobId")
                if job_id in self._jobs:
                    raise SimulatorInputError(
                        f"job {job_id} already exists; leave jobId out for a new ID"
                    )
            wire, contents = wire_jobs.normalise_job(fields, job_id=job_id)
            files = self._write_segment_files(job_id, contents)
            self._jobs[job_id] = _Record(wire=wire, files=files)
            self._last_job_id = max(self._last_job_id, job_id)
            return _copy_json(wire)

    def add_jobs(self, many: Iterable[Mapping[str, Any]]) -> None:
        for fields in many:
            self.add_job(fields)

    def add_scheduled_job(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            if fields.get("jobId") is None:
                job_id = max([FIRST_SCHEDULED_JOB_ID - 1, *self._scheduled]) + 1
            else:
                job_id = wire_jobs.parse_id(fields["jobId"], what="jobId")
                if job_id in self._scheduled:
                    raise SimulatorInputError(f"scheduled job {job_id} already exists")
            wire = wire_jobs.normalise_scheduled_job(fields, job_id=job_id)
            self._scheduled[job_id] = wire
            return _copy_json(wire)

    def _write_segment_files(self, job_id: int, contents: Mapping[str, str]) -> dict[str, Path]:
        folder = self._data_dir / "segments" / str(job_id)
        files: dict[str, Path] = {}
        for index, (name, text) in enumerate(contents.items()):
            folder.mkdir(parents=True, exist_ok=True)
            # Stored under a safe local name: the wire name may hold any character.
            path = folder / f"{index}.csv"
            path.write_text(text, encoding="utf-8")
            files[name] = path
        return files

    # -- reading ----------------------------------------------------------------------------

    def _advance(self, record: _Record) -> None:
        if (
            record.complete_at is not None
            and record.wire["status"] == wire_jobs.RUNNING
            and self._clock() >= record.complete_at
        ):
            record.complete_at = None
            record.wire["status"] = wire_jobs.COMPLETE
            record.wire["ended"] = self._now_ms()
            record.wire["sourceRecordCount"] = record.received_records

    def _record(self, job_id: int) -> _Record:
        record = self._jobs.get(job_id)
        if record is None:
            raise _not_found(job_id)
        self._advance(record)
        return record

    def find(self, job_id: int) -> dict[str, Any] | None:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                return None
            self._advance(record)
            return _copy_json(record.wire)

    def job(self, job_id: int) -> dict[str, Any]:
        with self._lock:
            return _copy_json(self._record(job_id).wire)

    def job_state(self, job_id: int) -> dict[str, Any]:
        with self._lock:
            record = self._record(job_id)
            return {
                "job": _copy_json(record.wire),
                "uploads": len(record.uploads),
                "uploadInProgress": record.uploading,
                "segmentFilesPresent": sorted(record.files),
            }

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            for record in self._jobs.values():
                self._advance(record)
            return [_copy_json(record.wire) for record in self._jobs.values()]

    def scheduled_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [_copy_json(wire) for wire in self._scheduled.values()]

    def find_scheduled(self, job_id: int) -> dict[str, Any] | None:
        with self._lock:
            wire = self._scheduled.get(job_id)
            return _copy_json(wire) if wire is not None else None

    def uploads(self, job_id: int) -> list[Upload]:
        with self._lock:
            return list(self._record(job_id).uploads)

    # -- changing ---------------------------------------------------------------------------

    def set_status(
        self, job_id: int, status: str, *, error_details: str | None = None
    ) -> dict[str, Any]:
        wire_status = wire_jobs.parse_status(status)
        with self._lock:
            record = self._record(job_id)
            record.wire["status"] = wire_status
            record.complete_at = None
            if error_details is not None:
                record.wire["errorDetails"] = error_details
            return _copy_json(record.wire)

    def begin_upload(self, job_id: int) -> UploadSlot | Refusal:
        with self._lock:
            record = self._record(job_id)
            if record.wire["status"] != wire_jobs.WAITING:
                return Refusal(
                    409,
                    f"job {job_id} is {record.wire['status']}, not {wire_jobs.WAITING}; "
                    "it takes no more data",
                )
            if record.uploading:
                return Refusal(409, f"job {job_id} is already receiving an upload")
            record.uploading = True
            index = len(record.uploads)
        folder = self._data_dir / "uploads" / str(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        return UploadSlot(
            job_id=job_id,
            index=index,
            part_path=folder / f"{index}.part",
            final_path=folder / f"{index}.csv",
        )

    def abandon_upload(self, slot: UploadSlot) -> None:
        slot.part_path.unlink(missing_ok=True)
        with self._lock:
            self._jobs[slot.job_id].uploading = False

    def finish_upload(
        self, slot: UploadSlot, *, size: int, records: int, sha256: str, content_type: str | None
    ) -> Upload | Refusal:
        """Keep a fully received body; refused if the job left WAITING meanwhile (cancelled)."""
        with self._lock:
            record = self._record(slot.job_id)
            record.uploading = False
            if record.wire["status"] != wire_jobs.WAITING:
                slot.part_path.unlink(missing_ok=True)
                return Refusal(
                    409,
                    f"job {slot.job_id} became {record.wire['status']} during the upload; "
                    "the data was discarded",
                )
            slot.part_path.replace(slot.final_path)
            upload = Upload(
                job_id=slot.job_id,
                index=slot.index,
                path=slot.final_path,
                bytes=size,
                records=records,
                sha256=sha256,
                content_type=content_type,
                time=self._wall_clock(),
            )
            record.uploads.append(upload)
            record.received_records = records
            record.wire["status"] = wire_jobs.RUNNING
            record.wire["started"] = self._now_ms()
            record.complete_at = self._clock() + self._complete_after
            return upload

    def fail(self, job_id: int, message: str) -> bool:
        with self._lock:
            record = self._record(job_id)
            if record.wire["status"] != wire_jobs.WAITING:
                return False
            record.wire["status"] = wire_jobs.ERROR
            record.wire["errorDetails"] = message
            record.wire["ended"] = self._now_ms()
            return True

    def complete(self, job_id: int) -> bool:
        with self._lock:
            record = self._record(job_id)
            if record.wire["status"] not in (wire_jobs.READY_FOR_DOWNLOAD, wire_jobs.RUNNING):
                return False
            for path in record.files.values():
                path.unlink(missing_ok=True)
            record.files.clear()
            if record.wire.get("segmentDataFiles") is not None:
                record.wire["segmentDataFiles"] = []
            record.wire["status"] = wire_jobs.COMPLETE
            record.wire["ended"] = self._now_ms()
            record.complete_at = None
            if record.received_records is not None:
                record.wire["sourceRecordCount"] = record.received_records
            return True

    def segment_file(self, job_id: int, name: str) -> Path | Refusal:
        with self._lock:
            record = self._record(job_id)
            path = record.files.get(name)
            if path is None:
                return Refusal(404, f"job {job_id} has no segment data file {name!r}")
            if record.wire["status"] != wire_jobs.READY_FOR_DOWNLOAD:
                return Refusal(
                    409,
                    f"job {job_id} is {record.wire['status']}, not {wire_jobs.READY_FOR_DOWNLOAD}",
                )
            return path

    def delete_segment_file(self, job_id: int, name: str) -> Refusal | None:
        with self._lock:
            record = self._record(job_id)
            path = record.files.pop(name, None)
            if path is None:
                return Refusal(404, f"job {job_id} has no segment data file {name!r}")
            path.unlink(missing_ok=True)
            listed = record.wire.get("segmentDataFiles")
            if isinstance(listed, list):
                record.wire["segmentDataFiles"] = [item for item in listed if item != name]
            return None

    def delete_scheduled_job(self, job_id: int) -> bool:
        with self._lock:
            return self._scheduled.pop(job_id, None) is not None

    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)
