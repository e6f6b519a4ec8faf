"""Injected faults: answer a status, delay, or drop the connection, for matching API requests.

A fault matches a request when its method is equal (or ``*``) and its ``path`` regex is found
(``re.search``) in the URL path as sent, still percent-encoded and without the query. The first
matching fault fires; it is removed once it has fired ``count`` times (``count=None``: until the
faults are cleared).

How each kind touches an upload:
- ``status``: the body is read and thrown away, then the status is answered; no state changes.
  A redirect (301, 302, 303, 307, 308) also sends ``Location``: ``location``, or by default a
  loopback address nothing listens on, so a client that follows it gets nowhere.
- ``delay``: the answer is held for ``delay`` seconds BEFORE the body is read, then the request
  is handled normally; the upload is in progress the whole time, so a test can kill the sender
  mid-upload. A delay may be combined with ``status`` or ``drop``.
- ``drop``: part of the body is read, then the socket is closed without an answer; nothing is
  stored and the job stays waiting.
- ``drop_after``: the request is handled normally (an upload IS stored, a status change IS
  made), then the socket is closed without the answer: the sender cannot tell it from ``drop``.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from pushagent.simulator.errors import SimulatorInputError

_FIELDS = (
    "method", "path", "count", "status", "retry_after", "delay", "drop", "drop_after", "body",
    "location",
)
REDIRECTS = (301, 302, 303, 307, 308)
# Port 9 (discard) on loopback: nothing listens there, so a followed redirect fails fast.
DEFAULT_LOCATION = "http://127.0.0.1:9/elsewhere"


class FaultKind(str, Enum):
    STATUS = "status"
    DELAY = "delay"
    DROP = "drop"
    DROP_AFTER = "drop_after"


@dataclass(frozen=True)
class Fault:
    id: int
    method: str
    path: str
    count: int | None = 1
    status: int | None = None
    retry_after: float | None = None
    delay: float | None = None
    drop: bool = False
    drop_after: bool = False
    body: str | None = None
    location: str | None = None
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method.upper()) and re.search(self.path, path) is not None

    @property
    def kind(self) -> FaultKind:
        if self.drop:
            return FaultKind.DROP
        if self.drop_after:
            return FaultKind.DROP_AFTER
        return FaultKind.STATUS if self.status is not None else FaultKind.DELAY

    @property
    def redirect_to(self) -> str | None:
        """The Location a redirect status sends; None for any other fault."""
        if self.status not in REDIRECTS:
            return None
        return self.location or DEFAULT_LOCATION

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "count": self.count,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay": self.delay,
            "drop": self.drop,
            "drop_after": self.drop_after,
            "body": self.body,
            "location": self.location,
            "fired": self.fired,
        }


def _number(value: object, *, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SimulatorInputError(f"fault {name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _flag(value: object, *, name: str) -> bool:
    if not isinstance(value, bool):
        raise SimulatorInputError(f"fault {name} must be true or false, not {value!r}")
    return value


def build_fault(spec: Mapping[str, Any], *, fault_id: int) -> Fault:
    """Validate a fault given as the control API's JSON (or add_fault's keywords)."""
    unknown = sorted(set(spec) - set(_FIELDS))
    if unknown:
        raise SimulatorInputError(f"unknown fault fields {unknown}; use {', '.join(_FIELDS)}")
    method = spec.get("method")
    path = spec.get("path")
    if not isinstance(method, str) or not method:
        raise SimulatorInputError("a fault needs a method (GET, POST, PUT, DELETE or *)")
    if not isinstance(path, str):
        raise SimulatorInputError("a fault needs a path regex (e.g. '/data$')")
    try:
        re.compile(path)
    except re.error as error:
        raise SimulatorInputError(f"fault path {path!r} is not a valid regex: {error}") from error
    count = spec.get("count", 1)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise SimulatorInputError(f"fault count must be a whole number >= 1 or null, not {count!r}")
    status = spec.get("status")
    if status is not None and (
        isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599
    ):
        raise SimulatorInputError(f"fault status must be an HTTP status 100-599, not {status!r}")
    drop = _flag(spec.get("drop", False), name="drop")
    drop_after = _flag(spec.get("drop_after", False), name="drop_after")
    delay = _number(spec.get("delay"), name="delay")
    if sum((drop, drop_after, status is not None)) > 1:
        raise SimulatorInputError(
            "a fault answers a status, drops the connection or drops it after handling the "
            "request (drop_after): one of them, not several"
        )
    if not drop and not drop_after and status is None and delay is None:
        raise SimulatorInputError("a fault needs status, delay, drop or drop_after")
    body = spec.get("body")
    if body is not None and not isinstance(body, str):
        raise SimulatorInputError("fault body must be a string")
    location = spec.get("location")
    if location is not None and (
        not isinstance(location, str) or status not in REDIRECTS or not location.isprintable()
    ):
        raise SimulatorInputError(
            f"fault location must be a string given with a redirect status "
            f"({', '.join(map(str, REDIRECTS))}), not {location!r} with status {status!r}"
        )
    return Fault(
        id=fault_id,
        method=method.upper(),
        path=path,
        count=count,
        status=status,
        retry_after=_number(spec.get("retry_after"), name="retry_after"),
        delay=delay,
        drop=drop,
        drop_after=drop_after,
        body=body,
        location=location,
    )


class FaultBook:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def add(self, spec: Mapping[str, Any]) -> Fault:
        with self._lock:
            fault = build_fault(spec, fault_id=next(self._ids))
            self._faults.append(fault)
            return fault

    def take(self, method: str, path: str) -> Fault | None:
        """The fault that fires for this request, counted as fired."""
        with self._lock:
            for position, fault in enumerate(self._faults):
                if not fault.matches(method, path):
                    continue
                fired = replace(fault, fired=fault.fired + 1)
                if fault.count is not None and fired.fired >= fault.count:
                    del self._faults[position]
                else:
                    self._faults[position] = fired
                return fired
            return None

    def active(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
