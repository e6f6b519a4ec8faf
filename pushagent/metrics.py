"""Prometheus metrics of one agent, in a registry of its own (tests can run several agents)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["AgentMetrics"]


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.files_seen = Counter("pushagent_files_seen", "Files that became ready", registry=r)
        self.files_uploaded = Counter(
            "pushagent_files_uploaded", "Files uploaded to every job waiting for them", registry=r
        )
        self.files_failed = Counter("pushagent_files_failed", "Files moved to failed/", registry=r)
        self.bytes_uploaded = Counter(
            "pushagent_bytes_uploaded", "Bytes accepted by the Exchange", registry=r
        )
        self.upload_seconds = Histogram(
            "pushagent_upload_duration_seconds",
            "Duration of one upload to one job",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=r,
        )
        self.pending_files = Gauge(
            "pushagent_pending_files", "Files seen but not yet done or failed", registry=r
        )
        self.last_successful_poll = Gauge(
            "pushagent_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful list of waiting jobs",
            registry=r,
        )
        self.api_errors = Counter(
            "pushagent_api_errors",
            "Failed calls to the Exchange, by HTTP status ('none' when unreachable)",
            ["status"],
            registry=r,
        )

    def api_error(self, status: int | None) -> None:
        self.api_errors.labels(status="none" if status is None else str(status)).inc()
