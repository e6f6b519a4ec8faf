"""pushagent: the drop-folder agent for Acoustic Exchange push producer endpoints.

As a library it is silent: its log records are disabled here, and only the ``pushagent`` command
turns them on (``logger.enable("pushagent")``). A program that wants them does the same.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from loguru import logger

try:
    # The one version source is the installed distribution's metadata (pyproject.toml).
    __version__ = version("pushagent")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

USER_AGENT = f"pushagent/{__version__}"

logger.disable("pushagent")

__all__ = ["USER_AGENT", "__version__"]
