"""One drop folder, one agent: an exclusive lock on ``drop/.pushagent.lock``.

The state_dir lock (``journal.StateLock``) stops two agents sharing a journal, not two agents
with their own state_dirs watching one drop folder: both would claim and upload the same files,
and one would meet 409. The lock file's name is hidden, so the default ``watch.ignore`` (``.*``)
never takes it for a drop; it holds who has the folder, for the message the next agent prints.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from pushagent.errors import ConfigError, StateLockedError

LOCK_NAME = ".pushagent.lock"
_HOLDER_BYTES = 4096
# flock answers these when the filesystem (an NFS mount without a lock daemon) cannot lock.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class DropFolderLock:
    """Exclusive ``flock`` on ``drop/.pushagent.lock``; the kernel drops it if the holder dies.

    A drop folder missing at start (a share not mounted yet) is not locked and not an error:
    the agent already says the folder is missing and waits for it, and refusing to start would
    turn a short outage into a restart loop. The lock is not taken later either, so an agent
    started that way runs unguarded. A filesystem that cannot lock at all gets a warning, not a
    refusal: refusing there would stop agents that ran fine before this lock existed.
    The file is never deleted: unlinking a locked file lets a newcomer lock a new file of the
    same name while the old holder still runs.
    """

    def __init__(
        self,
        drop: Path,
        *,
        state_dir: Path,
        hostname: Callable[[], str] = socket.gethostname,
        pid: Callable[[], int] = os.getpid,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = drop / LOCK_NAME
        self._state_dir = state_dir
        self._hostname = hostname
        self._pid = pid
        self._clock = clock
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise ``StateLockedError`` naming the agent that has it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            logger.debug("{}: the drop folder is missing; not locked", self.path.parent)
            return
        except OSError as error:
            raise ConfigError(
                f"{self.path}: cannot open the drop-folder lock ({error.strerror}); let the "
                "agent's user read and write it, or remove it while no agent runs"
            ) from error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateLockedError(
                f"{self.path}: another pushagent (pid {holder['pid']} on host {holder['host']}, "
                f"state_dir {holder['state_dir']}, since {holder['since']}) is watching this "
                "drop folder; stop it, or give each agent its own drop folder"
            ) from error
        except OSError as error:
            os.close(fd)
            if error.errno not in _NO_LOCKING:
                raise
            logger.warning(
                "{}: this filesystem cannot lock files ({}); make sure no other agent watches "
                "this drop folder",
                self.path,
                error.strerror,
            )
            return
        self._write_holder(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write_holder(self, fd: int) -> None:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock()))
        holder = {
            "pid": self._pid(),
            "host": self._hostname(),
            "state_dir": str(self._state_dir),
            "since": since,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)


def _read_holder(fd: int) -> dict[str, str]:
    """Who holds the lock, as far as the file tells; "unknown" for what it does not."""
    try:
        loaded = json.loads(os.pread(fd, _HOLDER_BYTES, 0) or b"{}")
    except (OSError, ValueError):
        loaded = {}
    fields = loaded if isinstance(loaded, dict) else {}
    return {key: str(fields.get(key, "unknown")) for key in ("pid", "host", "state_dir", "since")}
