"""The queue store failing in real ways: a 202 or a 503 QUEUE_UNAVAILABLE within the route's
timeout, never a lost 202, and recovery without a restart.

Bad SQLite paths (a read-only directory, a file where a directory should be), a row the
store cannot load, a paused (SIGSTOP) and a killed (SIGKILL) Redis, and a full disk (a
small tmpfs mounted for the test: skipped where mounting is not allowed).
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import Stack, Target, wait_for
from tests.processes import Hookshield
from tests.redis_servers import RedisServer

TIMEOUT_MS = 500
# The bound the platform may wait: the route's 500 ms plus slack for a loaded 2-core machine
# (one event loop serving the client, hookshield and the target; a busy neighbour).
ANSWER_BOUND_S = 1.5


class Recording:
    """A target that counts deliveries per X-Request-ID."""

    def __init__(self) -> None:
        self.by_id: collections.Counter[str] = collections.Counter()

    async def __call__(self, request: web.Request) -> web.Response:
        self.by_id[request.headers["X-Request-ID"]] += 1
        return web.Response(text="ok")


def route_config(url: str, queue: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "queue": {"workers": 4, "lease_s": 1, **(queue or {})},
        "routes": [{"name": "events", "match": {"path_prefix": "/events"}, "target": url,
                    "mode": "async", "timeout_ms": TIMEOUT_MS, "retry": {"initial_delay_ms": 50}}],
    }  # fmt: skip


async def post(hs: Stack | str, rid: str, body: bytes = b"{}") -> tuple[int, str, float]:
    """One async call: (status, code or "", seconds it took)."""
    started = time.monotonic()
    if isinstance(hs, str):
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{hs}/events", data=body, headers={"X-Request-ID": rid}) as resp,
        ):
            status, text = resp.status, await resp.text()
    else:
        resp = await hs.data.post("/events", data=body, headers={"X-Request-ID": rid})
        status, text = resp.status, await resp.text()
    code = json.loads(text).get("code", "") if status != 202 else ""
    return status, code, time.monotonic() - started


async def readyz(hs: Stack) -> tuple[int, dict[str, Any]]:
    resp = await hs.admin.get("/readyz")
    return resp.status, await resp.json()


def mount_tmpfs(where: Path, *options: str) -> None:
    """A small tmpfs at `where`; the test is skipped where mounting is not allowed."""
    where.mkdir(exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *options)), "tmpfs", str(where)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    """A read-only directory and a function making it writable. As root (who writes through
    mode bits) a tmpfs mounted read-only; otherwise mode 0555."""
    where = tmp_path / "ro"
    if os.geteuid() == 0:
        mount_tmpfs(where, "ro")
        yield where, lambda: subprocess.run(["mount", "-o", "remount,rw", str(where)], check=True)
        unmount(where)
    else:
        where.mkdir()
        where.chmod(0o555)
        yield where, lambda: where.chmod(0o755)
        where.chmod(0o755)


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hookshield", "check-config", str(path)],
        capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})},
    )  # fmt: skip


def bad_path_config(tmp_path: Path, sqlite_path: Path) -> Path:
    config = route_config("http://127.0.0.1:9", {"sqlite_path": str(sqlite_path)})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def assert_unavailable_then_recovers(hs: Stack, app: Recording, fix: Any) -> None:
    """503 QUEUE_UNAVAILABLE well within the route's timeout, /readyz 503 with the reason;
    once `fix()` made the path usable, 202 and delivered, /readyz 200, no restart."""
    for n in range(3):  # every call fails the same way: the store tries to open again
        status, code, took = await post(hs, f"down-{n}")
        assert (status, code) == (503, "QUEUE_UNAVAILABLE")
        assert took < TIMEOUT_MS / 1000
    status, body = await readyz(hs)
    assert (status, body["status"]) == (503, "queue_unavailable")
    assert "the queue store cannot open its file" in body["error"]
    fix()
    assert (await post(hs, "up"))[0] == 202
    assert (await readyz(hs))[0] == 200
    await wait_for(lambda: app.by_id["up"] == 1)
    assert not any(app.by_id[f"down-{n}"] for n in range(3))


async def test_read_only_directory_answers_503_then_recovers(
    stack: Any, target: Any, read_only_dir: tuple[Path, Any]
) -> None:
    """A queue file under a read-only directory: 503 at once, /readyz 503 why; fixed: 202."""
    where, make_writable = read_only_dir
    app = Recording()
    server: Target = await target(app)
    hs = await stack(route_config(server.url, {"sqlite_path": str(where / "sub" / "q.db")}))
    status, body = await readyz(hs)
    assert status == 503
    assert f"{where} is on a read-only file system" in body["error"] or (
        f"{where} is not writable" in body["error"]  # not root: mode 0555
    )
    await assert_unavailable_then_recovers(hs, app, make_writable)


async def test_file_as_parent_answers_503_then_recovers(
    stack: Any, target: Any, tmp_path: Path
) -> None:
    """A queue file whose parent is a file: 503 at once, /readyz 503 why; file gone: 202."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    app = Recording()
    server: Target = await target(app)
    hs = await stack(route_config(server.url, {"sqlite_path": str(blocker / "q.db")}))
    status, body = await readyz(hs)
    assert status == 503
    assert str(blocker) in body["error"]
    await assert_unavailable_then_recovers(hs, app, blocker.unlink)


def test_check_config_names_a_read_only_sqlite_path(
    tmp_path: Path, read_only_dir: tuple[Path, Any]
) -> None:
    """check-config exits 2 naming queue.sqlite_path when its directory is read-only."""
    where, _ = read_only_dir
    result = check_config(bad_path_config(tmp_path, where / "sub" / "q.db"))
    assert result.returncode == 2
    assert "queue.sqlite_path: cannot create or write" in result.stderr
    assert str(where) in result.stderr


def test_check_config_and_run_name_a_file_as_parent(tmp_path: Path) -> None:
    """check-config and run exit 2 naming queue.sqlite_path (and the env var that set it)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    config = bad_path_config(tmp_path, blocker / "deeper" / "q.db")
    result = check_config(config)
    assert result.returncode == 2
    assert f"queue.sqlite_path: cannot create {blocker}/deeper/q.db" in result.stderr
    assert f"{blocker} is not a directory" in result.stderr
    run = subprocess.run(
        [sys.executable, "-m", "hookshield", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 2
    assert "queue.sqlite_path" in run.stderr
    fine = check_config(config, env={"HOOKSHIELD_SQLITE_PATH": str(tmp_path / "q.db")})
    assert fine.returncode == 0
    by_env = check_config(config, env={"HOOKSHIELD_SQLITE_PATH": str(blocker / "q.db")})
    assert "queue.sqlite_path (set by HOOKSHIELD_SQLITE_PATH): cannot create" in by_env.stderr
    redis = check_config(config, env={"HOOKSHIELD_REDIS_URL": "redis://127.0.0.1:9/0"})
    assert redis.returncode == 0  # with Redis the SQLite file is not used, so not checked


BAD_ROWS = {
    "bad-json": "{not json",
    "newer-build": None,  # a valid delivery with a field this build does not know
    "wrong-type": None,  # attempts as text
}


def bad_meta(name: str, route: str) -> str:
    meta = {"id": name, "route": route, "url": "http://127.0.0.1:9/x", "origin": "http://127.0.0.1:9",
            "method": "POST", "headers": [["X-A", "1"]], "request_id": name, "created_at": time.time(),
            "attempts": 0, "last_status": None, "last_error": None, "reason": None, "failed_at": None}  # fmt: skip
    if name == "newer-build":
        meta["ordering_key"] = "tenant-1"
    if name == "wrong-type":
        meta["attempts"] = "two"
    return BAD_ROWS[name] or json.dumps(meta)


def write_bad_rows(queue_file: Path) -> None:
    """Rows this build cannot load, written with the sqlite3 module into the live queue file."""
    with sqlite3.connect(queue_file, timeout=5) as db:
        for name in BAD_ROWS:
            db.execute(
                "INSERT INTO deliveries (id, route, meta, body, due_at) VALUES (?,?,?,?,?)",
                (name, "events", bad_meta(name, "events"), b"body", time.time()),
            )


async def test_unloadable_rows_are_dead_lettered_and_block_nothing(
    stack: Any, target: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unloadable rows go to the DLQ as `corrupt` (logged with their ids); the rest is delivered."""
    app = Recording()
    server: Target = await target(app)
    queue_file = tmp_path / "queue.db"
    hs = await stack(route_config(server.url, {"sqlite_path": str(queue_file)}))
    assert (await post(hs, "before"))[0] == 202
    write_bad_rows(queue_file)
    answers = await asyncio.gather(*(post(hs, f"good-{n}") for n in range(20)))
    assert {status for status, _, _ in answers} == {202}
    wanted = ["before", *(f"good-{n}" for n in range(20))]
    await wait_for(lambda: all(app.by_id[rid] for rid in wanted))
    items: list[dict[str, Any]] = []

    async def dead() -> bool:
        items[:] = (await (await hs.admin.get("/admin/dlq?route=events")).json())["items"]
        return len(items) == len(BAD_ROWS)

    async with asyncio.timeout(5):
        while not await dead():  # noqa: ASYNC110 - polling the admin API
            await asyncio.sleep(0.05)
    assert {item["id"] for item in items} == set(BAD_ROWS)
    assert {item["reason"] for item in items} == {"corrupt"}
    assert all(item["last_error"].startswith("cannot load the stored delivery") for item in items)
    shown = await (await hs.admin.get("/admin/dlq/newer-build")).json()
    assert (shown["request_id"], shown["request"]["body"]) == ("newer-build", "body")
    events = [r for r in caplog.records if r.getMessage() == "corrupt_delivery"]
    logged = {getattr(r, "fields", {}).get("delivery_id") for r in events}
    assert logged >= set(BAD_ROWS)
    with sqlite3.connect(queue_file) as db:  # the stored meta is kept as it was
        kept = dict(db.execute("SELECT id, meta FROM corrupt").fetchall())
    assert kept["bad-json"] == "{not json"
    assert not any(app.by_id[name] for name in BAD_ROWS)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)
    server.stop()


@pytest.mark.timeout(60)
async def test_paused_redis_answers_503_within_the_route_timeout(
    stack: Any, target: Any, redis_server: RedisServer
) -> None:
    """A SIGSTOPped Redis: 503 within the route's timeout; after SIGCONT every 202 is delivered."""
    app = Recording()
    server: Target = await target(app)
    hs = await stack(route_config(server.url, {"redis_url": redis_server.url}))
    acked = [f"before-{n}" for n in range(5)]
    assert {(await post(hs, rid))[0] for rid in acked} == {202}
    await wait_for(lambda: all(app.by_id[rid] for rid in acked))
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    answers = await asyncio.gather(*(post(hs, f"paused-{n}") for n in range(10)))
    for status, code, took in answers:
        assert (status, code) == (503, "QUEUE_UNAVAILABLE")
        assert took < ANSWER_BOUND_S
    os.kill(redis_server.process.pid, signal.SIGCONT)
    after = [f"after-{n}" for n in range(5)]
    for rid in after:
        async with asyncio.timeout(10):
            while (await post(hs, rid))[0] != 202:  # noqa: ASYNC110 - until Redis answers in time
                await asyncio.sleep(0.1)
    acked += after
    await wait_for(lambda: all(app.by_id[rid] for rid in acked), timeout_s=20)


@pytest.mark.timeout(60)
async def test_killed_redis_mid_commit_never_acknowledges_an_unstored_call(
    stack: Any, target: Any, redis_server: RedisServer
) -> None:
    """Redis SIGKILLed amid concurrent writes: 503s in time, and every 202 is delivered."""
    app = Recording()
    server: Target = await target(app)
    hs = await stack(route_config(server.url, {"redis_url": redis_server.url}))
    answers: dict[str, tuple[int, str, float]] = {}

    async def client(worker: int) -> None:
        for n in range(60):
            rid = f"w{worker}-{n}"
            answers[rid] = await post(hs, rid, b"x" * 512)

    sending = asyncio.gather(*(client(w) for w in range(16)))
    await wait_for(lambda: len(answers) >= 200, timeout_s=20)
    redis_server.kill()
    await sending
    acked = [rid for rid, (status, _, _) in answers.items() if status == 202]
    refused = [a for a in answers.values() if a[0] != 202]
    assert refused, "Redis was killed while calls were being sent"
    assert {(status, code) for status, code, _ in refused} == {(503, "QUEUE_UNAVAILABLE")}
    assert max(took for _, _, took in answers.values()) < ANSWER_BOUND_S
    redis_server.start()
    await wait_for(lambda: all(app.by_id[rid] for rid in acked), timeout_s=30)


def fill(where: Path) -> Path:
    """Write a file in `where` until the file system is full."""
    filler = where / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:  # ENOSPC: full
            pass
    return filler


@pytest.mark.timeout(90)
async def test_full_disk_answers_503_and_recovers_once_space_is_freed(
    tmp_path: Path, target: Any
) -> None:
    """A full disk: 503 QUEUE_UNAVAILABLE, nothing acknowledged unstored; space freed: 202s."""
    small = tmp_path / "small"
    mount_tmpfs(small)
    try:
        app = Recording()
        server: Target = await target(app)
        config = route_config(server.url, {"sqlite_path": str(small / "q.db")})
        hs = await Hookshield(tmp_path, config).start()
        try:
            await assert_full_disk_behaviour(hs, app, small)
        finally:
            await hs.stop()
    finally:
        unmount(small)


async def send_many(hs: Hookshield, prefix: str, count: int) -> tuple[list[str], list[str]]:
    """`count` calls of 16 KiB: (request ids answered 202, ids answered 503 QUEUE_UNAVAILABLE)."""
    acked, refused = [], []
    for n in range(count):
        status, code, took = await post(hs.url, f"{prefix}-{n}", os.urandom(16384))
        assert took < ANSWER_BOUND_S
        if status == 202:
            acked.append(f"{prefix}-{n}")
        else:
            assert (status, code) == (503, "QUEUE_UNAVAILABLE")
            refused.append(f"{prefix}-{n}")
    return acked, refused


async def admin_ready(hs: Hookshield) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{hs.admin_url}/readyz") as resp:
        return resp.status, await resp.json()


async def assert_full_disk_behaviour(hs: Hookshield, app: Recording, small: Path) -> None:
    assert (await post(hs.url, "first"))[0] == 202
    filler = fill(small)
    acked, refused = await send_many(hs, "full", 20)
    assert (acked, len(refused)) == ([], 20)
    status, body = await admin_ready(hs)
    assert status == 503
    assert "full" in body["error"]
    os.truncate(filler, filler.stat().st_size - 96 * 1024)  # room for a write or two, then full
    nearly, refused = await send_many(hs, "nearly", 40)
    assert nearly, "the space freed took a write"
    assert len(refused) >= 30, "then the disk was full again"
    filler.unlink()
    async with asyncio.timeout(10):
        while (await post(hs.url, "after"))[0] != 202:  # noqa: ASYNC110 - until it is stored
            await asyncio.sleep(0.1)
    acked = ["first", *nearly, "after"]
    await wait_for(lambda: all(app.by_id[rid] for rid in acked), timeout_s=30)
    assert (await admin_ready(hs))[0] == 200
