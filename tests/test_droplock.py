"""One drop folder, one agent: the lock on ``drop/.pushagent.lock``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.droplock import LOCK_NAME, DropFolderLock
from pushagent.errors import EXIT_USAGE, StateLockedError
from pushagent.simulator import Simulator
from tests.e2e import KEY, AgentHome, wait_for

HOLD = """
import sys
from pathlib import Path
from pushagent.droplock import DropFolderLock
lock = DropFolderLock(Path(sys.argv[1]), state_dir=Path(sys.argv[2]))
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock on tmp_path/drop for tmp_path/state-a."""
    (tmp_path / "drop").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "drop"), str(tmp_path / "state-a")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    yield process
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


def release(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=10) == 0


def test_the_lock_file_says_who_holds_the_folder(tmp_path: Path) -> None:
    lock = DropFolderLock(
        tmp_path, state_dir=tmp_path / "state", hostname=lambda: "box-1", pid=lambda: 4242,
        clock=lambda: 1_700_000_000.0,
    )
    lock.acquire()
    try:
        assert lock.held
        assert json.loads((tmp_path / LOCK_NAME).read_text()) == {
            "pid": 4242, "host": "box-1", "state_dir": str(tmp_path / "state"),
            "since": "2023-11-14T22:13:20Z",
        }
    finally:
        lock.release()
    assert not lock.held
    assert (tmp_path / LOCK_NAME).exists(), "never deleted: a newcomer could lock a new file"


def test_a_second_agent_on_the_folder_is_refused_naming_the_first(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    second = DropFolderLock(tmp_path / "drop", state_dir=tmp_path / "state-b")
    with pytest.raises(StateLockedError) as refused:
        second.acquire()
    message = str(refused.value)
    assert f"pid {holder.pid} on host {socket.gethostname()}" in message
    assert f"state_dir {tmp_path / 'state-a'}" in message
    assert "stop it, or give each agent its own drop folder" in message
    assert message.startswith(str(tmp_path / "drop" / LOCK_NAME))
    assert refused.value.exit_code == EXIT_USAGE
    assert not second.held
    holding = json.loads((tmp_path / "drop" / LOCK_NAME).read_text())
    assert holding["pid"] == holder.pid, "the refused agent left the holder's record alone"

    release(holder)  # the kernel drops the lock with its holder
    second.acquire()
    try:
        assert json.loads((tmp_path / "drop" / LOCK_NAME).read_text())["state_dir"] == str(
            tmp_path / "state-b"
        )
    finally:
        second.release()


def test_release_then_acquire_again_in_one_process(tmp_path: Path) -> None:
    first = DropFolderLock(tmp_path, state_dir=tmp_path / "a", pid=lambda: 1)
    second = DropFolderLock(tmp_path, state_dir=tmp_path / "b", pid=lambda: 2)
    first.acquire()
    with pytest.raises(StateLockedError, match="pid 1 on host"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
    first.acquire()
    first.release()


def test_an_unreadable_record_still_refuses(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("not json")
    first = DropFolderLock(tmp_path, state_dir=tmp_path / "a")
    first.acquire()
    (tmp_path / LOCK_NAME).write_text("[1, 2]")  # a record someone overwrote
    try:
        with pytest.raises(StateLockedError, match=r"pid unknown on host unknown"):
            DropFolderLock(tmp_path, state_dir=tmp_path / "b").acquire()
    finally:
        first.release()


def test_a_missing_drop_folder_is_not_locked_and_not_an_error(tmp_path: Path) -> None:
    lock = DropFolderLock(tmp_path / "not-mounted-yet", state_dir=tmp_path / "state")
    lock.acquire()
    assert not lock.held
    assert not (tmp_path / "not-mounted-yet").exists(), "the folder is not made by the lock"
    lock.release()


@pytest.mark.e2e
def test_two_agents_with_their_own_state_dirs_cannot_share_a_drop_folder(
    tmp_path: Path,
) -> None:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim") as sim:
        first = AgentHome(tmp_path / "a", sim.url)
        second = AgentHome(tmp_path / "b", sim.url)
        for home in (first, second):
            (home.root / "state").mkdir()
        second.config.write_text(
            second.config.read_text().replace("drop: ./drop", f"drop: {first.drop}")
        )
        process = first.start()
        lock_file = first.drop / LOCK_NAME

        def first_holds_the_lock() -> bool:
            assert process.poll() is None, first.log()
            return lock_file.exists() and f'"pid": {process.pid},' in lock_file.read_text()

        try:
            wait_for(first_holds_the_lock, what="the first agent to lock its drop folder")
            refused = second.run_once()
            assert process.poll() is None, "the first agent keeps running"
        finally:
            stopped = first.stop()
        assert refused.returncode == EXIT_USAGE, refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr  # one line, no traceback
        assert f"another pushagent (pid {process.pid} on host" in refused.stderr
        assert f"state_dir {first.root / 'state'}" in refused.stderr
        assert stopped == 0, first.log()
        assert second.run_once().returncode == 0, "free again once the first agent stopped"
