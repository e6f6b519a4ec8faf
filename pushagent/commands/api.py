"""``pushagent jobs|files|scheduled ...``: every call of the jobs API as a command.

The key comes from the agent's config (``-c FILE``) or from ``EXCHANGE_API_KEY`` with
``--base-url`` (or ``EXCHANGE_BASE_URL``); it is registered for masking before any call. Tables
by default, ``--json`` for scripts. Expected failures are one line on stderr and an exit code
(see ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from loguru import logger

from pushagent import logs
from pushagent.config import AgentConfig, InputDialect, load_config
from pushagent.env import Environment
from pushagent.errors import (
    EXIT_USAGE,
    ConfigError,
    CSVValidationError,
    ExchangeError,
    PushAgentError,
)
from pushagent.exchange import ExchangeClient, Job, JobCategory, JobStatus, RetryPolicy
from pushagent.exchange.models import ExpectedBody
from pushagent.exchange.outcome import Outcome, classify
from pushagent.intake import prepare
from pushagent.output import add_json_flag, print_fields, print_json, print_table
from pushagent.progress import progress_bar
from pushagent.router import SegmentRouter
from pushagent.runtime import build_client
from pushagent.validator import missing_columns, validate_csv

KEY_VARIABLE = "EXCHANGE_API_KEY"
BASE_URL_VARIABLE = "EXCHANGE_BASE_URL"
# Without a config file: a person is waiting at the terminal, so fail within seconds.
COMMAND_RETRY = RetryPolicy(max_attempts=3, max_total_seconds=20.0)
CATEGORIES = ", ".join(category.value for category in JobCategory)

EXIT_CODES = (
    "Exit codes: 0 done; 1 refused or failed (e.g. the Exchange answered false, an invalid "
    "file); 2 usage or configuration error; 3 the key was refused (HTTP 401/403); 4 job or "
    "file not found (404); 5 the Exchange is unreachable, rate limiting or failing (5xx)."
)
CONNECTION_HELP = (
    f"Connection: -c agent.yaml uses the agent's base URL, key and TLS settings; without it, "
    f"the key is read from {KEY_VARIABLE} and the base URL from --base-url or "
    f"{BASE_URL_VARIABLE}."
)


# --- shared by the commands that talk to the Exchange ----------------------------------------


def dialect_of(config: AgentConfig | None, path: Path) -> InputDialect:
    """The input settings the agent would read ``path`` with, by its name (auto without -c)."""
    if config is None:
        return InputDialect()
    router = SegmentRouter(names=config.segments, pattern=config.watch.filename_pattern)
    return config.input.for_segment(*router.names_of(path.name))


def _number(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit():
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}")
        return int(text.strip())

    return parse


job_id_arg = _number("job id")
endpoint_arg = _number("endpoint id")


def category_arg(text: str) -> str:
    # Unknown categories are passed on: the service may know newer ones than this client.
    category = text.strip().upper()
    if not category:
        raise argparse.ArgumentTypeError(f"the category is empty; use one of {CATEGORIES}")
    return category


def connection_parent() -> argparse.ArgumentParser:
    """The connection options, as a parent every API subcommand takes."""
    parent = argparse.ArgumentParser(add_help=False)
    source = parent.add_mutually_exclusive_group()
    source.add_argument(
        "-c", "--config", type=Path, metavar="FILE",
        help="the agent's YAML file (base URL, key, TLS, retries)",
    )
    source.add_argument(
        "--base-url", metavar="URL",
        help=f"the account's Exchange base URL (default ${BASE_URL_VARIABLE}); the key is read "
             f"from ${KEY_VARIABLE}",
    )
    parent.add_argument(
        "--insecure-http", action="store_true",
        help="allow a plain http:// base URL that is not loopback (the key travels unencrypted)",
    )
    return parent


def load_config_arg(
    args: argparse.Namespace, env: Environment, *, need_key: bool = True
) -> AgentConfig | None:
    path: Path | None = args.config
    if path is None:
        return None
    config = load_config(path, environ=env.environ, need_key=need_key)
    logs.register_secret(config.exchange.api_key)
    return config


def build_command_client(
    args: argparse.Namespace, env: Environment, config: AgentConfig | None
) -> ExchangeClient:
    """The client for one command, from the config or from the environment."""
    if config is not None:
        if args.insecure_http and not config.exchange.allow_insecure_http:
            raise ConfigError(
                "--insecure-http applies to --base-url only; with -c, set "
                "exchange.allow_insecure_http in the config file"
            )
        return build_client(config.exchange)
    key = env.environ.get(KEY_VARIABLE, "")
    logs.register_secret(key)
    base_url = args.base_url or env.environ.get(BASE_URL_VARIABLE, "")
    if not base_url or not key.strip():
        missing = [
            name for name, value in (
                (f"--base-url or {BASE_URL_VARIABLE}", base_url), (KEY_VARIABLE, key.strip()),
            ) if not value
        ]
        raise ConfigError(
            f"no Exchange to talk to: {' and '.join(missing)} not set; pass -c agent.yaml, or "
            f"set {KEY_VARIABLE} and --base-url (or {BASE_URL_VARIABLE})"
        )
    return ExchangeClient(
        base_url, key, retry=COMMAND_RETRY, allow_insecure_http=args.insecure_http
    )


@contextlib.contextmanager
def exchange_client(args: argparse.Namespace, env: Environment) -> Iterator[ExchangeClient]:
    config = load_config_arg(args, env)
    with usage_errors(), build_command_client(args, env, config) as client:
        yield client


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """The client's argument checks (an empty name, an empty message) as usage errors."""
    try:
        yield
    except ValueError as error:
        raise ConfigError(str(error)) from error


Handler = Callable[[argparse.Namespace, Environment], int]


def add_yes_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-y", "--yes", action="store_true",
                        help="do it without asking (required when stdin is not a terminal)")


def confirm(args: argparse.Namespace, env: Environment, action: str) -> None:
    """A call that cannot be undone asks first on a terminal; a script must say --yes."""
    if args.yes:
        return
    if not env.stdin_isatty:
        raise ConfigError(f"this would {action}, which cannot be undone; pass --yes to do it "
                          "(there is no terminal to ask)")
    print(f"{action[0].upper()}{action[1:]}? This cannot be undone. [y/N] ", end="",
          file=env.stderr, flush=True)
    answer = env.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise PushAgentError("not confirmed; nothing was done")


def _group_help(parser: argparse.ArgumentParser) -> Handler:
    def handler(args: argparse.Namespace, env: Environment) -> int:
        parser.print_help(env.stderr)
        return EXIT_USAGE

    return handler


def _group(
    subparsers: argparse._SubParsersAction[Any], name: str, *, help: str, description: str,
) -> argparse._SubParsersAction[Any]:
    """``pushagent NAME ACTION``: the group's parser prints its help when ACTION is missing."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(handler=_group_help(parser))
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")


def _subcommand(
    group: argparse._SubParsersAction[Any], name: str, *, help: str, description: str,
    handler: Handler,
) -> argparse.ArgumentParser:
    parser = group.add_parser(
        name, help=help, description=description, epilog=f"{CONNECTION_HELP} {EXIT_CODES}",
        parents=[connection_parent()],
    )
    add_json_flag(parser)
    parser.set_defaults(handler=handler)
    return parser


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    _register_jobs(subparsers)
    _register_files(subparsers)
    _register_scheduled(subparsers)


def _done(args: argparse.Namespace, env: Environment, text: str, **fields: Any) -> int:
    if args.json:
        print_json({"ok": True, **fields}, env.stdout)
    else:
        print(text, file=env.stdout)
    return 0


# --- jobs --------------------------------------------------------------------------------------


def _register_jobs(subparsers: argparse._SubParsersAction[Any]) -> None:
    group = _group(subparsers, "jobs", help="list, show, upload to, fail or complete Exchange jobs",
                   description="The jobs API: list, show, upload, fail, complete.")

    listing = _subcommand(
        group, "list", help="list the jobs of a category", handler=list_jobs,
        description="GET /v1/jobs/{category}: the jobs of a category, optionally of one "
                    "endpoint and one status.",
    )
    listing.add_argument("category", type=category_arg, help=f"one of {CATEGORIES}")
    listing.add_argument("--endpoint", type=endpoint_arg, metavar="ID",
                         help="only jobs of this endpoint")
    listing.add_argument(
        "--status", metavar="STATUS",
        help="only jobs in this status, e.g. WAITING_TO_RECIEVE_DATA (either spelling), RUNNING",
    )
    listing.add_argument("--extra-fields", action="store_true",
                         help="also ask for started, ended and scheduleDetails")
    listing.add_argument("--include-segment-id-string", action="store_true",
                         help="also ask for producerSegmentIDString")

    show = _subcommand(
        group, "show", help="show one job", handler=show_job,
        description="GET /v1/jobs/{category}/{jobId}: every field of one job.",
    )
    show.add_argument("category", type=category_arg, help=f"one of {CATEGORIES}")
    show.add_argument("job_id", type=job_id_arg, metavar="ID")

    upload = _subcommand(
        group, "upload", help="upload a CSV file as a job's data", handler=upload_job,
        description=(
            "POST /v1/jobs/{jobId}/data, streamed. First, unless --no-validate: the file is "
            "validated as the agent does it (max_bytes from -c; a file in another encoding or "
            "dialect, or compressed, is converted by input: of -c, else auto, and the "
            "converted copy is sent), and the job is fetched to "
            "check it is waiting and that the file has every column it maps. One attempt "
            "only: a POST is not idempotent, so when it fails midway, check the job with "
            "'jobs show' before sending again."
        ),
    )
    upload.add_argument("job_id", type=job_id_arg, metavar="ID")
    upload.add_argument("file", type=Path, metavar="FILE")
    upload.add_argument("--category", type=category_arg, default=JobCategory.SEGMENT_EXPORT.value,
                        help="the job's category, for the check (default SEGMENT_EXPORT)")
    upload.add_argument("--no-validate", action="store_true",
                        help="send the file as it is, without checking it or the job")
    upload.add_argument("--content-type", metavar="TYPE",
                        help="Content-Type of the upload (default upload.content_type from -c, "
                             "else text/csv)")

    fail = _subcommand(
        group, "fail", help="mark a waiting job failed, with a message", handler=fail_job,
        description="PUT /v1/jobs/{jobId}/status/fail: the message is what the Exchange UI "
                    "shows (one line, at most 1000 characters).",
    )
    fail.add_argument("job_id", type=job_id_arg, metavar="ID")
    fail.add_argument("--message", "-m", required=True, metavar="TEXT")
    add_yes_flag(fail)

    complete = _subcommand(
        group, "complete", help="mark a job complete (deletes its remaining files)",
        handler=complete_job,
        description="PUT /v1/jobs/{jobId}/status/complete: after downloading a job's data, "
                    "mark it complete; the Exchange deletes the files not yet deleted.",
    )
    complete.add_argument("job_id", type=job_id_arg, metavar="ID")
    add_yes_flag(complete)


def _segment_text(job: Job) -> str | None:
    if job.producer_segment_id_string and job.producer_segment_id is not None:
        return f"{job.producer_segment_id} ({job.producer_segment_id_string})"
    if job.producer_segment_id is not None:
        return str(job.producer_segment_id)
    return job.producer_segment_id_string


def list_jobs(args: argparse.Namespace, env: Environment) -> int:
    with exchange_client(args, env) as client:
        jobs = client.list_jobs(
            args.category, endpoint_id=args.endpoint, status=args.status,
            extra_fields=args.extra_fields,
            include_producer_segment_id_string=args.include_segment_id_string,
        )
    if args.json:
        print_json([job.raw for job in jobs], env.stdout)
        return 0
    print_table(
        ("JOB ID", "STATUS", "PRODUCER EP", "SEGMENT", "DEST EP", "DESTINATION", "COLUMNS",
         "ERROR"),
        [
            (job.job_id, job.status_raw, job.producer_endpoint_id, _segment_text(job),
             job.destination_endpoint_id,
             job.destination_segment_name or job.destination_segment_id,
             job.required_columns(), job.error_details)
            for job in jobs
        ],
        env.stdout, empty="(no jobs)",
    )
    return 0


def _shown(value: Any) -> Any:
    """A field as the API wrote it: mappings as JSON, booleans as true/false."""
    if isinstance(value, (dict, bool)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def show_job(args: argparse.Namespace, env: Environment) -> int:
    with exchange_client(args, env) as client:
        job = client.get_job(args.category, args.job_id)
    if args.json:
        print_json(job.raw, env.stdout)
        return 0
    print_fields([(name, _shown(value)) for name, value in job.raw.items()], env.stdout)
    print_fields([("columns the file needs", job.required_columns() or None)], env.stdout)
    return 0


def _check_upload(
    client: ExchangeClient, args: argparse.Namespace, config: AgentConfig | None, *,
    staged: Path,
) -> tuple[Path, ExpectedBody | None, str | None]:
    """Convert the file if the agent would (into ``staged``) and validate it for the job;
    returns the file to send, the bytes validated (which are what is sent) and what the
    original was when it was converted."""
    max_bytes = (config.validation.max_bytes or None) if config is not None else None
    try:
        prepared = prepare(args.file, dialect=dialect_of(config, args.file), max_bytes=max_bytes,
                           staged=staged)
        report = None if prepared.problem else validate_csv(prepared.send, max_bytes=max_bytes)
    except OSError as error:
        raise ConfigError(f"{args.file}: cannot read it ({error.strerror})") from error
    job = client.get_job(args.category, args.job_id)
    if not job.is_waiting:
        raise PushAgentError(
            f"job {args.job_id} is {job.status_raw}, not {JobStatus.WAITING_TO_RECEIVE_DATA.value}:"
            " it takes no data now, so nothing was sent; find a waiting job with `pushagent jobs "
            f"list {args.category} --status WAITING_TO_RECIEVE_DATA`"
        )
    problems = [prepared.problem] if prepared.problem else []
    if prepared.changed:
        problems.append(prepared.changed)
    check_columns = config is None or config.validation.check_mapped_columns
    if report is not None:
        problems += report.problems
        if report.header and check_columns:
            problems += missing_columns(report.header, job.required_columns(),
                                        source=f"job {args.job_id}")
    if problems or report is None:
        # Only here can --no-validate help: the Exchange may take what this check refuses.
        raise CSVValidationError(str(args.file), problems,
                                 hint="nothing was sent (--no-validate sends it as it is)")
    logger.debug("{}: valid, {} data rows, has the columns job {} maps",
                 args.file, report.data_rows, args.job_id)
    expected = None if report.sha256 is None else ExpectedBody(
        size=report.size - report.offset, sha256=report.sha256, mtime_ns=report.mtime_ns,
        offset=report.offset)
    return prepared.send, expected, prepared.converted_from


def upload_job(args: argparse.Namespace, env: Environment) -> int:
    config = load_config_arg(args, env)
    if not args.file.is_file():
        raise ConfigError(f"{args.file}: no such file")
    content_type = args.content_type or (
        config.upload.content_type if config is not None else "text/csv"
    )
    with usage_errors(), build_command_client(args, env, config) as client, \
            tempfile.TemporaryDirectory(prefix="pushagent-upload-") as scratch:
        send, expected, converted_from = (
            (args.file, None, None) if args.no_validate
            else _check_upload(client, args, config, staged=Path(scratch) / "converted.csv")
        )
        bar = progress_bar(env, label=f"job {args.job_id}", total=send.stat().st_size)
        try:
            result = client.upload_data(
                args.job_id, send, content_type=content_type, retry=False, progress=bar,
                expected=expected,
            )
        except ExchangeError as error:
            if classify(error) is Outcome.AMBIGUOUS:
                logger.warning(
                    "the upload may or may not have reached the Exchange; check the job with "
                    "'pushagent jobs show {} {}' before sending it again",
                    args.category, args.job_id,
                )
            raise
        finally:
            if bar is not None:
                bar.finish()
    converted = f" (converted from {converted_from})" if converted_from else ""
    return _done(
        args, env,
        f"uploaded {result.bytes_sent} bytes of {args.file}{converted} to job {args.job_id} "
        f"(HTTP {result.status_code})",
        job_id=args.job_id, file=str(args.file), converted_from=converted_from,
        bytes_sent=result.bytes_sent, status_code=result.status_code,
        response_text=result.response_text,
    )


def fail_job(args: argparse.Namespace, env: Environment) -> int:
    confirm(args, env, f"mark job {args.job_id} failed")
    with exchange_client(args, env) as client:
        client.fail_job(args.job_id, args.message)
    return _done(args, env, f"job {args.job_id} marked failed", job_id=args.job_id)


def complete_job(args: argparse.Namespace, env: Environment) -> int:
    confirm(args, env, f"mark job {args.job_id} complete (the Exchange deletes its remaining "
                       "files)")
    with exchange_client(args, env) as client:
        client.complete_job(args.job_id)
    return _done(args, env, f"job {args.job_id} marked complete", job_id=args.job_id)


# --- files -------------------------------------------------------------------------------------


def _register_files(subparsers: argparse._SubParsersAction[Any]) -> None:
    group = _group(subparsers, "files", help="download or delete a job's segment data files",
                   description="The segment data files of a job ready for download.")

    get = _subcommand(
        group, "get", help="download one segment data file", handler=get_file,
        description="GET /v1/jobs/{jobId}/segmentDataFiles/{fileName}, streamed to a "
                    "temporary name beside the target and renamed when complete.",
    )
    get.add_argument("job_id", type=job_id_arg, metavar="JOB_ID")
    get.add_argument("name", metavar="NAME", help="a name from the job's segmentDataFiles")
    get.add_argument("-o", "--output", type=Path, metavar="PATH",
                     help="where to write it (default: NAME in the current folder)")
    get.add_argument("--force", action="store_true", help="replace PATH if it exists")

    delete = _subcommand(
        group, "delete", help="delete one segment data file from the Exchange",
        handler=delete_file,
        description="DELETE /v1/jobs/{jobId}/segmentDataFiles/{fileName}.",
    )
    delete.add_argument("job_id", type=job_id_arg, metavar="JOB_ID")
    delete.add_argument("name", metavar="NAME")
    add_yes_flag(delete)


def get_file(args: argparse.Namespace, env: Environment) -> int:
    target: Path = args.output or Path(Path(args.name).name or "segment-data.csv")
    if target.is_dir():
        target = target / (Path(args.name).name or "segment-data.csv")
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists; pass --force to replace it, or -o another path")
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent}: no such folder")
    with exchange_client(args, env) as client:
        bar = progress_bar(env, label=args.name, total=None)
        try:
            written = client.download_segment_file(args.job_id, args.name, target, progress=bar)
        finally:
            if bar is not None:
                bar.finish()
    return _done(
        args, env, f"wrote {written} bytes to {target}",
        job_id=args.job_id, name=args.name, path=str(target), bytes=written,
    )


def delete_file(args: argparse.Namespace, env: Environment) -> int:
    confirm(args, env, f"delete {args.name} of job {args.job_id} from the Exchange")
    with exchange_client(args, env) as client:
        client.delete_segment_file(args.job_id, args.name)
    return _done(args, env, f"deleted {args.name} of job {args.job_id}",
                 job_id=args.job_id, name=args.name)


# --- scheduled jobs ----------------------------------------------------------------------------


def _register_scheduled(subparsers: argparse._SubParsersAction[Any]) -> None:
    group = _group(subparsers, "scheduled", help="list or delete scheduled jobs",
                   description="The scheduled jobs API: list, delete.")

    listing = _subcommand(
        group, "list", help="list the scheduled jobs of a category", handler=list_scheduled,
        description="GET /v1/scheduledjobs/{category}.",
    )
    listing.add_argument("--category", type=category_arg,
                         default=JobCategory.SEGMENT_EXPORT.value,
                         help=f"one of {CATEGORIES} (default SEGMENT_EXPORT)")
    listing.add_argument("--endpoint", type=endpoint_arg, metavar="ID",
                         help="only scheduled jobs of this endpoint")

    delete = _subcommand(
        group, "delete", help="delete a scheduled job", handler=delete_scheduled,
        description="DELETE /v1/scheduledjobs/{scheduledJobId}.",
    )
    delete.add_argument("job_id", type=job_id_arg, metavar="ID")
    add_yes_flag(delete)


def list_scheduled(args: argparse.Namespace, env: Environment) -> int:
    with exchange_client(args, env) as client:
        jobs = client.list_scheduled_jobs(args.category, endpoint_id=args.endpoint)
    if args.json:
        print_json([job.raw for job in jobs], env.stdout)
        return 0
    active = {1: "yes", 2: "no"}
    print_table(
        ("JOB ID", "STATE", "CATEGORY", "NAME", "ACTIVE", "ERROR"),
        [
            (job.job_id, job.state, job.job_category, job.job_name,
             active.get(job.active or 0, job.active), job.error_details)
            for job in jobs
        ],
        env.stdout, empty="(no scheduled jobs)",
    )
    return 0


def delete_scheduled(args: argparse.Namespace, env: Environment) -> int:
    confirm(args, env, f"delete scheduled job {args.job_id}")
    with exchange_client(args, env) as client:
        client.delete_scheduled_job(args.job_id)
    return _done(args, env, f"scheduled job {args.job_id} deleted", job_id=args.job_id)
