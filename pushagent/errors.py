"""The one exception hierarchy of pushagent, and the exit code each family maps to.

Every error a user can cause or meet is a ``PushAgentError``; the CLI turns it into one line on
stderr and the exit code below, so an expected failure never prints a traceback.
"""

from __future__ import annotations

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


class CSVValidationError(PushAgentError):
    """A file failed validation; ``problems`` holds one line per problem, each naming its line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(f"{path}: " + "; ".join(self.problems))


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
    """Connection refused, DNS, TLS or timeout: the Exchange could not be reached."""

    retryable = True
    exit_code = EXIT_UNAVAILABLE


class ExchangeHTTPError(ExchangeError):
    """The Exchange answered with an error status."""


class BadRequest(ExchangeHTTPError):
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
    """409 and other 4xx refusals of the job's current state (e.g. no longer waiting)."""


class RateLimited(ExchangeHTTPError):
    """429: too many requests; ``retry_after`` holds the server's advice in seconds."""

    retryable = True
    exit_code = EXIT_UNAVAILABLE


class ServerError(ExchangeHTTPError):
    """5xx: the Exchange failed; 500, 502, 503 and 504 are retried."""

    retryable = True
    exit_code = EXIT_UNAVAILABLE


class OperationRefused(ExchangeError):
    """A status call answered 2xx with ``false``: the server did not do it."""


class UnexpectedResponse(ExchangeError):
    """A 2xx answer whose body could not be understood."""
