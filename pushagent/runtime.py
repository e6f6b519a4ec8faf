"""Building the long-lived pieces (client, journal) from a validated config."""

from __future__ import annotations

import time
from collections.abc import Callable

from pushagent import logs
from pushagent.config import AgentConfig, ExchangeSettings, LoggingSettings
from pushagent.env import Environment
from pushagent.exchange import ExchangeClient, RetryPolicy


def build_client(
    settings: ExchangeSettings, *, sleep: Callable[[float], None] = time.sleep
) -> ExchangeClient:
    verify: bool | str = settings.verify_tls
    if settings.verify_tls and settings.ca_bundle is not None:
        verify = str(settings.ca_bundle)
    retry = settings.retry
    return ExchangeClient(
        settings.base_url,
        settings.api_key,
        retry=RetryPolicy(
            max_attempts=retry.max_attempts,
            max_total_seconds=retry.max_total_seconds,
            initial_backoff=retry.initial_backoff,
            max_backoff=retry.max_backoff,
        ),
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        verify=verify,
        allow_insecure_http=settings.allow_insecure_http,
        sleep=sleep,
    )


def configure_logging(config: AgentConfig, *, env: Environment, verbosity: int) -> None:
    """The config's logging section, on top of the CLI's stderr defaults."""
    settings: LoggingSettings = config.logging
    logs.register_secret(config.exchange.api_key)
    if config.pull is not None:
        logs.register_secret(config.pull.api_key)
    level = "DEBUG" if verbosity > 0 else settings.level
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
