"""Small fakes shared by unit tests (counters and clocks, never MagicMock)."""

from __future__ import annotations

import os

from pushagent.exchange import BodyGate


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run_gate(path: str | os.PathLike[str], gate: BodyGate, *, block: int = 4096) -> bytes:
    """What ``ExchangeClient.upload_data(gate=...)`` does with the gate, without the network:
    the body fed block by block, then the gate asked to release its final block (64 KiB, or
    all of a smaller body). Returns the body; what the gate raises propagates."""
    with open(path, "rb") as stream:
        skip = gate.begin(stream.read(3), os.fstat(stream.fileno()))
        stream.seek(skip)
        body = stream.read()
    final = max(len(body) - 64 * 1024, 0)
    for start in range(0, final, block):
        gate.feed(body[start:min(start + block, final)])
    gate.feed(body[final:])
    gate.release()
    return body
