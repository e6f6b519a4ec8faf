"""Issue 12, ops fit: a quiet library, mistakes caught early, commands that fit habits."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

import pushagent
from pushagent import logs
from pushagent.exchange import ExchangeClient
from pushagent.simulator import Simulator
from tests.e2e import KEY

ROOT = Path(__file__).resolve().parent.parent


def pushagent_cli(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
    stdin: str | None = None, timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """The real ``python -m pushagent`` process, as a user meets it."""
    return subprocess.run(
        [sys.executable, "-m", "pushagent", *argv], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, input=stdin if stdin is not None else "",
        timeout=timeout,
    )


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim") as simulator:
        yield simulator


# --- a quiet, tidy library ----------------------------------------------------------------------


def test_the_library_logs_nothing_when_imported_and_used(sim: Simulator) -> None:
    script = (
        "from pushagent.exchange import ExchangeClient\n"
        f"with ExchangeClient({sim.url!r}, {KEY!r}) as client:\n"
        "    client.list_jobs('SEGMENT_EXPORT')\n"
        "print('listed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "listed"
    assert done.stderr == ""  # no loguru DEBUG line such as 'GET ... -> HTTP 200'


def test_the_cli_still_logs(sim: Simulator) -> None:
    done = pushagent_cli("-v", "jobs", "list", "SEGMENT_EXPORT",
                         env={"EXCHANGE_API_KEY": KEY, "EXCHANGE_BASE_URL": sim.url})
    assert done.returncode == 0, done.stderr
    assert "HTTP 200" in done.stderr


def test_one_version_source() -> None:
    assert pushagent.__version__ == version("pushagent")
    done = pushagent_cli("--version")
    assert done.stdout.strip() == f"pushagent {version('pushagent')}"
    assert "version = " not in (ROOT / "pushagent" / "__init__.py").read_text()


@pytest.mark.parametrize("module", [
    "pushagent", "pushagent.exchange", "pushagent.simulator", "pushagent.output",
    "pushagent.units", "pushagent.notify", "pushagent.throttle",
])
def test_public_modules_declare_all(module: str) -> None:
    imported = __import__(module, fromlist=["__all__"])
    assert imported.__all__
    for name in imported.__all__:
        assert hasattr(imported, name), name


def test_a_closed_client_releases_its_key_from_the_masking_set(sim: Simulator) -> None:
    before = logs.secrets_held()
    for n in range(20):
        with ExchangeClient(sim.url, f"{KEY}-{n}"):
            pass
    assert logs.secrets_held() == before


def test_the_validator_and_simulator_do_not_reach_into_the_cli_layers() -> None:
    validator = (ROOT / "pushagent" / "validator.py").read_text()
    assert "pushagent.output" not in validator
    for path in (ROOT / "pushagent" / "simulator").glob("*.py"):
        assert "import ConfigError" not in path.read_text(), path.name
