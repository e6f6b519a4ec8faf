"""What the answer to a call means: the one table every caller reads (uploads, list calls, status
calls, the client's own retries and the ops commands).

The rule behind the table: a definite answer from the server is never "maybe delivered". Only
silence after the request's body started to leave (a reset, a timeout) is ambiguous, and only
then is the job's status asked.
"""

from __future__ import annotations

from enum import Enum

from pushagent.errors import (
    ExchangeError,
    ExchangeUnavailable,
    NotFound,
    OperationRefused,
    UnexpectedResponse,
)


class Outcome(Enum):
    SUCCESS = "success"  # 2xx with a true body: done (an upload: delivered)
    RETRY = "retry"  # transient or a setup problem, not the file's: try again later
    GONE = "gone"  # the job is gone or taken: the file waits for another job, the job stays
    REFUSED = "refused"  # the request is refused for good: fail the job with the server's reason
    KEY_REFUSED = "key_refused"  # 401/403: retry later, never fail a job over it
    AMBIGUOUS = "ambiguous"  # no answer after the body started: ask the job's status


# Statuses not listed fall to their family: 3xx and 5xx retry, other 4xx are refusals.
STATUS_OUTCOMES: dict[int, Outcome] = {
    401: Outcome.KEY_REFUSED,
    403: Outcome.KEY_REFUSED,
    404: Outcome.GONE,
    409: Outcome.GONE,
    410: Outcome.GONE,
    408: Outcome.RETRY,
    425: Outcome.RETRY,
    429: Outcome.RETRY,
}

# Retries that count toward upload.max_attempts: the Exchange answered and failed. A refused key,
# a redirect, a rate limit or an unreachable network is never the file's fault.
COUNTED_STATUSES = frozenset({408, *range(500, 600)})


def outcome_of_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.SUCCESS
    if status in STATUS_OUTCOMES:
        return STATUS_OUTCOMES[status]
    if 300 <= status < 400 or 500 <= status < 600:
        return Outcome.RETRY
    if 400 <= status < 500:
        return Outcome.REFUSED
    return Outcome.RETRY  # 1xx or nonsense: nothing definite was said


def classify(error: BaseException | None) -> Outcome:
    """The outcome of a call that returned (``None``) or raised ``error``.

    Raises TypeError for anything that is not an ``ExchangeError``: a bug is not an outcome.
    """
    if error is None:
        return Outcome.SUCCESS
    if not isinstance(error, ExchangeError):
        raise TypeError(f"not an Exchange outcome: {type(error).__name__}")
    if isinstance(error, ExchangeUnavailable):
        return Outcome.AMBIGUOUS if getattr(error, "body_sent", False) else Outcome.RETRY
    if isinstance(error, OperationRefused):
        return Outcome.GONE  # "false": the job is not in a state that allows the call
    if isinstance(error, UnexpectedResponse) and error.status is not None:
        if 200 <= error.status < 300:
            return Outcome.AMBIGUOUS  # it answered 2xx, but what it did cannot be read
        return outcome_of_status(error.status)
    if isinstance(error, NotFound):
        return Outcome.GONE  # also when a 2xx answer held no such job
    if error.status is None:
        return Outcome.RETRY  # the request could not be made: nothing reached the server
    return outcome_of_status(error.status)


def counts_as_attempt(error: BaseException) -> bool:
    status = getattr(error, "status", None)
    return status in COUNTED_STATUSES


def is_redirect(error: BaseException) -> bool:
    status = getattr(error, "status", None)
    return status is not None and 300 <= status < 400
