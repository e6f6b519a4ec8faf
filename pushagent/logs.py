"""Logging with loguru: human lines on stderr, optional rotating file and JSON lines.

Every secret registered here is masked in every record, whatever the sink or level, before the
record is formatted; ``diagnose`` stays off so tracebacks never print local variables (a key).
Control characters in a message or a bound field (a dropped file's name may hold a newline) are
escaped the same way, so one event is always one line.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from pushagent.names import printable

if TYPE_CHECKING:
    from loguru import Record

    from pushagent.env import Environment

__all__ = ["HUMAN_FORMAT", "MASK", "add_file_sink", "add_json_stderr", "configure_stderr",
    "emit_error", "level_no", "mask", "register_secret", "release_secret", "secrets_held"]

MASK = "****"
HUMAN_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {message}{extra[context]}"

# Each secret with how many holders registered it: a client releases its key when closed, so a
# process that makes many clients (a test run, a library user) does not keep every key forever.
_secrets: dict[str, int] = {}
_secrets_lock = threading.Lock()
# The secrets longest first, as ``mask`` replaces them: rebuilt when one is registered or
# released, not sorted under the lock for every record (several records per file).
_masked_order: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """From now on ``value`` is replaced by ``****`` in every log record (until released)."""
    if value:
        with _secrets_lock:
            _secrets[value] = _secrets.get(value, 0) + 1
            _reorder()


def release_secret(value: str | None) -> None:
    """One holder of ``value`` is done with it; masking stops when the last one is."""
    if value:
        with _secrets_lock:
            count = _secrets.get(value, 0) - 1
            if count > 0:
                _secrets[value] = count
            else:
                _secrets.pop(value, None)
            _reorder()


def _reorder() -> None:
    """Called with ``_secrets_lock`` held."""
    global _masked_order
    _masked_order = tuple(sorted(_secrets, key=len, reverse=True))


def secrets_held() -> int:
    """How many distinct secrets are masked now (for tests of the release)."""
    with _secrets_lock:
        return len(_secrets)


def mask(text: str) -> str:
    for secret in _masked_order:  # one tuple, replaced whole: no lock needed to read it
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _context(extra: dict[str, Any]) -> str:
    # A field with no value (a rejected file has no segment) is left out, not shown as None.
    fields = [
        f"{key}={value}" for key, value in extra.items()
        if key != "context" and value is not None
    ]
    return (" | " + " ".join(fields)) if fields else ""


def _patch(record: Record) -> None:
    record["message"] = printable(mask(record["message"]))
    extra = record["extra"]
    for key, value in list(extra.items()):
        if isinstance(value, str):
            extra[key] = printable(mask(value))
    # Bound values that are not strings (a Path) are only turned into text here.
    extra["context"] = printable(mask(_context(extra)))


def configure_stderr(*, env: Environment, verbosity: int = 0, level: str | None = None) -> None:
    """Reset loguru to one stderr sink; colour only on a terminal (journald gets plain lines)."""
    logger.remove()
    logger.configure(patcher=_patch, extra={"context": ""})
    chosen = level or ("DEBUG" if verbosity > 0 else "WARNING" if verbosity < 0 else "INFO")
    logger.add(
        env.stderr,
        level=chosen,
        format=HUMAN_FORMAT,
        colorize=env.stderr_isatty,
        backtrace=False,
        diagnose=False,
    )


def level_no(name: str) -> int:
    return logger.level(name).no


def add_file_sink(
    path: Path, *, level: str, rotation: str, retention: str, json_lines: bool
) -> None:
    logger.add(
        str(path),
        level=level,
        format=HUMAN_FORMAT,
        rotation=rotation,
        retention=retention,
        serialize=json_lines,
        backtrace=False,
        diagnose=False,
        enqueue=True,
    )


def add_json_stderr(*, env: Environment, level: str) -> None:
    """Replace the human stderr sink with one JSON object per event."""
    logger.remove()
    logger.configure(patcher=_patch, extra={"context": ""})
    logger.add(env.stderr, level=level, serialize=True, backtrace=False, diagnose=False)


def emit_error(env: Environment, message: str) -> None:
    """The one line an expected failure prints on stderr."""
    print(f"pushagent: error: {printable(mask(message))}", file=env.stderr or sys.stderr)
