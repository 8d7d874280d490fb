"""The `hookshield` command as a real process: check-config, run, exit codes, log hygiene."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import Target, free_port
from tests.processes import Hookshield

CANARY = "canary-secret-7f3a9c"


def hookshield(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookshield", *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})},
    )  # fmt: skip


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "hookshield.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BROKEN = {
    "routes": [
        {"name": "a", "match": {"path_prefix": "/a"}, "target": "http://t", "timeout_ms": 0},
        {"name": "b", "match": {"path_prefix": "b"}, "target": "nope", "bogus": 1},
    ]
}


def test_check_config_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    """check-config prints each mistake with its YAML path and exits 2."""
    result = hookshield("check-config", str(write(tmp_path, BROKEN)))
    assert result.returncode == 2
    for line in (
        "routes[0].timeout_ms: must be > 0, got 0",
        "routes[1].match.path_prefix: must start with '/', got 'b'",
        "routes[1].target: must be an absolute http:// or https:// URL, got 'nope'",
        "routes[1].bogus: unknown key",
    ):
        assert line in result.stderr


def test_check_config_valid_exits_0() -> None:
    """The shipped example is valid."""
    example = Path(__file__).resolve().parent.parent / "config" / "example.yaml"
    result = hookshield("check-config", str(example))
    assert (result.returncode, result.stdout.strip().endswith("valid, 3 route(s)")) == (0, True)


def test_run_on_invalid_config_exits_2_without_serving(tmp_path: Path) -> None:
    """run refuses an invalid file before setting anything up: exit 2, errors, no port bound."""
    port = free_port()
    result = hookshield(
        "run", "--config", str(write(tmp_path, {"listen": {"port": port}, **BROKEN}))
    )
    assert result.returncode == 2
    assert "routes[0].timeout_ms" in result.stderr
    assert result.stdout == ""  # logging never started: nothing was served
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # still free


def test_help_and_version() -> None:
    """--help on every verb, --version on the command."""
    assert hookshield("--version").stdout.startswith("hookshield ")
    for verb in ("run", "check-config"):
        assert hookshield(verb, "--help").returncode == 0


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    """A listener address already taken: exit 2 with a message naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        route = {"name": "a", "match": {"path_prefix": "/a"}, "target": "http://t"}
        config = {"listen": {"port": port}, "admin": {"port": free_port()}, "routes": [route]}
        result = await asyncio.to_thread(
            hookshield, "run", "--config", str(write(tmp_path, config))
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} (data plane)" in result.stdout


async def test_secret_never_logged_while_serving(tmp_path: Path, target: Any) -> None:
    """A canary signing secret and Authorization value appear in no log line, metric or error body."""
    app: Target = await target()
    config = {
        "log": {"level": "DEBUG"},
        "secrets": {"s": {"env": "CANARY_SECRET"}},
        "routes": [
            {"name": "s", "match": {"path_prefix": "/s"}, "target": app.url,
             "signing": {"scheme": "hmac-sha256", "secret": "s"}},
        ],
    }  # fmt: skip
    hs = await Hookshield(tmp_path, config).start(env={"CANARY_SECRET": CANARY})
    headers = {"Authorization": f"Bearer {CANARY}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{hs.url}/s", data=b"{}", headers=headers) as resp:
            assert resp.status == 200
            assert CANARY not in await resp.text()
        async with session.post(
            f"{hs.url}/s/x", headers={**headers, "X-Timeout-Ms": CANARY}
        ) as resp:
            assert resp.status == 400  # an error about the header does not echo its value
            assert CANARY not in await resp.text()
        async with session.get(f"{hs.admin_url}/metrics") as resp:
            exposition = await resp.text()
            assert 'hookshield_requests_total{outcome="success",route="s"} 1.0' in exposition
            assert CANARY not in exposition
    assert await hs.stop() == 0
    assert '"event": "request"' in hs.log()
    assert CANARY not in hs.log()
    assert app.seen[0].headers["Authorization"] == f"Bearer {CANARY}"  # forwarded, not logged


async def test_dlq_verbs_drive_the_admin_api(stack: Any, target: Any) -> None:
    """dlq list, show, replay --route and delete, as a real command against the admin API."""
    from aiohttp import web

    async def reject(request: web.Request) -> web.Response:
        return web.Response(status=422)

    app: Target = await target(reject)
    route = {"name": "ev", "match": {"path_prefix": "/ev"}, "target": app.url, "mode": "async"}
    hs = await stack({"routes": [route]})
    for n in range(2):
        await hs.data.post("/ev", data=b"%d" % n)
    admin = f"http://127.0.0.1:{hs.admin.port}"

    async def dlq(*args: str) -> Any:
        result = await asyncio.to_thread(hookshield, "dlq", "--admin", admin, *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    items: list[Any] = []
    async with asyncio.timeout(5):
        while len(items) < 2:
            items = (await dlq("list", "--route", "ev"))["items"]
    shown = await dlq("show", items[0]["id"])
    assert (shown["last_status"], shown["request"]["method"]) == (422, "POST")
    assert (await dlq("delete", items[0]["id"]))["deleted"] == 1
    assert (await dlq("replay", "--route", "ev"))["replayed"] == 1
    missing = await asyncio.to_thread(hookshield, "dlq", "--admin", admin, "show", "nope")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr
