"""The ``pushagent`` command line: one parser, one place that maps errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

import argcomplete
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
    "pushagent.commands.retry",
    "pushagent.commands.completion",
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
    _add_common_options(parser, default=None)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for sub in _subcommand_parsers(parser):
        # Given after the command too (``pushagent run -c x --once -v``); SUPPRESS keeps a value
        # given before it when the option is not repeated after.
        _add_common_options(sub, default=argparse.SUPPRESS)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    group = parser.add_argument_group("output options")
    group.add_argument("-v", "--verbose", action="count", default=default,
                       help="more log detail on stderr (-v: DEBUG)")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="only warnings and errors on stderr")
    if default is not argparse.SUPPRESS:
        group.add_argument("--json", action="store_true", default=False,
                           help="JSON on stdout, for the commands that print it")


def _subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser``, depth first."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found.append(sub)
                found.extend(_subcommand_parsers(sub))
    return found


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    env = env or Environment()
    parser = build_parser()
    # Asked by a completion script (`pushagent completion`): print the candidates and exit.
    argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if getattr(args, "handler", None) is None:
        parser.print_help(env.stderr)
        return EXIT_USAGE
    if args.json and not getattr(args, "takes_json", False):
        print(f"pushagent: error: --json: '{args.command}' prints no JSON; leave it out",
              file=env.stderr)
        return EXIT_USAGE
    args.verbosity = (args.verbose or 0) or (-1 if args.quiet else 0)
    logger.enable("pushagent")  # the package is silent as a library; the command is not
    logs.configure_stderr(env=env, verbosity=args.verbosity)
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
