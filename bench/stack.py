"""The processes a bench run measures: the target, the hookshields, Redis for the async rows.

Every hookshield has the same routes (a typical sync route: two headers added, one removed,
HMAC-signed; and an async route with the same policy). They differ in one thing each:

- `hookshield`: metrics on, an INFO log line per request, SQLite queue; pinned to core 0
- `bare`: metrics off, logs at WARNING (the cost of observability, by difference)
- `workers`: like `hookshield` with `--workers 2`, not pinned (the scaling row)
- `redis`: like `hookshield` with its queue on Redis (AOF, `appendfsync everysec`)
- `pure`: like `hookshield`, run from the Python sources

All but `pure` run the compiled build (`scripts/build-native`, what the container image
ships) when it can be built here; else all run the sources and there is no `pure`. They run
side by side, each idle while another is measured.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
import yaml

from bench.procs import free_port, pinned, wait_http

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"PYTHONPATH": str(ROOT / "src")}


def _route(name: str, prefix: str, port: int, mode: str = "sync") -> dict[str, object]:
    """A typical route: two headers added, one removed, HMAC-signed."""
    return {
        "name": name,
        "match": {"path_prefix": prefix, "methods": ["POST"]},
        "target": f"http://127.0.0.1:{port}/api/hook",
        "mode": mode,
        "timeout_ms": 5000,
        "headers": {"add": {"X-Platform-Id": "bench", "X-Env": "local"}, "remove": ["Cookie"]},
        "signing": {"scheme": "hmac-sha256", "secret": "bench"},
    }


def config(
    name: str, target: int, workdir: Path, observed: bool = True, redis_url: str | None = None
) -> dict[str, object]:
    """One hookshield's config; `observed=False` turns metrics off and request logs down."""
    secret_file = workdir / "bench.secret"
    secret_file.write_text("bench-secret")
    queue: dict[str, object] = {"sqlite_path": str(workdir / f"{name}-queue.db")}
    if redis_url:
        queue = {"redis_url": redis_url}
    return {
        "listen": {"port": free_port()},
        "admin": {"port": free_port()},
        "log": {"level": "INFO" if observed else "WARNING"},
        "metrics": {"enabled": observed},
        "queue": queue,
        "secrets": {"bench": {"file": str(secret_file)}},
        "routes": [
            _route("bench", "/hook", target),
            _route("bench-async", "/async", target, "async"),
        ],
    }


def quiet(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    environment = {**os.environ, **env} if env else None
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )


def use_compiled_build() -> bool:
    """Have every hookshield this process starts run the compiled build (built first if
    the sources changed); False, and the sources, where it cannot be built (no C compiler)."""
    built = subprocess.run([str(ROOT / "scripts" / "build-native")], capture_output=True, text=True)
    if built.returncode != 0:
        print(
            f"compiled build: scripts/build-native failed, measuring the sources\n{built.stderr[-800:]}"
        )
        return False
    os.environ["PYTHONPATH"] = str(ROOT / "build" / "native" / "src")
    return True


@dataclass
class Proxy:
    """One running hookshield: where to send calls, its pid (for memory), its queue file."""

    name: str
    process: subprocess.Popen[bytes]
    listen: int
    admin: int
    queue_db: Path | None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.listen}{path}"


def start_hookshield(
    name: str,
    settings: dict[str, object],
    workdir: Path,
    core: int | None = 0,
    *args: str,
    env: dict[str, str] | None = None,
) -> Proxy:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    command = [sys.executable, "-m", "hookshield", "run", "--config", str(path), *args]
    process = quiet(pinned(core, command) if core is not None else command, env)
    listen = settings["listen"]["port"]  # type: ignore[index]
    admin = settings["admin"]["port"]  # type: ignore[index]
    queue = settings["queue"]
    sqlite = Path(queue["sqlite_path"]) if "sqlite_path" in queue else None  # type: ignore[operator,index]
    return Proxy(name, process, listen, admin, sqlite)


@dataclass
class Stack:
    target_url: str
    proxies: dict[str, Proxy] = field(default_factory=dict)
    redis_port: int | None = None


@contextmanager
def redis_server(workdir: Path) -> Iterator[int | None]:
    """A Redis with AOF (`appendfsync everysec`) on core 1, or None when not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(workdir)]  # fmt: skip
    process = quiet(pinned(1, command))
    try:
        _wait_for_redis(port)
        yield port
    finally:
        _terminate(process)


def _wait_for_redis(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    with redis.Redis(port=port) as client:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@contextmanager
def stack(workdir: Path, target: int | None, pure: bool = False) -> Iterator[Stack]:
    """The target (the given static one, else the Python target on core 1) and the
    hookshields (with `pure`, one more from the Python sources)."""
    with ExitStack() as stop:
        if target is None:
            target = free_port()
            python_target = quiet(pinned(1, [sys.executable, "-m", "bench.target", str(target)]))
            stop.callback(_terminate, python_target)
        redis_port = stop.enter_context(redis_server(workdir))
        built = Stack(f"http://127.0.0.1:{target}/api/hook", redis_port=redis_port)
        Plan = tuple[str, dict[str, object], int | None, tuple[str, ...], dict[str, str] | None]
        plans: list[Plan] = [
            ("hookshield", config("hookshield", target, workdir), 0, (), None),
            ("bare", config("bare", target, workdir, observed=False), 0, (), None),
            ("workers", config("workers", target, workdir), None, ("--workers", "2"), None),
        ]
        if redis_port is not None:
            url = f"redis://127.0.0.1:{redis_port}/0"
            plans.append(("redis", config("redis", target, workdir, redis_url=url), 0, (), None))
        if pure:
            plans.append(("pure", config("pure", target, workdir), 0, (), SOURCES))
        for name, settings, core, args, env in plans:
            proxy = start_hookshield(name, settings, workdir, core, *args, env=env)
            stop.callback(_terminate, proxy.process)
            built.proxies[name] = proxy
        wait_http(built.target_url)
        for proxy in built.proxies.values():
            wait_http(f"http://127.0.0.1:{proxy.admin}/readyz")
        yield built


def _terminate(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)
