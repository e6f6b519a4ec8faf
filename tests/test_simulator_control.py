"""The control API and its client, the request log, seeds, the lifecycle clock and body framing."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
import requests

from pushagent.errors import Conflict, ExchangeUnavailable
from pushagent.exchange import ExchangeClient, RetryPolicy
from pushagent.simulator import Simulator, SimulatorControl, Upload
from pushagent.simulator.bodies import RequestBody, receive_to_file
from pushagent.simulator.errors import SimulatorInputError
from pushagent.simulator.seed import load_seed
from pushagent.simulator.state import JobStore, Refusal, UploadSlot

KEY = "sim-account-key"
EXAMPLE_SEED = Path(__file__).resolve().parent.parent / "examples" / "simulator-jobs.yaml"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(data_dir=tmp_path / "sim", complete_after=0.0) as simulator:
        yield simulator


@pytest.fixture
def control(sim: Simulator) -> Iterator[SimulatorControl]:
    remote = SimulatorControl(sim.url)
    yield remote
    remote.close()


@pytest.fixture
def client(sim: Simulator) -> Iterator[ExchangeClient]:
    with ExchangeClient(sim.url, KEY, retry=RetryPolicy(max_attempts=1)) as exchange:
        yield exchange


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "segment.csv"
    path.write_text(text)
    return path


# -- control API ----------------------------------------------------------------------------


def test_the_receive_throttle_is_set_and_read_through_the_control_api(
    sim: Simulator, control: SimulatorControl
) -> None:
    assert control.max_bytes_per_second() == 0
    control.set_max_bytes_per_second(5_000_000)
    assert (control.max_bytes_per_second(), sim.max_bytes_per_second) == (5_000_000, 5_000_000)
    with pytest.raises(SimulatorInputError):
        control.set_max_bytes_per_second(-1)
    control.set_max_bytes_per_second(0)
    assert sim.max_bytes_per_second == 0


def test_an_upload_through_the_throttle_takes_its_size_over_the_rate(
    sim: Simulator, client: ExchangeClient, tmp_path: Path
) -> None:
    rate = 2_000_000
    sim.set_max_bytes_per_second(rate)
    job_id = sim.add_job()["jobId"]
    body = "Email\n" + "".join(f"user{n}@example.com\n" for n in range(60_000))  # ~1.3 MB
    started = time.monotonic()
    client.upload_data(job_id, _csv(tmp_path, body), retry=False)
    elapsed = time.monotonic() - started
    # The throttle lets a burst of 0.1 s through at once; the rest arrives at the rate.
    assert elapsed >= len(body) / rate - 0.15
    (upload,) = sim.uploads(job_id)
    assert upload.sha256 == hashlib.sha256(body.encode()).hexdigest()


def test_control_creates_inspects_and_changes_jobs(
    sim: Simulator, control: SimulatorControl, client: ExchangeClient
) -> None:
    created = control.add_job(producerSegmentID=8000000000000001152, identityMappings=None)
    job_id = created["jobId"]

    assert created["status"] == "WAITING_TO_RECIEVE_DATA"
    assert created["producerSegmentID"] == 8000000000000001152
    assert created["identityMappings"] is None
    assert control.job(job_id) == sim.job(job_id)
    assert [job["jobId"] for job in control.jobs()] == [job_id]
    assert client.get_job("SEGMENT_EXPORT", job_id).producer_segment_id == 8000000000000001152

    cancelled = control.set_status(job_id, "cancelled", error_details="cancelled in the UI")

    assert cancelled["status"] == "CANCELLED"
    assert sim.job(job_id)["errorDetails"] == "cancelled in the UI"
    assert control.set_status(job_id, "WAITING_TO_RECEIVE_DATA")["status"] == (
        "WAITING_TO_RECIEVE_DATA"
    )


def test_control_shows_uploads_and_their_data(
    sim: Simulator, control: SimulatorControl, client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = control.add_job()["jobId"]
    text = "Email\na@example.com\nb@example.com\n"

    client.upload_data(job_id, _csv(tmp_path, text))

    state = control.job_state(job_id)
    assert (state["uploads"], state["uploadInProgress"]) == (1, False)
    assert state["job"]["status"] == "COMPLETE"
    (upload,) = control.uploads(job_id)
    assert isinstance(upload, Upload)
    assert upload == sim.uploads(job_id)[0]
    assert (upload.index, upload.bytes, upload.records) == (0, len(text), 2)
    assert upload.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert control.upload_data(job_id, 0) == text.encode()
    with pytest.raises(KeyError):
        control.upload_data(job_id, 1)


def test_control_scheduled_jobs_and_faults(
    control: SimulatorControl, client: ExchangeClient
) -> None:
    scheduled = control.add_scheduled_job(producerEndpointID=85, jobName="NIGHTLY")
    fault = control.add_fault(method="get", path="scheduledjobs", status=503, retry_after=1.5)

    assert [job["jobId"] for job in control.scheduled_jobs()] == [scheduled["jobId"]]
    assert fault["method"] == "GET"
    assert control.faults() == [fault]
    control.clear_faults()
    assert control.faults() == []
    assert client.list_scheduled_jobs()[0].job_name == "NIGHTLY"


def test_control_reports_unknown_jobs_and_bad_input(control: SimulatorControl) -> None:
    with pytest.raises(KeyError):
        control.job(4242)
    with pytest.raises(KeyError):
        control.uploads(4242)
    with pytest.raises(SimulatorInputError):
        control.add_job(jobCategory="NOPE")
    job_id = control.add_job()["jobId"]
    with pytest.raises(SimulatorInputError):
        control.set_status(job_id, "SLEEPING")
    with pytest.raises(SimulatorInputError):
        control.add_job(jobId=job_id)
    with pytest.raises(SimulatorInputError):
        control.add_fault(method="GET", path="x")


def test_control_api_answers_json_errors_for_unknown_routes(sim: Simulator) -> None:
    answer = requests.get(f"{sim.url}/_sim/nothing", timeout=10)
    broken = requests.post(f"{sim.url}/_sim/jobs", data=b"{not json", timeout=10)

    assert answer.status_code == 404
    assert "no control call" in answer.json()["message"]
    assert broken.status_code == 400


def test_request_log_masks_the_key_and_skips_control_calls(
    sim: Simulator, control: SimulatorControl, client: ExchangeClient
) -> None:
    control.add_job(producerEndpointID=85)
    client.list_jobs("SEGMENT_EXPORT", endpoint_id=85, extra_fields=True)
    control.job_state(1001)

    (entry,) = control.request_log()

    assert entry["method"] == "GET"
    assert entry["path"] == "/v1/jobs/SEGMENT_EXPORT"
    assert entry["query"] == {"endpointId": "85", "extraFields": "true"}
    assert entry["status"] == 200
    assert entry["body_bytes"] == 0
    assert entry["fault"] is None
    assert entry["headers"]["Authorization"] == "Bearer ****"
    assert KEY not in json.dumps(control.request_log())
    assert entry == sim.request_log()[0]
    control.clear_request_log()
    assert control.request_log() == []


def test_control_client_reports_an_unreachable_simulator(tmp_path: Path) -> None:
    with Simulator(data_dir=tmp_path / "gone") as simulator:
        url = simulator.url
    remote = SimulatorControl(url, timeout=2)

    with pytest.raises(ExchangeUnavailable, match="is it running"):
        remote.jobs()


# -- HTTP framing and keep-alive ------------------------------------------------------------


def test_chunked_upload_is_stored_whole(sim: Simulator) -> None:
    job_id = sim.add_job()["jobId"]
    pieces = [b"Email\n", b"a@example.com\n" * 1000, b"b@example.com"]

    answer = requests.post(
        f"{sim.url}/v1/jobs/{job_id}/data",
        data=iter(pieces),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/csv"},
        timeout=10,
    )

    assert answer.status_code == 200
    assert sim.request_log()[-1]["headers"]["Transfer-Encoding"] == "chunked"
    (upload,) = sim.uploads(job_id)
    assert upload.records == 1001
    assert sim.upload_data(job_id, 0) == b"".join(pieces)


def test_refused_bodies_are_read_so_keep_alive_stays_in_step(
    sim: Simulator, tmp_path: Path
) -> None:
    job_id = sim.add_job(status="RUNNING")["jobId"]
    session = requests.Session()
    auth = {"Authorization": f"Bearer {KEY}"}
    body = b"Email\n" + b"x@example.com\n" * 10_000

    refused = session.post(f"{sim.url}/v1/jobs/{job_id}/data", data=body, headers=auth)
    unauthenticated = session.post(f"{sim.url}/v1/jobs/{job_id}/data", data=body)
    listing = session.get(f"{sim.url}/v1/jobs/SEGMENT_EXPORT", headers=auth)

    assert [refused.status_code, unauthenticated.status_code, listing.status_code] == [
        409,
        401,
        200,
    ]
    assert [entry["body_bytes"] for entry in sim.request_log()] == [len(body), len(body), 0]
    assert listing.json()[0]["jobId"] == job_id


def test_conflict_from_the_client_names_the_state(
    sim: Simulator, client: ExchangeClient, tmp_path: Path
) -> None:
    job_id = sim.add_job(status="ERROR")["jobId"]

    with pytest.raises(Conflict) as refused:
        client.upload_data(job_id, _csv(tmp_path, "Email\na@example.com\n"))

    assert "ERROR" in (refused.value.server_message or "")


def _body(raw: bytes, **headers: str) -> RequestBody:
    message = Message()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return RequestBody(io.BufferedReader(io.BytesIO(raw)), message)


def test_chunked_body_with_extensions_and_trailers(tmp_path: Path) -> None:
    raw = b"6;ext=1\r\nEmail\n\r\n4\r\na@b\n\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT REQUEST"
    body = _body(raw, Transfer_Encoding="chunked")

    received = receive_to_file(body, tmp_path / "out")

    assert (tmp_path / "out").read_bytes() == b"Email\na@b\n"
    assert (received.size, received.records) == (10, 1)
    assert body.finished


@pytest.mark.parametrize(
    ("raw", "headers"),
    [
        (b"Email\na", {"Content_Length": "100"}),
        (b"5\r\nEm", {"Transfer_Encoding": "chunked"}),
        (b"zz\r\n", {"Transfer_Encoding": "chunked"}),
        (b"3\r\nEmail\r\n0\r\n\r\n", {"Transfer_Encoding": "chunked"}),
    ],
)
def test_truncated_or_malformed_bodies_raise(
    tmp_path: Path, raw: bytes, headers: dict[str, str]
) -> None:
    with pytest.raises(ConnectionAbortedError):
        receive_to_file(_body(raw, **headers), tmp_path / "out")


def test_invalid_content_length_is_refused() -> None:
    with pytest.raises(ValueError):
        _body(b"", Content_Length="ten")


# -- lifecycle clock ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_job_is_running_until_complete_after_has_passed(tmp_path: Path) -> None:
    clock = FakeClock()
    store = JobStore(data_dir=tmp_path, complete_after=30.0, clock=clock, wall_clock=lambda: 1.5)
    job_id = store.add_job({})["jobId"]
    slot = store.begin_upload(job_id)
    assert isinstance(slot, UploadSlot)
    slot.part_path.write_bytes(b"Email\na\nb\n")

    store.finish_upload(slot, size=10, records=2, sha256="x", content_type="text/csv")
    clock.now += 29.9
    running = store.job(job_id)
    clock.now += 0.1
    complete = store.job(job_id)

    assert (running["status"], running["sourceRecordCount"], running["started"]) == (
        "RUNNING",
        None,
        1500,
    )
    assert (complete["status"], complete["sourceRecordCount"], complete["ended"]) == (
        "COMPLETE",
        2,
        1500,
    )
    assert isinstance(store.begin_upload(job_id), Refusal)


def test_set_status_stops_the_pending_completion(tmp_path: Path) -> None:
    clock = FakeClock()
    store = JobStore(data_dir=tmp_path, complete_after=1.0, clock=clock)
    job_id = store.add_job({})["jobId"]
    slot = store.begin_upload(job_id)
    assert isinstance(slot, UploadSlot)
    slot.part_path.write_bytes(b"Email\n")
    store.finish_upload(slot, size=6, records=0, sha256="x", content_type=None)

    store.set_status(job_id, "ERROR")
    clock.now += 5

    assert store.job(job_id)["status"] == "ERROR"


# -- seeds ----------------------------------------------------------------------------------


def test_example_seed_serves_its_jobs(tmp_path: Path) -> None:
    seed = load_seed(EXAMPLE_SEED)

    with Simulator(
        data_dir=tmp_path / "sim", jobs=seed.jobs, scheduled_jobs=seed.scheduled_jobs
    ) as simulator, ExchangeClient(simulator.url, KEY) as client:
        waiting = client.list_jobs(
            "SEGMENT_EXPORT",
            endpoint_id=85,
            status="WAITING_TO_RECEIVE_DATA",
            include_producer_segment_id_string=True,
        )
        client.download_segment_file(2001, "segment-2001-part1.csv", tmp_path / "ready.csv")
        scheduled = client.list_scheduled_jobs(endpoint_id=85)

    assert [job.job_id for job in waiting] == [1347, 1348]
    assert waiting[0].identity_mappings == {"Email": "EMAIL_SHA256"}
    assert waiting[0].producer_segment_id == 45311
    assert waiting[1].producer_segment_id == 8000000000000001152
    assert waiting[1].producer_segment_id_string == "newsletter-subscribers"
    assert (tmp_path / "ready.csv").read_text().startswith("Email,FirstName\njane@example.com")
    assert [job.job_id for job in scheduled] == [301]


def test_a_pull_job_can_serve_a_local_file_of_any_size(
    control: SimulatorControl, client: ExchangeClient, tmp_path: Path
) -> None:
    source = tmp_path / "large.csv"
    source.write_bytes(b"Email\n" + b"someone@example.com\n" * 50000)
    job = control.add_job(status="READY_FOR_DOWNLOAD", segmentDataFiles=["big.csv", "small.csv"],
                          segmentDataPaths={"big.csv": str(source)},
                          segmentData={"small.csv": "Email\na@b.c\n"})
    client.download_segment_file(job["jobId"], "big.csv", tmp_path / "got.csv")
    assert (tmp_path / "got.csv").read_bytes() == source.read_bytes()
    client.delete_segment_file(job["jobId"], "big.csv")
    assert source.exists(), "the seed's own file is never deleted"
    with pytest.raises(SimulatorInputError, match="segmentDataPaths must map file names to paths"):
        control.add_job(status="READY_FOR_DOWNLOAD", segmentDataFiles=["x.csv"],
                        segmentDataPaths={"x.csv": str(tmp_path / "missing.csv")})


def test_json_seed_may_be_a_plain_list(tmp_path: Path) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([{"jobId": 7, "producerSegmentID": 8000000000000001152}, {}]))

    seed = load_seed(path)

    assert seed.scheduled_jobs == ()
    assert seed.jobs[0]["producerSegmentID"] == 8000000000000001152
    assert len(seed.jobs) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("jobs: [{status: SLEEPING}]", "jobs[0]: unknown status"),
        ("jobs: [{}, {jobCategory: NOPE}]", "jobs[1]: jobCategory"),
        ("jobs: [{jobId: 5}, {jobId: 5}]", "jobs[1]: jobId 5 is used twice"),
        ("jobs: [{jobId: 1.5}]", "is not an integer ID"),
        ("scheduledJobs: [{producerEndpointID: abc}]", "scheduledJobs[0]"),
        ("jobs: [{segmentData: {a.csv: x}}]", "not in segmentDataFiles"),
        ("jobz: []", "unknown top-level keys"),
        ("just text", "must hold a list of jobs"),
        ("jobs: [1]", "jobs[0] must be a mapping"),
        ("jobs: [unclosed", "is not valid YAML"),
    ],
)
def test_bad_seeds_name_the_file_and_the_entry(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(text)

    with pytest.raises(SimulatorInputError) as refused:
        load_seed(path)

    assert str(path) in str(refused.value)
    assert expected in str(refused.value)


def test_missing_seed_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SimulatorInputError, match="cannot read the jobs file"):
        load_seed(tmp_path / "absent.yaml")


def test_owned_data_dir_is_removed_on_stop() -> None:
    with Simulator() as simulator:
        data_dir = simulator.data_dir
        simulator.add_job(status="READY_FOR_DOWNLOAD", segmentDataFiles=["a.csv"])
        assert any(data_dir.rglob("*.csv"))

    assert not data_dir.exists()
