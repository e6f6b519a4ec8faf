"""Every CSV a CRM or spreadsheet writes, through the real agent to the simulator: what arrives is
UTF-8, comma-separated CSV with the original's rows; done/ keeps the original as dropped."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushagent.simulator import Simulator
from tests.e2e import KEY, AgentHome, drop_atomically, received, wait_for, waiting_job

pytestmark = pytest.mark.e2e

ROWS = [
    ["Email", "firstName", "note"],
    ["ana@example.com", "Anaïs", "likes ; and , and |"],
    ["bo@example.com", 'Bo "the boss"', "two\r\nlines"],
    ["cé@example.com", "Cé", ""],
    ["dan@example.com", "Dan", "1,5"],
]
# Per segment, as an operator would set them: the rest is auto.
EXTRA = """\
input:
  segments:
    "45302": {encoding: cp1252, delimiter: ";"}
"""


def written(rows: list[list[str]], *, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL,
            lineterminator: str = "\r\n") -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, quoting=quoting, lineterminator=lineterminator
               ).writerows(rows)
    return out.getvalue()


def parsed(data: bytes) -> list[list[str]]:
    """Rows as csv reads the canonical form: UTF-8 without a byte order mark, commas."""
    assert not data.startswith(b"\xef\xbb\xbf"), "a byte order mark was sent"
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim-data", complete_after=0.2) as s:
        yield s


@pytest.fixture
def home(tmp_path: Path, sim: Simulator) -> Iterator[AgentHome]:
    h = AgentHome(tmp_path / "agent", sim.url, extra=EXTRA)
    yield h
    if h.process is not None:
        h.kill9()


def status_json(home: AgentHome) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "pushagent", "status", "-c", str(home.config), "--json"],
        capture_output=True, text=True, env=home.env(), cwd=home.root, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_every_dialect_arrives_as_utf8_comma_csv_with_the_same_rows(
    home: AgentHome, sim: Simulator
) -> None:
    drops = {
        # Excel "Unicode Text": UTF-16LE with a byte order mark, tab-separated, CRLF.
        "45301.csv": (b"\xff\xfe" + written(ROWS, delimiter="\t").encode("utf-16-le"), ROWS),
        # Excel "CSV" in a decimal-comma locale: Windows-1252 with ';' (set for this segment).
        "45302.csv": (written(ROWS, delimiter=";").encode("cp1252"), ROWS),
        # Salesforce Data Loader / Excel "CSV UTF-8": a BOM, every field quoted, CRLF.
        "45303.csv": (b"\xef\xbb\xbf" + written(ROWS, quoting=csv.QUOTE_ALL).encode(), ROWS),
        "45304.csv": (written(ROWS, delimiter="|", lineterminator="\n").encode(), ROWS),
        "45305.csv.gz": (gzip.compress(written(ROWS).encode()), ROWS),
        "45306.zip": (zipped({"export/contacts.csv": written(ROWS, delimiter=";").encode()}),
                      ROWS),
    }
    jobs = {name: waiting_job(sim, segment=int(name.split(".")[0])) for name in drops}
    home.start()
    for name, (data, _) in drops.items():
        drop_atomically(home.drop, name, data)
    for name in drops:
        wait_for(lambda name=name: (home.done / name).exists(),  # type: ignore[misc]
                 timeout=30, what=f"{name} in done/")
    for name, (data, rows) in drops.items():
        bodies = received(sim, jobs[name])
        assert len(bodies) == 1, f"{name} was sent {len(bodies)} times"
        assert parsed(bodies[0]) == rows, name
        assert (home.done / name).read_bytes() == data, "done/ keeps the original as dropped"
    # The already-canonical one went as it was, less its byte order mark.
    assert received(sim, jobs["45303.csv"])[0] == drops["45303.csv"][0][3:]
    claimed = home.root / "state" / "claimed"
    wait_for(lambda: not list(claimed.iterdir()), what="staged copies removed")
    recent = status_json(home)["recent"]
    assert isinstance(recent, list)
    finished = {row["rel_path"]: row for row in recent}
    assert finished["45301.csv"]["converted_from"] == (
        "UTF-16LE with a byte order mark, tab-separated")
    assert finished["45302.csv"]["converted_from"] == "cp1252, semicolon-separated"
    assert finished["45306.zip"]["converted_from"] == "zip of UTF-8, semicolon-separated"
    assert finished["45303.csv"]["converted_from"] is None
    assert home.stop() == 0
    assert "Traceback" not in home.log()


def test_inputs_that_cannot_be_read_fail_their_jobs_with_a_one_line_reason(
    home: AgentHome, sim: Simulator
) -> None:
    utf16 = b"\xff\xfe" + written(ROWS, delimiter="\t").encode("utf-16-le")
    drops = {
        "45311.zip": (zipped({"a.csv": b"Email\na@x\n", "b.csv": b"Email\nb@x\n"}),
                      "the zip holds 2 files ('a.csv', 'b.csv'); it must hold exactly one CSV"),
        "45312.csv.gz": (gzip.compress(written(ROWS).encode())[:-12], "not a valid gzip file"),
        "45313.csv": (utf16[:-1], "the file ends in the middle of a UTF-16LE character"),
        "45314.csv": (written(ROWS, delimiter=";").encode("cp1252", "replace"),
                      "byte 0xEF is not UTF-8; if your exporter writes Windows-1252, set "
                      "input.encoding: cp1252"),
    }
    jobs = {name: waiting_job(sim, segment=int(name.split(".")[0])) for name in drops}
    home.start()
    for name, (data, _) in drops.items():
        drop_atomically(home.drop, name, data)
    for name, (_, phrase) in drops.items():
        report_path = home.failed / f"{name}.error.json"
        wait_for(report_path.exists, timeout=30, what=f"{name} in failed/")
        reason = json.loads(report_path.read_text(encoding="utf-8"))["reason"]
        assert phrase in reason and "\n" not in reason, reason
        assert sim.job(jobs[name])["status"] == "ERROR"
        assert phrase in sim.job(jobs[name])["errorDetails"]
        assert received(sim, jobs[name]) == []
    claimed = home.root / "state" / "claimed"
    wait_for(lambda: not list(claimed.iterdir()), what="the claim folder emptied")
    assert sorted(p.name for p in home.failed.iterdir() if not p.name.endswith(".json")) == \
        sorted(drops), "failed/ keeps the originals"
    assert home.stop() == 0


def test_a_salesforce_header_in_capitals_is_refused_with_a_hint(
    home: AgentHome, sim: Simulator
) -> None:
    job = waiting_job(sim, segment=45311)  # maps Email
    rows = [["EMAIL", "FIRSTNAME"], ["ana@example.com", "Ana"]]
    home.start()
    drop_atomically(home.drop, "45311.csv", written(rows, quoting=csv.QUOTE_ALL).encode())
    wait_for(lambda: sim.job(job)["status"] == "ERROR", timeout=30, what="the job failed")
    assert "column 'Email' not found; the header has 'EMAIL'" in sim.job(job)["errorDetails"]


def test_an_unknown_encoding_is_refused_at_start_with_its_key_and_line(
    tmp_path: Path, sim: Simulator
) -> None:
    home = AgentHome(tmp_path / "agent", sim.url,
                     extra="input:\n  encoding: cp1525\n")
    done = subprocess.run(
        [sys.executable, "-m", "pushagent", "run", "-c", str(home.config), "--once"],
        capture_output=True, text=True, env=home.env(), cwd=home.root, timeout=30,
    )
    assert done.returncode == 2
    line = home.config.read_text().splitlines().index("  encoding: cp1525") + 1
    assert f"line {line}: input.encoding: unknown encoding 'cp1525'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_kill_during_conversion_loses_nothing_and_sends_once(
    home: AgentHome, sim: Simulator
) -> None:
    job = waiting_job(sim)
    rows = [["Email", "firstName", "note"]] + [
        [f"user{n}@example.com", f"Ü{n}", "a;b" if n % 7 else 'x "y"\nz'] for n in range(400_000)
    ]
    data = b"\xff\xfe" + written(rows, delimiter="\t").encode("utf-16-le")
    claimed = home.root / "state" / "claimed"
    home.start()
    drop_atomically(home.drop, "45311.csv", data)
    wait_for(lambda: claimed.is_dir() and any(p.name.endswith(".tmp") for p in claimed.iterdir()),
             timeout=30, what="a conversion in progress")
    home.kill9()
    assert received(sim, job) == []
    home.start()
    wait_for((home.done / "45311.csv").exists, timeout=60, what="45311.csv in done/")
    bodies = received(sim, job)
    assert len(bodies) == 1
    assert parsed(bodies[0]) == rows
    wait_for(lambda: not list(claimed.iterdir()), what="staged copies removed")
    assert home.stop() == 0


def test_commas_in_and_after_quoted_fields_arrive_as_csv_reads_them(
    home: AgentHome, sim: Simulator
) -> None:
    # Found by fuzzing the conversion: a ';' line with a comma in a plain field and one after
    # a closing quote went out twice, merged into one row of the same width, so nothing
    # refused it and the job took 'Müller, Hans"Müller, Hans' for a name.
    text = ('name;Email;title\r\n'
            'Müller, Hans;hans@example.com;"Dr." Med, PhD\r\n'
            '",",;bo@example.com;""x"y,z\r\n')
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    assert rows[1] == ["Müller, Hans", "hans@example.com", "Dr. Med, PhD"]
    job = waiting_job(sim)
    home.start()
    drop_atomically(home.drop, "45311.csv", text.encode())
    wait_for((home.done / "45311.csv").exists, timeout=30, what="45311.csv in done/")
    bodies = received(sim, job)
    assert len(bodies) == 1
    assert parsed(bodies[0]) == rows
    assert home.stop() == 0


def test_a_converted_file_waiting_again_keeps_no_staged_copy(
    home: AgentHome, sim: Simulator
) -> None:
    # Found while adding kill -9 during conversion to the campaign: a file whose job stopped
    # waiting before its upload went back to waiting in the claim area with its converted
    # copy beside it - as large as the file, unexplained by status, for as long as it waits.
    job = waiting_job(sim)
    sim.add_fault(method="POST", path=rf"^/v1/jobs/{job}/data$", delay=2)
    data = b"\xff\xfe" + written(ROWS, delimiter="\t").encode("utf-16-le")
    claimed = home.root / "state" / "claimed"
    home.start()
    drop_atomically(home.drop, "45311.csv", data)
    wait_for(lambda: not sim.faults(), timeout=30, what="the upload held by the server")
    sim.set_status(job, "CANCELLED")

    def waiting_again() -> bool:
        pending = status_json(home).get("pending")
        return isinstance(pending, list) and any(row["state"] == "waiting" for row in pending)

    wait_for(waiting_again, timeout=30, what="45311.csv waiting for another job")
    assert [p.name for p in claimed.iterdir()] == ["1-45311.csv"]
    assert received(sim, job) == []
    again = waiting_job(sim)
    wait_for((home.done / "45311.csv").exists, timeout=30, what="45311.csv in done/")
    assert [parsed(body) for body in received(sim, again)] == [ROWS]
    assert home.stop() == 0
