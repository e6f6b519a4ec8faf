"""The deploy files: the systemd unit runs what the README installs, and the monitoring examples
name only what the agent really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from pushagent.metrics import AgentMetrics

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "pushagent.service"
README = ROOT / "README.md"


def exec_start() -> str:
    (line,) = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=").split()[0]


def test_the_unit_runs_the_executable_the_readme_installs() -> None:
    executable = exec_start()
    venv = executable.removesuffix("/bin/pushagent")
    assert venv != executable, "ExecStart must run a venv's bin/pushagent"
    install = f"python3 -m venv {venv} && sudo {venv}/bin/pip install ."
    assert install in README.read_text(), install
    # The unit's own install notes say the same, and nothing still points elsewhere.
    assert f"python3 -m venv {venv} && {venv}/bin/pip install ." in UNIT.read_text()
    for text in (UNIT.read_text(), README.read_text()):
        for mention in re.findall(r"(?<![=\w])/[\w/.-]*/bin/pushagent\b", text):
            assert mention in (executable, "/usr/local/bin/pushagent"), mention
    assert "/usr/local/bin/pushagent" not in UNIT.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """The unit as shipped, with its venv at the one this test runs in (a real venv holding the
    installed pushagent, as the README's install line makes at /opt/pushagent)."""
    here = Path(sys.prefix) / "bin" / "pushagent"
    assert here.exists(), "pushagent is not installed in this venv"
    unit = tmp_path / "pushagent.service"
    unit.write_text(UNIT.read_text().replace(exec_start(), str(here)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pushagent.service" not in done.stdout + done.stderr  # no complaint about it


def exported_names() -> set[str]:
    """Every series name the agent's /metrics serves (the registry HealthServer exposes)."""
    metrics = AgentMetrics()
    metrics.api_error(503)  # a labelled counter appears once it has a label
    metrics.upload_seconds.observe(1.0)
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split()[0] for line in text.splitlines()
            if line and not line.startswith("#")}


NAME = re.compile(r"\b(pushagent_[a-z_]+)")


def test_the_dashboard_names_only_metrics_the_agent_exports() -> None:
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [variable.get("query", "") for variable in dashboard["templating"]["list"]]
    used = {name for expr in exprs for name in NAME.findall(expr)}
    exported = exported_names()
    assert used, "the dashboard queries no pushagent metric"
    assert used <= exported, sorted(used - exported)
    # Every metric family the agent exports has a panel.
    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in exported
                if not name.endswith("_created")}
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in used}
    assert families <= shown, sorted(families - shown)


def test_the_alert_rules_name_only_metrics_the_agent_exports() -> None:
    text = (ROOT / "examples" / "prometheus-rules.yml").read_text()
    exprs = re.findall(r"expr: (.*(?:\n {10}.*)*)", text)
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert used and used <= exported_names(), sorted(used - exported_names())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool here")
def test_promtool_checks_the_alert_rules() -> None:
    done = subprocess.run(["promtool", "check", "rules", str(ROOT / "examples" /
                                                             "prometheus-rules.yml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
