"""Real `redis-server` processes on free ports, for tests that kill, pause and restart them."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

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

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections and buffers bytes; nothing answers."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


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


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2) watching them as `mymaster`: the
    topology `SENTINEL FAILOVER` and a killed master are tried on. Both Redis servers run
    with `appendonly yes` (and `extra`, e.g. `--appendfsync always`); a master is deemed down
    after `down_after_ms`."""

    NAME = "mymaster"

    def __init__(self, workdir: Path, *extra: str, down_after_ms: int = 1000) -> None:
        durable = ("--appendonly", "yes", *extra)
        self.master = RedisServer(workdir, *durable)
        replica_of = ("--replicaof", "127.0.0.1", str(self.master.port))
        self.replica = RedisServer(workdir, *durable, *replica_of)
        self.ports = [free_cluster_port() for _ in range(3)]
        self.workdir, self.down_after_ms = workdir, down_after_ms
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{self.NAME}"

    def start(self, timeout_s: float = 30.0) -> SentinelSet:
        self.master.start()
        self.replica.start()
        for port in self.ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.NAME} 10000\n"
            )
            log = self.workdir / f"sentinel-{port}.log"
            command = ["redis-server", str(conf), "--sentinel", "--logfile", str(log)]
            quiet = subprocess.DEVNULL
            self.processes.append(subprocess.Popen(command, stdout=quiet, stderr=quiet))
        self.wait_ready(timeout_s)
        return self

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.ports[index], socket_timeout=5, decode_responses=True)

    def master_state(self, index: int = 0) -> dict[str, Any]:
        with self.sentinel(index) as client:
            state: dict[str, Any] = client.sentinel_master(self.NAME)
            return state

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every sentinel knows the master, the replica in sync, and the other two
        sentinels (else a failover cannot be agreed or has no replica to promote)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                states = [self.master_state(i) for i in range(len(self.ports))]
                with self.replica.client() as replica:
                    link = replica.info("replication").get("master_link_status")
                if link == "up" and all(
                    s["num-slaves"] >= 1 and s["num-other-sentinels"] >= 2 for s in states
                ):
                    with self.sentinel() as client:
                        [replica_state] = client.sentinel_slaves(self.NAME)
                    if (
                        not replica_state["is_sdown"]
                        and replica_state.get("master-link-status") == "ok"
                    ):
                        return
            except (redis.exceptions.RedisError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the sentinels did not come to know the master and replica")
            time.sleep(0.1)

    def master_address(self) -> tuple[str, int]:
        with self.sentinel() as client:
            host, port = client.sentinel_get_master_addr_by_name(self.NAME)
        return str(host), int(port)

    def current_master(self) -> RedisServer:
        _, port = self.master_address()
        return next(server for server in self.servers if server.port == port)

    def failover(self) -> None:
        """`SENTINEL FAILOVER`: a planned failover, the old master still running."""
        with self.sentinel() as client:
            client.execute_command("SENTINEL", "FAILOVER", self.NAME)

    def wait_switched(self, old: tuple[str, int], timeout_s: float = 30.0) -> tuple[str, int]:
        """Until every sentinel names a master other than `old`; answers it."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                named = {self._named(i) for i in range(len(self.ports))}
                if len(named) == 1 and old not in named:
                    return named.pop()
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sentinels still name {old} (or disagree)")
            time.sleep(0.05)

    def _named(self, index: int) -> tuple[str, int]:
        with self.sentinel(index) as client:
            host, port = client.sentinel_get_master_addr_by_name(self.NAME)
        return str(host), int(port)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes.clear()
        for server in self.servers:
            server.kill()
