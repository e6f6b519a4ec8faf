"""``pushagent completion SHELL``: tab completion, generated from the parser by argcomplete.

The script printed here asks ``pushagent`` itself for the candidates (``cli.main`` answers before
doing anything else), so commands and options added later complete without a new script.
"""

from __future__ import annotations

import argparse
from typing import Any

import argcomplete

from pushagent.env import Environment

SHELLS = ("bash", "zsh", "fish")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print the tab-completion script for SHELL. Install it with, e.g.: "
                    "pushagent completion bash > /etc/bash_completion.d/pushagent; "
                    "pushagent completion zsh > \"${fpath[1]}/_pushagent\"; "
                    "pushagent completion fish > ~/.config/fish/completions/pushagent.fish; "
                    "or for this shell only: eval \"$(pushagent completion bash)\".",
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    env.stdout.write(argcomplete.shellcode(["pushagent"], shell=args.shell))
    return 0
