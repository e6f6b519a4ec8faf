"""pushagent: the drop-folder agent for Acoustic Exchange push producer endpoints."""

from __future__ import annotations

__version__ = "0.1.0"
USER_AGENT = f"pushagent/{__version__}"
