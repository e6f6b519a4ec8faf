"""``backoff``, the one doubling delay, and what the client retries by the outcome table."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import pytest
import tenacity

from pushagent.errors import (
    Conflict,
    ExchangeError,
    ExchangeUnavailable,
    NotAuthenticated,
    NotFound,
    OperationRefused,
    RateLimited,
    Refused,
    RetryLater,
    ServerError,
    SourceChanged,
    UnexpectedResponse,
)
from pushagent.exchange.retry import RetryPolicy, backoff, is_retryable, wait_backoff_or_retry_after


@pytest.mark.parametrize(
    ("streak", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0)]
)
def test_backoff_doubles_per_failure_up_to_the_cap(streak: int, expected: float) -> None:
    assert backoff(streak, initial=0.5, cap=30.0) == expected


@pytest.mark.parametrize("streak", [0, -1, -(10**9)])
def test_a_streak_below_one_counts_as_one(streak: int) -> None:
    assert backoff(streak, initial=0.5, cap=30.0) == 0.5


@pytest.mark.parametrize("streak", [65, 1025, 10**6, 10**18])
def test_huge_streaks_give_the_cap_without_overflow(streak: int) -> None:
    assert backoff(streak, initial=0.5, cap=30.0) == 30.0
    assert backoff(streak, initial=1e300, cap=60.0) == 60.0
    assert math.isfinite(backoff(streak, initial=0.5, cap=math.inf))


@pytest.mark.parametrize("streak", [1, 2, 10**6])
def test_zero_initial_is_no_wait(streak: int) -> None:
    assert backoff(streak, initial=0.0, cap=30.0) == 0.0


def test_backoff_is_a_float() -> None:
    assert isinstance(backoff(3, initial=1, cap=100), float)


# --- the client's wait ------------------------------------------------------------------------


class _Outcome:
    def __init__(self, error: BaseException) -> None:
        self._error = error

    def exception(self) -> BaseException:
        return self._error


@dataclass
class _RetryState:
    attempt_number: int
    outcome: _Outcome


def wait_after(attempt: int, error: BaseException, *, jitter: float = 0.0) -> float:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=30.0, jitter=jitter)
    wait = wait_backoff_or_retry_after(policy, uniform=lambda low, high: high)
    return wait(cast(tenacity.RetryCallState, _RetryState(attempt, _Outcome(error))))


SERVER_DOWN = ServerError("down", method="GET", url="/v1/x", status=503)


def test_wait_is_backoff_plus_jitter_capped() -> None:
    assert wait_after(1, SERVER_DOWN, jitter=0.25) == 0.75
    assert wait_after(3, SERVER_DOWN, jitter=0.25) == 2.25
    assert wait_after(6, SERVER_DOWN, jitter=0.25) == 16.25
    assert wait_after(10**6, SERVER_DOWN, jitter=0.25) == 30.0


def test_wait_honours_retry_after_beyond_the_cap() -> None:
    limited = RateLimited("slow down", method="GET", url="/v1/x", status=429, retry_after=90.0)
    assert wait_after(10**6, limited) == 90.0


# --- what the client retries ------------------------------------------------------------------


def _http(error_class: type[ExchangeError], status: int) -> ExchangeError:
    return error_class("answered", method="GET", url="/v1/x", status=status)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ExchangeUnavailable("refused", method="GET", url="/v1/x"), True),
        (ExchangeUnavailable("reset", method="POST", url="/v1/x", body_sent=True), False),
        (_http(ServerError, 500), True),
        (_http(ServerError, 501), True),
        (_http(ServerError, 599), True),
        (_http(RetryLater, 408), True),
        (_http(RetryLater, 425), True),
        (_http(RateLimited, 429), True),
        (_http(UnexpectedResponse, 302), False),  # a redirect does not fix itself in seconds
        (_http(UnexpectedResponse, 308), False),
        (_http(UnexpectedResponse, 200), False),
        (_http(NotAuthenticated, 401), False),
        (_http(NotFound, 404), False),
        (_http(Conflict, 409), False),
        (_http(Refused, 422), False),
        (OperationRefused("false", method="PUT", url="/v1/x", status=200), False),
        (SourceChanged("/drop/a.csv", "changed"), False),
        (ValueError("a bug"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_the_client_retries_what_the_table_calls_retry(
    error: BaseException, retried: bool
) -> None:
    assert is_retryable(error) is retried
