"""``SimulatorControl``: drive a simulator running in another process through its /_sim/ API.

The methods mirror ``Simulator``'s, with the same return shapes, so a test can switch between an
in-process simulator and a subprocess one. Unknown jobs raise KeyError (as ``Simulator`` does),
refused input raises SimulatorInputError, and an unreachable simulator raises ExchangeUnavailable.
"""

from __future__ import annotations

from typing import Any

import requests

from pushagent.errors import ExchangeUnavailable, UnexpectedResponse
from pushagent.simulator.control import PREFIX
from pushagent.simulator.errors import SimulatorInputError
from pushagent.simulator.state import Upload


class SimulatorControl:
    def __init__(
        self, url: str, *, session: requests.Session | None = None, timeout: float = 30.0
    ) -> None:
        self.url = url.rstrip("/")
        self._session = session or requests.Session()
        # The simulator is on loopback: a proxy from the environment must not be used.
        self._session.trust_env = False
        self._timeout = timeout

    def _call(self, method: str, route: str, *, payload: Any = None) -> requests.Response:
        url = f"{self.url}/{PREFIX}/{route}"
        try:
            response = self._session.request(
                method, url, json=payload, timeout=self._timeout
            )
        except requests.RequestException as error:
            raise ExchangeUnavailable(
                f"the simulator did not answer ({error.__class__.__name__}); is it running?",
                method=method,
                url=url,
            ) from error
        if response.status_code < 400:
            return response
        try:
            message = str(response.json().get("message"))
        except ValueError:
            message = response.text[:200]
        if response.status_code == 404:
            raise KeyError(message)
        if response.status_code == 400:
            raise SimulatorInputError(f"the simulator refused {method} {url}: {message}")
        raise UnexpectedResponse(
            "the simulator's control API failed",
            method=method,
            url=url,
            status=response.status_code,
            server_message=message,
        )

    def _json(self, method: str, route: str, *, payload: Any = None) -> Any:
        return self._call(method, route, payload=payload).json()

    # -- jobs -------------------------------------------------------------------------------

    def add_job(self, **fields: Any) -> dict[str, Any]:
        return dict(self._json("POST", "jobs", payload=fields))

    def add_scheduled_job(self, **fields: Any) -> dict[str, Any]:
        return dict(self._json("POST", "scheduledjobs", payload=fields))

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self.job_state(job_id)["job"])

    def job_state(self, job_id: int) -> dict[str, Any]:
        return dict(self._json("GET", f"jobs/{job_id}"))

    def jobs(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "jobs"))

    def scheduled_jobs(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "scheduledjobs"))

    def set_status(
        self, job_id: int, status: str, *, error_details: str | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"status": status}
        if error_details is not None:
            payload["errorDetails"] = error_details
        return dict(self._json("POST", f"jobs/{job_id}/status", payload=payload))

    # -- uploads, requests, faults ----------------------------------------------------------

    def uploads(self, job_id: int) -> list[Upload]:
        return [Upload.from_json(item) for item in self._json("GET", f"uploads/{job_id}")]

    def upload_data(self, job_id: int, n: int) -> bytes:
        return self._call("GET", f"uploads/{job_id}/{n}/data").content

    def request_log(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "requests"))

    def clear_request_log(self) -> None:
        self._call("DELETE", "requests")

    def add_fault(
        self,
        *,
        method: str,
        path: str,
        count: int | None = 1,
        status: int | None = None,
        retry_after: float | None = None,
        delay: float | None = None,
        drop: bool = False,
        drop_after: bool = False,
        body: str | None = None,
        location: str | None = None,
    ) -> dict[str, Any]:
        spec = {
            "method": method,
            "path": path,
            "count": count,
            "status": status,
            "retry_after": retry_after,
            "delay": delay,
            "drop": drop,
            "drop_after": drop_after,
            "body": body,
            "location": location,
        }
        return dict(self._json("POST", "faults", payload=spec))

    def faults(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "faults"))

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def set_max_bytes_per_second(self, rate: int) -> None:
        """Request bodies are read no faster than ``rate`` bytes per second (0: no limit)."""
        self._json("PUT", "throttle", payload={"maxBytesPerSecond": rate})

    def max_bytes_per_second(self) -> int:
        return int(self._json("GET", "throttle")["maxBytesPerSecond"])

    def close(self) -> None:
        self._session.close()
