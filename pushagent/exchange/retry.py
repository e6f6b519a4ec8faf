"""When and how long to retry a call to the Exchange: one tenacity.Retrying built from small parts.

Only errors that say so (``.retryable``) are retried, and of the 5xx family only the gateway-ish
500/502/503/504. The wait is exponential with jitter, capped by ``max_backoff``, unless the server
sent Retry-After, which is honoured as given. The time budget counts the time already spent plus
the coming sleep, so a Retry-After longer than what is left ends the retries at once and the caller
gets the RateLimited (with its ``retry_after``) to schedule the work itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import tenacity
from loguru import logger
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from pushagent.errors import ExchangeError, ServerError

RETRYABLE_SERVER_STATUSES = frozenset({500, 502, 503, 504})

# initial_backoff * 2**64 is beyond any sane max_backoff; larger exponents only risk OverflowError.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is retried; ``max_attempts=1`` turns retries off."""

    max_attempts: int = 5
    max_total_seconds: float = 60.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("max_total_seconds", "initial_backoff", "max_backoff", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetryPolicy.{name} must be >= 0, got {getattr(self, name)}")


def is_retryable(error: BaseException) -> bool:
    """True for transient Exchange errors: unreachable, 429, and 500/502/503/504."""
    if not isinstance(error, ExchangeError) or not error.retryable:
        return False
    if isinstance(error, ServerError):
        return error.status in RETRYABLE_SERVER_STATUSES
    return True


class wait_backoff_or_retry_after(wait_base):
    """Retry-After when the error carries one, else min(max, initial * 2**(n-1) + U(0, jitter))."""

    def __init__(
        self, policy: RetryPolicy, *, uniform: Callable[[float, float], float] = random.uniform
    ) -> None:
        self._policy = policy
        self._uniform = uniform

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return max(0.0, float(retry_after))
        exponent = min(retry_state.attempt_number - 1, _MAX_EXPONENT)
        delay = self._policy.initial_backoff * 2**exponent + self._uniform(0, self._policy.jitter)
        return min(self._policy.max_backoff, delay)


class stop_when_budget_spent(stop_base):
    """Stop when the time spent plus the coming sleep reaches the budget.

    Time spent is the larger of the wall clock and the sum of the sleeps: with an injected sleep
    that returns early (tests, or a shutdown-aware sleep) the sleeps still consume the budget.
    """

    def __init__(self, max_total_seconds: float) -> None:
        self._budget = max_total_seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        spent = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
        return spent + retry_state.upcoming_sleep >= self._budget


def _failure_reason(error: BaseException | None) -> str:
    if isinstance(error, ExchangeError) and error.status is not None:
        return f"HTTP {error.status}"
    cause = error.__cause__ if error is not None else None
    return type(cause or error).__name__


def log_before_sleep(max_attempts: int) -> Callable[[tenacity.RetryCallState], None]:
    """A before_sleep hook for loguru (tenacity's before_sleep_log expects stdlib logging)."""

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        method = getattr(error, "method", "?")
        url = getattr(error, "url", "?")
        logger.warning(
            "{} {} failed ({}), attempt {} of {}, retrying in {:.1f} s",
            method,
            url,
            _failure_reason(error),
            retry_state.attempt_number,
            max_attempts,
            retry_state.upcoming_sleep,
        )

    return before_sleep


def build_retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None],
    uniform: Callable[[float, float], float] = random.uniform,
) -> tenacity.Retrying:
    """The one Retrying of a client; ``.copy(stop=tenacity.stop_after_attempt(1))`` = no retry."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts)
        | stop_when_budget_spent(policy.max_total_seconds),
        wait=wait_backoff_or_retry_after(policy, uniform=uniform),
        retry=tenacity.retry_if_exception(is_retryable),
        sleep=sleep,
        before_sleep=log_before_sleep(policy.max_attempts),
        reraise=True,
    )
