"""When and how long to retry a call to the Exchange: one tenacity.Retrying built from small parts,
and ``backoff``, the one doubling delay every retry schedule of pushagent uses.

What is retried follows the one table in outcome.py: an error whose outcome is RETRY (unreachable
before any body byte left, every 5xx, 408, 425, 429), except redirects. The wait is exponential
with jitter, capped by ``max_backoff``, unless the server sent Retry-After, which is honoured as
given. The time budget counts the time already spent plus the coming sleep, so a Retry-After
longer than what is left ends the retries at once and the caller gets the RateLimited (with its
``retry_after``) to schedule the work itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import tenacity
from loguru import logger
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from pushagent.errors import ExchangeError
from pushagent.exchange.outcome import Outcome, classify, is_redirect

# initial * 2**64 is beyond any sane cap; larger exponents only risk OverflowError.
_MAX_EXPONENT = 64


def backoff(streak: int, *, initial: float, cap: float) -> float:
    """``initial`` doubled per failure in a row after the first, at most ``cap``: 1 -> initial,
    2 -> 2 * initial... A streak below 1 counts as 1; any streak, however long, is safe."""
    exponent = min(max(streak, 1) - 1, _MAX_EXPONENT)
    return float(min(cap, initial * 2**exponent))


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
    """Whether the client itself tries the call again: the table says RETRY, and it is not a
    redirect. A redirect is "try later" for the caller (someone must fix the base URL or the
    server), but it does not fix itself within the seconds of in-client retries."""
    if not isinstance(error, ExchangeError) or is_redirect(error):
        return False
    return classify(error) is Outcome.RETRY


class wait_backoff_or_retry_after(wait_base):
    """Retry-After when the error carries one, else min(max, backoff(n) + U(0, jitter))."""

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
        policy = self._policy
        delay = backoff(
            retry_state.attempt_number, initial=policy.initial_backoff, cap=policy.max_backoff
        )
        return min(policy.max_backoff, delay + self._uniform(0, policy.jitter))


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
    """The one Retrying of a client (a call of one attempt does without it)."""
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts)
        | stop_when_budget_spent(policy.max_total_seconds),
        wait=wait_backoff_or_retry_after(policy, uniform=uniform),
        retry=tenacity.retry_if_exception(is_retryable),
        sleep=sleep,
        before_sleep=log_before_sleep(policy.max_attempts),
        reraise=True,
    )
