"""The randomized fault campaign (tests/campaign.py) for three fixed seeds: the real agent
process, awkward drops, injected server faults, kill -9 and SIGTERM, then the whole promise.

A failure prints the seed's steps and evidence; ``python -m tests.campaign --seed N`` replays it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaign import DropKind, StepKind, plan, run_campaign

pytestmark = pytest.mark.faults

SEEDS = (102, 202, 299)  # chosen for their mix: every drop kind, fault kind and signal
STEPS = 12


@pytest.mark.parametrize("seed", SEEDS)
def test_campaign_seed_keeps_the_promise(tmp_path: Path, seed: int) -> None:
    result = run_campaign(seed, steps=STEPS, workdir=tmp_path)

    assert not result.violations, result.report()


def test_a_plan_depends_only_on_its_seed() -> None:
    assert plan(5, 30, as_root=False) == plan(5, 30, as_root=False)
    assert plan(5, 30, as_root=False) != plan(6, 30, as_root=False)
    as_root = [step.drop for step in plan(5, 200, as_root=True)]
    assert DropKind.UNREADABLE not in as_root  # root reads anything: no chmod 000 drops then
    kinds = {step.kind for step in plan(5, 200, as_root=False)}
    assert kinds == set(StepKind)
