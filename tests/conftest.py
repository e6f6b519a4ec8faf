pytest_plugins = ["pushagent.simulator.pytest_plugin"]
