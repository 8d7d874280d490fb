"""`python -m bench`: direct calls vs calls through hookshield, side by side in one run.

Starts a local target and hookshield (a sync route with header injection, HMAC signing
and INFO request logs) as separate processes, then alternates closed-loop rounds against
the target directly and through hookshield. Prints medians over the rounds and ratios;
absolute numbers depend on the machine, the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvloop
import yaml

from bench.load import Result, run, run_open
from bench.peers import Nginx, WrkResult, nginx, wrk_rows
from bench.procs import free_port, pin_self, pinned, wait_http


def _config(
    target_port: int,
    listen: int,
    admin: int,
    workdir: Path,
    observed: bool = True,
    fast: int | None = None,
) -> dict[str, object]:
    """The bench config; `observed=False` turns metrics off and request logs down (to WARNING)."""
    secret_file = workdir / "bench.secret"
    secret_file.write_text("bench-secret")
    return {
        "listen": {"port": listen},
        "admin": {"port": admin},
        "log": {"level": "INFO" if observed else "WARNING"},
        "metrics": {"enabled": observed},
        "queue": {"sqlite_path": str(workdir / ("queue.db" if observed else "queue-bare.db"))},
        "secrets": {"bench": {"file": str(secret_file)}},
        "routes": [
            _route("bench", "/hook", target_port),
            _route("bench-fast", "/fast", fast or target_port),
            _route("bench-async", "/async", target_port, mode="async"),
        ],
    }


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


def _quiet(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextmanager
def processes(workdir: Path, fast: int | None) -> Iterator[dict[str, str]]:
    """Start the target and two hookshields (observed, and bare: no metrics, no request logs,
    idle while the other is measured); yield the URL of each path to measure."""
    target, listen, admin, bare, bare_admin = (free_port() for _ in range(5))
    configs = [workdir / "bench.yaml", workdir / "bench-bare.yaml"]
    configs[0].write_text(yaml.safe_dump(_config(target, listen, admin, workdir)))
    configs[1].write_text(
        yaml.safe_dump(_config(target, bare, bare_admin, workdir, observed=False))
    )
    started = [_quiet(pinned(1, [sys.executable, "-m", "bench.target", str(target)]))] + [
        _quiet(pinned(0, [sys.executable, "-m", "hookshield", "run", "--config", str(c)]))
        for c in configs
    ]
    try:
        for port in (admin, bare_admin, target):
            wait_http(f"http://127.0.0.1:{port}/{'' if port == target else 'readyz'}")
        yield {
            "direct": f"http://127.0.0.1:{target}/api/hook",
            "hookshield": f"http://127.0.0.1:{listen}/hook",
            "bare": f"http://127.0.0.1:{bare}/hook",
            "async 202": f"http://127.0.0.1:{listen}/async",
            "hookshield fast": f"http://127.0.0.1:{listen}/fast",
            "bare fast": f"http://127.0.0.1:{bare}/fast",
        }
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=10)


Rounds = dict[str, dict[str, list[Result]]]  # kind ("closed", "open") -> path -> rounds


async def rounds(urls: dict[str, str], args: argparse.Namespace) -> Rounds:
    """A warm-up per path, then the paths in turn, round after round: closed loop, then open."""
    results: Rounds = {"closed": {n: [] for n in urls}, "open": {n: [] for n in urls}}
    for url in urls.values():
        await run(url, min(1000, args.requests), args.concurrency)
    for _ in range(args.rounds):
        for kind in ("closed", "open"):
            for name, url in urls.items():
                result = await (
                    run(url, args.requests, args.concurrency)
                    if kind == "closed"
                    else run_open(url, args.open_requests, args.rate)
                )
                results[kind][name].append(result)
                await drained(args.queue_db)  # background deliveries must not skew the next row
    return results


async def drained(db: Path, timeout_s: float = 300.0) -> None:
    """Wait until hookshield's SQLite queue holds no pending delivery."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        with sqlite3.connect(db) as conn:
            (pending,) = conn.execute("SELECT COUNT(*) FROM deliveries WHERE dead=0").fetchone()
        if pending == 0:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the queue in {db} did not drain")


def report(all_results: Rounds, args: argparse.Namespace) -> None:
    results = all_results["closed"]
    med = {name: _median(rs) for name, rs in results.items()}
    d, h = med["direct"], med["hookshield"]
    print(
        f"closed loop: {args.requests} POSTs x {args.rounds} rounds, {args.concurrency} connections, ~1 KB JSON body"
    )
    print(
        f"{'path':<12}{'req/s (median)':>16}{'min-max':>20}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
    )
    for name, rs in results.items():
        tps = [r.throughput for r in rs]
        m = med[name]
        spread = f"{min(tps):,.0f}-{max(tps):,.0f}"
        print(
            f"{name:<12}{m.throughput:>16,.0f}{spread:>20}{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}{sum(r.errors for r in rs):>8}"
        )
    print(f"throughput ratio hookshield/direct: {h.throughput / d.throughput:.2f}")
    print(f"added latency: p50 {h.p50_ms - d.p50_ms:+.2f} ms, p99 {h.p99_ms - d.p99_ms:+.2f} ms")
    print(f"async 202 (durable write, group commit): {med['async 202'].throughput:,.0f} accepted/s")
    bare = med["bare"]
    print(f"metrics + request logs: hookshield/bare throughput {h.throughput / bare.throughput:.2f}, "
          f"{(1 / h.throughput - 1 / bare.throughput) * 1e6:+.0f} us per request")  # fmt: skip
    report_open(all_results["open"], args)


def report_open(results: dict[str, list[Result]], args: argparse.Namespace) -> None:
    med = {name: _median(rs) for name, rs in results.items()}
    print(f"\nopen loop: {args.open_requests} POSTs at {args.rate:,.0f}/s x {args.rounds} rounds, "
          "latency from the scheduled send time")  # fmt: skip
    print(f"{'path':<12}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, m in med.items():
        print(f"{name:<12}{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}{m.errors:>8}")
    d, h = med["direct"], med["hookshield"]
    print(
        f"added latency at {args.rate:,.0f}/s: p50 {h.p50_ms - d.p50_ms:+.2f} ms, p99 {h.p99_ms - d.p99_ms:+.2f} ms"
    )


def _median(results: list[Result]) -> Result:
    return Result(
        throughput=statistics.median(r.throughput for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
    )


def measure_peers(
    urls: dict[str, str],
    fast: dict[str, str],
    peer: Nginx | None,
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, list[WrkResult]]:
    """wrk rows: with nginx, its static target direct, nginx and hookshield in front of it;
    else the Python target direct and hookshield in front of it."""
    if peer is not None:
        paths = {"direct": peer.target_url, "nginx": peer.proxy_url,
                 "hookshield": fast["hookshield fast"], "bare": fast["bare fast"]}  # fmt: skip
    else:
        paths = {name: urls[name] for name in ("direct", "hookshield", "bare")}
    return wrk_rows(paths, workdir, args.rounds, args.wrk_seconds)


def report_peers(peers: dict[str, list[WrkResult]], args: argparse.Namespace) -> None:
    if not peers:
        print("\nwrk: not installed (Debian package wrk); the wrk rows are skipped")
        return
    print(f"\nwrk: {args.wrk_seconds} s x {args.rounds} rounds, 32 connections, 1 thread on core 1")
    print(f"{'path':<12}{'req/s (median)':>16}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    med = {name: statistics.median(r.throughput for r in rs) for name, rs in peers.items()}
    for name, rs in peers.items():
        p50 = statistics.median(r.p50_ms for r in rs)
        p99 = statistics.median(r.p99_ms for r in rs)
        print(f"{name:<12}{med[name]:>16,.0f}{p50:>9.2f}{p99:>9.2f}{sum(r.errors for r in rs):>8}")
    if "nginx" not in med:
        print("nginx: not installed (Debian package nginx); its row is skipped")
    for name in ("hookshield", "bare"):
        ratios = [
            f"{med[name] / med[peer]:.2f} x {peer}" for peer in ("nginx", "direct") if peer in med
        ]
        print(f"{name}: {', '.join(ratios)}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=5000, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=500.0, help="open-loop arrival rate per second"
    )
    parser.add_argument(
        "--open-requests", type=int, default=1000, help="open-loop requests per round"
    )
    parser.add_argument(
        "--wrk-seconds", type=int, default=10, help="duration of each wrk measurement"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500 requests, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.open_requests, args.rounds, args.wrk_seconds = 500, 500, 1, 3
    with (
        tempfile.TemporaryDirectory() as tmp,
        nginx(Path(tmp)) as peer,
        processes(Path(tmp), peer.target_port if peer else None) as urls,
    ):
        args.queue_db = Path(tmp) / "queue.db"
        pin_self(1)  # the load generator shares core 1 with the target; hookshield has core 0
        fast = {k: urls.pop(k) for k in ("hookshield fast", "bare fast")}
        results = uvloop.run(rounds(urls, args))
        peers = measure_peers(urls, fast, peer, Path(tmp), args)
    report(results, args)
    report_peers(peers, args)
    failed = any(r.errors for kind in results.values() for rs in kind.values() for r in rs)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
