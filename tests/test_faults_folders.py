"""Fault suite: the agent's folders misbehave (done/ unusable, the drop folder removed and made
again); no file is lost and the agent carries on once the folder is back."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.agent import MOVE_RETRY_MAX_SECONDS
from pushagent.simulator import Simulator
from tests.e2e import drop_atomically, wait_for
from tests.faultkit import (
    Drop,
    FaultHome,
    assert_invariant,
    csv_rows,
    folder_outage,
    journal,
    received,
    running,
    simulator,
    waiting_job,
)

pytestmark = pytest.mark.faults


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with simulator(tmp_path) as s:
        yield s


def test_an_unusable_done_folder_loses_nothing_and_the_move_is_retried(
    tmp_path: Path, sim: Simulator
) -> None:
    jobs = [waiting_job(sim), waiting_job(sim, 50001)]
    drops = [
        Drop("45311.csv", csv_rows("outage-a"), (jobs[0],)),
        Drop("50001.csv", csv_rows("outage-b"), (jobs[1],)),
    ]
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        home.wait_started()
        # Works as root too: done/ is a regular file for the outage, so no permission bit helps.
        with folder_outage(home.done):
            for drop in drops:
                drop_atomically(home.drop, drop.name, drop.data)
            wait_for(
                lambda: home.log().count("cannot move the file") >= 2, what="both moves failing"
            )
            for drop, job in zip(drops, jobs, strict=True):
                assert received(sim, job) == [drop.data]
            # Uploaded, not lost: each file waits, whole, in the claim area.
            rows = journal(
                home, "SELECT path FROM files WHERE state = 'delivered' ORDER BY rel_path"
            )
            assert [Path(row["path"]).read_bytes() for row in rows] == [d.data for d in drops]
            assert home.alive()
        assert_invariant(home, sim, drops, timeout=MOVE_RETRY_MAX_SECONDS + 10)


def test_a_drop_folder_removed_and_made_again_is_watched_again(
    tmp_path: Path, sim: Simulator
) -> None:
    jobs = [waiting_job(sim, 50000 + n) for n in range(4)]
    drops = [Drop(f"{50000 + n}.csv", csv_rows(f"again{n}"), (jobs[n],)) for n in range(4)]
    home = FaultHome(tmp_path / "agent", sim.url, rescan=0.5)
    with running(home):
        drop_atomically(home.drop, drops[0].name, drops[0].data)
        wait_for(lambda: (home.done / drops[0].name).exists(), what="the first file done")
        # Removed, noticed, made again; one file dropped before the watcher is back, one after.
        shutil.rmtree(home.drop)
        wait_for(lambda: "disappeared" in home.log(), what="the agent to notice")
        home.drop.mkdir()
        drop_atomically(home.drop, drops[1].name, drops[1].data)
        wait_for(lambda: "observer restarted" in home.log(), what="the watcher restart")
        drop_atomically(home.drop, drops[2].name, drops[2].data)
        assert_invariant(home, sim, drops[:3], alive=False)
        # Removed and made again at once, faster than any rescan can see it missing.
        shutil.rmtree(home.drop)
        home.drop.mkdir()
        drop_atomically(home.drop, drops[3].name, drops[3].data)
        assert_invariant(home, sim, drops)
