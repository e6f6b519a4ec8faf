"""End to end against the simulator: the first upload of a file validates it while it is sent
(``upload.validate_while_sending``, the default), with its final block withheld until the whole
file has passed. A problem found on the way leaves no upload; a file that changes between its
jobs never completes the second upload; a kill -9 mid-body loses nothing and sends nothing
twice."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.simulator import Simulator
from tests.e2e import drop_atomically, wait_for
from tests.faultkit import (
    Drop,
    FaultHome,
    assert_invariant,
    body_in_flight,
    requests_to,
    running,
    simulator,
    waiting_job,
)

ROWS = 120_000  # ~4 MB: well over loopback's socket buffers and the 64 KiB final block


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with simulator(tmp_path) as s:
        yield s


def big_csv(tag: str, *, bad_line: int | None = None) -> bytes:
    lines = [b"Email,tag\n"]
    lines += [b"user%d.%s@example.com,%s\n" % (n, tag.encode(), tag.encode()) for n in range(ROWS)]
    if bad_line is not None:
        lines[bad_line - 1] = b"only-one-field@example.com\n"
    return b"".join(lines)


def posts(sim: Simulator, job: int) -> list[dict[str, object]]:
    return requests_to(sim, "POST", rf"^/v1/jobs/{job}/data$")


def test_an_invalid_row_found_mid_stream_leaves_no_upload_and_fails_the_job_with_its_line(
    tmp_path: Path, sim: Simulator
) -> None:
    job = waiting_job(sim)
    data = big_csv("bad", bad_line=ROWS // 2)
    home = FaultHome(tmp_path / "agent", sim.url)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,), outcome="failed")])
    state = sim.job_state(job)
    assert state["job"]["status"] == "ERROR"
    assert f"line {ROWS // 2}: expected 2 fields, found 1" in str(state["job"]["errorDetails"])
    assert sim.uploads(job) == []
    [cut] = posts(sim, job)
    # The body was on its way when the problem was found, and cut before its end.
    assert cut["status"] is None
    assert 0 < int(str(cut["body_bytes"])) < len(data)


def test_a_file_changed_between_its_first_and_second_job_never_completes_the_second(
    tmp_path: Path, sim: Simulator
) -> None:
    first, second = waiting_job(sim), waiting_job(sim)
    data = big_csv("changing")
    # Each upload held before its body is read: the file changes while the second is held
    # (or before it starts), after the first has landed.
    for job in (first, second):
        sim.add_fault(method="POST", path=f"/v1/jobs/{job}/data", delay=3)
    home = FaultHome(tmp_path / "agent", sim.url, workers=1)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        landed = wait_for(lambda: [j for j in (first, second) if sim.uploads(j)],
                          what="the first upload to land")
        [claimed] = (home.state / "claimed").glob("*45311.csv")
        with open(claimed, "ab") as stream:
            stream.write(b"late.row@example.com,late\n")
        appended_at = time.time()
        report = wait_for(lambda: list(home.failed.rglob("*.error.json")),
                          what="the changed file in failed/")
    other = second if landed == [first] else first
    original = hashlib.sha256(data).hexdigest()
    assert [upload.sha256 for upload in sim.uploads(landed[0])] == [original]
    completed = sim.uploads(other)
    if completed and completed[0].time < appended_at:
        # A machine too busy to append within the 3 s hold: the second upload was the file as
        # validated, and the change was caught after it, before done/.
        assert [upload.sha256 for upload in completed] == [original]
    else:
        assert completed == [], "the changed file completed its second upload"
        assert sim.job(other)["status"] == "WAITING_TO_RECIEVE_DATA", "the other job waits"
    assert "changed after job(s)" in report[0].read_text()


def test_kill_9_mid_pipelined_upload_loses_nothing_and_sends_nothing_twice(
    tmp_path: Path, sim: Simulator
) -> None:
    first, second = waiting_job(sim), waiting_job(sim)
    data = big_csv("killed")
    sim.set_max_bytes_per_second(1_000_000)  # a slow link: the kill lands mid-body
    home = FaultHome(tmp_path / "agent", sim.url, workers=1)
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        wait_for(lambda: posts(sim, first) or posts(sim, second) or body_in_flight(sim.url),
                 what="the first upload to start")
        wait_for(lambda: body_in_flight(sim.url) > 256 * 1024, what="part of the body sent")
        home.kill9()
        cut = wait_for(lambda: posts(sim, first) + posts(sim, second),
                       what="the server to drop the cut body")
        assert [r["status"] for r in cut] == [None]
        assert sim.uploads(first) == sim.uploads(second) == []
        sim.set_max_bytes_per_second(0)
        home.start()
        assert_invariant(home, sim, [Drop("45311.csv", data, (first, second))])
    for job in (first, second):
        assert [r["status"] for r in posts(sim, job) if r["status"] is not None] == [200]


def test_with_validate_while_sending_false_an_invalid_file_is_never_sent(
    tmp_path: Path, sim: Simulator
) -> None:
    job = waiting_job(sim)
    data = big_csv("first", bad_line=ROWS // 2)
    home = FaultHome(tmp_path / "agent", sim.url)
    # The upload section is the config's last: the fallback setting goes at its end.
    home.config.write_text(home.config.read_text() + "  validate_while_sending: false\n")
    with running(home):
        drop_atomically(home.drop, "45311.csv", data)
        assert_invariant(home, sim, [Drop("45311.csv", data, (job,), outcome="failed")])
    assert f"line {ROWS // 2}: expected 2 fields" in str(sim.job(job)["errorDetails"])
    assert posts(sim, job) == [], "validated first: not one byte was sent"
