from loguru import logger

import pushagent  # noqa: F401 (its import disables the package's records; enabled below)

pytest_plugins = ["pushagent.simulator.pytest_plugin"]

# The package is silent as a library; the tests read the agent's log lines in-process, as the
# CLI would print them.
logger.enable("pushagent")
