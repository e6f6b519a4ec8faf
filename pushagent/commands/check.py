"""``pushagent check``: is this config ready to run? Folders, filesystem, key and endpoint.

Run it as the agent's own user: "writable" is tested by creating and removing a file, with the
permissions of whoever runs the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pushagent.config import AgentConfig, load_config
from pushagent.env import Environment
from pushagent.errors import EXIT_FAILURE, EXIT_OK, PushAgentError
from pushagent.exchange import ExchangeClient, Job, JobCategory, JobStatus
from pushagent.logs import register_secret
from pushagent.output import add_json_flag, print_json
from pushagent.runtime import build_client, key_file_exposure

OK = "ok"
WARN = "warn"
FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One line of the verdict; ``exit_code`` is what a failure alone would exit with."""

    status: str
    subject: str
    message: str
    exit_code: int = EXIT_OK

    @property
    def line(self) -> str:
        return f"{self.status:<4} {self.subject}: {self.message}"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a config: folders, key, endpoint",
        description=(
            "Load the config, then check that each folder exists and is writable (a file is "
            "created and removed, so run this as the agent's user), that the folders share one "
            "filesystem (else moves are copies, not atomic renames: a warning), and that the "
            "key and endpoint work (one list of the endpoint's waiting SEGMENT_EXPORT jobs, no "
            "retries), then which segments the waiting jobs are for: a name under segments: "
            "that matches no waiting job, no job at all on the endpoint, and a key file others "
            "may read are warnings. Prints one verdict per item."
        ),
        epilog=(
            "Exit codes: 0 every check passed (warnings allowed); 1 a folder check failed, or "
            "checks failed for different reasons; 2 the config cannot be loaded; 3 the key was "
            "refused (HTTP 401/403); 4 the Exchange answered 404 (check the base URL); 5 the "
            "Exchange is unreachable or failing."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, required=True, help="the agent's YAML file")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    config = load_config(args.config, environ=env.environ)
    register_secret(config.exchange.api_key)
    findings = [*check_folders(config), *check_key_file(config), *check_exchange(config)]
    failed = [finding for finding in findings if finding.status == FAIL]
    if args.json:
        print_json(
            {"ok": not failed, "checks": [dataclasses.asdict(f) for f in findings]}, env.stdout
        )
    else:
        for finding in findings:
            print(finding.line, file=env.stdout)
        print(
            f"{len(failed)} check(s) failed" if failed else "all checks passed", file=env.stdout
        )
    return exit_code(findings)


def exit_code(findings: Iterable[Finding]) -> int:
    """0 when nothing failed; the failures' own code when they agree, else 1."""
    codes = {finding.exit_code for finding in findings if finding.status == FAIL}
    if not codes:
        return EXIT_OK
    return codes.pop() if len(codes) == 1 else EXIT_FAILURE


def _folders(config: AgentConfig) -> list[tuple[str, Path]]:
    folders = config.folders
    named = [
        ("drop folder", folders.drop), ("done folder", folders.done),
        ("failed folder", folders.failed), ("state_dir", config.state_dir),
    ]
    log_file = config.logging.file
    if log_file is not None:
        named.append(("log folder", Path(log_file).parent))
    return named


def check_folders(config: AgentConfig) -> list[Finding]:
    named = _folders(config)
    findings = [check_writable(name, path) for name, path in named]
    usable = [
        (name, path) for (name, path), finding in zip(named, findings, strict=True)
        if finding.status == OK and name != "log folder"
    ]
    if len(usable) > 1:
        findings.append(check_one_filesystem(usable))
    return findings


def check_writable(name: str, path: Path) -> Finding:
    if not path.exists():
        return Finding(FAIL, f"{name} {path}", "does not exist; create it, owned by the agent's "
                                               "user", EXIT_FAILURE)
    if not path.is_dir():
        return Finding(FAIL, f"{name} {path}", "is not a folder", EXIT_FAILURE)
    try:
        # A hidden .part name: an agent watching this folder ignores it.
        fd, probe = tempfile.mkstemp(dir=path, prefix=".pushagent-check-", suffix=".part")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        return Finding(
            FAIL, f"{name} {path}",
            f"not writable by this user ({error.strerror}); give the agent's user write access",
            EXIT_FAILURE,
        )
    return Finding(OK, f"{name} {path}", "writable")


def check_one_filesystem(
    named: list[tuple[str, Path]], *, stat: Callable[[Path], os.stat_result] = os.stat
) -> Finding:
    devices = {name: stat(path).st_dev for name, path in named}
    first_name, first_path = named[0]
    apart = [
        f"{name} ({path})" for name, path in named[1:]
        if devices[name] != devices[first_name]
    ]
    listed = ", ".join(name for name, _ in named)
    if not apart:
        return Finding(OK, "filesystem", f"{listed} share one filesystem: moves are atomic renames")
    return Finding(
        WARN, "filesystem",
        f"{', '.join(apart)} not on the filesystem of the {first_name} ({first_path}): files "
        "moved there are copied, not renamed, which is slower and not atomic; put the folders "
        "on one filesystem",
    )


def check_key_file(config: AgentConfig) -> list[Finding]:
    exposure = key_file_exposure(config.exchange)
    if exposure is None:
        return []
    return [Finding(WARN, "key file", exposure)]


def check_exchange(config: AgentConfig) -> list[Finding]:
    """The key and endpoint, then which segments the waiting jobs are for: a typo in a name or
    a wrong endpoint_id shows here, not after a day of files waiting."""
    settings = config.exchange
    # One attempt: a check must answer now, not after the agent's retry budget.
    quick = dataclasses.replace(settings, retry=dataclasses.replace(settings.retry, max_attempts=1))
    subject = f"exchange {settings.base_url}"
    endpoint = settings.endpoint_id
    try:
        with build_client(quick) as client:
            jobs = [job for job in client.list_jobs(
                JobCategory.SEGMENT_EXPORT, endpoint_id=endpoint,
                status=JobStatus.WAITING_TO_RECEIVE_DATA, include_producer_segment_id_string=True,
            ) if job.is_waiting]
            elsewhere = [] if jobs else _waiting_anywhere(client)
    except PushAgentError as error:
        return [Finding(FAIL, subject, str(error), error.exit_code)]
    findings = [Finding(
        OK, subject,
        f"key accepted for endpoint {endpoint}; {len(jobs)} SEGMENT_EXPORT job(s) waiting for data",
    )]
    if not jobs:
        others = sorted({job.producer_endpoint_id for job in elsewhere
                         if job.producer_endpoint_id is not None} - {endpoint})
        where = (f"; {len(elsewhere)} wait on other endpoints ({', '.join(map(str, others))}): "
                 "is exchange.endpoint_id right?" if others else "")
        findings.append(Finding(
            WARN, "jobs",
            f"no SEGMENT_EXPORT job is waiting for data on endpoint {endpoint}{where}; files "
            f"wait until one is (list them with: pushagent jobs list SEGMENT_EXPORT -c "
            f"{shlex.quote(str(config.source))})",
        ))
        return findings
    findings.append(_segments_waiting(config, jobs))
    unmatched = _names_matching_no_job(config, jobs)
    if unmatched:
        findings.append(Finding(
            WARN, "segments",
            f"{', '.join(unmatched)} under segments: match no waiting job; files for them wait "
            "until one comes (a typo, or their export is not triggered yet)",
        ))
    return findings


def _waiting_anywhere(client: ExchangeClient) -> list[Job]:
    """The waiting jobs of every endpoint the key sees, to tell a wrong endpoint_id; an
    endpoint-level key may not list them (403), which only leaves the hint out."""
    try:
        jobs = client.list_jobs(
            JobCategory.SEGMENT_EXPORT, status=JobStatus.WAITING_TO_RECEIVE_DATA
        )
    except PushAgentError:
        return []
    return [job for job in jobs if job.is_waiting]


def _segments_waiting(config: AgentConfig, jobs: list[Job]) -> Finding:
    names_by_id: dict[str, list[str]] = {}
    for name, segment in config.segments.items():
        names_by_id.setdefault(segment, []).append(name)
    counts: dict[str, int] = {}
    for job in jobs:
        label = job.producer_segment_id_string or str(job.producer_segment_id)
        named = sorted({name for key in job.segment_keys() for name in names_by_id.get(key, ())})
        if named:
            label += f" ({', '.join(named)})"
        counts[label] = counts.get(label, 0) + 1
    listed = ", ".join(f"{label}: {count} job(s)" for label, count in sorted(counts.items()))
    return Finding(OK, "segments", f"jobs wait for segment {listed}")


def _names_matching_no_job(config: AgentConfig, jobs: list[Job]) -> list[str]:
    keys = {key for job in jobs for key in job.segment_keys()}
    return [f"{name} ({segment})" for name, segment in config.segments.items()
            if segment not in keys]
