"""pytest fixture ``exchange_simulator``: a started Simulator with its own data dir, stopped after.

Enable it with ``pytest_plugins = ["pushagent.simulator.pytest_plugin"]`` in a conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pushagent.simulator.server import Simulator


@pytest.fixture
def exchange_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """A running simulator on 127.0.0.1 (account key ``sim-account-key``, no jobs yet)."""
    with Simulator(data_dir=tmp_path_factory.mktemp("exchange-simulator")) as simulator:
        yield simulator
