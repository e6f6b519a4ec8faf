"""How long one assignment plan and one readiness pass take with many files and jobs.

    python benchmarks/planning.py
    python benchmarks/planning.py --source /tmp/old/pushagent   # another copy, to compare

``--source`` loads ``router.py`` and ``readiness.py`` from that folder instead of the installed
package (both import only the standard library), so the code at an older commit can be timed
from ``git show <commit>:pushagent/router.py > /tmp/old/pushagent/router.py``.

Planning: N pending files and N waiting jobs (the real ``Job`` model, each named by id and by
id string) over N segments, one job in ten busy. Readiness: 20,000 real empty files in a
temporary folder, a fake clock, the real ``os.lstat`` counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

from pushagent.exchange import Job


def _load(name: str, source: Path | None) -> ModuleType:
    if source is None:
        return importlib.import_module(f"pushagent.{name}")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", source / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _job(job_id: int, segment: int) -> Job:
    return Job.from_json(
        {
            "jobId": job_id,
            "status": "WAITING_TO_RECIEVE_DATA",
            "producerSegmentID": segment,
            "producerSegmentIDString": f"seg-{segment}",
        }
    )


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _CountingLstat:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> os.stat_result:
        self.calls += 1
        return os.lstat(path)


def _best(action: Callable[[], object], *, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def bench_planning(router: ModuleType, sizes: list[int]) -> None:
    print("planning: one plan_assignments pass (N files, N jobs, N segments)")
    for n in sizes:
        segments = n
        pending = [
            router.PendingFile(key=str(i), segment=str(45000 + i % segments), since=float(n - i))
            for i in range(n)
        ]
        jobs = [_job(10**6 + i, 45000 + i % segments) for i in range(n)]
        busy = {str(job.job_id) for job in jobs[::10]}
        rounds = 1 if n > 2000 and not hasattr(router, "JobIndex") else 3
        if n > 5000 and not hasattr(router, "JobIndex"):
            print(f"  {n:>6} files and jobs: skipped (quadratic: minutes)")
            continue
        plan_time = _best(
            partial(router.plan_assignments, pending, jobs, busy_jobs=busy), rounds=rounds
        )
        line = f"  {n:>6} files and jobs: {plan_time * 1000:9.1f} ms"
        if hasattr(router, "JobIndex"):
            index = router.JobIndex(jobs)
            build = _best(partial(router.JobIndex, jobs))
            reuse = _best(partial(router.plan_assignments, pending, index, busy_jobs=busy))
            line += f"  (index build {build * 1000:.1f} ms, plan on a kept index "
            line += f"{reuse * 1000:.1f} ms)"
        print(line)


def bench_readiness(readiness: ModuleType, count: int) -> None:
    print(f"readiness: {count} tracked files (settle 2 s, fake clock, real lstat)")
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / f"{i}.csv" for i in range(count)]
        for path in paths:
            path.touch()
        clock, lstat = _Clock(), _CountingLstat()
        tracker = readiness.ReadinessTracker(
            settle_seconds=2.0, ignore=(".*",), trigger_suffix=None, clock=clock, lstat=lstat
        )
        start = time.perf_counter()
        for path in paths:
            tracker.observe(path, event="created")
            tracker.observe(path, event="written")
        observe = (time.perf_counter() - start) / (2 * count)
        print(f"  observe: {observe * 1e6:.1f} µs per event")

        lstat.calls = 0
        idle = _best(tracker.take_ready)
        print(f"  take_ready, none due: {idle * 1000:.2f} ms, {lstat.calls // 3} lstat calls")
        idle_deadline = _best(tracker.next_deadline)
        print(f"  next_deadline, none due: {idle_deadline * 1000:.3f} ms")

        probe = paths[-1]
        if hasattr(tracker, "__contains__"):
            member = _best(lambda: probe in tracker)
        else:
            member = _best(lambda: probe in tracker.tracked())
        print(f"  'is this path tracked' check: {member * 1e6:.1f} µs")

        clock.now += 2.0
        lstat.calls = 0
        start = time.perf_counter()
        ready = tracker.take_ready()
        due = time.perf_counter() - start
        print(f"  take_ready, all {len(ready)} due: {due * 1000:.1f} ms, {lstat.calls} lstat calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="folder holding router.py and readiness.py")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--tracked", type=int, default=20000)
    args = parser.parse_args()
    bench_planning(_load("router", args.source), args.sizes)
    bench_readiness(_load("readiness", args.source), args.tracked)


if __name__ == "__main__":
    main()
