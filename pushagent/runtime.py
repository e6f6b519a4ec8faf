"""Building the long-lived pieces (client, journal) from a validated config."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

from pushagent import logs
from pushagent.config import AgentConfig, ExchangeSettings, LoggingSettings
from pushagent.env import Environment
from pushagent.exchange import ExchangeClient
from pushagent.throttle import Throttle

__all__ = ["build_client", "configure_logging", "key_file_exposure"]


def build_client(
    settings: ExchangeSettings, *, sleep: Callable[[float], None] = time.sleep,
    throttle: Throttle | None = None,
) -> ExchangeClient:
    verify: bool | str = settings.verify_tls
    if settings.verify_tls and settings.ca_bundle is not None:
        verify = str(settings.ca_bundle)
    return ExchangeClient(
        settings.base_url,
        settings.api_key,
        retry=settings.retry,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        verify=verify,
        allow_insecure_http=settings.allow_insecure_http,
        sleep=sleep,
        throttle=throttle,
    )


def key_file_exposure(settings: ExchangeSettings) -> str | None:
    """A warning when the key's file may be read by its group or by everyone, else None."""
    path = settings.api_key_file
    if path is None:
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # it was read a moment ago; a vanished file is the loader's to report
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return None
    who = " and ".join(name for bit, name in ((stat.S_IRGRP, "its group"), (stat.S_IROTH,
                       "every user")) if mode & bit)
    return (f"the key file {path} is readable by {who} (mode {stat.S_IMODE(mode):04o}); "
            f"make it readable by the agent's user only: chmod 600 {path}")


def configure_logging(config: AgentConfig, *, env: Environment, verbosity: int) -> None:
    """The config's logging section, on top of the CLI's stderr defaults."""
    settings: LoggingSettings = config.logging
    logs.register_secret(config.exchange.api_key)
    level = settings.level
    if verbosity > 0:
        level = "DEBUG"
    elif verbosity < 0 and logs.level_no(level) < logs.level_no("WARNING"):
        level = "WARNING"  # -q: only what needs a person; a stricter configured level stays
    if settings.json:
        logs.add_json_stderr(env=env, level=level)
    else:
        logs.configure_stderr(env=env, level=level)
    if settings.file is not None:
        logs.add_file_sink(
            settings.file,
            level=level,
            rotation=settings.rotation,
            retention=settings.retention,
            json_lines=settings.json,
        )
