"""Async delivery against a target that drops connections at every point (SPEC §9, §5):
no delivery counts as delivered without the target's complete 2xx, and every one is
delivered in the end.

The raw target picks, per request and at random (seeded), to close (FIN) or reset (RST) the
connection before reading the request, after reading part or all of it, after part of its
status line and headers or of a Content-Length body, or to answer a whole keep-alive 2xx
(sometimes closing or resetting the idle connection a little later). It notes each request
it read whole and each 2xx it wrote whole, by (X-Request-ID, X-Retry-Attempt).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
from collections import Counter
from typing import Any

import pytest

from hookshield import logs
from tests.conftest import Stack, wait_for
from tests.rawhttp import Peer, header, raw_server

DELIVERIES = 1000
SEED = 20240607

# What the target does with the next request on a connection, and how often.
ACTIONS = {
    "end-before-reading": 5,
    "end-after-part-of-request": 6,
    "end-after-request": 9,
    "end-in-status-or-headers": 6,
    "end-in-body": 7,
    "answer": 52,
    "answer-then-end-idle": 15,
}
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


class ChaosTarget:
    """The raw target's script and its notes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.read_whole: set[tuple[str, str]] = set()  # requests read whole
        self.answered: set[tuple[str, str]] = set()  # 2xx answers written whole
        self.actions: Counter[str] = Counter()

    def _end(self, peer: Peer) -> None:
        """A FIN or a reset, at random."""
        if self.rng.random() < 0.5:
            peer.reset()
        else:
            peer.fin()

    async def __call__(self, peer: Peer) -> None:
        while True:
            action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
            self.actions[action] += 1
            if action == "end-before-reading":
                self._end(peer)
                break
            if action == "end-after-part-of-request":
                await peer.read_some(self.rng.randint(1, 60))
                self._end(peer)
                break
            request = await peer.request()
            if request is None:
                return
            key = (header(request, "X-Request-ID") or "", header(request, "X-Retry-Attempt") or "")
            self.read_whole.add(key)
            body = json.dumps({"id": key[0], "attempt": key[1]}).encode()
            head = HEAD % len(body)
            if action == "end-after-request":
                self._end(peer)
                break
            if action == "end-in-status-or-headers":
                await peer.send(head[: self.rng.randint(1, len(head) - 1)])
                self._end(peer)
                break
            if action == "end-in-body":
                await peer.send(head + body[: self.rng.randint(0, len(body) - 1)])
                self._end(peer)
                break
            if not await peer.send(head + body):
                return
            self.answered.add(key)
            if action == "answer-then-end-idle":
                await asyncio.sleep(self.rng.uniform(0, 0.02))
                self._end(peer)
                break
        if not peer.ended:
            await peer.wait_eof(timeout_s=5.0)


def config(url: str) -> dict[str, Any]:
    retry = {
        "max_attempts": 50,
        "initial_delay_ms": 1,
        "multiplier": 2,
        "max_delay_ms": 20,
        "jitter": False,
    }
    never_open = {"failure_threshold": 1_000_000, "recovery_timeout_s": 0.1, "success_threshold": 1}
    return {
        "queue": {"workers": 16},
        "routes": [{"name": "events", "match": {"path_prefix": "/events"}, "target": url, "mode": "async",
                    "timeout_ms": 2000, "retry": retry, "breaker": never_open}],
    }  # fmt: skip


def delivered_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in stream.getvalue().splitlines() if line)
    return [line for line in lines if line["event"] == "delivered"]


@pytest.mark.timeout(120)
async def test_every_delivery_needs_the_targets_whole_2xx(
    stack: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 9112 §8, §9.3.1: 1,000 deliveries through FINs and resets: delivered only on a whole 2xx, and all in the end."""
    caplog.set_level(logging.INFO, logger="hookshield")
    stream = io.StringIO()
    monkeypatch.setattr(logs.requests, "stream", stream)  # the deliverer's "delivered" lines
    chaos = ChaosTarget(SEED)
    async with raw_server(chaos) as target:
        hs: Stack = await stack(config(target.url))
        ids = iter(range(DELIVERIES))

        async def platform() -> None:
            for n in ids:
                headers = {"X-Request-ID": f"d-{n}"}
                async with hs.data.post("/events", data=b'{"n":%d}' % n, headers=headers) as resp:
                    assert resp.status == 202

        await asyncio.gather(*(platform() for _ in range(16)))

        def done() -> bool:
            logs.requests.flush()
            return len({line["request_id"] for line in delivered_lines(stream)}) >= DELIVERIES

        try:
            await wait_for(done, timeout_s=90)
        finally:
            logs.requests.flush()
        delivered = delivered_lines(stream)
        await asyncio.sleep(0.3)  # nothing else is delivered (twice) or dead-lettered late
        logs.requests.flush()
        dlq = await (await hs.admin.get("/admin/dlq?limit=1000")).json()
        assert hs.state.store is not None
        sizes = await hs.state.store.sizes()
    print(f"target actions: {dict(chaos.actions)}, connections: {len(target.peers)}")
    keys = [(line["request_id"], str(line["attempt"])) for line in delivered]
    assert sorted({rid for rid, _ in keys}) == sorted(f"d-{n}" for n in range(DELIVERIES))
    assert len(keys) == DELIVERIES  # each delivered once
    not_read = [key for key in keys if key not in chaos.read_whole]
    not_answered = [key for key in keys if key not in chaos.answered]
    assert (not_read, not_answered) == ([], [])
    assert dlq["items"] == []
    assert sizes.get("events", (0, 0)) == (0, 0)
    assert chaos.actions["answer"] < sum(chaos.actions.values()) * 0.7  # the faults happened
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
