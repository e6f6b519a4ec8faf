"""``pushagent run``: the agent in the foreground, or ``--once`` over what is in the folder now."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from loguru import logger

from pushagent.config import load_config
from pushagent.droplock import DropFolderLock
from pushagent.env import Environment
from pushagent.health import HealthServer
from pushagent.journal import Journal, StateLock
from pushagent.lifecycle import PENDING, PullJobState
from pushagent.names import printable
from pushagent.notify import Notifier
from pushagent.pulljournal import PullJournal
from pushagent.runtime import configure_logging, key_file_exposure
from pushagent.service import Service, build_service


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the drop-folder agent",
        description=(
            "Watch the drop folder and upload each complete CSV file to the jobs (SEGMENT_EXPORT, "
            "IDENTITY_IMPORT) waiting for its segment, or fail those jobs with the reason; with "
            "a pull: section, also download the jobs ready for the pull endpoint to the outbox. "
            "Runs until SIGTERM or SIGINT (a second signal stops at once). Exit codes with "
            "--once: 0 ok, 1 a file failed or a file or pull job is left retrying (Exchange "
            "unreachable, key refused), 2 configuration or usage error, 3 the key was refused at "
            "the first call."
        ),
    )
    parser.add_argument("-c", "--config", type=Path, required=True, help="the agent's YAML file")
    parser.add_argument(
        "--once",
        action="store_true",
        help="handle the files in the folder (and the jobs ready for download) now, then exit "
             "(files with no waiting job stay)",
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
    drop_lock = None
    if config.folders is not None:
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
        notifier = Notifier(config.notify)
        notifier.start()
        service = build_service(config, journal=journal, notifier=notifier)
        if config.metrics.enabled:
            health = HealthServer(service, host=config.metrics.host, port=config.metrics.port)
            health.start()
        _stop_on_signals(service)
        if config.folders is not None:
            logger.info("pushagent watching {} for endpoint {} at {}", config.folders.drop,
                        config.exchange.endpoint_id, config.exchange.base_url)
        if config.pull is not None:
            logger.info("pushagent downloading the jobs ready for endpoint {} to {} from {}",
                        config.pull.endpoint_id, config.pull.outbox, config.exchange.base_url)
        code = service.run(once=args.once)
        if args.once:
            _print_summary(service, journal, env)
        logger.info("pushagent stopped")
        return code
    finally:
        if notifier is not None:
            notifier.stop()
        if health is not None:
            health.stop()
        journal.close()
        if drop_lock is not None:
            drop_lock.release()
        lock.release()


def _stop_on_signals(service: Service) -> None:
    def handle(signum: int, _frame: object) -> None:
        # A signal handler must not take the inbox's lock the main thread may be holding.
        threading.Thread(target=service.request_stop, daemon=True).start()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handle)


def _print_summary(service: Service, journal: Journal, env: Environment) -> None:
    """Every file (and pull job) that finished in this run, then every one still pending, with
    its reason."""
    out = env.stdout
    if service.agent is not None:
        agent = service.agent
        for name in agent.outcomes.done:
            print(f"done     {printable(name)}", file=out)
        for name, reason in agent.outcomes.failed:
            print(f"failed   {printable(name)}: {printable(reason)}", file=out)
        for row in journal.files(*PENDING):
            print(f"pending  {printable(row.rel_path)}: "
                  f"{printable(row.reason or row.state.value)}", file=out)
    if service.puller is not None:
        for job_id in service.puller.outcomes.done:
            print(f"pulled   job {job_id}", file=out)
        for job_id, reason in service.puller.outcomes.gone:
            print(f"gone     job {job_id}: {printable(reason)}", file=out)
        for pull_row in PullJournal(journal).jobs(PullJobState.DOWNLOADING, PullJobState.ON_DISK):
            print(f"pending  job {pull_row.job_id}: "
                  f"{printable(pull_row.reason or pull_row.state.value)}", file=out)
