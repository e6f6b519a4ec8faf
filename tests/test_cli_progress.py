"""The progress bar: drawn on a terminal only, with bytes, percent and rate, throttled."""

from __future__ import annotations

import io

from pushagent.env import Environment
from pushagent.progress import ProgressBar, progress_bar
from tests.fakes import FakeClock


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_not_a_terminal() -> None:
    env = Environment(stdout=TTY(), stderr=io.StringIO(), environ={})
    assert progress_bar(env, label="job 1", total=10) is None


def test_a_bar_on_a_terminal_draws_bytes_percent_and_rate() -> None:
    stream = TTY()
    clock = FakeClock(0.0)
    bar = ProgressBar(stream=stream, label="job 1347", total=4 * 1024 * 1024, clock=clock)
    clock.advance(2.0)
    bar(1024 * 1024)
    line = stream.getvalue()
    assert line.startswith("\rjob 1347  [######..................]   25%")
    assert "1.0 MiB / 4.0 MiB" in line
    assert "512.0 KiB/s" in line


def test_redraws_are_throttled_and_the_end_is_always_drawn() -> None:
    stream = TTY()
    clock = FakeClock(0.0)
    bar = ProgressBar(stream=stream, label="f", total=100, clock=clock)
    bar(10)
    bar(20)  # same instant: not drawn
    clock.advance(0.5)
    bar(100)
    bar.finish()
    draws = stream.getvalue().split("\r")[1:]
    assert len(draws) == 3
    assert "100%" in draws[-1]
    assert stream.getvalue().endswith("\n")


def test_unknown_total_shows_bytes_and_rate_only() -> None:
    stream = TTY()
    clock = FakeClock(0.0)
    bar = ProgressBar(stream=stream, label="part1.csv", total=None, clock=clock)
    clock.advance(1.0)
    bar(2048)
    assert stream.getvalue() == "\rpart1.csv  2.0 KiB  2.0 KiB/s"


def test_a_shorter_line_after_a_retry_overwrites_the_longer_one() -> None:
    stream = TTY()
    clock = FakeClock(0.0)
    bar = ProgressBar(stream=stream, label="f", total=None, clock=clock)
    clock.advance(1.0)
    bar(5 * 1024 * 1024)
    clock.advance(1.0)
    bar(10)
    first, second = stream.getvalue().split("\r")[1:]
    assert len(second) >= len(first)
    assert second.rstrip().endswith("B/s")
