"""The sides one ``pushagent run`` serves: the push agent (folders:), the puller (pull:), or both.

The push loop keeps the main thread and the puller runs in a thread of its own, so a slow
download never holds up a file, nor a stop: a download still blocked in a socket a moment after
it was cut short is left to die with the process (the journal resumes it). One stop request
reaches both (warm, then cold); /healthz is green only while both are; ``--once`` returns the
worse of the two exit codes.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from pushagent.agent import Agent
from pushagent.config import AgentConfig
from pushagent.journal import Journal
from pushagent.metrics import AgentMetrics, PullMetrics
from pushagent.notify import Notifier
from pushagent.pull import Puller
from pushagent.runtime import build_client
from pushagent.throttle import Throttle

JOIN_STEP_SECONDS = 0.2


class Service:
    def __init__(self, *, agent: Agent | None, puller: Puller | None,
                 metrics: AgentMetrics) -> None:
        if agent is None and puller is None:
            raise ValueError("a service needs the push agent, the puller or both")
        self.agent = agent
        self.puller = puller
        self.metrics = metrics
        self._pull_code = 1  # until the puller returns: one left behind is left retrying

    def run(self, *, once: bool = False) -> int:
        thread: threading.Thread | None = None
        if self.puller is not None:
            # Its own thread even alone: a download blocked in a socket must not keep the main
            # thread (and so a stop) waiting.
            thread = threading.Thread(target=self._run_puller, args=(once,), name="pull",
                                      daemon=True)
            thread.start()
        code = self.agent.run(once=once) if self.agent is not None else 0
        if thread is None or self.puller is None:
            return code
        if self.agent is not None and not once:
            self.puller.stop_warm()  # the agent returns only once asked to stop
        while thread.is_alive() and not self.puller.abandoned():
            thread.join(JOIN_STEP_SECONDS)  # short joins: signals still reach the main thread
        return max(code, self._pull_code) if once else code

    def _run_puller(self, once: bool) -> None:
        assert self.puller is not None
        self._pull_code = self.puller.run(once=once)

    def request_stop(self) -> None:
        if self.agent is not None:
            self.agent.request_stop()
        if self.puller is not None:
            self.puller.request_stop()

    def health(self) -> tuple[bool, str]:
        answers = [side.health() for side in (self.agent, self.puller) if side is not None]
        failing = [reason for healthy, reason in answers if not healthy]
        return (False, "; ".join(failing)) if failing else (True, "ok")


def build_service(
    config: AgentConfig, *, journal: Journal, notifier: Notifier | None = None
) -> Service:
    """The sides ``config`` asks for, each with its own client (the pull side's key may be the
    pull endpoint's own) whose retries sleep on that side's stop event; uploads share one
    ``upload.max_bytes_per_second`` throttle."""
    metrics = AgentMetrics()
    agent: Agent | None = None
    if config.folders is not None:
        push_stop = threading.Event()
        sleep = _sleeper(push_stop)
        rate = config.upload.max_bytes_per_second
        throttle = Throttle(rate, sleep=sleep) if rate else None
        client = build_client(config.exchange, sleep=sleep, throttle=throttle)
        agent = Agent(config, client=client, journal=journal, metrics=metrics,
                      stop_event=push_stop, notifier=notifier)
    puller: Puller | None = None
    if config.pull is not None:
        pull_stop = threading.Event()
        settings = dataclasses.replace(
            config.exchange, api_key=config.pull.api_key or config.exchange.api_key)
        puller = Puller(
            config.pull, client=build_client(settings, sleep=_sleeper(pull_stop)), journal=journal,
            metrics=PullMetrics(metrics.registry),
            healthy_within=config.metrics.healthy_within_seconds, stop_event=pull_stop,
            grace_seconds=config.upload.shutdown_grace_seconds,
        )
    return Service(agent=agent, puller=puller, metrics=metrics)


def _sleeper(stop: threading.Event) -> Callable[[float], None]:
    """A sleep between retries that a stop request cuts short."""
    def sleep(seconds: float) -> None:
        stop.wait(seconds)
    return sleep
