from __future__ import annotations

import io
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from pushagent.cli import BROKEN_PIPE, main
from pushagent.env import Environment

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_demo_delivers_the_sample_and_exits_zero(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pushagent", "demo"],
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    sample = resources.files("pushagent").joinpath("data/sample-segment.csv").read_bytes()
    rows = sample.count(b"\n") - 1
    assert "WAITING_TO_RECIEVE_DATA -> COMPLETE" in result.stdout
    assert f"received {len(sample)} bytes, {rows} rows" in result.stdout
    assert "moved to done/: vip_customers.csv" in result.stdout
    assert "job.json, segment-part1.csv, segment-part2.csv; now COMPLETE" in result.stdout
    assert "Traceback" not in result.stderr


def test_the_packaged_sample_is_the_one_in_examples() -> None:
    packaged = resources.files("pushagent").joinpath("data/sample-segment.csv").read_bytes()
    assert packaged == (REPO / "examples" / "sample-segment.csv").read_bytes()



class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_that_goes_away_is_not_a_traceback() -> None:
    stderr = io.StringIO()
    env = Environment(stdout=ClosedPipe(), stderr=stderr, environ={})
    code = main(["validate", str(REPO / "examples" / "valid-segment.csv")], env=env)
    assert code == BROKEN_PIPE
    assert stderr.getvalue() == ""
