"""The randomized fault campaign (tests/campaign.py) for a few fixed seeds: the real agent
process, awkward drops, injected server faults, kill -9 and SIGTERM, then the whole promise.

The classic seeds replay issue 9's plans; the full ones add IDENTITY_IMPORT jobs, drops in other
dialects, kill -9 while a large file is converted, ``pushagent retry --all`` while the agent runs,
and a webhook that answers 500 or holds its answer. A failure prints the seed's steps and
evidence; ``python -m tests.campaign --seed N [--mix classic]`` replays it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.campaign import CLASSIC_DROPS, DropKind, Mix, StepKind, plan, run_campaign

pytestmark = pytest.mark.faults

CLASSIC_SEEDS = (102, 202, 299)  # chosen for their mix: every drop kind, fault kind and signal
# Between them every dialect; each has IDENTITY_IMPORT jobs, a retry and a kill -9 converting.
FULL_SEEDS = (2778, 1240)
STEPS = 12
FULL_STEPS = 20


@pytest.mark.parametrize("seed", CLASSIC_SEEDS)
def test_campaign_seed_keeps_the_promise(tmp_path: Path, seed: int) -> None:
    result = run_campaign(seed, steps=STEPS, workdir=tmp_path, mix=Mix.CLASSIC)

    assert not result.violations, result.report()


@pytest.mark.parametrize("seed", FULL_SEEDS)
def test_full_campaign_seed_keeps_the_promise(tmp_path: Path, seed: int) -> None:
    result = run_campaign(seed, steps=FULL_STEPS, workdir=tmp_path, mix=Mix.FULL)

    assert not result.violations, result.report()


def test_a_plan_depends_only_on_its_seed() -> None:
    assert plan(5, 30, as_root=False) == plan(5, 30, as_root=False)
    assert plan(5, 30, as_root=False) != plan(6, 30, as_root=False)
    as_root = [step.drop for step in plan(5, 200, as_root=True)]
    assert DropKind.UNREADABLE not in as_root  # root reads anything: no chmod 000 drops then
    kinds = {step.kind for step in plan(5, 200, as_root=False)}
    assert kinds == set(StepKind)


def test_a_classic_plan_draws_only_issue_9s_steps() -> None:
    steps = plan(5, 300, as_root=False, mix=Mix.CLASSIC)
    assert {step.drop for step in steps if step.drop} == set(CLASSIC_DROPS)
    assert {step.kind for step in steps} == set(StepKind) - {StepKind.CONVERT_KILL,
                                                             StepKind.RETRY}
    assert {step.category for step in steps} == {"SEGMENT_EXPORT"}


def test_a_full_plan_draws_every_category_and_dialect() -> None:
    steps = plan(5, 400, as_root=False)
    assert {step.drop for step in steps if step.drop} == set(DropKind)
    assert {step.category for step in steps} == {"SEGMENT_EXPORT", "IDENTITY_IMPORT"}
    for step in steps:
        if step.drop is not None:  # cp1252 drops, and only they, go to the segment set for it
            assert (step.drop is DropKind.CP1252) == (step.segment == 61005), step.describe()
