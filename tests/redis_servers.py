"""Real `redis-server` processes on free ports, for tests that kill and restart them."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, both below Linux's
    ephemeral range (32768 and up), so no outgoing connection can take the port of a Redis
    the test killed and restarts."""
    while True:
        port = random.randint(12000, 22000)
        if _free(port) and _free(port + 10000):
            return port


class RedisServer:
    """One redis-server in its own directory; `kill()` is SIGKILL, `start()` starts it again."""

    def __init__(self, workdir: Path, *extra: str, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH: run scripts/test, which installs it")
        self.port = port or free_cluster_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--logfile", str(self.dir / "redis.log"), *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:  # BusyLoadingError while reading the AOF, too
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        self.kill()


class RedisCluster:
    """Three masters, no replicas, slots spread by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [
            RedisServer(workdir, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            for _ in range(3)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self._wait_ok()
        return self

    def _wait_ok(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the test cluster did not reach cluster_state:ok")
                    time.sleep(0.05)

    def flush(self) -> None:
        for node in self.nodes:
            redis.Redis(port=node.port).flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class RedisSentinel:
    """A master and one Sentinel watching it as `mymaster`."""

    def __init__(self, workdir: Path) -> None:
        self.master = RedisServer(workdir)
        self.port = free_cluster_port()
        self.conf = workdir / f"sentinel-{self.port}.conf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster"

    def start(self) -> RedisSentinel:
        self.master.start()
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\n"
            f"sentinel monitor mymaster 127.0.0.1 {self.master.port} 1\n"
        )
        self.process = subprocess.Popen(
            ["redis-server", str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
            while True:
                try:
                    if client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"):
                        return self
                except redis.exceptions.RedisError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)

    def flush(self) -> None:
        redis.Redis(port=self.master.port).flushall()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.master.stop()
