"""The request and response values passed between the HTTP handler and the two APIs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from pushagent.simulator.bodies import RequestBody


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent: still percent-encoded, no query
    segments: tuple[str, ...]  # the path split on "/", each segment percent-decoded on its own
    query: Mapping[str, str]
    headers: Message
    body: RequestBody


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    file: Path | None = None  # streamed from disk instead of ``body``


def json_response(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"))


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"message": message})


def read_json(request: Request, *, limit: int = 1024 * 1024) -> Any:
    """The request's JSON body; ``None`` when there is none. Raises ValueError when malformed."""
    raw = request.body.read_all(limit=limit)
    if raw is None:
        raise ValueError(f"the body is larger than {limit} bytes")
    if not raw.strip():
        return None
    return json.loads(raw)


def query_flag(query: Mapping[str, str], name: str) -> bool:
    """A boolean query parameter: present and not false-like (so ``?flag`` alone means true)."""
    value = query_value(query, name)
    return value is not None and value.strip().lower() not in ("false", "0", "no", "off")


def query_value(query: Mapping[str, str], name: str) -> str | None:
    """A query parameter by case-insensitive name (endpointId and endpointID are both used)."""
    lowered = name.lower()
    for key, value in query.items():
        if key.lower() == lowered:
            return value
    return None
