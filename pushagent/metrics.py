"""Prometheus metrics of one agent, in a registry of its own (tests can run several agents)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["AgentMetrics"]

# One transfer of one file: from a small file on loopback to a large one on a thin link.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


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
            buckets=DURATION_BUCKETS,
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
        self.job_uploads = Counter(
            "pushagent_job_uploads",
            "Uploads accepted by the Exchange, one per job, by job category",
            ["category"],
            registry=r,
        )
        self.jobs_failed = Counter(
            "pushagent_jobs_failed",
            "Jobs the agent failed with a reason, by job category",
            ["category"],
            registry=r,
        )
        self.jobs_waiting = Gauge(
            "pushagent_jobs_waiting",
            "Jobs waiting for data at the last list call, by job category",
            ["category"],
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


class PullMetrics:
    """The pull side's metrics, in the agent's registry (one /metrics for both sides)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.jobs_downloaded = Counter(
            "pushagent_pull_jobs_downloaded", "Pull jobs whose files are all on disk", registry=r
        )
        self.files_downloaded = Counter(
            "pushagent_pull_files_downloaded", "Segment data files downloaded", registry=r
        )
        self.bytes_downloaded = Counter(
            "pushagent_pull_bytes_downloaded", "Bytes of segment data downloaded", registry=r
        )
        self.download_seconds = Histogram(
            "pushagent_pull_download_duration_seconds",
            "Duration of one file's download, fsync included (validation and hashing not)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "pushagent_pull_failures",
            "Failed pull steps, by step (list, download, local, delete, complete)",
            ["step"],
            registry=r,
        )
        self.jobs_pending = Gauge(
            "pushagent_pull_jobs_pending", "Pull jobs taken on and not yet done", registry=r
        )
        self.last_successful_poll = Gauge(
            "pushagent_pull_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful list of jobs ready for download",
            registry=r,
        )
