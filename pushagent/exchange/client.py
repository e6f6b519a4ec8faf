"""HTTP client for the Exchange jobs API: one method per call, streamed bodies, mapped errors.

Every call goes through ``_send``, which adds the headers, turns transport failures into
ExchangeUnavailable and error statuses into the matching ExchangeHTTPError, and (unless it is
one attempt) through the client's one tenacity.Retrying (see retry.py). The API key lives only in
the Authorization header: it is registered with pushagent.logs for masking, never formatted into
a message, and not shown by ``repr``.
"""

from __future__ import annotations

import codecs
import contextlib
import email.utils
import hashlib
import io
import ipaddress
import itertools
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast
from urllib.parse import quote, urlencode, urlsplit

import requests
import requests.adapters
from loguru import logger
from requests.structures import CaseInsensitiveDict

import pushagent
from pushagent import logs
from pushagent.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    ExchangeError,
    ExchangeUnavailable,
    InsecureTransportError,
    NotAuthenticated,
    NotAuthorised,
    NotFound,
    OperationRefused,
    RateLimited,
    Refused,
    RetryLater,
    ServerError,
    SourceChanged,
    UnexpectedResponse,
)
from pushagent.exchange.jsonstream import JsonArrayStream
from pushagent.exchange.models import (
    BodyGate,
    ExpectedBody,
    Job,
    JobCategory,
    JobStatus,
    ScheduledJob,
    UploadResult,
)
from pushagent.exchange.retry import RetryPolicy, build_retrying
from pushagent.throttle import Throttle, throttled

if TYPE_CHECKING:  # requests' own transport; the client imports nothing of it at run time
    import urllib3
    from urllib3.connectionpool import ConnectionPool

T = TypeVar("T")
Progress = Callable[[int], None]

DEFAULT_RETRY = RetryPolicy()
JSON_ACCEPT = "application/json"
ANY_ACCEPT = "*/*"
DOWNLOAD_CHUNK = 1 << 20
LIST_CHUNK = 64 * 1024  # the list answer is read this much at a time
UPLOAD_CHUNK = 1 << 20
# An exact upload holds back at least this much of its end until every byte is known to be the
# validated one: a request cut off before its last bytes is never an accepted upload.
FINAL_BLOCK = 64 * 1024
# An upload body goes to the socket this much at a time (see _BlockAdapter).
SEND_BLOCK = 256 * 1024
_POOLS_KEPT = 16  # origins whose connection pool _BlockAdapter keeps at hand (a client has one)
# A gated upload reads ahead this much at a time: the gate (the validator) is fastest on blocks
# of this size, while the transport asks for 16 KiB at a time.
GATE_BLOCK = 256 * 1024
RESPONSE_TEXT_LIMIT = 64 * 1024
SERVER_MESSAGE_CHARS = 200
FAIL_MESSAGE_LIMIT = 1000
ELLIPSIS = "…"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
_DIGITS = re.compile(r"[+-]?\d+")

_STATUS_ERRORS: dict[int, tuple[type[ExchangeError], str]] = {
    400: (BadRequest, "the request was refused as malformed; check the job id and parameters"),
    401: (
        NotAuthenticated,
        "the API key was not accepted; check the key for this base URL "
        "(pilot and production accounts have different keys)",
    ),
    403: (
        NotAuthorised,
        "the key may not access this endpoint or job; use the account-level key or this "
        "endpoint's own key, and check the endpoint is activated in the Exchange UI",
    ),
    404: (
        NotFound,
        "the job or file is unknown to the Exchange; check the id with "
        "`pushagent jobs list <category>`",
    ),
    408: (RetryLater, "the Exchange gave up waiting for the request; it can be sent again"),
    409: (
        Conflict,
        "the job's current state refuses the request (is it still waiting for data?); check it "
        "with `pushagent jobs show <category> <id>`",
    ),
    413: (Refused, "the Exchange refused the body as too large"),
    415: (Refused, "the Exchange refused the content type; check upload.content_type"),
    425: (RetryLater, "the Exchange asks for the request again later (too early)"),
    429: (RateLimited, "the Exchange is rate limiting this key; slow down"),
}
DROPPER_HINT = "the dropper must finish writing before renaming it into the drop folder"


# --- small pure helpers ---------------------------------------------------------------------


def _same(job: Job) -> Job:
    return job


def _not_json(path: str, status: int, body: bytes) -> UnexpectedResponse:
    return UnexpectedResponse("the answer is not JSON", method="GET", url=path, status=status,
                              server_message=server_message(body))


class _BlockAdapter(requests.adapters.HTTPAdapter):
    """requests' HTTPAdapter, for a client that calls one origin thousands of times a minute:

    - a request body goes to the socket in blocks of ``SEND_BLOCK``, not http.client's 16 KiB:
      a 1 GB upload makes 4,000 send calls instead of 65,000 (the POST took a third less);
    - an origin's connection pool is looked up once, not worked out of every request's URL and
      TLS settings again;
    - an answer is built without a cookie jar: this API sets no cookies, the client reads none.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pools: dict[tuple[object, ...], ConnectionPool] = {}

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        super().init_poolmanager(connections, maxsize, block, blocksize=SEND_BLOCK, **pool_kwargs)

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: bool | str | None,
        proxies: Mapping[str, str] | None = None,
        cert: tuple[str, str] | str | None = None,
    ) -> ConnectionPool:
        url = request.url or ""
        end = url.find("/", url.find("://") + 3)
        origin = url if end < 0 else url[:end]  # scheme://[user@]host[:port]
        key = (origin, verify, cert, tuple(sorted((proxies or {}).items())))
        pool = self._pools.get(key)
        # A pool the pool manager closed (after evicting it, or at close) is looked up again.
        if pool is None or getattr(pool, "pool", None) is None:
            if len(self._pools) >= _POOLS_KEPT:
                self._pools.clear()
            pool = super().get_connection_with_tls_context(
                request, verify, proxies=proxies, cert=cert
            )
            self._pools[key] = pool
        return pool

    def build_response(
        self, req: requests.PreparedRequest, resp: urllib3.BaseHTTPResponse
    ) -> requests.Response:
        """HTTPAdapter.build_response, but for the cookies."""
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.encoding = requests.utils.get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = cast(str, resp.reason)  # None too, as requests sets it
        response.url = str(req.url)
        response.request = req
        response.connection = self
        return response

    def close(self) -> None:
        self._pools.clear()
        super().close()


def _session_from_environment(
    base_url: str, verify: bool | str
) -> tuple[requests.Session, bool | str]:
    """A session that reads the proxy and CA-bundle variables once, here, not on every call (a
    seventh of an upload's CPU went to it), never takes credentials from ~/.netrc (they would
    replace the key's Authorization header), and sends bodies in large blocks."""
    session = requests.Session()
    session.trust_env = False
    for scheme in ("https://", "http://"):
        session.mount(scheme, _BlockAdapter())
    session.proxies.update(requests.utils.get_environ_proxies(base_url))
    if verify is True:
        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    return session, verify


def _request_root(base_url: str) -> str:
    """The base URL as requests writes it into a request (host in IDNA, path requoted), worked
    out once: each call appends its path, whose segments ``_segment`` already quoted."""
    prepared = requests.PreparedRequest()
    prepared.prepare_url(base_url, None)
    return str(prepared.url).rstrip("/")


def _framed(method: str, data: Any, headers: CaseInsensitiveDict[str | bytes]) -> Any:
    """The body to send, its framing put in ``headers`` as requests frames these bodies: one of
    known length (bytes, a _SizedBody) with Content-Length, one of unknown length (a
    _ChunkedBody) chunked, and an empty one not at all: it is never read, so never checked."""
    if isinstance(data, _ChunkedBody):
        headers["Transfer-Encoding"] = "chunked"
        return data
    if data:
        headers["Content-Length"] = str(len(data))
        return data
    if method not in ("GET", "HEAD"):
        headers["Content-Length"] = "0"
    return None


def _clean(text: str, limit: int) -> str:
    """One line, no control characters, no registered secret, at most ``limit`` characters."""
    text = logs.mask(_SPACES.sub(" ", _CONTROL.sub(" ", text)).strip())
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def _segment(value: object, what: str) -> str:
    """``value`` as exactly one percent-encoded path segment."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be an int or a str, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise ValueError(f"{what} must not be empty")
    # requests re-decodes %2E to "." and the dot segments would then climb the URL path.
    if text in (".", ".."):
        raise ValueError(f"{what} {text!r} is not a valid id or file name")
    return quote(text, safe="")


def _id_text(value: int | str, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be an int or a str, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{what} must not be empty")
    return str(int(text)) if _DIGITS.fullmatch(text) else text


def _category_text(category: JobCategory | str) -> str:
    if isinstance(category, JobCategory):
        return category.value
    # Unknown categories are passed on: the service may know newer ones than this client.
    return category.strip().upper()


def _status_query(status: JobStatus | str) -> str:
    parsed = status if isinstance(status, JobStatus) else JobStatus.parse(status)
    if parsed is not JobStatus.UNKNOWN:
        return parsed.value
    if isinstance(status, str) and status.strip() and status.strip().upper() != "UNKNOWN":
        return status.strip()
    raise ValueError("status UNKNOWN is not a filter the Exchange knows; pass a real status")


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date relative to ``now``), else None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def parse_boolean_answer(text: str) -> bool | None:
    """``true``/``false`` as a JSON boolean, a JSON string or plain text, in any case."""
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def server_message(body: bytes) -> str | None:
    """The server's own explanation: a JSON message/error/errorMessage field, or the text."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error", "errorMessage"):
            field = data.get(key)
            if isinstance(field, str) and field.strip():
                text = field
                break
    elif isinstance(data, str) and data.strip():
        text = data
    return _clean(text, SERVER_MESSAGE_CHARS) or None


def clean_fail_message(message: str) -> str:
    """The errorMessage for fail_job: one line, no control characters, capped, never empty."""
    if not isinstance(message, str):
        raise TypeError(f"error_message must be a str, got {type(message).__name__}")
    text = _clean(message, FAIL_MESSAGE_LIMIT)
    if not text:
        raise ValueError(
            "fail_job needs a non-empty error message: it is what the Exchange UI shows the user"
        )
    return text


def _is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _normalise_base_url(base_url: str, *, allow_insecure_http: bool) -> str:
    text = base_url.strip() if isinstance(base_url, str) else ""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    shown = logs.mask(text)
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"base URL {shown!r} must look like https://host[/prefix]: "
            "use the base URL Acoustic assigned to your Exchange account"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError("the base URL must not contain user:password@; the key goes in api_key")
    if parts.query or parts.fragment:
        raise ConfigError(f"base URL {shown!r} must not have a ?query or #fragment")
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError as e:
        raise ConfigError(f"base URL {shown!r} has an invalid port") from e
    if scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise InsecureTransportError(
            f"refusing to send the API key over plain http to {parts.hostname}: use https://, "
            "or allow_insecure_http for a test server you trust"
        )
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _validated_key(api_key: str) -> str:
    if not isinstance(api_key, str):
        raise ConfigError("the API key must be text")
    key = api_key.strip()
    if not key:
        raise ConfigError("the API key is empty: set the key Exchange issued for the account")
    # requests would otherwise raise InvalidHeader with the whole header value in its message.
    if not _KEY_CHARS.fullmatch(key):
        raise ConfigError(
            "the API key contains spaces, control or non-ASCII characters; copy it again "
            "from the Exchange UI"
        )
    return key


def _read_limited(response: requests.Response, limit: int = RESPONSE_TEXT_LIMIT) -> bytes:
    """At most ``limit`` bytes of the body; a body that breaks off yields what arrived."""
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=8192):
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except requests.RequestException:
        pass
    return b"".join(chunks)[:limit]


def _is_seekable(stream: Any) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


# --- upload bodies --------------------------------------------------------------------------


class _BodyChanged(Exception):
    """The source changed while it was being sent; ``detail`` says how.

    Raised from the body's ``read``, it aborts the request with the body incomplete. Deliberately
    not an OSError: urllib3 would wrap that into a connection error, which is retried as if the
    Exchange were unreachable.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _stat_change(expected: ExpectedBody, now: os.stat_result) -> str | None:
    """How the file differs from what was validated, by its size and mtime; None: it does not."""
    size = expected.offset + expected.size
    if now.st_size != size:
        return f"size {size} -> {now.st_size} bytes"
    if expected.mtime_ns is not None and now.st_mtime_ns != expected.mtime_ns:
        return f"rewritten at the same size of {size} bytes"
    return None


class _SizedBody:
    """A read-only body of known length: requests sends Content-Length from ``__len__`` and
    urllib3 pulls it block by block, so the file is never held in memory. ``sha256`` is the
    digest of the bytes read so far.

    No ``__iter__`` and no ``tell`` on purpose: either would make requests treat it differently
    (chunked transfer, or a length measured from the current position).
    """

    _hashes = True  # a gated body leaves the hash to its gate

    def __init__(self, stream: BinaryIO, length: int, progress: Progress | None) -> None:
        self._stream = stream
        self._length = length
        self._progress = progress
        self._digest = hashlib.sha256()
        self._pulled = 0
        self.sent = 0

    def __len__(self) -> int:
        return self._length

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(UPLOAD_CHUNK), b""))
        remaining = self._length - self.sent
        if remaining <= 0:
            # A file that grew since it was measured: the announced length is what gets sent.
            return b""
        return self._count(self._pull(min(size, remaining)))

    def _pull(self, size: int) -> bytes:
        """Up to ``size`` bytes from the stream, hashed; a stream that ended early aborts."""
        data = self._stream.read(size)
        if isinstance(data, str):
            raise TypeError("upload_data needs a binary stream; open the file with 'rb'")
        if not data:
            raise _BodyChanged(
                f"expected {self._length} bytes, the file ended after {self._pulled}"
            )
        self._pulled += len(data)
        if self._hashes:
            self._digest.update(data)
        return data

    def _count(self, data: bytes) -> bytes:
        self.sent += len(data)
        if self._progress is not None:
            self._progress(self.sent)
        return data


class _ExactBody(_SizedBody):
    """Exactly the validated bytes, or an aborted request.

    The final block (``FINAL_BLOCK``, or the whole of a smaller body) is read ahead and held back
    until the digest of all ``expected.size`` bytes is ``expected.sha256`` and the file still has
    the validated size and mtime. Otherwise ``read`` raises and the request ends with its body
    incomplete, which no server accepts as an upload.
    """

    def __init__(self, stream: BinaryIO, expected: ExpectedBody, progress: Progress | None) -> None:
        super().__init__(stream, expected.size, progress)
        self._expected = expected
        self._final_start = expected.size - min(expected.size, FINAL_BLOCK)
        self._final: bytes | None = None

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(UPLOAD_CHUNK), b""))
        if self.sent < self._final_start:
            return self._count(self._pull(min(size, self._final_start - self.sent)))
        if self._final is None:
            self._final = self._pull_final()
        offset = self.sent - self._final_start
        if offset >= len(self._final):
            return b""
        return self._count(self._final[offset : offset + size])

    def _pull_final(self) -> bytes:
        pieces: list[bytes] = []
        while self._pulled < self._length:
            pieces.append(self._pull(self._length - self._pulled))
        self.verify()
        return b"".join(pieces)

    def verify(self) -> None:
        """Raise _BodyChanged unless the bytes read are the validated ones, in the same file."""
        change = _stat_change(self._expected, os.fstat(self._stream.fileno()))
        if change is None and self.sha256 != self._expected.sha256:
            change = f"the same size of {self._expected.size} bytes, but other bytes"
        if change is not None:
            raise _BodyChanged(change)


class _GatedBody(_SizedBody):
    """The file from where the gate said, each block shown to the gate before it is sent, and
    the final block (``FINAL_BLOCK``, or the whole of a smaller body) only once the gate has
    released it and the file still has the size and mtime it had at open. Otherwise ``read``
    raises and the request ends with its body incomplete."""

    _hashes = False

    def __init__(
        self, stream: BinaryIO, length: int, gate: BodyGate, opened: os.stat_result,
        progress: Progress | None,
    ) -> None:
        super().__init__(stream, length, progress)
        self._gate = gate
        self._opened = opened
        self._final_start = length - min(length, FINAL_BLOCK)
        self._block = b""
        self._block_at = 0  # where ``_block`` starts in the body
        self._released: str | None = None

    @property
    def sha256(self) -> str:
        """The gate's digest of the body; empty until the gate released the final block."""
        return self._released or ""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(UPLOAD_CHUNK), b""))
        offset = self.sent - self._block_at
        if offset >= len(self._block):
            if self._released is not None:
                return b""
            self._block_at = self._pulled
            self._block = self.next_block()
            offset = 0
        return self._count(self._block[offset : offset + size])

    def next_block(self) -> bytes:
        """The next block, fed to the gate; the final one only once the gate released it."""
        if self._pulled < self._final_start:
            block = self._pull(min(GATE_BLOCK, self._final_start - self._pulled))
            self._gate.feed(block)
            return block
        pieces: list[bytes] = []
        while self._pulled < self._length:
            pieces.append(self._pull(self._length - self._pulled))
        block = b"".join(pieces)
        self._gate.feed(block)
        now = os.fstat(self._stream.fileno())
        if now.st_size != self._opened.st_size:
            raise _BodyChanged(f"size {self._opened.st_size} -> {now.st_size} bytes")
        if now.st_mtime_ns != self._opened.st_mtime_ns:
            raise _BodyChanged(f"rewritten at the same size of {now.st_size} bytes")
        self._released = self._gate.release()
        return block


class _ChunkedBody:
    """A body of unknown length (a pipe): requests sends it with chunked transfer encoding."""

    def __init__(self, stream: BinaryIO, progress: Progress | None) -> None:
        self._stream = stream
        self._progress = progress
        self._digest = hashlib.sha256()
        self.sent = 0

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self._stream.read(UPLOAD_CHUNK)
            if isinstance(data, str):
                raise TypeError("upload_data needs a binary stream; open the file with 'rb'")
            if not data:
                return
            self._digest.update(data)
            self.sent += len(data)
            if self._progress is not None:
                self._progress(self.sent)
            yield data


class _UploadSource:
    """Opens the body afresh for every attempt, so a retry always sends the whole file."""

    def __init__(self, source: str | os.PathLike[str] | BinaryIO) -> None:
        self._path: str | None = None
        self._stream: BinaryIO | None = None
        if isinstance(source, (str, os.PathLike)):
            self._path = os.fspath(source)
            self.name = self._path
            self.repeatable = True
        elif callable(getattr(source, "read", None)):
            self._stream = source
            self.name = str(getattr(source, "name", "<stream>"))
            self.repeatable = _is_seekable(source)
        else:
            raise TypeError(
                f"upload source must be a path or a binary file object, got {type(source).__name__}"
            )

    @property
    def is_path(self) -> bool:
        return self._path is not None

    @contextlib.contextmanager
    def open(self) -> Iterator[tuple[BinaryIO, int | None]]:
        """The stream at its start and its length (None: unknown, not rewindable)."""
        if self._path is not None:
            # An explicit buffer size spares open() its isatty() (an ioctl) per upload.
            with open(self._path, "rb", buffering=io.DEFAULT_BUFFER_SIZE) as stream:
                yield stream, os.fstat(stream.fileno()).st_size
        elif self._stream is not None and self.repeatable:
            length = self._stream.seek(0, os.SEEK_END)
            self._stream.seek(0)
            yield self._stream, length
        elif self._stream is not None:
            yield self._stream, None


# --- the client -----------------------------------------------------------------------------


class ExchangeClient:
    """The Exchange jobs API for one account base URL and key.

    One client may be shared by several worker threads: it keeps no per-call state, every call
    builds its own retry state, and a requests.Session is commonly shared across threads for
    plain requests like these (its connection pool is thread-safe; this API uses no cookies).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: requests.Session | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        verify: bool | str = True,
        allow_insecure_http: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = pushagent.USER_AGENT,
        throttle: Throttle | None = None,
    ) -> None:
        key = _validated_key(api_key)
        # Masked while this client lives: released by close(), or now if the checks below fail.
        logs.register_secret(key)
        try:
            self._base_url = _normalise_base_url(base_url, allow_insecure_http=allow_insecure_http)
            if connect_timeout <= 0 or read_timeout <= 0:
                raise ConfigError("connect_timeout and read_timeout must be positive seconds")
            if isinstance(verify, str) and not os.path.exists(verify):
                raise ConfigError(f"CA bundle {verify} does not exist; fix the verify setting")
        except ConfigError:
            logs.release_secret(key)
            raise
        self._key_held: str | None = key
        if verify is False:
            logger.warning(
                "TLS certificate verification is OFF for {}: anyone on the path can read the key",
                self._base_url,
            )
        self._owns_session = session is None
        if session is None:
            session, verify = _session_from_environment(self._base_url, verify)
        self._session = session
        self._root = _request_root(self._base_url)
        # The session's own headers (Accept-Encoding, Connection...) under the key and the user
        # agent: what requests would merge for every call, merged once.
        self._headers: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(session.headers)
        self._headers.update({"Authorization": f"Bearer {key}", "User-Agent": user_agent})
        self._retrying = build_retrying(retry, sleep=sleep)
        self._timeout = (connect_timeout, read_timeout)
        self._verify = verify
        self._throttle = throttle  # the bandwidth cap all uploads of this client share

    def __repr__(self) -> str:
        return f"ExchangeClient(base_url={self._base_url!r})"

    @property
    def base_url(self) -> str:
        """Scheme, host and path prefix, without a trailing slash."""
        return self._base_url

    def close(self) -> None:
        """Close the session if this client created it (an injected one belongs to the caller),
        and stop masking its key unless another holder registered it too."""
        if self._owns_session:
            self._session.close()
        logs.release_secret(self._key_held)
        self._key_held = None

    def __enter__(self) -> ExchangeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- API calls --------------------------------------------------------------------------

    def list_jobs(
        self,
        category: JobCategory | str,
        *,
        endpoint_id: int | str | None = None,
        status: JobStatus | str | None = None,
        extra_fields: bool = False,
        include_producer_segment_id_string: bool = False,
    ) -> list[Job]:
        return self.list_jobs_as(
            _same, category, endpoint_id=endpoint_id, status=status, extra_fields=extra_fields,
            include_producer_segment_id_string=include_producer_segment_id_string,
        )

    def list_jobs_as(
        self,
        convert: Callable[[Job], T],
        category: JobCategory | str,
        *,
        endpoint_id: int | str | None = None,
        status: JobStatus | str | None = None,
        extra_fields: bool = False,
        include_producer_segment_id_string: bool = False,
    ) -> list[T]:
        """``list_jobs``, each job passed through ``convert`` as soon as it is parsed: a caller
        that keeps a few fields of thousands of jobs never holds them all as whole models."""
        path = f"/v1/jobs/{_segment(_category_text(category), 'category')}"
        params: dict[str, str] = {}
        if endpoint_id is not None:
            params["endpointId"] = _id_text(endpoint_id, "endpoint_id")
        if status is not None:
            params["status"] = _status_query(status)
        if extra_fields:
            params["extraFields"] = "true"
        if include_producer_segment_id_string:
            params["includeProducerSegmentIDString"] = "true"
        return self._call(lambda: self._get_items(
            path, params, lambda item: convert(Job.from_json(item)), "job"
        ))

    def get_job(self, category: JobCategory | str, job_id: int | str) -> Job:
        """The server answers an array holding the job; a bare object is accepted too."""
        category_segment = _segment(_category_text(category), "category")
        path = f"/v1/jobs/{category_segment}/{_segment(job_id, 'job_id')}"
        data = self._call(lambda: self._get_json(path, {}))
        wanted = _id_text(job_id, "job_id")
        empty = not data
        jobs = self._parse_items(data, Job.from_json, path, "job")
        for job in jobs:
            if str(job.job_id) == wanted:
                return job
        if empty:
            raise NotFound(
                "the answer held no job: the job is unknown to the Exchange (or not visible to "
                "this key)",
                method="GET",
                url=path,
            )
        found = [job.job_id for job in jobs]
        raise UnexpectedResponse(
            f"asked for job {wanted}, the answer held {found or 'no usable job'}",
            method="GET",
            url=path,
        )

    def upload_data(
        self,
        job_id: int | str,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        content_type: str = "text/csv",
        retry: bool = True,
        progress: Progress | None = None,
        expected: ExpectedBody | None = None,
        gate: BodyGate | None = None,
    ) -> UploadResult:
        """POST the file as the job's data, streamed from disk.

        A path is re-opened and a seekable file object rewound to its start for every attempt,
        so a retry re-sends the whole file; a stream that cannot be rewound gets one attempt.
        ``progress`` gets the bytes sent so far in the current attempt. ``retry=False`` means
        exactly one attempt (a POST is not idempotent; the agent checks the job status itself).
        An exception raised by ``progress`` aborts the upload and propagates.

        With ``expected`` (the source must then be a path) exactly the validated bytes are sent
        (from ``expected.offset`` on),
        or the upload never completes: SourceChanged is raised before anything is sent when the
        file's size or mtime differ from ``expected``, and from inside the upload, aborted
        before its final block (``FINAL_BLOCK``), when the bytes read are not the expected ones
        or the file changed meanwhile. A file that shrinks while a body of announced length is
        being sent raises SourceChanged too. A transport failure after body bytes left raises
        ExchangeUnavailable with ``body_sent`` True: the upload may have arrived.

        With ``gate`` (a path, ``retry=False``) every block is shown to the gate before it is
        sent, and the final block withheld until the gate releases it (see ``BodyGate``): what
        the gate raises propagates, the request aborted before its final block. A file that
        changed while it was sent raises SourceChanged, aborted the same way.
        """
        path = f"/v1/jobs/{_segment(job_id, 'job_id')}/data"
        if not content_type.strip() or "\r" in content_type or "\n" in content_type:
            raise ValueError(f"invalid content_type {content_type!r}")
        body = _UploadSource(source)
        if expected is not None and not body.is_path:
            raise TypeError("upload_data(expected=...) needs a path: the file is checked as opened")
        if gate is not None and (not body.is_path or retry or expected is not None):
            raise TypeError("upload_data(gate=...) needs a path, retry=False and no expected")
        if retry and not body.repeatable:
            logger.debug("POST {}: the source cannot be rewound, so one attempt only", path)
        progress = throttled(progress, self._throttle)

        def attempt() -> UploadResult:
            with body.open() as (stream, length):
                sender: _SizedBody | _ChunkedBody
                if expected is not None:
                    change = _stat_change(expected, os.fstat(stream.fileno()))
                    if change is not None:
                        raise SourceChanged(
                            body.name,
                            f"changed after it was validated ({change}); {DROPPER_HINT}; "
                            "nothing was sent",
                        )
                    stream.seek(expected.offset)
                    sender = _ExactBody(stream, expected, progress)
                elif gate is not None:
                    opened = os.fstat(stream.fileno())
                    skip = gate.begin(stream.read(len(codecs.BOM_UTF8)), opened)
                    stream.seek(skip)
                    sender = _GatedBody(stream, opened.st_size - skip, gate, opened, progress)
                elif length is None:
                    sender = _ChunkedBody(stream, progress)
                else:
                    sender = _SizedBody(stream, length, progress)
                try:
                    # An empty body is never read, so never checked.
                    if isinstance(sender, _ExactBody) and len(sender) == 0:
                        sender.verify()
                    if isinstance(sender, _GatedBody) and len(sender) == 0:
                        sender.next_block()
                    response = self._send(
                        "POST", path, data=sender, content_type=content_type, accept=ANY_ACCEPT
                    )
                except _BodyChanged as e:
                    raise self._source_changed(
                        body.name, path, e.detail, exact=expected, gated=gate is not None
                    ) from e
                with response:
                    text = _read_limited(response).decode("utf-8", errors="replace")
                return UploadResult(
                    job_id=job_id,
                    bytes_sent=sender.sent,
                    status_code=response.status_code,
                    response_text=text,
                    sha256=sender.sha256,
                )

        return self._call(attempt, retry=retry and body.repeatable)

    @staticmethod
    def _source_changed(
        name: str, path: str, detail: str, *, exact: ExpectedBody | None, gated: bool
    ) -> SourceChanged:
        if gated:
            return SourceChanged(
                name,
                f"changed while it was sent ({detail}); {DROPPER_HINT}; POST {path} was aborted "
                "before its last bytes, so the Exchange did not take the upload",
            )
        if exact is None:
            return SourceChanged(
                name,
                f"{detail} while POST {path} was sending it; the upload was aborted, retry once "
                "the file is no longer being written",
            )
        return SourceChanged(
            name,
            f"changed after it was validated ({detail}); {DROPPER_HINT}; POST {path} was aborted "
            "before its last bytes, so the Exchange did not take the upload",
        )

    def fail_job(self, job_id: int | str, error_message: str) -> None:
        """Move a waiting job to ERROR with ``error_message`` (one line, <= 1000 characters).

        Raises ValueError for an empty message: the Exchange requires one and shows it.
        """
        path = f"/v1/jobs/{_segment(job_id, 'job_id')}/status/fail"
        body = json.dumps({"errorMessage": clean_fail_message(error_message)}).encode("utf-8")
        self._call(
            lambda: self._put_expecting_true(
                path, body, "the job was not marked failed (is it still waiting for data?)"
            )
        )

    def complete_job(self, job_id: int | str) -> None:
        path = f"/v1/jobs/{_segment(job_id, 'job_id')}/status/complete"
        self._call(
            lambda: self._put_expecting_true(
                path, None, "the job was not marked complete, or not all its files were deleted"
            )
        )

    def download_segment_file(
        self,
        job_id: int | str,
        file_name: str,
        dest: str | os.PathLike[str] | BinaryIO,
        *,
        progress: Progress | None = None,
    ) -> int:
        """Stream a segment file to ``dest``; returns the bytes written.

        A path is written under a temporary name beside it and renamed when complete, so a
        failed download never leaves a partial file under the final name. A seekable file
        object is rewound to where it was (and truncated) before a retry; a non-seekable one
        gets one attempt. ``progress`` gets the bytes written so far in the current attempt.
        """
        path = (
            f"/v1/jobs/{_segment(job_id, 'job_id')}/segmentDataFiles/"
            f"{_segment(file_name, 'file_name')}"
        )
        if isinstance(dest, (str, os.PathLike)):
            target = Path(dest)
            return self._call(lambda: self._download_to_path(path, target, progress))
        sink = dest
        start = sink.tell() if _is_seekable(sink) else None

        def attempt() -> int:
            if start is not None:
                sink.seek(start)
                sink.truncate()
            response = self._send("GET", path, accept=ANY_ACCEPT, stream=True)
            with response:
                return self._copy_body(path, response, sink, progress)

        return self._call(attempt, retry=start is not None)

    def delete_segment_file(self, job_id: int | str, file_name: str) -> None:
        path = (
            f"/v1/jobs/{_segment(job_id, 'job_id')}/segmentDataFiles/"
            f"{_segment(file_name, 'file_name')}"
        )
        self._call(lambda: self._send_and_close("DELETE", path))

    def list_scheduled_jobs(
        self,
        category: JobCategory | str = "SEGMENT_EXPORT",
        *,
        endpoint_id: int | str | None = None,
    ) -> list[ScheduledJob]:
        path = f"/v1/scheduledjobs/{_segment(_category_text(category), 'category')}"
        params = {} if endpoint_id is None else {"endpointId": _id_text(endpoint_id, "endpoint_id")}
        data = self._call(lambda: self._get_json(path, params))
        return self._parse_items(data, ScheduledJob.from_json, path, "scheduled job")

    def delete_scheduled_job(self, scheduled_job_id: int | str) -> None:
        path = f"/v1/scheduledjobs/{_segment(scheduled_job_id, 'scheduled_job_id')}"
        self._call(lambda: self._send_and_close("DELETE", path))

    # --- plumbing ---------------------------------------------------------------------------

    def _call(self, attempt: Callable[[], T], *, retry: bool = True) -> T:
        if not retry:
            # One attempt: the Retrying (reraise=True) would only raise what it raises, after
            # a copy and a retry state per call (every upload of the agent is one attempt).
            return attempt()
        # A copy per call keeps concurrent calls' retry state apart.
        return self._retrying.copy()(attempt)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        content_type: str | None = None,
        accept: str = JSON_ACCEPT,
        stream: bool = False,
    ) -> requests.Response:
        """One HTTP exchange; returns a 2xx response, raises the mapped error for anything else.

        The request is prepared here and handed straight to the session's transport adapter:
        requests' own preparation and merging per call (settings, cookies, hooks) took more CPU
        than the rest of a small upload. This API sets no cookies and needs no hooks; a redirect
        is never followed (the key must not travel elsewhere), only reported.
        """
        headers = self._headers.copy()
        headers["Accept"] = accept
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = requests.PreparedRequest()
        request.method = method
        request.url = self._root + path + (f"?{urlencode(params)}" if params else "")
        request.body = _framed(method, data, headers)
        # requests' own merge puts the session's values (str or bytes) in as they are, too.
        request.headers = cast("CaseInsensitiveDict[str]", headers)
        started = time.monotonic()
        try:
            response = self._session.get_adapter(request.url).send(
                request,
                stream=stream,
                timeout=self._timeout,
                verify=self._verify,
                cert=self._session.cert,
                proxies=self._session.proxies,
            )
            if not stream:
                # Read here, as requests does: a body cut short is this call's transport error.
                response.content  # noqa: B018
        except requests.RequestException as e:
            # An upload body counts what it handed to the transport.
            sent = getattr(data, "sent", 0)
            raise self._transport_error(method, path, e, body_sent=sent) from e
        logger.debug(
            "{} {} -> HTTP {} in {:.2f} s",
            method,
            path,
            response.status_code,
            time.monotonic() - started,
        )
        if 200 <= response.status_code < 300:
            return response
        with response:
            raise self._http_error(method, path, response)

    def _transport_error(
        self, method: str, path: str, error: Exception, *, body_sent: int = 0
    ) -> ExchangeError:
        """``body_sent``: request body bytes that had left when ``error`` happened."""
        connect_timeout, read_timeout = self._timeout
        exceptions = requests.exceptions
        if isinstance(error, exceptions.SSLError):
            what = (
                "TLS failed (certificate or handshake); check the server certificate, or pass "
                "a CA bundle path as verify"
            )
        elif isinstance(error, exceptions.ConnectTimeout):
            what = f"could not connect within {connect_timeout:g} s"
        elif isinstance(error, exceptions.Timeout):
            what = f"no answer within {read_timeout:g} s"
        elif isinstance(
            error,
            (
                exceptions.ConnectionError,
                exceptions.ChunkedEncodingError,
                exceptions.ContentDecodingError,
            ),
        ):
            what = (
                "could not reach the Exchange or the connection broke (DNS, refused, reset); "
                "check the base URL and the network"
            )
        else:
            return ExchangeError(
                f"the request could not be made ({type(error).__name__}: "
                f"{_clean(str(error), 300)})",
                method=method,
                url=path,
            )
        if body_sent:
            what += (
                f"; {body_sent} bytes of the body had been sent, so it may have arrived: check "
                "the job's status before sending it again"
            )
        return ExchangeUnavailable(
            f"{what} [{type(error).__name__}: {_clean(str(error), 300)}]",
            method=method,
            url=path,
            body_sent=body_sent > 0,
        )

    def _http_error(self, method: str, path: str, response: requests.Response) -> ExchangeError:
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now=time.time())
        error_class: type[ExchangeError]
        if status in _STATUS_ERRORS:
            error_class, message = _STATUS_ERRORS[status]
        elif 500 <= status <= 599:
            error_class = ServerError
            message = (
                "the Exchange failed (worth trying again later); contact Acoustic support if "
                "it persists"
            )
        elif 400 <= status <= 499:
            error_class = Refused
            message = "the Exchange refused the request; sending it again will not change that"
        elif 300 <= status <= 399:
            # Not followed: the key must not travel to another address, and a redirect does not
            # fix itself within seconds (it is never retried inside the client).
            error_class = UnexpectedResponse
            location = _clean(response.headers.get("Location", ""), 200)
            message = (
                f"the Exchange answered with a redirect to {location!r}, which is not followed; "
                "set the base URL to the final address"
                if location
                else "the Exchange answered with a redirect but no Location; check the base URL"
            )
        else:
            error_class = UnexpectedResponse
            message = "unexpected HTTP status"
        if retry_after is not None:
            message += f"; retry after {retry_after:g} s"
        return error_class(
            message,
            method=method,
            url=path,
            status=status,
            server_message=server_message(_read_limited(response)),
            retry_after=retry_after,
        )

    def _get_json(self, path: str, params: Mapping[str, str]) -> Any:
        response = self._send("GET", path, params=params or None)
        with response:
            content = response.content
        if not content.strip():
            return None
        try:
            return json.loads(content, parse_float=Decimal)
        except ValueError as e:
            raise _not_json(path, response.status_code, content) from e

    def _get_items(
        self, path: str, params: Mapping[str, str], parse: Callable[[dict[str, Any]], T],
        what: str,
    ) -> list[T]:
        """A JSON array answer, read and decoded one element at a time and each parsed at once:
        the answer for 20,000 jobs is never held whole, as text or as dicts (a bare object or an
        empty answer are taken as for ``_parse_items``)."""
        response = self._send("GET", path, params=params or None, stream=True)
        with response:
            decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
            chunks = (decode.decode(chunk) for chunk in self._body_chunks(response, path))
            stream = JsonArrayStream(itertools.chain(chunks, [decode.decode(b"", final=True)]))
            try:
                if not stream.opens_array():
                    return self._parse_items(stream.whole(), parse, path, what,
                                             status=response.status_code)
                parsed: list[T] = []
                for index, item in enumerate(stream):
                    parsed.extend(self._parse_items([item], parse, path, what, first=index))
                return parsed
            except ValueError as e:
                raise _not_json(path, response.status_code, stream.head.encode()) from e

    def _body_chunks(
        self, response: requests.Response, path: str, *, chunk_size: int = LIST_CHUNK
    ) -> Iterator[bytes]:
        """The body as it arrives; a connection lost on the way is the client's transport
        error for ``GET path``."""
        try:
            yield from response.iter_content(chunk_size=chunk_size)
        except requests.RequestException as e:
            raise self._transport_error("GET", path, e) from e

    def _parse_items(
        self, data: Any, parse: Callable[[dict[str, Any]], T], path: str, what: str,
        *, first: int = 0, status: int | None = None,
    ) -> list[T]:
        if data is None:
            items: list[Any] = []
        elif isinstance(data, dict):
            items = [data]
        elif isinstance(data, list):
            items = data
        else:
            raise UnexpectedResponse(
                f"expected a JSON array of {what}s, got a JSON {type(data).__name__}",
                method="GET",
                url=path,
                status=status,
            )
        parsed: list[T] = []
        for index, item in enumerate(items, start=first):
            if not isinstance(item, dict):
                logger.warning("GET {}: skipping {} #{}: not a JSON object", path, what, index)
                continue
            try:
                parsed.append(parse(item))
            except ValueError as e:
                logger.warning("GET {}: skipping {} #{}: {}", path, what, index, e)
        return parsed

    def _put_expecting_true(self, path: str, body: bytes | None, refused: str) -> None:
        response = self._send(
            "PUT",
            path,
            data=body,
            content_type=None if body is None else "application/json",
        )
        with response:
            raw = _read_limited(response)
        text = raw.decode("utf-8", errors="replace").strip()
        if not text:
            # Some gateways answer 204 No Content for a status change that worked.
            return
        answer = parse_boolean_answer(text)
        if answer is None:
            raise UnexpectedResponse(
                "expected true or false",
                method="PUT",
                url=path,
                status=response.status_code,
                server_message=server_message(raw),
            )
        if not answer:
            raise OperationRefused(
                f"the Exchange answered false: {refused}",
                method="PUT",
                url=path,
                status=response.status_code,
            )

    def _send_and_close(self, method: str, path: str) -> None:
        self._send(method, path, accept=ANY_ACCEPT).close()

    def _download_to_path(self, path: str, target: Path, progress: Progress | None) -> int:
        response = self._send("GET", path, accept=ANY_ACCEPT, stream=True)
        with response:
            fd, temp_name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".part"
            )
            try:
                with os.fdopen(fd, "wb") as out:
                    written = self._copy_body(path, response, out, progress)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp_name, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp_name)
                raise
        return written

    def _copy_body(
        self,
        path: str,
        response: requests.Response,
        sink: BinaryIO,
        progress: Progress | None,
    ) -> int:
        written = 0
        for chunk in self._body_chunks(response, path, chunk_size=DOWNLOAD_CHUNK):
            sink.write(chunk)
            written += len(chunk)
            if progress is not None:
                progress(written)
        announced = response.headers.get("Content-Length", "")
        # A body cut short is never taken for the file (a decoded body has another length).
        if announced.isdigit() and "Content-Encoding" not in response.headers \
                and written != int(announced):
            raise ExchangeUnavailable(
                f"the body ended after {written} of the {announced} bytes announced; it can "
                "be fetched again",
                method="GET", url=path, status=response.status_code,
            )
        return written
