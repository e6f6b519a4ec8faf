"""``pushagent simulator``: run the local Exchange simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from pushagent.env import Environment
from pushagent.errors import ConfigError
from pushagent.simulator.control import PREFIX
from pushagent.simulator.seed import Seed, load_seed
from pushagent.simulator.server import DEFAULT_ACCOUNT_KEY, Simulator

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _endpoint_key(text: str) -> tuple[str, int]:
    key, sep, endpoint = text.rpartition("=")
    if not sep or not key or not endpoint.strip().isdigit():
        raise argparse.ArgumentTypeError(
            "expected KEY=ENDPOINT_ID, e.g. endpoint-85-key=85 (the endpoint ID is a number)"
        )
    return key, int(endpoint)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulator",
        help="run a local Exchange jobs API for tests and demos",
        description=(
            "Run a local simulator of the Acoustic Exchange jobs API on plain HTTP. The first "
            "line of stdout is 'pushagent simulator listening on <URL>'; use that URL as the "
            f"Exchange base URL. A control API under <URL>/{PREFIX}/ (no key, loopback only) "
            "creates jobs, shows uploads and the request log, and injects faults. Stops on "
            "SIGINT or SIGTERM."
        ),
    )
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; the control API serves loopback only)",
    )
    parser.add_argument(
        "--port", type=int, default=0,
        help="port to listen on (default 0: a free port, printed on the first line)",
    )
    parser.add_argument(
        "--jobs", type=Path, metavar="FILE",
        help="YAML or JSON seed: a list of jobs, or a mapping with jobs: and scheduledJobs: "
             "(camelCase API fields; missing fields get defaults)",
    )
    parser.add_argument(
        "--account-key", default=DEFAULT_ACCOUNT_KEY, metavar="KEY",
        help=f"the account-level key, which sees every job (default {DEFAULT_ACCOUNT_KEY})",
    )
    parser.add_argument(
        "--endpoint-key", type=_endpoint_key, action="append", default=[],
        metavar="KEY=ENDPOINT_ID",
        help="an endpoint-level key that sees only that endpoint's jobs; repeat for more",
    )
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR",
        help="where uploads and segment files are kept (default: a temporary directory "
             "removed on exit)",
    )
    parser.add_argument(
        "--complete-after", type=float, default=0.5, metavar="SECONDS",
        help="seconds a job stays RUNNING after its upload before it reads COMPLETE (default 0.5)",
    )
    parser.add_argument(
        "--max-bytes-per-second", type=int, default=0, metavar="N",
        help="read request bodies, all together, no faster than N bytes per second, to stand "
             "in for a real link (default 0: no limit; also PUT /_sim/throttle)",
    )
    parser.set_defaults(handler=run)


def _wait_for_stop_signal() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in _STOP_SIGNALS}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(args: argparse.Namespace, env: Environment) -> int:
    if args.complete_after < 0:
        raise ConfigError(f"--complete-after must be >= 0 seconds, not {args.complete_after}")
    if args.max_bytes_per_second < 0:
        raise ConfigError(
            f"--max-bytes-per-second must be 0 (no limit) or more, not {args.max_bytes_per_second}"
        )
    seed = load_seed(args.jobs) if args.jobs else Seed(jobs=(), scheduled_jobs=())
    try:
        simulator = Simulator(
            host=args.host,
            port=args.port,
            account_key=args.account_key,
            endpoint_keys=dict(args.endpoint_key),
            data_dir=args.data_dir,
            complete_after=args.complete_after,
            jobs=seed.jobs,
            scheduled_jobs=seed.scheduled_jobs,
            request_log_level="INFO",
            max_bytes_per_second=args.max_bytes_per_second,
        )
    except OSError as error:
        raise ConfigError(
            f"the simulator cannot listen on {args.host}:{args.port} ({error.strerror}); "
            "choose another --host or --port"
        ) from error
    with simulator:
        print(f"pushagent simulator listening on {simulator.url}", file=env.stdout, flush=True)
        print(
            f"control API at {simulator.control_url}/ ({len(seed.jobs)} jobs, "
            f"{len(seed.scheduled_jobs)} scheduled jobs seeded); stop with Ctrl-C or SIGTERM",
            file=env.stdout,
            flush=True,
        )
        _wait_for_stop_signal()
    print("pushagent simulator stopped", file=env.stdout, flush=True)
    return 0
