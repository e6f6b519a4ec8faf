"""The one exception hierarchy of pushagent, and the exit code each family maps to.

Every error a user can cause or meet is a ``PushAgentError``; the CLI turns it into one line on
stderr and the exit code below, so an expected failure never prints a traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "BadRequest",
    "CSVValidationError",
    "ConfigError",
    "Conflict",
    "ExchangeError",
    "ExchangeHTTPError",
    "ExchangeUnavailable",
    "InsecureTransportError",
    "JournalUnavailable",
    "NotAuthenticated",
    "NotAuthorised",
    "NotFound",
    "OperationRefused",
    "PushAgentError",
    "RateLimited",
    "Refused",
    "RetryLater",
    "ServerError",
    "SourceChanged",
    "StateLockedError",
    "UnexpectedResponse",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5


class PushAgentError(Exception):
    """Base class: ``str(error)`` is a complete sentence a person can act on."""

    exit_code = EXIT_FAILURE


class ConfigError(PushAgentError):
    """The configuration (file, key, value) or the command line is wrong."""

    exit_code = EXIT_USAGE


class InsecureTransportError(ConfigError):
    """The key would travel over plain http to a host that is not loopback."""


class StateLockedError(PushAgentError):
    """Another agent already holds the state directory."""

    exit_code = EXIT_USAGE


class JournalUnavailable(PushAgentError):
    """The journal cannot be read or written (state_dir full, read-only or failing)."""


class CSVValidationError(PushAgentError):
    """A file failed validation; ``problems`` holds one line per problem, each naming its line."""

    def __init__(self, path: str, problems: list[str], *, hint: str | None = None) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(f"{path}: " + "; ".join(self.problems) + (f"; {hint}" if hint else ""))


class ExchangeError(PushAgentError):
    """A call to the Exchange failed. ``method`` and ``path`` name the call; never the key."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        status: int | None = None,
        server_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.server_message = server_message
        self.retry_after = retry_after
        where = f"{method} {url}"
        if status is not None:
            where += f" -> HTTP {status}"
        text = f"{where}: {message}"
        if server_message:
            text += f" (server said: {server_message})"
        super().__init__(text)


class ExchangeUnavailable(ExchangeError):
    """Connection refused, DNS, TLS or timeout: the Exchange could not be reached.

    ``body_sent`` is True when the failure came after some of the request's body had left: the
    server may have received and accepted all of it, so only the job's status can tell.
    """

    retryable = True
    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, *, body_sent: bool = False, **call: Any) -> None:
        """``call``: ``ExchangeError``'s keywords (method, url, status...)."""
        super().__init__(message, **call)
        self.body_sent = body_sent


class ExchangeHTTPError(ExchangeError):
    """The Exchange answered with an error status."""


class Refused(ExchangeHTTPError):
    """A 4xx refusal that asking again will not change (413, 415, 422, 410, ...)."""


class BadRequest(Refused):
    """400: the request was refused as malformed."""


class NotAuthenticated(ExchangeHTTPError):
    """401: the key is missing or unknown."""

    exit_code = EXIT_AUTH


class NotAuthorised(ExchangeHTTPError):
    """403: the key is valid but may not touch this endpoint or job."""

    exit_code = EXIT_AUTH


class NotFound(ExchangeHTTPError):
    """404: the job or file is unknown."""

    exit_code = EXIT_NOT_FOUND


class Conflict(ExchangeHTTPError):
    """409: the job's current state refuses the request (e.g. it is no longer waiting)."""


class RetryLater(ExchangeHTTPError):
    """408, 425 or 429: the Exchange asks for the request again later; ``retry_after`` holds
    its advice in seconds when it gave one."""

    retryable = True
    exit_code = EXIT_UNAVAILABLE


class RateLimited(RetryLater):
    """429: too many requests; ``retry_after`` holds the server's advice in seconds."""


class ServerError(ExchangeHTTPError):
    """5xx: the Exchange failed; every 5xx is retried."""

    retryable = True
    exit_code = EXIT_UNAVAILABLE


class OperationRefused(ExchangeError):
    """A status call answered 2xx with ``false``: the server did not do it."""


class UnexpectedResponse(ExchangeError):
    """A 2xx answer whose body could not be understood."""


class SourceChanged(PushAgentError):
    """The file to upload is not (or no longer) the bytes that were validated, or it changed
    while it was being sent: the upload was not sent, or was aborted before its last bytes so
    the Exchange cannot have accepted it. ``path`` names the file."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")
