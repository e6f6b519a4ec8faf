"""Client for the Acoustic Exchange jobs API (list, upload, fail, complete, download, schedule)."""

from __future__ import annotations

from pushagent.exchange.client import ExchangeClient, parse_retry_after
from pushagent.exchange.models import (
    BodyGate,
    ExpectedBody,
    Job,
    JobCategory,
    JobStatus,
    ScheduledJob,
    UploadResult,
)
from pushagent.exchange.retry import RetryPolicy

__all__ = [
    "BodyGate",
    "ExchangeClient",
    "ExpectedBody",
    "Job",
    "JobCategory",
    "JobStatus",
    "RetryPolicy",
    "ScheduledJob",
    "UploadResult",
    "parse_retry_after",
]
