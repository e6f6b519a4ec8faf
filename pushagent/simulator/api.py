"""The Exchange jobs API as the reference describes it, answered from a JobStore.

Authorisation: ``Authorization: Bearer <key>``. The account key sees every job; an endpoint key
sees only jobs whose producerEndpointID or destinationEndpointID is its endpoint. Order of checks:
no/unknown key 401, unknown category 400, unknown job or file 404, another endpoint's job 403,
then the job's state (409 for an upload to a job that is not waiting or already receiving one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pushagent.simulator import jobs as wire_jobs
from pushagent.simulator.bodies import receive_to_file
from pushagent.simulator.errors import SimulatorInputError
from pushagent.simulator.messages import (
    Request,
    Response,
    error_response,
    json_response,
    query_flag,
    query_value,
    read_json,
)
from pushagent.simulator.state import JobStore, Refusal


@dataclass(frozen=True)
class _Access:
    endpoint: int | None  # None: the account key

    def allows(self, wire: Mapping[str, Any]) -> bool:
        return self.endpoint is None or self.endpoint in wire_jobs.endpoints_of(wire)


def _parse_int(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _refused(refusal: Refusal) -> Response:
    return error_response(refusal.status, refusal.message)


def _view(wire: Mapping[str, Any], query: Mapping[str, str]) -> dict[str, Any]:
    """A job as a list or get call shows it, per extraFields and includeProducerSegmentIDString."""
    shown = dict(wire)
    if not query_flag(query, "extraFields"):
        for name in wire_jobs.EXTRA_FIELDS:
            shown.pop(name, None)
    if not query_flag(query, "includeProducerSegmentIDString"):
        shown["producerSegmentIDString"] = None
    return shown


class ExchangeAPI:
    def __init__(
        self, store: JobStore, *, account_key: str, endpoint_keys: Mapping[str, int]
    ) -> None:
        self._store = store
        self._account_key = account_key
        self._endpoint_keys = dict(endpoint_keys)

    def handle(self, request: Request) -> Response:
        segments = request.segments
        if len(segments) < 3 or segments[0] != "v1" or segments[1] not in ("jobs", "scheduledjobs"):
            return self._no_route(request)
        access = self._authenticate(request)
        if isinstance(access, Response):
            return access
        method, rest = request.method, segments[2:]
        if segments[1] == "scheduledjobs" and len(rest) == 1:
            if method == "GET":
                return self._list_scheduled(request, access, rest[0])
            if method == "DELETE":
                return self._delete_scheduled(access, rest[0])
        if segments[1] == "jobs":
            if method == "GET" and len(rest) == 1:
                return self._list_jobs(request, access, rest[0])
            if method == "GET" and len(rest) == 2:
                return self._get_job(request, access, rest[0], rest[1])
            if method == "POST" and rest[1:] == ("data",):
                return self._upload(request, access, rest[0])
            if method == "PUT" and rest[1:] == ("status", "fail"):
                return self._fail(request, access, rest[0])
            if method == "PUT" and rest[1:] == ("status", "complete"):
                return self._complete(access, rest[0])
            if method in ("GET", "DELETE") and len(rest) == 3 and rest[1] == "segmentDataFiles":
                return self._segment_file(method, access, rest[0], rest[2])
        return self._no_route(request)

    @staticmethod
    def _no_route(request: Request) -> Response:
        return error_response(
            404, f"no API call {request.method} {request.path}; see the jobs API reference"
        )

    def _authenticate(self, request: Request) -> _Access | Response:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return error_response(
                401, "not authenticated: send the header Authorization: Bearer <key>"
            )
        key = key.strip()
        if key == self._account_key:
            return _Access(endpoint=None)
        if key in self._endpoint_keys:
            return _Access(endpoint=self._endpoint_keys[key])
        return error_response(401, "not authenticated: the key is unknown")

    # -- lookups ----------------------------------------------------------------------------

    def _job(self, access: _Access, raw_id: str) -> dict[str, Any] | Response:
        job_id = _parse_int(raw_id)
        wire = self._store.find(job_id) if job_id is not None else None
        if wire is None:
            return error_response(404, f"job {raw_id} is unknown")
        if not access.allows(wire):
            return error_response(403, f"not authorised: job {raw_id} belongs to another endpoint")
        return wire

    @staticmethod
    def _category(raw: str) -> Response | None:
        if raw in wire_jobs.CATEGORIES:
            return None
        return error_response(
            400, f"unknown job category {raw!r}; use one of {', '.join(wire_jobs.CATEGORIES)}"
        )

    @staticmethod
    def _endpoint_filter(request: Request, access: _Access) -> int | Response | None:
        raw = query_value(request.query, "endpointId")
        if raw is None:
            return None
        endpoint = _parse_int(raw.strip())
        if endpoint is None:
            return error_response(400, f"endpointId {raw!r} is not an endpoint ID")
        if access.endpoint is not None and endpoint != access.endpoint:
            return error_response(
                403, f"not authorised: this key may not list jobs of endpoint {endpoint}"
            )
        return endpoint

    # -- jobs -------------------------------------------------------------------------------

    def _list_jobs(self, request: Request, access: _Access, category: str) -> Response:
        refused = self._category(category)
        if refused:
            return refused
        endpoint = self._endpoint_filter(request, access)
        if isinstance(endpoint, Response):
            return endpoint
        status: str | None = None
        raw_status = query_value(request.query, "status")
        if raw_status is not None:
            try:
                status = wire_jobs.parse_status(raw_status)
            except SimulatorInputError as error:
                return error_response(400, str(error))
        found = [
            _view(wire, request.query)
            for wire in self._store.jobs()
            if wire["jobCategory"] == category
            and access.allows(wire)
            and (endpoint is None or endpoint in wire_jobs.endpoints_of(wire))
            and (status is None or wire["status"] == status)
        ]
        return json_response(200, found)

    def _get_job(self, request: Request, access: _Access, category: str, raw_id: str) -> Response:
        refused = self._category(category)
        if refused:
            return refused
        wire = self._job(access, raw_id)
        if isinstance(wire, Response):
            return wire
        if wire["jobCategory"] != category:
            return error_response(404, f"job {raw_id} is not a {category} job")
        return json_response(200, [_view(wire, request.query)])

    def _upload(self, request: Request, access: _Access, raw_id: str) -> Response:
        wire = self._job(access, raw_id)
        if isinstance(wire, Response):
            return wire
        job_id = int(wire["jobId"])
        empty = f"the upload to job {job_id} is empty; send the CSV as the request body"
        if not request.body.present:
            return error_response(400, empty)
        slot = self._store.begin_upload(job_id)
        if isinstance(slot, Refusal):
            return _refused(slot)
        try:
            received = receive_to_file(request.body, slot.part_path)
        except BaseException:
            self._store.abandon_upload(slot)
            raise
        if not received.size:
            self._store.abandon_upload(slot)
            return error_response(400, empty)
        upload = self._store.finish_upload(
            slot,
            size=received.size,
            records=received.records,
            sha256=received.sha256,
            content_type=request.headers.get("Content-Type"),
        )
        if isinstance(upload, Refusal):
            return _refused(upload)
        # The reference: a successful upload "returns the job ID".
        return Response(200, str(job_id).encode("ascii"))

    def _fail(self, request: Request, access: _Access, raw_id: str) -> Response:
        wire = self._job(access, raw_id)
        if isinstance(wire, Response):
            return wire
        try:
            payload = read_json(request)
        except ValueError:
            payload = None
        message = payload.get("errorMessage") if isinstance(payload, dict) else None
        if not isinstance(message, str) or not message.strip():
            return error_response(
                400, 'the body must be the JSON object {"errorMessage": "<why the job failed>"}'
            )
        return json_response(200, self._store.fail(int(wire["jobId"]), message))

    def _complete(self, access: _Access, raw_id: str) -> Response:
        wire = self._job(access, raw_id)
        if isinstance(wire, Response):
            return wire
        return json_response(200, self._store.complete(int(wire["jobId"])))

    def _segment_file(self, method: str, access: _Access, raw_id: str, name: str) -> Response:
        wire = self._job(access, raw_id)
        if isinstance(wire, Response):
            return wire
        job_id = int(wire["jobId"])
        if method == "DELETE":
            refusal = self._store.delete_segment_file(job_id, name)
            return _refused(refusal) if refusal else json_response(200, True)
        path = self._store.segment_file(job_id, name)
        if isinstance(path, Refusal):
            return _refused(path)
        return Response(200, content_type=wire.get("segmentDataFormat") or "text/csv", file=path)

    # -- scheduled jobs ---------------------------------------------------------------------

    def _list_scheduled(self, request: Request, access: _Access, category: str) -> Response:
        refused = self._category(category)
        if refused:
            return refused
        endpoint = self._endpoint_filter(request, access)
        if isinstance(endpoint, Response):
            return endpoint
        found = [
            wire
            for wire in self._store.scheduled_jobs()
            if wire["jobCategory"] == category
            and access.allows(wire)
            and (endpoint is None or endpoint in wire_jobs.endpoints_of(wire))
        ]
        return json_response(200, found)

    def _delete_scheduled(self, access: _Access, raw_id: str) -> Response:
        job_id = _parse_int(raw_id)
        wire = self._store.find_scheduled(job_id) if job_id is not None else None
        if job_id is None or wire is None:
            return error_response(404, f"scheduled job {raw_id} is unknown")
        if not access.allows(wire):
            return error_response(
                403, f"not authorised: scheduled job {raw_id} belongs to another endpoint"
            )
        self._store.delete_scheduled_job(job_id)
        return json_response(200, True)
