"""Webhook notifications: a file failed, a job was failed, the Exchange lost and found again.

The agent loop only calls the cheap methods here (they queue a message, or note a time); one
thread of its own posts each message, retried with backoff, so a slow or dead webhook never holds
the loop. Every text passes through the log masking first (the key, the webhook's own URL and
header values are registered secrets), so no message carries a secret. ``notify.format`` shapes
the body for a plain JSON receiver, a Slack incoming webhook or a Teams connector.
"""

from __future__ import annotations

import contextlib
import datetime
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from loguru import logger
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from pushagent import USER_AGENT, logs
from pushagent.config import NotifySettings

__all__ = ["Notice", "Notifier", "body_for"]

QUEUE_LIMIT = 1000
TIMEOUT = (5.0, 15.0)
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Notice:
    event: str  # file_failed, job_failed, exchange_down, exchange_recovered
    text: str
    fields: Mapping[str, Any] = field(default_factory=dict)


class _PostFailed(Exception):
    """A post worth trying again (no answer, 429 or 5xx)."""


COLOURS = {"exchange_recovered": "2EB67D"}  # Teams card colour; everything else is a failure


def body_for(notice: Notice, *, fmt: str, host: str, when: float) -> dict[str, Any]:
    """The JSON body of one message in ``fmt`` (json, slack or teams)."""
    if fmt == "slack":
        return {"text": notice.text}
    if fmt == "teams":
        return {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": notice.text[:150],
            "themeColor": COLOURS.get(notice.event, "D70000"),
            "title": f"pushagent on {host}: {notice.event.replace('_', ' ')}",
            "text": notice.text,
        }
    stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return {
        "source": "pushagent", "event": notice.event, "host": host,
        "time": stamp.isoformat(timespec="seconds"), "text": notice.text, **notice.fields,
    }


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return logs.mask(value)
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


class Notifier:
    """Does nothing (no thread, no call) when ``settings.webhook_url`` is None."""

    def __init__(
        self,
        settings: NotifySettings,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        host: str | None = None,
    ) -> None:
        self._settings = settings
        self.enabled = settings.webhook_url is not None
        self._session = session if session is not None else (
            requests.Session() if self.enabled else None)
        self._clock = clock
        self._wall = wall
        self._host = host or socket.gethostname()
        self._queue: queue.Queue[Notice | None] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing_since: float | None = None
        self._down_sent = False
        logs.register_secret(settings.webhook_url)
        for value in settings.headers.values():
            logs.register_secret(value)

    # --- called from the agent loop: never blocks -------------------------------------------

    def file_failed(self, file: str, reason: str, *, failed_jobs: list[str]) -> None:
        jobs = f"; job(s) failed: {', '.join(failed_jobs)}" if failed_jobs else ""
        self._send(Notice("file_failed", f"{file} failed: {reason}{jobs}",
                          {"file": file, "reason": reason, "failed_jobs": failed_jobs}))

    def job_failed(self, job_id: str, *, file: str, reason: str) -> None:
        self._send(Notice("job_failed", f"job {job_id} was failed for {file}: {reason}",
                          {"job_id": job_id, "file": file, "reason": reason}))

    def exchange_failing(self, what: str) -> None:
        """A list call failed (unreachable, or the key refused). Past ``after_seconds`` of
        failures in a row, one message; the next success sends the recovery."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        down_for = now - self._failing_since
        if not self._down_sent and down_for >= self._settings.after_seconds:
            self._down_sent = True
            self._send(Notice(
                "exchange_down",
                f"the Exchange has not been reached for {down_for:.0f} s: {what}",
                {"down_seconds": round(down_for, 1), "error": what},
            ))

    def exchange_ok(self) -> None:
        if self._down_sent and self._failing_since is not None:
            down_for = self._clock() - self._failing_since
            self._send(Notice("exchange_recovered",
                              f"the Exchange is reached again, after {down_for:.0f} s",
                              {"down_seconds": round(down_for, 1)}))
        self._failing_since = None
        self._down_sent = False

    # --- the posting thread ---------------------------------------------------------------------

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="notify", daemon=True)
            self._thread.start()

    def stop(self, *, grace: float = STOP_GRACE_SECONDS) -> None:
        """Post what is queued for up to ``grace`` seconds, then stop retrying and return."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):  # full: the worker is told by _stopping instead
            self._queue.put_nowait(None)
        self._thread.join(grace)
        self._stopping.set()  # cuts a backoff short; what is left is dropped
        self._thread.join(grace)
        self._thread = None

    def _send(self, notice: Notice) -> None:
        if not self.enabled:
            return
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            logger.warning("notification not sent (over {} waiting): {}", QUEUE_LIMIT,
                           notice.text)

    def _work(self) -> None:
        while True:
            notice = self._queue.get()
            if notice is None:
                return
            try:
                self._post_with_retries(notice)
            except Exception as error:  # a notification must never take the agent down
                logger.error("notification dropped ({}): {}", error, notice.text)

    def _post_with_retries(self, notice: Notice) -> None:
        retrying = Retrying(
            stop=stop_after_attempt(self._settings.max_attempts),
            wait=wait_exponential(multiplier=0.5, max=60),
            retry=retry_if_exception_type(_PostFailed),
            before_sleep=_log_retry,
            sleep=self._backoff_sleep,
            reraise=True,
        )
        retrying(self._post, notice)

    def _backoff_sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # a stop cuts the wait short

    def _post(self, notice: Notice) -> None:
        url = self._settings.webhook_url
        assert url is not None and self._session is not None  # only posted when enabled
        masked = Notice(notice.event, logs.mask(notice.text),
                        {key: _masked(value) for key, value in notice.fields.items()})
        body = body_for(masked, fmt=self._settings.format, host=self._host, when=self._wall())
        headers = {"User-Agent": USER_AGENT, **self._settings.headers}
        try:
            response = self._session.post(url, json=body, headers=headers, timeout=TIMEOUT)
        except requests.RequestException as error:
            raise _PostFailed(f"no answer from the webhook ({type(error).__name__})") from error
        if response.status_code == 429 or response.status_code >= 500:
            raise _PostFailed(f"the webhook answered HTTP {response.status_code}")
        if response.status_code >= 300:
            raise RuntimeError(f"the webhook refused it with HTTP {response.status_code}; "
                               "check notify.webhook_url and notify.headers")
        logger.debug("notification sent: {}", masked.event)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("notification not sent ({}); trying again in {:.1f} s", error, wait)
