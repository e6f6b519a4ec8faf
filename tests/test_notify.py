"""Webhook notifications against a real local HTTP server (and the real agent process)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pushagent import logs
from pushagent.config import NotifySettings, load_config
from pushagent.notify import Notice, Notifier, body_for
from pushagent.simulator import Simulator
from tests.e2e import ENDPOINT, KEY, AgentHome, drop_atomically, wait_for
from tests.fakes import FakeClock


class Hook:
    """A webhook receiver on 127.0.0.1: records each POST; can fail or hold requests."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.failures_left = 0
        self.hold = threading.Event()
        self.hold.set()
        self.arrived = threading.Event()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.arrived.set()
                hook.hold.wait(30)
                if hook.failures_left > 0:
                    hook.failures_left -= 1
                    self.send_response(503)
                else:
                    hook.posts.append(json.loads(body))
                    hook.headers.append(dict(self.headers))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.close()


def notifier(hook: Hook, **options: Any) -> Notifier:
    settings = NotifySettings(webhook_url=hook.url, **options)
    return Notifier(settings, host="box-1")


def test_the_three_formats() -> None:
    notice = Notice("file_failed", "a.csv failed: bad", {"file": "a.csv"})
    plain = body_for(notice, fmt="json", host="box-1", when=0.0)
    assert plain == {"source": "pushagent", "event": "file_failed", "host": "box-1",
                     "time": "1970-01-01T00:00:00+00:00", "text": "a.csv failed: bad",
                     "file": "a.csv"}
    assert body_for(notice, fmt="slack", host="box-1", when=0.0) == {"text": "a.csv failed: bad"}
    teams = body_for(notice, fmt="teams", host="box-1", when=0.0)
    assert teams["@type"] == "MessageCard" and teams["text"] == "a.csv failed: bad"
    assert teams["title"] == "pushagent on box-1: file failed"


def test_a_failed_file_and_its_failed_jobs_are_posted_with_the_headers(hook: Hook) -> None:
    sender = notifier(hook, headers={"Authorization": "Bearer hook-token-1"})
    sender.start()
    try:
        sender.file_failed("45311.csv", "invalid CSV: line 2", failed_jobs=["1001"])
        sender.job_failed("1001", file="45311.csv", reason="invalid CSV: line 2")
        wait_for(lambda: len(hook.posts) == 2, what="two posts")
    finally:
        sender.stop()
    first, second = hook.posts
    assert first["event"] == "file_failed" and first["failed_jobs"] == ["1001"]
    assert first["text"] == "45311.csv failed: invalid CSV: line 2; job(s) failed: 1001"
    assert second["event"] == "job_failed" and second["job_id"] == "1001"
    assert hook.headers[0]["Authorization"] == "Bearer hook-token-1"


def test_posts_are_retried_with_backoff(hook: Hook) -> None:
    hook.failures_left = 2
    sender = notifier(hook)
    sender.start()
    try:
        sender.file_failed("a.csv", "bad", failed_jobs=[])
        wait_for(lambda: hook.posts, timeout=20, what="the post after two 503s")
    finally:
        sender.stop()
    assert hook.failures_left == 0 and len(hook.posts) == 1


def test_a_webhook_that_hangs_never_holds_the_caller(hook: Hook) -> None:
    hook.hold.clear()
    sender = notifier(hook)
    sender.start()
    try:
        sender.file_failed("a.csv", "bad", failed_jobs=[])
        assert hook.arrived.wait(10)  # the post is being answered, slowly...
        sender.file_failed("b.csv", "bad", failed_jobs=[])  # ...and the caller goes on
        assert hook.posts == []
        hook.hold.set()
        wait_for(lambda: len(hook.posts) == 2, what="both posts once the hook answers")
    finally:
        sender.stop()


def test_no_secret_reaches_a_message(hook: Hook) -> None:
    logs.register_secret(KEY)
    try:
        sender = notifier(hook, format="json")
        sender.start()
        sender.file_failed("a.csv", f"server echoed {KEY}", failed_jobs=[])
        wait_for(lambda: hook.posts, what="the post")
        sender.stop()
    finally:
        logs.release_secret(KEY)
    assert KEY not in json.dumps(hook.posts) and "****" in hook.posts[0]["text"]


def test_an_outage_is_posted_once_past_after_seconds_and_again_on_recovery(hook: Hook) -> None:
    clock = FakeClock()
    sender = Notifier(NotifySettings(webhook_url=hook.url, after_seconds=60), clock=clock,
                      host="box-1")
    sender.start()
    try:
        sender.exchange_failing("Exchange unreachable")
        clock.advance(30)
        sender.exchange_failing("Exchange unreachable")
        sender.exchange_ok()  # a blip: shorter than after_seconds, nothing said
        for _ in range(4):
            sender.exchange_failing("the Exchange refused the key")
            clock.advance(30)
        sender.exchange_failing("the Exchange refused the key")
        clock.advance(10)
        sender.exchange_ok()
        sender.exchange_ok()
        wait_for(lambda: len(hook.posts) == 2, what="down and recovered")
    finally:
        sender.stop()
    down, up = hook.posts
    assert down["event"] == "exchange_down" and down["down_seconds"] == 60.0
    assert down["text"] == ("the Exchange has not been reached for 60 s: the Exchange refused "
                            "the key")
    assert up["event"] == "exchange_recovered" and up["down_seconds"] == 130.0


def test_disabled_without_a_url() -> None:
    quiet = Notifier(NotifySettings())
    quiet.start()
    quiet.file_failed("a.csv", "bad", failed_jobs=[])
    quiet.stop()
    assert not quiet.enabled


def test_the_agent_posts_failures_and_the_outage(tmp_path: Path, hook: Hook) -> None:
    with Simulator(account_key=KEY, data_dir=tmp_path / "sim") as sim:
        (tmp_path / "agent" / "state").mkdir(parents=True)
        home = AgentHome(tmp_path / "agent", sim.url, extra=(
            f"notify:\n  webhook_url: {hook.url}\n  format: slack\n  after_seconds: 0.5\n"
            "  headers: {X-Token: '${E2E_EXCHANGE_KEY}'}\n"
        ))
        job = sim.add_job(producerEndpointID=ENDPOINT, producerSegmentID=45311,
                          identityMappings={"Email": "EMAIL_SHA256"})["jobId"]
        home.start()
        try:
            drop_atomically(home.drop, "45311.csv", b"Email,x\na@example.com\n")
            wait_for(lambda: len(hook.posts) >= 2, what="the file and job posts")
            assert hook.posts[0] == {"text": "45311.csv failed: invalid CSV: line 2: expected 2 "
                                             f"fields, found 1; job(s) failed: {job}"}
            assert hook.posts[1]["text"].startswith(f"job {job} was failed for 45311.csv")
            sim.add_fault(method="GET", path="/v1/jobs", status=503, count=None)
            wait_for(lambda: any("has not been reached" in p["text"] for p in hook.posts),
                     what="the outage post")
            sim.clear_faults()
            wait_for(lambda: any("reached again" in p["text"] for p in hook.posts),
                     what="the recovery post")
        finally:
            home.stop()
    assert KEY not in json.dumps(hook.posts) + home.log()
    assert all(headers["X-Token"] == KEY for headers in hook.headers)  # sent, never logged


def test_the_readme_notify_block_loads_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("### Notifications\n\n```yaml\n", 1)[1].split("```", 1)[0]
    for name in ("drop", "done", "failed"):
        (tmp_path / name).mkdir()
    config = tmp_path / "agent.yaml"
    config.write_text(
        "exchange: {base_url: 'https://exchange.example.com', api_key: k, endpoint_id: 1}\n"
        "folders: {drop: ./drop, done: ./done, failed: ./failed}\nstate_dir: ./state\n" + block
    )
    loaded = load_config(config, environ={"HOOK_TOKEN": "t-123"}).notify
    assert loaded.format == "slack" and loaded.after_seconds == 300
    assert loaded.webhook_url is not None and loaded.webhook_url.startswith("https://hooks.")
    assert dict(loaded.headers) == {"Authorization": "Bearer t-123"}
    assert "t-123" not in repr(loaded) and "hooks." not in repr(loaded)
