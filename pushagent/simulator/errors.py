"""The simulator's own error for input it refuses (a seed file, a control call, a fault).

It belongs to pushagent's one hierarchy, so the ``pushagent simulator`` command reports it as a
usage error, but it is not the agent's ``ConfigError``: the simulator does not reach into the
agent's configuration layer.
"""

from __future__ import annotations

from pushagent.errors import EXIT_USAGE, PushAgentError

__all__ = ["SimulatorInputError"]


class SimulatorInputError(PushAgentError):
    """A seed file, control request or fault definition the simulator cannot use."""

    exit_code = EXIT_USAGE
