"""The one table from a call's answer to its meaning, row by row, and the client's errors on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import requests_mock

from pushagent.errors import (
    CSVValidationError,
    ExchangeError,
    ExchangeHTTPError,
    ExchangeUnavailable,
    OperationRefused,
    ServerError,
    SourceChanged,
    UnexpectedResponse,
)
from pushagent.exchange import ExchangeClient, RetryPolicy
from pushagent.exchange.outcome import Outcome, classify, counts_as_attempt, outcome_of_status

ROOT = "https://127.0.0.1:8443"
KEY = "0f6f1f3e-9c7a-4f51-8d0e-2b1c3a4d5e6f"

STATUS_ROWS = [
    (200, Outcome.SUCCESS),
    (204, Outcome.SUCCESS),
    (301, Outcome.RETRY),
    (302, Outcome.RETRY),
    (307, Outcome.RETRY),
    (308, Outcome.RETRY),
    (400, Outcome.REFUSED),
    (401, Outcome.KEY_REFUSED),
    (403, Outcome.KEY_REFUSED),
    (404, Outcome.GONE),
    (408, Outcome.RETRY),
    (409, Outcome.GONE),
    (413, Outcome.REFUSED),
    (415, Outcome.REFUSED),
    (422, Outcome.REFUSED),
    (425, Outcome.RETRY),
    (429, Outcome.RETRY),
    (499, Outcome.REFUSED),
    (500, Outcome.RETRY),
    (501, Outcome.RETRY),
    (502, Outcome.RETRY),
    (503, Outcome.RETRY),
    (504, Outcome.RETRY),
    (599, Outcome.RETRY),
]
COUNTED = {408, 500, 501, 502, 503, 504, 599}


@pytest.fixture
def exchange() -> Iterator[tuple[ExchangeClient, requests_mock.Adapter]]:
    session = requests.Session()
    session.trust_env = False
    adapter = requests_mock.Adapter()
    session.mount("https://", adapter)
    with ExchangeClient(ROOT, KEY, session=session, retry=RetryPolicy(max_attempts=1)) as client:
        yield client, adapter


@pytest.mark.parametrize(("status", "outcome"), STATUS_ROWS)
def test_each_status_has_its_outcome(status: int, outcome: Outcome) -> None:
    assert outcome_of_status(status) is outcome
    error = ExchangeHTTPError("answered", method="GET", url="/v1/x", status=status)
    assert classify(error) is outcome
    assert counts_as_attempt(error) is (status in COUNTED)


@pytest.mark.parametrize(("status", "outcome"), STATUS_ROWS)
def test_the_errors_the_client_raises_classify_as_their_status(
    exchange: tuple[ExchangeClient, requests_mock.Adapter], status: int, outcome: Outcome
) -> None:
    client, adapter = exchange
    adapter.register_uri("DELETE", ROOT + "/v1/scheduledjobs/7", status_code=status)

    error: ExchangeError | None = None
    try:
        client.delete_scheduled_job(7)
    except ExchangeError as raised:
        error = raised

    assert classify(error) is outcome
    assert error is None or error.status == status


def test_a_call_that_returned_is_a_success() -> None:
    assert classify(None) is Outcome.SUCCESS


def test_a_false_answer_means_the_job_is_gone() -> None:
    error = OperationRefused("answered false", method="PUT", url="/v1/jobs/1/status/fail")
    assert classify(error) is Outcome.GONE
    assert not counts_as_attempt(error)


@pytest.mark.parametrize(
    ("body_sent", "outcome"), [(False, Outcome.RETRY), (True, Outcome.AMBIGUOUS)]
)
def test_silence_is_ambiguous_only_after_the_body_started(
    body_sent: bool, outcome: Outcome
) -> None:
    error = ExchangeUnavailable("reset", method="POST", url="/v1/jobs/1/data", body_sent=body_sent)
    assert error.body_sent is body_sent
    assert classify(error) is outcome
    assert not counts_as_attempt(error)


def test_unavailable_has_no_body_sent_unless_told() -> None:
    assert ExchangeUnavailable("down", method="GET", url="/v1/x").body_sent is False


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.AMBIGUOUS), (204, Outcome.AMBIGUOUS), (302, Outcome.RETRY), (404, Outcome.GONE)],
)
def test_an_unreadable_answer_follows_its_status(status: int, outcome: Outcome) -> None:
    error = UnexpectedResponse("not JSON", method="GET", url="/v1/x", status=status)
    assert classify(error) is outcome


def test_a_request_that_could_not_be_made_is_retried_later() -> None:
    assert classify(ExchangeError("bad URL", method="GET", url="/v1/x")) is Outcome.RETRY


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        SourceChanged("/drop/a.csv", "changed"),
        CSVValidationError("/drop/a.csv", ["line 2: expected 2 fields, found 1"]),
    ],
)
def test_anything_but_an_exchange_error_is_not_an_outcome(error: Exception) -> None:
    with pytest.raises(TypeError, match="not an Exchange outcome"):
        classify(error)


def test_only_failures_of_the_exchange_count_as_attempts() -> None:
    assert counts_as_attempt(ServerError("down", method="GET", url="/v1/x", status=503))
    assert not counts_as_attempt(ValueError("no status"))
