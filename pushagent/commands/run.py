"""``pushagent run``: the agent in the foreground, or ``--once`` over what is in the folder now."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from loguru import logger

from pushagent.agent import Agent
from pushagent.config import load_config
from pushagent.droplock import DropFolderLock
from pushagent.env import Environment
from pushagent.health import HealthServer
from pushagent.journal import Journal, StateLock
from pushagent.lifecycle import PENDING
from pushagent.names import printable
from pushagent.notify import Notifier
from pushagent.runtime import build_client, configure_logging, key_file_exposure
from pushagent.throttle import Throttle


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the drop-folder agent",
        description=(
            "Watch the drop folder and upload each complete CSV file to the SEGMENT_EXPORT jobs "
            "waiting for its segment, or fail those jobs with the reason. Runs until SIGTERM or "
            "SIGINT (a second signal stops at once). Exit codes with --once: 0 ok, 1 a file "
            "failed or is left retrying (Exchange unreachable, key refused), 2 configuration or "
            "usage error, 3 the key was refused at the first call."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, required=True, help="the agent's YAML file")
    parser.add_argument(
        "--once",
        action="store_true",
        help="handle the files in the folder now, then exit (files with no waiting job stay)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    config = load_config(args.config, environ=env.environ)
    configure_logging(config, env=env, verbosity=args.verbosity)
    exposure = key_file_exposure(config.exchange)
    if exposure is not None:
        logger.warning("{}", exposure)
    lock = StateLock(config.state_dir)
    lock.acquire()
    drop_lock = DropFolderLock(config.folders.drop, state_dir=config.state_dir)
    try:
        drop_lock.acquire()
    except BaseException:
        lock.release()
        raise
    journal = Journal.for_state_dir(config.state_dir)
    health: HealthServer | None = None
    notifier: Notifier | None = None
    try:
        stop = threading.Event()

        def sleep_until_stopped(seconds: float) -> None:
            stop.wait(seconds)

        rate = config.upload.max_bytes_per_second
        throttle = Throttle(rate, sleep=sleep_until_stopped) if rate else None
        client = build_client(config.exchange, sleep=sleep_until_stopped, throttle=throttle)
        notifier = Notifier(config.notify)
        notifier.start()
        agent = Agent(config, client=client, journal=journal, stop_event=stop, notifier=notifier)
        if config.metrics.enabled:
            health = HealthServer(agent, host=config.metrics.host, port=config.metrics.port)
            health.start()
        _stop_on_signals(agent)
        logger.info(
            "pushagent watching {} for endpoint {} at {}",
            config.folders.drop,
            config.exchange.endpoint_id,
            config.exchange.base_url,
        )
        code = agent.run(once=args.once)
        if args.once:
            _print_summary(agent, journal, env)
        logger.info("pushagent stopped")
        return code
    finally:
        if notifier is not None:
            notifier.stop()
        if health is not None:
            health.stop()
        journal.close()
        drop_lock.release()
        lock.release()


def _stop_on_signals(agent: Agent) -> None:
    def handle(signum: int, _frame: object) -> None:
        # A signal handler must not take the inbox's lock the main thread may be holding.
        threading.Thread(target=agent.request_stop, daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)


def _print_summary(agent: Agent, journal: Journal, env: Environment) -> None:
    """Every file that finished in this run, then every file still pending, with its reason."""
    out = env.stdout
    for name in agent.outcomes.done:
        print(f"done     {printable(name)}", file=out)
    for name, reason in agent.outcomes.failed:
        print(f"failed   {printable(name)}: {printable(reason)}", file=out)
    for row in journal.files(*PENDING):
        print(f"pending  {printable(row.rel_path)}: {printable(row.reason or row.state.value)}",
              file=out)
