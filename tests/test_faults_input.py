"""Fault suite: bad input in the drop folder. Broken files fail their jobs with a reason; links
and directories are moved aside unread; odd names are delivered like any other, never run."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.simulator import Simulator
from tests.e2e import drop_atomically
from tests.faultkit import (
    Drop,
    FaultHome,
    assert_invariant,
    csv_rows,
    received,
    requests_to,
    running,
    simulator,
    waiting_job,
)

pytestmark = pytest.mark.faults

SECRET = b"Email\nroot-password-8842@example.com,do-not-send\n" * 7 + b"# 391"
# Names the agent must treat as plain text: never a shell, never a path trick.
METACHARACTER_NAMES = {
    "$(touch pwned); rm -rf x": 51001,
    "a;b|c&d": 51002,
    "`touch pwned`": 51003,
}


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with simulator(tmp_path) as s:
        yield s


def invalid_inputs() -> dict[str, tuple[bytes, str]]:
    """name -> (content, a phrase the reason must hold)."""
    binary = bytes(random.Random(6).randrange(256) for _ in range(4096))
    return {
        "empty": (b"", "empty"),
        "header-only": (b"Email,firstName\n", "no data row"),
        "ragged": (b"Email,firstName\na@example.com,A\nb@example.com\n", "line 3"),
        "bad-utf8": (b"Email,firstName\na@example.com,Ren\xe9e\n", "UTF-8"),
        "binary": (binary, ""),
        "nul-bytes": (b"Email,firstName\na@example.com,A\x00B\n", "NUL"),
        "one-10mb-line": (b"Email" + b"x" * (10 * 1024 * 1024), "no data row"),
    }


def test_broken_files_fail_their_jobs_with_the_reason(tmp_path: Path, sim: Simulator) -> None:
    inputs = invalid_inputs()
    home = FaultHome(tmp_path / "agent", sim.url)
    drops: list[Drop] = []
    with running(home):
        for n, (name, (data, _)) in enumerate(inputs.items()):
            job = waiting_job(sim, 52000 + n)
            (home.drop / str(52000 + n)).mkdir()
            drop_atomically(home.drop / str(52000 + n), f"{name}.csv", data)
            drops.append(Drop(f"{52000 + n}/{name}.csv", data, (job,), outcome="failed"))
        # And a valid file with a 10 MB line, for a job of its own: sent whole.
        big = b"Email,payload\nbig@example.com," + b"y" * (10 * 1024 * 1024) + b"\n"
        big_job = waiting_job(sim, 52100)
        drop_atomically(home.drop, "52100.csv", big)
        drops.append(Drop("52100.csv", big, (big_job,)))
        assert_invariant(home, sim, drops, timeout=30)
        for drop, (name, (_, phrase)) in zip(drops[:-1], inputs.items(), strict=True):
            report = json.loads((home.failed / f"{drop.name}.error.json").read_text())
            assert phrase.lower() in report["reason"].lower(), (name, report["reason"])
            assert report["job_ids"] == [str(drop.jobs[0])]
            assert phrase.lower() in str(sim.job(drop.jobs[0])["errorDetails"]).lower()
        # A large file is validated while sent: its problem cuts the body short (no status,
        # nothing stored, as assert_invariant checked); no POST was answered with an error.
        answered = [r["status"] for r in requests_to(sim, "POST", r"/data$")]
        assert not [status for status in answered if status not in (200, None)]


def test_links_and_directories_are_moved_aside_unread(tmp_path: Path, sim: Simulator) -> None:
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    linked, folder_job, nested = waiting_job(sim), waiting_job(sim, 53001), waiting_job(sim, 53002)
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        home.wait_started()
        os.symlink(secret, home.drop / "45311.csv")
        # A directory named like a CSV, with a tempting file inside.
        (home.drop / "53001.csv").mkdir()
        (home.drop / "53001.csv" / "inner.csv").write_bytes(SECRET)
        # A link inside a segment folder, and a link to a folder.
        (home.drop / "53002").mkdir()
        os.symlink(secret, home.drop / "53002" / "export.csv")
        os.symlink(secret.parent, home.drop / "53003")
        drops = [
            Drop("45311.csv", SECRET, (linked,), outcome="aside"),
            Drop("53001.csv", SECRET, (folder_job,), outcome="aside"),
            Drop("53002/export.csv", SECRET, (nested,), outcome="aside"),
            Drop("53003", SECRET, outcome="aside"),
        ]
        assert_invariant(home, sim, drops)
        assert (home.failed / "45311.csv").is_symlink()
        assert (home.failed / "53002" / "export.csv").is_symlink()
        assert (home.failed / "53001.csv" / "inner.csv").is_file()
        assert (home.failed / "53003").is_symlink()
        assert secret.read_bytes() == SECRET
        # The secret never travelled: no upload holds it, no POST had its size.
        for job in sim.jobs():
            assert all(SECRET not in body for body in received(sim, int(job["jobId"])))
        assert all(r["body_bytes"] != len(SECRET) for r in requests_to(sim, "POST", "."))


def test_names_with_spaces_unicode_and_shell_metacharacters_are_delivered(
    tmp_path: Path, sim: Simulator
) -> None:
    home = FaultHome(tmp_path / "agent", sim.url, segments=METACHARACTER_NAMES)
    drops: list[Drop] = []
    with running(home):
        home.wait_started()
        for name, segment in METACHARACTER_NAMES.items():
            job = waiting_job(sim, segment)
            drop_atomically(home.drop, f"{name}.csv", csv_rows(f"meta{segment}"))
            drops.append(Drop(f"{name}.csv", csv_rows(f"meta{segment}"), (job,)))
        for n, name in enumerate(
            [
                "naïve façade.csv",
                "with  two  spaces .csv",
                "-rf.csv",
                "--help.csv",
                "'quoted' \"name\".csv",
                "x\\y.csv",
            ]
        ):
            segment = 51100 + n
            job = waiting_job(sim, segment)
            (home.drop / str(segment)).mkdir()
            drop_atomically(home.drop / str(segment), name, csv_rows(f"named{n}"))
            drops.append(Drop(f"{segment}/{name}", csv_rows(f"named{n}"), (job,)))
        assert_invariant(home, sim, drops)
        for root in (tmp_path, Path.cwd(), home.root):
            assert not list(root.rglob("pwned")), f"a file named pwned appeared under {root}"


def test_a_name_that_is_not_utf8_is_moved_aside_and_the_agent_carries_on(
    tmp_path: Path, sim: Simulator
) -> None:
    job = waiting_job(sim)
    data = csv_rows("latin1-name")
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        home.wait_started()
        folder = os.fsencode(home.drop / "45311")
        os.mkdir(folder)
        # Latin-1 bytes, as a Windows share or an old exporter writes them: not UTF-8.
        with open(os.path.join(folder, b"caf\xe9.csv"), "wb") as stream:
            stream.write(data)
        name = os.fsdecode(b"caf\xe9.csv")
        assert_invariant(home, sim, [Drop(name, data, (job,), outcome="aside")])
        report = json.loads((home.failed / f"{name}.error.json").read_text(encoding="utf-8"))
        assert "not valid UTF-8" in report["reason"] and report["file"] == "caf\\xe9.csv"
        assert "caf" not in report["reason"]  # the name is the report's file, not repeated
        # And a restart, which finds nothing of it in the journal, starts cleanly.
        home.stop()
        home.start()
        home.wait_started()
        assert_invariant(home, sim, [Drop(name, data, (job,), outcome="aside")])
