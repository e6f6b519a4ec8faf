"""``/healthz`` and ``/metrics`` of a running agent, on a small HTTP server in a daemon thread.

Bound to loopback by default: the metrics say nothing secret, but nothing outside the host needs
them unless the operator says so (``metrics.host``). Every answer is computed on request from the
agent itself, so a wedged agent loop still answers (with 503 once it stops reaching the Exchange).
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pushagent.errors import ConfigError
from pushagent.metrics import AgentMetrics

__all__ = ["TEXT", "HealthServer", "HealthSource"]

TEXT = "text/plain; charset=utf-8"


class HealthSource(Protocol):
    metrics: AgentMetrics

    def health(self) -> tuple[bool, str]: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], source: HealthSource) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.source = source


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            healthy, reason = self.server.source.health()
            self._answer(200 if healthy else 503, f"{reason}\n".encode(), TEXT)
        elif path == "/metrics":
            body = generate_latest(self.server.source.metrics.registry)
            self._answer(200, body, CONTENT_TYPE_LATEST)
        else:
            self._answer(404, b"not found: try /healthz or /metrics\n", TEXT)

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes every 15 s would drown the agent's own log lines.
        logger.trace("health server: {}", format % args)


class HealthServer:
    """Serves ``source`` until ``stop()``; ``port`` 0 picks a free port (see ``url``)."""

    def __init__(self, source: HealthSource, *, host: str, port: int) -> None:
        try:
            self._server = _Server((host, port), source)
        except OSError as error:
            raise ConfigError(
                f"cannot serve /healthz and /metrics on {host}:{port} ({error.strerror}); "
                "choose another metrics.host or metrics.port, or set metrics.enabled: false"
            ) from error
        bound_host, bound_port = self._server.socket.getsockname()[:2]
        self.port = int(bound_port)
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> HealthServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="health-server", daemon=True,
        )
        self._thread.start()
        logger.info("serving {}/healthz and {}/metrics", self.url, self.url)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
