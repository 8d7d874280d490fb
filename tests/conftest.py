"""Shared test parts: real aiohttp target servers on free ports, and hookshield in-process.

`target` starts an aiohttp app that records what it receives and answers with a handler
the test chooses; `proxy` builds hookshield's data app from a config mapping and serves it
on a free port through aiohttp's real test server.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from hookshield.config import Config, load_config
from hookshield.runtime import STATE, State
from hookshield.server import build_apps

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class Target:
    """A real HTTP server on 127.0.0.1 and what it has been sent."""

    server: TestServer
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def target() -> Any:
    """Factory: `await target(handler)` -> a running `Target`."""
    started: list[TestServer] = []

    async def start(handler: Handler = ok) -> Target:
        result = Target(server=TestServer(web.Application()))

        async def record(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            result.seen.append(Seen(request.method, request.path_qs, request.headers, body))
            return await handler(request)

        result.server.app.router.add_route("*", "/{tail:.*}", record)
        await result.server.start_server()
        started.append(result.server)
        return result

    yield start
    for server in started:
        await server.close()


def make_config(data: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> Config:
    """Write `data` as a config file in `tmp_path` and load it (so reloads can read it again)."""
    path = tmp_path / "hookshield.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, env=env or {})


@pytest.fixture
async def proxy(tmp_path: Path) -> Any:
    """Factory: `await proxy(config_mapping, env=...)` -> a `TestClient` on hookshield."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def start(
        data: dict[str, Any], env: dict[str, str] | None = None
    ) -> TestClient[web.Request, web.Application]:
        app, _admin = build_apps(make_config(data, tmp_path, env))
        client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` every 10 ms until true; fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the condition is plain state, not an event
            await asyncio.sleep(0.01)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """hookshield's data plane and admin plane on real ports, sharing one state."""

    data: TestClient[web.Request, web.Application]
    admin: TestClient[web.Request, web.Application]
    state: State


@pytest.fixture
async def stack(tmp_path: Path) -> Any:
    """Factory: `await stack(config_mapping, env=...)`, or `await stack(path=config_file)`
    -> a running `Stack`."""
    started: list[TestClient[web.Request, web.Application]] = []

    async def start(
        data: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        path: Path | None = None,
    ) -> Stack:
        config = (
            load_config(path, env=env or {}) if path else make_config(data or {}, tmp_path, env)
        )
        app, admin = build_apps(config, grace_s=2.0)
        clients = [TestClient(TestServer(app)), TestClient(TestServer(admin))]
        for client in clients:
            await client.start_server()
            started.append(client)
        return Stack(clients[0], clients[1], app[STATE])

    yield start
    for client in reversed(started):
        await client.close()


def needs_tool(name: str) -> pytest.MarkDecorator:
    """Skip when the command-line tool `name` is missing, except in CI (CI=true), where
    scripts/test installs it and a missing tool must fail, not hide a test."""
    import os
    import shutil

    missing = shutil.which(name) is None and not os.environ.get("CI")
    return pytest.mark.skipif(missing, reason=f"{name} is not installed (scripts/test installs it)")
