"""The HTTP side of the simulator: a threaded HTTP/1.1 server and the ``Simulator`` that owns it.

Keep-alive stays in step because every request's body is fully read (or the connection closed)
before the answer is written: the client reuses connections, and an unread body would be taken
for the next request line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from loguru import logger

from pushagent import __version__
from pushagent.simulator import control
from pushagent.simulator.api import ExchangeAPI
from pushagent.simulator.bodies import CHUNK_SIZE, ReceiveLimit, RequestBody
from pushagent.simulator.control import ControlAPI
from pushagent.simulator.faults import Fault, FaultBook
from pushagent.simulator.messages import Request, Response, error_response
from pushagent.simulator.requestlog import LoggedRequest, RequestLog, masked_headers
from pushagent.simulator.state import JobStore, Upload

DEFAULT_ACCOUNT_KEY = "sim-account-key"
# A drop fault reads this much of an upload before cutting the connection.
DROP_READ_LIMIT = 64 * 1024
# Idle keep-alive connections (and stalled bodies) are closed after this many seconds.
SOCKET_TIMEOUT = 120.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that went away mid-request (killed, timed out) is what tests do on purpose:
        # not worth a traceback on stderr. Anything else still gets one.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def __init__(
        self,
        address: tuple[str, int],
        *,
        api: ExchangeAPI,
        control_api: ControlAPI,
        faults: FaultBook,
        log: RequestLog,
        sleep: Callable[[float], None],
        log_level: str,
        receive_limit: ReceiveLimit,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.api = api
        self.control_api = control_api
        self.faults = faults
        self.log = log
        self.sleep = sleep
        self.log_level = log_level
        self.receive_limit = receive_limit
        self._connections: set[Any] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections so stop() leaves none."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"pushagent-simulator/{__version__}"
    timeout = SOCKET_TIMEOUT
    # Headers and body go out in separate writes; with Nagle on, each answer would wait ~40 ms
    # for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Answered requests are logged once, by ``_record``."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("simulator: {}", format % args)

    # -- one request ------------------------------------------------------------------------

    def _handle(self) -> None:
        started = time.time()
        parts = urlsplit(self.path)
        try:
            body = RequestBody(self.rfile, self.headers, limit=self.server.receive_limit)
        except ValueError as error:
            self.close_connection = True
            self._send(error_response(400, str(error)))
            return
        raw_segments = parts.path.split("/")[1:]
        if raw_segments and raw_segments[-1] == "":
            raw_segments.pop()
        request = Request(
            method=self.command,
            path=parts.path,
            segments=tuple(unquote(segment) for segment in raw_segments),
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=self.headers,
            body=body,
        )
        if request.segments[:1] == (control.PREFIX,):
            self._handle_control(request)
        else:
            self._handle_api(request, started)

    def _handle_control(self, request: Request) -> None:
        try:
            if not ipaddress.ip_address(self.client_address[0]).is_loopback:
                response = error_response(403, "the control API answers loopback clients only")
            else:
                response = self.server.control_api.handle(request)
            if not self._finish_body(request.body):
                return
        except OSError:
            self.close_connection = True
            return
        except Exception:
            logger.exception("simulator: control call {} {} failed", request.method, request.path)
            self.close_connection = True
            response = error_response(500, "the simulator failed; see its log")
        self._send(response)

    def _handle_api(self, request: Request, started: float) -> None:
        fault = self.server.faults.take(request.method, request.path)
        response: Response | None = None
        try:
            if fault is not None and fault.delay:
                self.server.sleep(fault.delay)
            if fault is not None and fault.drop:
                request.body.read_some(DROP_READ_LIMIT)
                self.close_connection = True
            elif fault is not None and fault.status is not None:
                response = self._fault_response(fault)
            else:
                response = self.server.api.handle(request)
            if response is not None and not self._finish_body(request.body):
                response = None
            if fault is not None and fault.drop_after and response is not None:
                # Handled (and any state change made): only the answer is lost.
                logger.log(
                    self.server.log_level, "simulator: {} {} handled ({}), answer dropped",
                    request.method, request.path, response.status,
                )
                response = None
                self.close_connection = True
        except OSError as error:
            # The sender died or the socket was cut mid-body: nothing was stored, nothing to answer.
            logger.log(
                self.server.log_level, "simulator: {} {} broke off: {}",
                request.method, request.path, error,
            )
            self.close_connection = True
        except Exception:
            logger.exception("simulator: {} {} failed", request.method, request.path)
            self.close_connection = True
            response = error_response(500, "the simulator failed; see its log")
        # Logged before answering, so a client that has its answer finds the request in the log.
        self._record(request, response.status if response else None, started, fault)
        if response is not None:
            self._send(response)

    def _finish_body(self, body: RequestBody) -> bool:
        """Read what is left of the body so keep-alive stays in step; False if that broke."""
        try:
            body.drain()
        except OSError:
            self.close_connection = True
            return False
        return True

    @staticmethod
    def _fault_response(fault: Fault) -> Response:
        headers: tuple[tuple[str, str], ...] = ()
        if fault.retry_after is not None:
            headers = (("Retry-After", f"{fault.retry_after:g}"),)
        if fault.redirect_to is not None:
            headers = (*headers, ("Location", fault.redirect_to))
        if fault.body is not None:
            return Response(
                fault.status or 500, fault.body.encode("utf-8"), "text/plain", headers=headers
            )
        message = error_response(fault.status or 500, f"injected fault: HTTP {fault.status}")
        return Response(message.status, message.body, headers=headers)

    def _record(
        self, request: Request, status: int | None, started: float, fault: Fault | None
    ) -> None:
        self.server.log.append(
            LoggedRequest(
                method=request.method,
                path=request.path,
                query=request.query,
                headers=masked_headers(request.headers),
                body_bytes=request.body.received,
                status=status,
                time=started,
                fault=fault.kind.value if fault else None,
            )
        )
        logger.log(
            self.server.log_level,
            "simulator: {} {} -> {}{}",
            request.method,
            request.path,
            status if status is not None else "connection closed",
            f" (fault: {fault.kind.value})" if fault else "",
        )

    # -- answers ----------------------------------------------------------------------------

    def _send(self, response: Response) -> None:
        try:
            if response.file is not None:
                self._send_file(response)
                return
            self._send_head(response, len(response.body))
            if response.body:
                self.wfile.write(response.body)
        except OSError:
            self.close_connection = True

    def _send_file(self, response: Response) -> None:
        assert response.file is not None
        try:
            source = response.file.open("rb")
        except FileNotFoundError:
            # Deleted between the lookup and now (a concurrent DELETE or complete).
            self._send(error_response(404, "the file was deleted"))
            return
        with source:
            size = source.seek(0, 2)
            source.seek(0)
            self._send_head(response, size)
            shutil.copyfileobj(source, self.wfile, CHUNK_SIZE)

    def _send_head(self, response: Response, length: int) -> None:
        self.send_response(response.status)
        if response.status != 204:
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()


class Simulator:
    """A local Exchange: the jobs API on a real socket, plus the /_sim/ control API.

    ``data_dir`` holds uploads and segment files; by default a temporary directory that
    ``stop()`` removes. ``sleep`` serves delay faults (tests pass one they control).
    ``request_log_level`` is the loguru level of the one line logged per API request.
    ``max_bytes_per_second`` reads request bodies, all together, no faster (0: no limit), so a
    benchmark can stand in for a real link; ``set_max_bytes_per_second`` changes it.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        account_key: str = DEFAULT_ACCOUNT_KEY,
        endpoint_keys: Mapping[str, int] | None = None,
        data_dir: Path | None = None,
        complete_after: float = 0.5,
        jobs: Iterable[Mapping[str, Any]] = (),
        scheduled_jobs: Iterable[Mapping[str, Any]] = (),
        sleep: Callable[[float], None] = time.sleep,
        request_log_level: str = "DEBUG",
        max_bytes_per_second: int = 0,
    ) -> None:
        self._owned_dir: Path | None = None
        if data_dir is None:
            data_dir = self._owned_dir = Path(tempfile.mkdtemp(prefix="exchange-sim-"))
        self.data_dir = data_dir
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._store = JobStore(data_dir=self.data_dir, complete_after=complete_after)
            self._faults = FaultBook()
            self._log = RequestLog()
            self._receive_limit = ReceiveLimit(max_bytes_per_second)
            self._store.add_jobs(jobs)
            for scheduled in scheduled_jobs:
                self._store.add_scheduled_job(scheduled)
            self._server = _Server(
                (host, port),
                api=ExchangeAPI(
                    self._store, account_key=account_key, endpoint_keys=endpoint_keys or {}
                ),
                control_api=ControlAPI(
                    self._store, self._faults, self._log, receive_limit=self._receive_limit
                ),
                faults=self._faults,
                log=self._log,
                sleep=sleep,
                log_level=request_log_level,
                receive_limit=self._receive_limit,
            )
        except BaseException:
            self._remove_owned_dir()
            raise
        self._thread: threading.Thread | None = None
        bound_host, bound_port = self._server.socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"

    @property
    def control_url(self) -> str:
        return f"{self.url}/{control.PREFIX}"

    def start(self) -> Simulator:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="exchange-simulator",
                daemon=True,
            )
            self._thread.start()
            logger.debug("simulator: listening on {}", self.url)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._server.close_connections()
        self._remove_owned_dir()

    def _remove_owned_dir(self) -> None:
        if self._owned_dir is not None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- jobs -------------------------------------------------------------------------------

    def add_job(self, **fields: Any) -> dict[str, Any]:
        """Create a job from camelCase wire fields; defaults fill the rest. Returns its JSON."""
        return self._store.add_job(fields)

    def add_scheduled_job(self, **fields: Any) -> dict[str, Any]:
        return self._store.add_scheduled_job(fields)

    def job(self, job_id: int) -> dict[str, Any]:
        """The job's full wire JSON (every field, whatever the list call's flags would hide)."""
        return self._store.job(job_id)

    def job_state(self, job_id: int) -> dict[str, Any]:
        """{"job": ..., "uploads": n, "uploadInProgress": bool, "segmentFilesPresent": [...]}"""
        return self._store.job_state(job_id)

    def jobs(self) -> list[dict[str, Any]]:
        return self._store.jobs()

    def scheduled_jobs(self) -> list[dict[str, Any]]:
        return self._store.scheduled_jobs()

    def set_status(
        self, job_id: int, status: str, *, error_details: str | None = None
    ) -> dict[str, Any]:
        return self._store.set_status(job_id, status, error_details=error_details)

    # -- uploads, requests, faults ----------------------------------------------------------

    @property
    def max_bytes_per_second(self) -> int:
        return self._receive_limit.rate

    def set_max_bytes_per_second(self, rate: int) -> None:
        self._receive_limit.set(rate)

    def uploads(self, job_id: int) -> list[Upload]:
        return self._store.uploads(job_id)

    def upload_data(self, job_id: int, n: int) -> bytes:
        """The raw body of the job's upload ``n`` (0-based)."""
        return self._store.uploads(job_id)[n].path.read_bytes()

    def request_log(self) -> list[dict[str, Any]]:
        return self._log.entries()

    def clear_request_log(self) -> None:
        self._log.clear()

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
        return self._faults.add(
            {
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
        ).to_json()

    def faults(self) -> list[dict[str, Any]]:
        return [fault.to_json() for fault in self._faults.active()]

    def clear_faults(self) -> None:
        self._faults.clear()
