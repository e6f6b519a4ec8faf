from __future__ import annotations

import re
from dataclasses import dataclass, field

from pushagent.exchange import Job
from pushagent.router import JobIndex, PendingFile, SegmentRouter, plan_assignments

BIG_ID = 8000000000000001152


def job(job_id: int, segment: int | None, id_string: str | None = None) -> Job:
    return Job.from_json(
        {
            "jobId": job_id,
            "status": "WAITING_TO_RECIEVE_DATA",
            "producerSegmentID": segment,
            "producerSegmentIDString": id_string,
        }
    )


def test_default_layout() -> None:
    router = SegmentRouter(names={"vip_customers": "45311"})
    assert router.segment_of("45311.csv") == "45311"
    assert router.segment_of("45311.CSV") == "45311"
    assert router.segment_of("vip_customers.csv") == "45311"
    assert router.segment_of("vip_customers/monday.csv") == "45311"
    assert router.segment_of("abc-segment/x.csv") == "abc-segment"
    assert router.segment_of(f"{BIG_ID}.csv") == str(BIG_ID)
    assert router.segment_of("45311.txt") is None
    assert router.segment_of("a/b/c.csv") is None


def test_compressed_drops_name_their_segment_like_a_csv() -> None:
    router = SegmentRouter(names={"vip_customers": "45311"})
    assert router.segment_of("45311.csv.gz") == "45311"
    assert router.segment_of("vip_customers.ZIP") == "45311"
    assert router.segment_of("vip_customers/monday.csv.gz") == "45311"
    assert router.segment_of("45311.gz") is None
    assert router.segment_of("45311.tar") is None


def test_the_names_settings_may_know_a_file_by() -> None:
    router = SegmentRouter(names={"vip_customers": "45311"},
                           pattern=re.compile(r"crm_(?P<segment>\w+)\.csv"))
    assert router.names_of("crm_vip_customers.csv") == ("vip_customers", "45311")
    assert router.names_of("germany/crm_7.csv") == ("7", "7", "germany")
    assert router.names_of("other.txt") == ()


def test_pattern_layout() -> None:
    router = SegmentRouter(
        names={"7": "45311"}, pattern=re.compile(r"crm_(?P<segment>\d+)_\d{8}\.csv")
    )
    assert router.segment_of("crm_123_20261129.csv") == "123"
    assert router.segment_of("sub/crm_7_20261129.csv") == "45311"
    assert router.segment_of("crm_123.csv") is None


def test_a_file_goes_to_every_job_of_its_segment() -> None:
    waiting = [job(2, 45311), job(1, 45311), job(3, 999)]
    [assignment] = plan_assignments([PendingFile("f", "45311", 1.0)], waiting, busy_jobs=set())
    assert [j.job_id for j in assignment.jobs] == [1, 2]


def test_oldest_file_first_and_the_rest_wait() -> None:
    pending = [PendingFile("new", "45311", 2.0), PendingFile("old", "45311", 1.0)]
    plan = plan_assignments(pending, [job(1, 45311)], busy_jobs=set())
    assert [(a.file.key, [j.job_id for j in a.jobs]) for a in plan] == [("old", [1])]


def test_busy_jobs_are_skipped() -> None:
    plan = plan_assignments([PendingFile("f", "45311", 1.0)], [job(1, 45311)], busy_jobs={"1"})
    assert plan == []


def test_a_job_named_two_ways_goes_to_the_older_file_only() -> None:
    pending = [PendingFile("by-string", "abc", 1.0), PendingFile("by-id", "45311", 2.0)]
    plan = plan_assignments(pending, [job(1, 45311, "abc")], busy_jobs=set())
    assert [(a.file.key, [j.job_id for j in a.jobs]) for a in plan] == [("by-string", [1])]


def test_big_ids_match_exactly() -> None:
    near = job(1, BIG_ID + 1)
    exact = job(2, BIG_ID)
    [assignment] = plan_assignments(
        [PendingFile("f", str(BIG_ID), 1.0)], [near, exact], busy_jobs=set()
    )
    assert [j.job_id for j in assignment.jobs] == [2]


def test_a_kept_index_plans_like_a_list() -> None:
    waiting = [job(3, 45311), job(1, 45311, "abc"), job(2, 999)]
    index = JobIndex(waiting)
    pending = [PendingFile("by-id", "45311", 2.0), PendingFile("by-string", "abc", 1.0)]
    for jobs in (waiting, index):
        plan = plan_assignments(pending, jobs, busy_jobs={"2"})
        assert [(a.file.key, [j.job_id for j in a.jobs]) for a in plan] == [
            ("by-string", [1]),
            ("by-id", [3]),
        ]


def test_job_index_lookups() -> None:
    index = JobIndex([job(3, 45311), job(1, 45311, "abc"), job(2, 999)])
    assert len(index) == 3
    assert [j.job_id for j in index] == [1, 2, 3]
    assert [j.job_id for j in index.waiting_for("45311")] == [1, 3]
    assert [j.job_id for j in index.waiting_for("abc")] == [1]
    assert index.waiting_for("nope") == ()
    assert index.segments() == {"45311", "abc", "999"}
    assert [j.job_id for j in index.without_files({"abc"})] == [2, 3]
    assert [j.job_id for j in index.without_files(set())] == [1, 2, 3]


def test_ties_in_age_go_by_key() -> None:
    pending = [PendingFile("b", "45311", 1.0), PendingFile("a", "45311", 1.0)]
    [assignment] = plan_assignments(pending, [job(1, 45311)], busy_jobs=set())
    assert assignment.file.key == "a"


@dataclass
class CountingJob:
    job_id: int
    keys: frozenset[str]
    calls: list[int] = field(default_factory=list)

    def segment_keys(self) -> frozenset[str]:
        self.calls.append(self.job_id)
        return self.keys


def test_scale_each_job_is_looked_at_once_per_plan() -> None:
    n = 5000
    calls: list[int] = []
    jobs = [CountingJob(i, frozenset({str(i % 100), f"s{i % 100}"}), calls) for i in range(n)]
    pending = [PendingFile(str(i), str(i % 200), float(n - i)) for i in range(n)]
    busy = {str(i) for i in range(0, n, 7)}  # every segment keeps some free jobs
    plan = plan_assignments(pending, jobs, busy_jobs=busy)
    assert len(calls) == n  # one segment_keys() call per job, not one per file and job
    assert len(plan) == 100  # segments 100-199 have files but no job
    assert sum(len(a.jobs) for a in plan) == n - len(busy)
    oldest = {a.file.segment: a.file.since for a in plan}
    assert all(oldest[f.segment] <= f.since for f in pending if f.segment in oldest)
