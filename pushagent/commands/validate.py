"""``pushagent validate``: the agent's own checks on CSV files, offline, before dropping them.

With ``--job``, the job is fetched once and each file must also have every column the job maps.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from loguru import logger

from pushagent.commands.api import (
    CONNECTION_HELP,
    build_command_client,
    category_arg,
    connection_parent,
    load_config_arg,
    usage_errors,
)
from pushagent.config import AgentConfig, InputDialect
from pushagent.env import Environment
from pushagent.errors import EXIT_FAILURE, EXIT_OK, ConfigError
from pushagent.exchange import JobCategory
from pushagent.intake import prepare
from pushagent.output import add_json_flag, print_json
from pushagent.router import SegmentRouter
from pushagent.validator import CSVReport, missing_columns, validate_csv


def job_ref(text: str) -> tuple[str, int]:
    """``CATEGORY/ID`` or just ``ID`` (a SEGMENT_EXPORT job)."""
    category, _, number = text.rpartition("/")
    if not number.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"expected CATEGORY/ID or ID, e.g. SEGMENT_EXPORT/1347, not {text!r}"
        )
    return category_arg(category) if category else JobCategory.SEGMENT_EXPORT.value, int(number)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check CSV files as the agent would, without uploading",
        parents=[connection_parent()],
        description=(
            "Validate CSV files exactly as the agent does before an upload (a file in another "
            "encoding or dialect is converted first, by input: of the config with -c, else "
            "auto): UTF-8, a header "
            "of unique non-empty names, the same number of fields in every row, at least one "
            "data row, and validation.max_bytes when -c is given. With --job, also every "
            "column the job maps (identityMappings, attributeMappings, sourceIdentifiers); "
            "that needs the key. Prints 'ok' per valid file and one line per problem, naming "
            "its line."
        ),
        epilog=(
            f"{CONNECTION_HELP} Exit codes: 0 every file is valid; 1 a file is invalid or "
            "unreadable; 2 usage or configuration error; 3, 4, 5 fetching the job failed "
            "(key refused, job not found, Exchange unreachable)."
        ),
    )
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE")
    parser.add_argument(
        "--job", type=job_ref, metavar="[CATEGORY/]ID",
        help="also check the columns this job maps (default category SEGMENT_EXPORT)",
    )
    parser.add_argument(
        "--max-problems", type=int, default=10, metavar="N",
        help="problems listed per file before '... and more' (default 10)",
    )
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    if args.max_problems < 1:
        raise ConfigError(f"--max-problems must be at least 1, not {args.max_problems}")
    # Only --job calls the Exchange: without it the key (and its variable) is not needed.
    config = load_config_arg(args, env, need_key=args.job is not None)
    max_bytes = (config.validation.max_bytes or None) if config is not None else None
    required: tuple[str, ...] = ()
    source = "the job's mappings"
    if args.job is not None:
        category, job_id = args.job
        with usage_errors(), build_command_client(args, env, config) as client:
            job = client.get_job(category, job_id)
        required = job.required_columns()
        source = f"job {job_id}"
        if not job.is_waiting:
            logger.warning("job {} is {}: it takes no data now", job_id, job.status_raw)
    with tempfile.TemporaryDirectory(prefix="pushagent-validate-") as scratch:
        results = [
            _validate(path, max_bytes, args.max_problems, required, source,
                      dialect=_dialect(config, path), staged=Path(scratch) / f"{n}.csv")
            for n, path in enumerate(args.files)
        ]
    valid = all(result["ok"] for result in results)
    if args.json:
        print_json({
            "ok": valid,
            "job_id": args.job[1] if args.job else None,
            "required_columns": list(required),
            "files": results,
        }, env.stdout)
    else:
        for result in results:
            if result["ok"]:
                print(f"ok   {result['path']}: {_summary(result)}", file=env.stdout)
            for problem in result["problems"]:
                print(f"FAIL {result['path']}: {problem}", file=env.stdout)
    return EXIT_OK if valid else EXIT_FAILURE


def _dialect(config: AgentConfig | None, path: Path) -> InputDialect:
    """The input settings the agent would read ``path`` with, by its name (auto without -c)."""
    if config is None:
        return InputDialect()
    router = SegmentRouter(names=config.segments, pattern=config.watch.filename_pattern)
    return config.input.for_segment(*router.names_of(path.name))


def _validate(
    path: Path, max_bytes: int | None, max_problems: int, required: tuple[str, ...], source: str,
    *, dialect: InputDialect, staged: Path,
) -> dict[str, Any]:
    """A file not in UTF-8 comma form is converted into ``staged`` and that copy checked, as
    the agent does."""
    try:
        prepared = prepare(path, dialect=dialect, max_bytes=max_bytes, staged=staged)
        if prepared.problem is not None:
            return _result(path, None, [prepared.problem], prepared.converted_from)
        report = validate_csv(prepared.send, max_bytes=max_bytes, max_problems=max_problems)
    except OSError as error:
        return _result(path, None, [f"cannot read it ({error.strerror})"])
    problems = list(report.problems)
    if report.header and required:
        problems += missing_columns(report.header, required, source=source)
    return _result(path, report, problems, prepared.converted_from)


def _result(
    path: Path, report: CSVReport | None, problems: list[str], converted_from: str | None = None,
) -> dict[str, Any]:
    return {
        "path": str(path),
        "converted_from": converted_from,
        "ok": not problems,
        "header": list(report.header) if report else [],
        "data_rows": report.data_rows if report else 0,
        "bytes": report.bytes if report else 0,
        "problems": problems,
    }


def _summary(result: dict[str, Any]) -> str:
    rows = result["data_rows"]
    columns = result["header"]
    converted = (f"; converted from {result['converted_from']}"
                 if result["converted_from"] else "")
    return (f"{rows} data row{'s' if rows != 1 else ''}, {len(columns)} column"
            f"{'s' if len(columns) != 1 else ''} ({', '.join(columns)}){converted}")
