"""Hot reload and the lifecycle, with real files swapped the way the kubelet does it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import Stack, Target, wait_for
from tests.processes import Hookshield


class ConfigMapDir:
    """A mounted ConfigMap: `hookshield.yaml -> ..data/hookshield.yaml`, `..data -> ..<ts>`;
    an update writes a new timestamped dir and swaps `..data` atomically (rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.version = 0

    @property
    def path(self) -> Path:
        return self.root / "hookshield.yaml"

    def write(self, data: dict[str, Any] | str) -> None:
        self.version += 1
        stamp = self.root / f"..2026_11_23_{self.version:04d}"
        stamp.mkdir()
        (stamp / "hookshield.yaml").write_text(
            data if isinstance(data, str) else yaml.safe_dump(data)
        )
        tmp_link = self.root / "..data_tmp"
        tmp_link.symlink_to(stamp.name)
        tmp_link.rename(self.root / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to("..data/hookshield.yaml")


def routes(url: str, *names: str, **extra: Any) -> dict[str, Any]:
    return {
        "reload": {"poll_interval_s": 0.1},
        "routes": [
            {"name": n, "match": {"path_prefix": f"/{n}"}, "target": url, **extra} for n in names
        ],
    }


async def test_kubelet_swap_adds_a_route_and_every_swap_is_seen(
    stack: Any, target: Any, tmp_path: Path
) -> None:
    """A new route serves within 2 s of the ..data swap; five successive swaps all apply."""
    app: Target = await target()
    mount = ConfigMapDir(tmp_path / "cm")
    mount.write(routes(app.url, "a"))
    hs: Stack = await stack(path=mount.path)
    assert (await hs.data.post("/b")).status == 404
    mount.write(routes(app.url, "a", "b"))
    started = time.monotonic()
    while (await hs.data.post("/b")).status != 200:
        assert time.monotonic() - started < 2.0
        await asyncio.sleep(0.05)
    for n in range(5):
        mount.write(routes(app.url, "a", "b", headers={"add": {"X-Version": str(n)}}))
        async with asyncio.timeout(2):
            while True:
                await hs.data.post("/a")
                if app.seen[-1].headers.get("X-Version") == str(n):
                    break
                await asyncio.sleep(0.05)
    assert hs.state.runtime is not None
    assert hs.state.runtime.generation == 7


async def test_invalid_swap_keeps_old_config_and_is_reported(
    stack: Any, target: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid version: old routes keep serving, the error is logged with its path and
    counted; the next valid version applies."""
    app = await target()
    mount = ConfigMapDir(tmp_path / "cm")
    mount.write(routes(app.url, "a"))
    hs: Stack = await stack(path=mount.path)
    reloader = hs.state.reloader
    assert reloader is not None
    bad = routes(app.url, "a")
    bad["routes"][0]["timeout_ms"] = -5
    mount.write(bad)
    await wait_for(lambda: reloader.counts["failure"] == 1)
    assert (await hs.data.post("/a")).status == 200
    failures = [r for r in caplog.records if r.getMessage() == "config_reload_failed"]
    assert "routes[0].timeout_ms: must be > 0, got -5" in failures[0].fields["problems"]  # type: ignore[attr-defined]
    mount.write(routes(app.url, "a", "c"))
    await wait_for(lambda: reloader.counts["success"] == 1)
    assert (await hs.data.post("/c")).status == 200


async def test_admin_reload_answers_generation_or_errors(
    stack: Any, target: Any, tmp_path: Path
) -> None:
    """POST /admin/reload: the new generation, or 422 with every error."""
    app = await target()
    data = routes(app.url, "a")
    data["reload"] = {"poll_interval_s": 3600}  # only the endpoint triggers here
    hs: Stack = await stack(data)
    config_file = tmp_path / "hookshield.yaml"
    ok = await (await hs.admin.post("/admin/reload")).json()
    assert ok == {"success": True, "config_generation": 2}
    config_file.write_text("routes: [{name: x}]")
    resp = await hs.admin.post("/admin/reload")
    body = await resp.json()
    assert (resp.status, body["code"], body["config_generation"]) == (422, "INVALID_CONFIG", 2)
    assert "routes[0].match.path_prefix: is required" in body["errors"]


async def test_no_request_fails_during_reloads(stack: Any, target: Any, tmp_path: Path) -> None:
    """8 clients sending for 3 s while the config is reloaded 5 times: every answer is 200."""
    app = await target()
    data = routes(app.url, "a")
    data["reload"] = {"poll_interval_s": 3600}
    hs: Stack = await stack(data)
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            statuses.append((await hs.data.post("/a", data=b"x")).status)

    clients = [asyncio.create_task(client()) for _ in range(8)]
    for n in range(5):
        await asyncio.sleep(0.5)
        (tmp_path / "hookshield.yaml").write_text(yaml.safe_dump(routes(app.url, "a", f"extra{n}")))
        assert (await hs.admin.post("/admin/reload")).status == 200
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    assert len(statuses) > 100
    assert set(statuses) == {200}


async def test_breaker_survives_reload_of_another_route(
    stack: Any, target: Any, tmp_path: Path
) -> None:
    """Route A's open breaker stays open across a reload that changes only route B."""

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    bad, good = await target(broken), await target()
    breaker = {"failure_threshold": 2, "recovery_timeout_s": 60}

    def config(b_header: str) -> dict[str, Any]:
        return {
            "reload": {"poll_interval_s": 3600},
            "routes": [
                {
                    "name": "a",
                    "match": {"path_prefix": "/a"},
                    "target": bad.url,
                    "breaker": breaker,
                },
                {
                    "name": "b",
                    "match": {"path_prefix": "/b"},
                    "target": good.url,
                    "headers": {"add": {"X-B": b_header}},
                },
            ],
        }

    hs: Stack = await stack(config("1"))
    for _ in range(2):
        await hs.data.post("/a")
    assert (await (await hs.data.post("/a")).json())["code"] == "CIRCUIT_OPEN"
    (tmp_path / "hookshield.yaml").write_text(yaml.safe_dump(config("2")))
    assert (await hs.admin.post("/admin/reload")).status == 200
    assert (await (await hs.data.post("/a")).json())["code"] == "CIRCUIT_OPEN"
    await hs.data.post("/b")
    assert good.seen[-1].headers["X-B"] == "2"
    assert len(bad.seen) == 2


async def test_rewritten_secret_file_signs_after_reload(
    stack: Any, target: Any, tmp_path: Path
) -> None:
    """A secret file rewritten in place is picked up (the watcher sees it) and used to sign."""
    app = await target()
    secret = tmp_path / "lottery.secret"
    secret.write_text("first-secret")
    data = routes(app.url, "a", signing={"scheme": "hmac-sha256", "secret": "lottery"})
    data["secrets"] = {"lottery": {"file": "lottery.secret"}}
    hs: Stack = await stack(data)
    reloader = hs.state.reloader
    assert reloader is not None
    secret.write_text("second-secret")
    await wait_for(lambda: reloader.counts["success"] == 1)
    await hs.data.post("/a", data=b"body")
    expected = hmac.new(b"second-secret", b"body", hashlib.sha256).hexdigest()
    assert app.seen[-1].headers["X-Platform-Signature"] == f"sha256={expected}"


@pytest.mark.timeout(60)
async def test_sigterm_drains_in_flight_calls_and_exits_0(tmp_path: Path, target: Any) -> None:
    """SIGTERM with 5 in-flight 1 s calls: all 5 get their 200, then the process exits 0."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(text="done")

    app = await target(slow)
    hs = await Hookshield(
        tmp_path, {"routes": [{"name": "s", "match": {"path_prefix": "/s"}, "target": app.url}]}
    ).start()
    async with aiohttp.ClientSession() as session:

        async def call() -> int:
            async with session.post(f"{hs.url}/s") as resp:
                return resp.status

        calls = [asyncio.create_task(call()) for _ in range(5)]
        await wait_for(lambda: len(app.seen) == 5)
        code = await hs.stop(signal.SIGTERM)
        assert await asyncio.gather(*calls) == [200] * 5
    assert code == 0


@pytest.mark.timeout(60)
async def test_second_signal_exits_at_once_and_sighup_reloads(tmp_path: Path, target: Any) -> None:
    """SIGHUP reloads a running process; a second SIGTERM during a long drain exits at once."""

    async def stuck(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")

    app = await target(stuck)
    first = {"name": "s", "match": {"path_prefix": "/s"}, "target": app.url}
    config: dict[str, Any] = {"reload": {"poll_interval_s": 3600}, "routes": [first]}
    hs = await Hookshield(tmp_path, config).start("--grace", "30")
    config["routes"].append({"name": "t", "match": {"path_prefix": "/t"}, "target": app.url})
    hs.config_path.write_text(
        yaml.safe_dump({**config, "listen": {"port": hs.listen}, "admin": {"port": hs.admin}})
    )
    assert hs.process is not None
    os.kill(hs.process.pid, signal.SIGHUP)
    await wait_for(lambda: '"config_reloaded"' in hs.log())
    async with aiohttp.ClientSession() as session:
        pending = asyncio.create_task(session.post(f"{hs.url}/s"))
        await wait_for(lambda: len(app.seen) == 1)
        hs.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        code = await hs.stop(signal.SIGTERM, timeout_s=5)
        assert time.monotonic() - started < 2
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
    assert code == 130
    assert '"stopped_without_drain"' in hs.log()
