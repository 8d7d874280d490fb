"""wrk against the same target directly, through nginx and through hookshield, in one run.

wrk (Debian `wrk`) is a far faster load generator than the Python one, so these rows show
each proxy's own ceiling. nginx (Debian `nginx`, one worker, pinned like hookshield to
core 0) serves a static target that is faster than any proxy in front of it, and is itself
measured as a plain keep-alive reverse proxy to that target, next to hookshield's route to
the same target. Without nginx the rows use the Python target; without wrk they are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.load import PAYLOAD, Result
from bench.procs import free_port, pinned, wait_http

NGINX_CONF = """
worker_processes 1;
daemon off;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    {server}
}}
"""
STATIC_TARGET = """server {{  # the fast target: a static JSON answer
        listen 127.0.0.1:{port};
        location / {{ default_type application/json; return 200 '{{"success":true,"winner":"user-42"}}'; }}
    }}"""
REVERSE_PROXY = """upstream target {{ server 127.0.0.1:{target}; keepalive 64; }}
    server {{  # nginx as a keep-alive reverse proxy to the target
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://target/api/hook; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}"""

LUA = """wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


WrkResult = Result


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse(output: str) -> WrkResult:
    throughput = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    total = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return WrkResult(throughput, p50, p99, total)


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> WrkResult:
    command = pinned(
        1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    )
    return parse(
        subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout
    )


@dataclass(frozen=True)
class Nginx:
    target_port: int  # a static answer: a target faster than any proxy in front of it
    proxy_url: str  # nginx as a reverse proxy to that target

    @property
    def target_url(self) -> str:
        return f"http://127.0.0.1:{self.target_port}/api/hook"


def _start(binary: str, prefix: Path, core: int, server: str) -> subprocess.Popen[bytes]:
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, server=server))
    command = pinned(core, [binary, "-c", str(conf), "-p", str(prefix)])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def nginx(workdir: Path) -> Iterator[Nginx | None]:
    """Two nginx processes: a fast static target on core 1 (beside wrk, like the Python
    target) and a reverse proxy to it on core 0 (like hookshield). None when not installed."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        yield None
        return
    target, port = free_port(), free_port()
    started = [
        _start(binary, workdir / "nginx-target", 1, STATIC_TARGET.format(port=target)),
        _start(binary, workdir / "nginx-proxy", 0, REVERSE_PROXY.format(target=target, port=port)),
    ]
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield Nginx(target, f"http://127.0.0.1:{port}/")
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=10)


def wrk_script(workdir: Path) -> Path | None:
    """wrk's Lua script for the bench POST, or None when wrk is not installed."""
    if shutil.which("wrk") is None:
        return None
    script = workdir / "post.lua"
    script.write_text(LUA.format(body=PAYLOAD.decode()))
    return script
