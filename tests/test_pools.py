"""Target connection pools under a file-descriptor limit (SPEC §9 "Pools"): a real
hookshield process with a soft limit of 1,024 descriptors calls 300 dynamic-target origins
in turn, twice, without a failure, an open breaker or a local error, and once idle gives
its descriptors back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import needs_tool, wait_for
from tests.processes import Hookshield
from tests.rawhttp import Peer, ok_answer, raw_server

ORIGINS = 300
SOFT_LIMIT = 1024
MAX_IDLE = 256  # limits.max_idle_connections, its default
KEEPALIVE_S = 2.0


class LimitedHookshield(Hookshield):
    """`hookshield run` under `prlimit --nofile=<soft>:<hard>` (prlimit execs it: same pid)."""

    def __init__(self, workdir: Path, config: dict[str, Any], nofile: str) -> None:
        super().__init__(workdir, config)
        self.nofile = nofile

    async def start(
        self, *args: str, env: dict[str, str] | None = None, own_group: bool = False
    ) -> Hookshield:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                "prlimit", f"--nofile={self.nofile}", "--", sys.executable, "-m", "hookshield",
                "run", "--config", str(self.config_path), *args,
                stdout=log, stderr=log, env={**os.environ, **(env or {})},
            )  # fmt: skip
        await self.wait_ready()
        return self

    def descriptors(self) -> int:
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def soft_limit(self) -> int:
        assert self.process is not None
        limits = Path(f"/proc/{self.process.pid}/limits").read_text()
        match = re.search(r"^Max open files\s+(\d+)", limits, re.M)
        assert match is not None
        return int(match.group(1))


def dynamic_config() -> dict[str, Any]:
    target = {
        "from_header": "X-Hookshield-Target",
        "allow_hosts": ["127.0.0.1"],
        "allow_networks": ["127.0.0.0/8"],
    }
    return {
        "log": {"level": "INFO"},
        "limits": {"upstream_keepalive_s": KEEPALIVE_S},
        "routes": [{"name": "fanout", "match": {"path_prefix": "/fanout"}, "target": target,
                    "timeout_ms": 5000}],
    }  # fmt: skip


async def keepalive(peer: Peer) -> None:
    await peer.serve_keepalive(lambda request: ok_answer(b"%d" % peer.number))


async def scrape(session: aiohttp.ClientSession, hs: Hookshield) -> str:
    async with session.get(f"{hs.admin_url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def values(metrics: str, name: str, label: str = "") -> list[float]:
    """The values of metric `name`'s series (those whose labels hold `label`)."""
    pattern = rf"^{name}(\{{[^}}]*\}})? (\S+)$"
    return [float(v) for labels, v in re.findall(pattern, metrics, re.M) if label in labels]


@needs_tool("prlimit")
@pytest.mark.timeout(180)
async def test_300_origins_under_a_1024_descriptor_limit(tmp_path: Path) -> None:
    """RFC 9112 §9.4, §9.5 (SPEC §9): 300 origins twice under 1,024 fds: no failure, breaker or local error; fds come back."""
    async with AsyncExitStack() as stack:
        targets = [await stack.enter_async_context(raw_server(keepalive)) for _ in range(ORIGINS)]
        hs = LimitedHookshield(tmp_path, dynamic_config(), f"{SOFT_LIMIT}:4096")
        await hs.start()
        stack.push_async_callback(hs.stop)
        assert hs.soft_limit() == SOFT_LIMIT
        session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.get(f"{hs.url}/nowhere") as resp:  # the platform's connection is up
            assert resp.status == 404
        start = hs.descriptors()
        peak = start
        failures: list[str] = []
        for round_ in (1, 2):
            for n, target in enumerate(targets):
                headers = {"X-Hookshield-Target": f"{target.url}/hook/{n}"}
                async with session.post(f"{hs.url}/fanout", data=b"{}", headers=headers) as resp:
                    body = await resp.read()
                    outcome = resp.headers.get("X-Hookshield-Outcome")
                    if (resp.status, outcome) != (200, "upstream"):
                        failures.append(
                            f"round {round_}, origin {n}: {resp.status} {outcome} {body[:200]!r}"
                        )
                peak = max(peak, hs.descriptors())
        metrics = await scrape(session, hs)
        assert failures == []
        assert all(len(t.requests) == 2 for t in targets)
        assert peak <= start + MAX_IDLE + 16, (start, peak)
        assert peak < SOFT_LIMIT // 2
        assert set(values(metrics, "hookshield_circuit_state")) <= {0.0}  # never 2 (open)
        assert set(values(metrics, "hookshield_circuit_transitions_total", 'to="open"')) <= {0.0}
        assert set(values(metrics, "hookshield_local_errors_total")) <= {0.0}
        opened = [
            line
            for line in (json.loads(raw) for raw in hs.log().splitlines() if raw.startswith("{"))
            if line.get("event") == "circuit" and line.get("new") == "OPEN"
        ]
        assert opened == []
        # Idle now: every pooled connection is past its keep-alive time within seconds.
        await wait_for(lambda: hs.descriptors() <= start + 2, timeout_s=60)
        await wait_for(lambda: sum(t.open_connections() for t in targets) == 0, timeout_s=10)
