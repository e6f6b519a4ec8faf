"""The ``pushagent`` command line: one parser, one place that maps errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from loguru import logger

from pushagent import __version__, logs
from pushagent.env import Environment
from pushagent.errors import EXIT_USAGE, PushAgentError

# Each module defines ``register(subparsers)``, which adds its parser(s) and sets
# ``handler=<callable(args, env) -> int>`` as a default.
COMMAND_MODULES = (
    "pushagent.commands.run",
    "pushagent.commands.demo",
    "pushagent.commands.simulator",
    "pushagent.commands.check",
    "pushagent.commands.validate",
    "pushagent.commands.status",
    "pushagent.commands.api",
)

INTERRUPTED = 130
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command cut off by a pipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushagent",
        description=(
            "Upload segment CSV files dropped in a folder to the Acoustic Exchange "
            "SEGMENT_EXPORT jobs waiting for them, and run every other call of the jobs API."
        ),
    )
    parser.add_argument("--version", action="version", version=f"pushagent {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log detail on stderr (-v: DEBUG)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    env = env or Environment()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if getattr(args, "handler", None) is None:
        parser.print_help(env.stderr)
        return EXIT_USAGE
    logger.enable("pushagent")  # the package is silent as a library; the command is not
    logs.configure_stderr(env=env, verbosity=args.verbose)
    try:
        return int(args.handler(args, env))
    except PushAgentError as error:
        logs.emit_error(env, str(error))
        return error.exit_code
    except KeyboardInterrupt:
        logger.warning("interrupted")
        return INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`pushagent jobs show ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        with contextlib.suppress(OSError, ValueError):  # stdout may have no descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
