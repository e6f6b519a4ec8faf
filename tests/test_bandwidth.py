"""``upload.max_bytes_per_second``: one cap for all upload workers together."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pushagent.simulator import Simulator
from pushagent.throttle import BURST_SECONDS, Throttle, throttled
from tests.e2e import ENDPOINT, KEY, AgentHome, received
from tests.fakes import FakeClock


class SleepingClock(FakeClock):
    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


def test_bytes_are_booked_one_after_another_at_the_rate() -> None:
    clock = SleepingClock()
    throttle = Throttle(1000, clock=clock, sleep=clock.sleep)
    throttle.take(500)
    throttle.take(500)
    assert clock.now - 1000.0 == pytest.approx(1.0)  # 1000 bytes at 1000 B/s: one second


def test_an_idle_spell_saves_no_more_than_the_burst() -> None:
    clock = SleepingClock()
    throttle = Throttle(1000, clock=clock, sleep=clock.sleep)
    clock.advance(3600)
    throttle.take(2000)
    assert sum(clock.slept) == pytest.approx(2.0 - BURST_SECONDS)


def test_the_progress_wrapper_books_each_chunk_once_and_restarts_with_an_attempt() -> None:
    clock = SleepingClock()
    seen: list[int] = []
    report = throttled(seen.append, Throttle(100, clock=clock, sleep=clock.sleep))
    assert report is not None
    for sent in (50, 100, 30, 100):  # an attempt of 100 bytes, then a retry from 0
        report(sent)
    assert seen == [50, 100, 30, 100]
    assert clock.now - 1000.0 == pytest.approx(2.0)


def test_no_cap_leaves_progress_alone() -> None:
    assert throttled(None, None) is None


@pytest.mark.e2e
def test_the_agent_keeps_all_its_workers_within_the_cap(tmp_path: Path) -> None:
    """Four files at once on four workers, capped at 256 KiB/s together: the measured rate,
    from the first POST's start to the last upload's acceptance, is within 15 % of the cap."""
    rate = 256 * 1024
    size = 192 * 1024
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim") as sim:
        (tmp_path / "agent" / "state").mkdir(parents=True)
        home = AgentHome(tmp_path / "agent", sim.url, settle=0.2,
                         extra="")
        home.config.write_text(home.config.read_text().replace(
            "  max_attempts:", f"  max_bytes_per_second: {rate}\n  max_attempts:", 1))
        jobs = []
        for n in range(4):
            segment = 45311 + n
            jobs.append(sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=segment,
                                    identityMappings={"Email": "EMAIL_SHA256"})["jobId"])
            line = b"x" * 40 + b"@example.com\n"
            body = b"Email\n" + line * ((size - 6) // len(line))
            (home.drop / f"{segment}.csv").write_bytes(body)
        done = home.run_once(timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        total = sum(len(data) for job in jobs for data in received(sim, int(job)))
        posts = [entry for entry in sim.request_log() if entry["method"] == "POST"]
        accepted = [upload.time for job in jobs for upload in sim.uploads(int(job))]
    assert total == sum(os.path.getsize(p) for p in home.done.rglob("*.csv"))
    measured = total / (max(accepted) - min(entry["time"] for entry in posts))
    print(f"cap {rate} B/s, measured {measured:.0f} B/s ({measured / rate - 1:+.1%})")
    assert abs(measured / rate - 1) <= 0.15, measured
