"""The control API under /_sim/: lets another process seed jobs, inspect uploads and inject faults.

No authentication (the handler only serves it to loopback clients) and its requests are not
written to the request log, so a test's own checks never show up in what it asserts on.

Routes (JSON in and out; errors are {"message": ...} with 400 or 404):
  GET    /_sim/jobs                      -> [job, ...]
  POST   /_sim/jobs            {job}     -> 201 job (defaults filled)
  GET    /_sim/jobs/{id}                 -> {"job", "uploads", "uploadInProgress",
                                             "segmentFilesPresent"}
  POST   /_sim/jobs/{id}/status {"status", "errorDetails"?} -> job
  GET    /_sim/scheduledjobs             -> [scheduled job, ...]
  POST   /_sim/scheduledjobs   {job}     -> 201 scheduled job
  GET    /_sim/requests                  -> [{method, path, query, headers, body_bytes, status,
                                              time, fault}]
  DELETE /_sim/requests                  -> 204
  GET    /_sim/uploads/{id}              -> [{job_id, index, path, bytes, records, sha256,
                                              content_type, time}]
  GET    /_sim/uploads/{id}/{n}/data     -> the raw bytes of upload n (0-based)
  GET    /_sim/faults                    -> [fault, ...]
  POST   /_sim/faults          {method, path, count, status, retry_after, delay, drop,
                                  drop_after, body, location}   (see faults.py)
                                         -> 201 fault
  DELETE /_sim/faults                    -> 204
  GET    /_sim/throttle                  -> {"maxBytesPerSecond": n}
  PUT    /_sim/throttle {"maxBytesPerSecond": n} -> the same: request bodies are read no faster
                                            (0: no limit)
"""

from __future__ import annotations

from typing import Any

from pushagent.simulator.bodies import ReceiveLimit
from pushagent.simulator.errors import SimulatorInputError
from pushagent.simulator.faults import FaultBook
from pushagent.simulator.messages import Request, Response, error_response, json_response, read_json
from pushagent.simulator.requestlog import RequestLog
from pushagent.simulator.state import JobStore

PREFIX = "_sim"


def _object(request: Request) -> dict[str, Any]:
    try:
        payload = read_json(request)
    except ValueError as error:
        raise SimulatorInputError(
            f"the body of {request.method} {request.path} is not JSON: {error}"
        ) from error
    if payload is None:
        return {}
    if not isinstance(payload, dict):
        raise SimulatorInputError(
            f"the body of {request.method} {request.path} must be a JSON object"
        )
    return payload


def _job_id(raw: str) -> int:
    if not raw.isdigit():
        raise KeyError(f"the simulator has no job {raw!r}")
    return int(raw)


class ControlAPI:
    def __init__(
        self, store: JobStore, faults: FaultBook, log: RequestLog, *,
        receive_limit: ReceiveLimit | None = None,
    ) -> None:
        self._store = store
        self._faults = faults
        self._log = log
        self._receive_limit = receive_limit or ReceiveLimit()

    def handle(self, request: Request) -> Response:
        try:
            return self._route(request)
        except SimulatorInputError as error:
            return error_response(400, str(error))
        except KeyError as error:
            return error_response(404, str(error.args[0]) if error.args else "not found")
        except IndexError as error:
            return error_response(404, str(error))

    def _route(self, request: Request) -> Response:
        method, rest = request.method, request.segments[1:]
        if rest == ("jobs",):
            if method == "GET":
                return json_response(200, self._store.jobs())
            if method == "POST":
                return json_response(201, self._store.add_job(_object(request)))
        if len(rest) == 2 and rest[0] == "jobs" and method == "GET":
            return json_response(200, self._store.job_state(_job_id(rest[1])))
        if len(rest) == 3 and rest[0] == "jobs" and rest[2] == "status" and method == "POST":
            return self._set_status(request, _job_id(rest[1]))
        if rest == ("scheduledjobs",):
            if method == "GET":
                return json_response(200, self._store.scheduled_jobs())
            if method == "POST":
                return json_response(201, self._store.add_scheduled_job(_object(request)))
        if rest == ("requests",):
            if method == "GET":
                return json_response(200, self._log.entries())
            if method == "DELETE":
                self._log.clear()
                return Response(204)
        if len(rest) == 2 and rest[0] == "uploads" and method == "GET":
            uploads = self._store.uploads(_job_id(rest[1]))
            return json_response(200, [upload.to_json() for upload in uploads])
        if len(rest) == 4 and rest[0] == "uploads" and rest[3] == "data" and method == "GET":
            return self._upload_data(_job_id(rest[1]), rest[2])
        if rest == ("faults",):
            if method == "GET":
                return json_response(200, [fault.to_json() for fault in self._faults.active()])
            if method == "POST":
                return json_response(201, self._faults.add(_object(request)).to_json())
            if method == "DELETE":
                self._faults.clear()
                return Response(204)
        if rest == ("throttle",):
            if method == "PUT":
                self._set_throttle(_object(request))
            if method in ("GET", "PUT"):
                return json_response(200, {"maxBytesPerSecond": self._receive_limit.rate})
        return error_response(404, f"no control call {method} {request.path}")

    def _set_throttle(self, body: dict[str, Any]) -> None:
        rate = body.get("maxBytesPerSecond")
        if not isinstance(rate, int) or isinstance(rate, bool) or rate < 0:
            raise SimulatorInputError(
                'the body must be {"maxBytesPerSecond": <0 (no limit) or more>}'
            )
        self._receive_limit.set(rate)

    def _set_status(self, request: Request, job_id: int) -> Response:
        body = _object(request)
        details = body.get("errorDetails")
        if details is not None and not isinstance(details, str):
            raise SimulatorInputError("errorDetails must be a string")
        status = body.get("status")
        if not isinstance(status, str):
            raise SimulatorInputError('the body must be {"status": "<new status>"}')
        return json_response(
            200, self._store.set_status(job_id, status, error_details=details)
        )

    def _upload_data(self, job_id: int, raw_index: str) -> Response:
        uploads = self._store.uploads(job_id)
        index = int(raw_index) if raw_index.isdigit() else -1
        if not 0 <= index < len(uploads):
            raise IndexError(f"job {job_id} has no upload {raw_index} (it has {len(uploads)})")
        return Response(200, content_type="application/octet-stream", file=uploads[index].path)
