"""A local Acoustic Exchange jobs API for tests and demos: real HTTP on loopback, no network.

``Simulator`` runs it in-process (a thread); ``SimulatorControl`` drives one running in another
process through its /_sim/ control API; ``pushagent simulator`` runs one from the command line.
"""

from __future__ import annotations

from pushagent.simulator.control_client import SimulatorControl
from pushagent.simulator.server import DEFAULT_ACCOUNT_KEY, Simulator
from pushagent.simulator.state import Upload

__all__ = ["DEFAULT_ACCOUNT_KEY", "Simulator", "SimulatorControl", "Upload"]
