"""The log of Exchange API requests the simulator answered, with the key masked."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any

# Bounded so a long demo cannot grow the process without limit; tests never come near it.
MAX_ENTRIES = 10_000


def masked_headers(headers: Message) -> dict[str, str]:
    masked: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme = value.split(" ", 1)[0] if " " in value else ""
            value = f"{scheme} ****" if scheme else "****"
        masked[name] = value
    return masked


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body_bytes: int
    status: int | None  # None: the connection was dropped or broke before an answer
    time: float
    fault: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": dict(self.query),
            "headers": dict(self.headers),
            "body_bytes": self.body_bytes,
            "status": self.status,
            "time": self.time,
            "fault": self.fault,
        }


class RequestLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[LoggedRequest] = deque(maxlen=MAX_ENTRIES)

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [entry.to_json() for entry in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
