"""``pushagent retry``: put failed files back in the drop folder for another go.

Each file is moved from failed/ to the drop folder under the name it was dropped with (another
name if that one is taken), as the agent moves files: a link and an unlink, or a copy under a
hidden name renamed into place, so the agent never sees half a file. Its ``.error.json`` report
is removed once the file is back, and the journal row of its failure says it was retried. Safe
while the agent runs: the agent takes the file as a new drop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from pushagent.config import AgentConfig, load_config
from pushagent.env import Environment
from pushagent.errors import EXIT_FAILURE, EXIT_OK, ConfigError, JournalUnavailable
from pushagent.journal import FileRow, Journal
from pushagent.lifecycle import FileState
from pushagent.names import printable
from pushagent.outcomes import REPORT_SUFFIX, move_to, report_path_for, unique_target
from pushagent.output import add_json_flag, print_json
from pushagent.router import SegmentRouter


@dataclass(frozen=True)
class Retried:
    source: Path
    target: Path | None
    error: str | None = None


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "retry",
        help="move failed files back to the drop folder",
        description=(
            "Move files from failed/ back to the drop folder, atomically, under the name they "
            "were dropped with, remove their .error.json reports, and note the retry in the "
            "journal. The agent (running or started later) takes them as new drops. Needs no "
            "key."
        ),
        epilog="Exit codes: 0 every file moved back; 1 a file could not be moved; 2 usage or "
               "configuration error (e.g. a FILE not in failed/).",
    )
    parser.add_argument("-c", "--config", type=Path, required=True, help="the agent's YAML file")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("files", type=Path, nargs="*", default=[], metavar="FILE",
                       help="a file in failed/ (its path, or its name relative to failed/)")
    which.add_argument("--all", action="store_true", help="every file in failed/")
    add_json_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    config = load_config(args.config, environ=env.environ, need_key=False)
    folders, _ = config.push_side()  # retry is for the push side's failed/
    failed = folders.failed.resolve()
    sources = _every_failed_file(failed) if args.all else [
        _in_failed(path, failed) for path in args.files
    ]
    if not sources and not args.all:
        raise ConfigError("name the files to retry (FILE...), or pass --all")
    journal = Journal.for_state_dir(config.state_dir)
    try:
        rows = _failed_rows(journal)
        results = [_retry(source, config, failed, rows, journal) for source in sources]
    finally:
        journal.close()
    if args.json:
        print_json({
            "ok": all(result.error is None for result in results),
            "files": [{"file": str(r.source), "now_at": None if r.target is None
                       else str(r.target), "error": r.error} for r in results],
        }, env.stdout)
    else:
        for result in results:
            if result.error is None:
                print(f"retried  {printable(str(result.source))} -> "
                      f"{printable(str(result.target))}", file=env.stdout)
            else:
                print(f"FAIL     {printable(str(result.source))}: {result.error}",
                      file=env.stdout)
        if not results:
            print("failed/ holds no file to retry", file=env.stdout)
    return EXIT_OK if all(result.error is None for result in results) else EXIT_FAILURE


def _in_failed(path: Path, failed: Path) -> Path:
    """``path`` as given, or relative to failed/; it must be a file inside failed/."""
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, failed / path]
    for candidate in candidates:
        if os.path.lexists(candidate):
            real = Path(os.path.normpath(candidate.absolute()))
            parent = real.parent.resolve()
            if parent != failed and failed not in parent.parents:
                raise ConfigError(f"{path} is not in the failed folder {failed}; only failed "
                                  "files can be retried")
            if real.name.endswith(REPORT_SUFFIX):
                raise ConfigError(f"{path} is an error report; name the file it reports on")
            if real.is_dir():
                raise ConfigError(f"{path} is a folder; name files, or pass --all")
            return parent / real.name
    raise ConfigError(f"{path}: no such file in {failed}")


def _every_failed_file(failed: Path) -> list[Path]:
    found: list[Path] = []
    for folder, dirs, names in os.walk(failed):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(REPORT_SUFFIX) or name.startswith("."):
                continue  # reports, and half-written .partial names of a move in progress
            found.append(Path(folder) / name)
    return found


def _segment_of(config: AgentConfig, relative: PurePath) -> str | None:
    router = SegmentRouter(names=config.segments, pattern=config.watch.filename_pattern)
    return router.segment_of(relative.as_posix())


def _failed_rows(journal: Journal) -> dict[str, FileRow]:
    try:
        return {row.final_path: row for row in journal.files(FileState.FAILED) if row.final_path}
    except JournalUnavailable:
        return {}  # the journal is only told about the retry; the move does not need it


def _retry(
    source: Path, config: AgentConfig, failed: Path, rows: dict[str, FileRow], journal: Journal,
) -> Retried:
    folders, _ = config.push_side()
    row = rows.get(str(source)) or rows.get(str(folders.failed / source.relative_to(failed)))
    relative = PurePath(row.rel_path) if row is not None else source.relative_to(failed)
    drop = folders.drop
    try:
        target = unique_target(drop, relative, with_report=False)
        if _segment_of(config, target.relative_to(drop)) != _segment_of(config, relative):
            # The name is taken (a file of that name still waits there), and the file's name
            # says its segment: another name would send it to another segment, or none.
            return Retried(source, None, f"{drop / relative} is still in the drop folder, and "
                           "under another name this file would go to another segment; retry it "
                           "once that one is taken")
        target.parent.mkdir(parents=True, exist_ok=True)
        report = report_path_for(source)
        move_to(source, target)
    except OSError as error:
        return Retried(source, None, f"cannot move it to {drop} ({error.strerror or error})")
    trigger = config.watch.trigger_suffix
    if trigger:  # the agent takes a file only once its marker is there
        target.with_name(target.name + trigger).touch()
    if report is not None:
        with contextlib.suppress(FileNotFoundError):
            report.unlink()
    if row is not None:
        with contextlib.suppress(JournalUnavailable):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            journal.set_reason(row.id, f"retried at {stamp}: moved back to the drop folder as "
                                       f"{target.relative_to(drop)}; it had failed: {row.reason}")
    return Retried(source, target)
