"""Shared test parts: real aiohttp target servers on free ports, and hookshield in-process.

`target` starts an aiohttp app that records what it receives and answers with a handler
the test chooses; `proxy` and `stack` build hookshield from a config mapping and serve its
data plane and admin plane on free ports, in-process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy

from hookshield.app import App
from hookshield.config import Config, load_config
from hookshield.config.models import Address
from hookshield.runtime import State

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def pytest_report_header() -> str:
    return f"hookshield: {build()}"


def pytest_configure() -> None:
    """`HOOKSHIELD_EXPECT_COMPILED=1` (scripts/test's second run): refuse to test the
    Python sources in place of the compiled build."""
    if os.environ.get("HOOKSHIELD_EXPECT_COMPILED") == "1" and build() != "compiled":
        raise pytest.UsageError(f"the compiled build was expected, found {build()}")


def build() -> str:
    """Which hookshield the tests import: the mypyc-compiled modules, or the sources."""
    import hookshield.proxy

    return "compiled" if not hookshield.proxy.__file__.endswith(".py") else "pure Python"


# Test files (SQLite queues, Redis data, configs) go to tmpfs where there is one. On a disk
# busy writing back (CI installs packages just before the tests) an fsync can stall for
# hundreds of milliseconds, which timing assertions would read as a hookshield delay.
if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) and "TMPDIR" not in os.environ:
    tempfile.tempdir = "/dev/shm"


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


class DataClient:
    """An HTTP client on hookshield's data plane: `await client.post("/hook", data=...)`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.session = aiohttp.ClientSession(f"http://127.0.0.1:{port}")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.session.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)


@pytest.fixture
async def proxy(stack: Any) -> Any:
    """Factory: `await proxy(config_mapping, env=...)` -> a `DataClient` on hookshield."""

    async def start(data: dict[str, Any], env: dict[str, str] | None = None) -> DataClient:
        started: Stack = await stack(data, env)
        return started.data

    return start


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

    data: DataClient
    admin: TestClient[web.Request, web.Application]
    state: State


@pytest.fixture
async def stack(tmp_path: Path) -> Any:
    """Factory: `await stack(config_mapping, env=...)`, or `await stack(path=config_file)`
    -> a running `Stack`."""
    admins: list[TestClient[web.Request, web.Application]] = []
    apps: list[App] = []
    clients: list[DataClient] = []

    async def start(
        data: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        path: Path | None = None,
    ) -> Stack:
        config = (
            load_config(path, env=env or {}) if path else make_config(data or {}, tmp_path, env)
        )
        app = App(config, grace_s=2.0)
        await app.start(Address("127.0.0.1", 0))  # every part but the admin plane's listener
        apps.append(app)
        admin_client: TestClient[web.Request, web.Application] = TestClient(TestServer(app.admin))
        await admin_client.start_server()
        admins.append(admin_client)
        client = DataClient(app.data_port)
        clients.append(client)
        return Stack(client, admin_client, app.state)

    yield start
    for client in reversed(clients):
        await client.session.close()
    for admin_client in reversed(admins):
        await admin_client.close()
    for app in reversed(apps):
        await app.stop()


def needs_tool(name: str) -> pytest.MarkDecorator:
    """Skip when the command-line tool `name` is missing, except in CI (CI=true), where
    scripts/test installs it and a missing tool must fail, not hide a test."""
    import os
    import shutil

    missing = shutil.which(name) is None and not os.environ.get("CI")
    return pytest.mark.skipif(missing, reason=f"{name} is not installed (scripts/test installs it)")
