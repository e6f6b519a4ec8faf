"""The shipped examples: the dropper writes atomically, the sample CSVs are what they claim."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pushagent.config import load_config
from pushagent.validator import validate_csv
from tests.e2e import wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DROPPER = EXAMPLES / "crm-export.sh"
DATA = b"Email,firstName\nana@example.com,Ana\n"

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")


def drop(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", str(DROPPER), *args], input=stdin, capture_output=True,
                          timeout=20, check=False)


def everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_dropper_renames_a_complete_file_into_place(tmp_path: Path) -> None:
    source = tmp_path / "export.csv"
    source.write_bytes(DATA)
    drop_dir = tmp_path / "drop"
    drop_dir.mkdir()
    result = drop(str(drop_dir), "vip_customers", str(source))
    assert result.returncode == 0, result.stderr
    final = Path(result.stdout.decode().strip())
    assert final.parent == drop_dir / "vip_customers"
    assert final.suffix == ".csv" and not final.name.startswith(".")
    assert final.read_bytes() == DATA
    assert everything(drop_dir) == ["vip_customers", f"vip_customers/{final.name}"]


def test_the_dropper_reads_stdin(tmp_path: Path) -> None:
    result = drop(str(tmp_path), "45311", stdin=DATA)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.decode().strip()).read_bytes() == DATA


def test_while_data_arrives_only_a_hidden_part_file_exists(tmp_path: Path) -> None:
    with subprocess.Popen(["sh", str(DROPPER), str(tmp_path), "45311"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(DATA[:10])
            process.stdin.flush()
            (partial,) = wait_for(lambda: list((tmp_path / "45311").glob(".*.part")))
            wait_for(lambda: partial.stat().st_size == 10)
            assert everything(tmp_path) == ["45311", f"45311/{partial.name}"]
            process.stdin.write(DATA[10:])
            process.stdin.close()
            out = process.stdout.read()
            assert process.wait(timeout=20) == 0
        finally:
            if process.poll() is None:
                process.kill()
    final = Path(out.decode().strip())
    assert partial.name == f".{final.name}.part"
    assert final.read_bytes() == DATA
    assert everything(tmp_path) == ["45311", f"45311/{final.name}"]


def test_an_empty_export_leaves_nothing_behind(tmp_path: Path) -> None:
    result = drop(str(tmp_path), "45311", stdin=b"")
    assert result.returncode == 1
    assert b"empty" in result.stderr
    assert everything(tmp_path) == ["45311"]


def test_a_failed_copy_leaves_no_temporary_file(tmp_path: Path) -> None:
    result = drop(str(tmp_path), "45311", str(tmp_path / "missing.csv"))
    assert result.returncode != 0
    assert everything(tmp_path) == ["45311"]


def test_a_segment_with_a_slash_is_refused(tmp_path: Path) -> None:
    result = drop(str(tmp_path), "../etc", stdin=DATA)
    assert result.returncode == 2
    assert everything(tmp_path) == []


def test_the_sample_csvs_are_valid_and_invalid() -> None:
    assert validate_csv(EXAMPLES / "valid-segment.csv").ok
    problems = validate_csv(EXAMPLES / "invalid-segment.csv").problems
    assert len(problems) == 5


def test_the_example_config_loads_for_both_layouts(tmp_path: Path) -> None:
    text = (EXAMPLES / "agent.yaml").read_text().replace("/var/lib/pushagent", str(tmp_path))
    for name in ("drop", "done", "failed"):
        (tmp_path / name).mkdir()
    (tmp_path / "agent.yaml").write_text(text)
    (tmp_path / "exchange_api_key").write_text("key-from-credentials\n")
    config = load_config(tmp_path / "agent.yaml", environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.exchange.api_key == "key-from-credentials"
    assert config.state_dir == tmp_path / "state"
    assert config.metrics.enabled and config.metrics.host == "127.0.0.1"
    assert f":{config.metrics.port}/healthz" in (EXAMPLES / "Dockerfile").read_text()


def test_the_unit_gives_write_access_to_exactly_the_configured_folders() -> None:
    unit = (EXAMPLES / "pushagent.service").read_text()
    config = (EXAMPLES / "agent.yaml").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("ReadWritePaths=")]
    writable = line.removeprefix("ReadWritePaths=").split()
    for key in ("drop:", "done:", "failed:", "state_dir:"):
        (setting,) = [x.split()[1] for x in config.splitlines() if x.strip().startswith(key)]
        assert setting in writable
    for directive in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                      "Restart=on-failure", "User=pushagent",
                      "LoadCredential=exchange_api_key:"):
        assert directive in unit
