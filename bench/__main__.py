"""`python -m bench`: hookshield beside a direct call and nginx, in one run, with ratios.

Starts a target (a static nginx, else a small Python server) and nginx as a peer reverse
proxy, both pinned to core 1 / core 0 like hookshield; several hookshields (`bench.stack`);
then measures, round after round, closed-loop throughput (wrk, 1 thread on core 1) and
open-loop latency at fixed rates, and finally memory (`bench.memory`). Prints medians,
min-max and the ratios the targets are stated in. Absolute numbers depend on the machine;
compare the ratios. `docs/benchmarks.md` has the method and a recorded run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sqlite3
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis
import uvloop

from bench import memory
from bench.load import Result, run, run_open
from bench.peers import nginx, run_wrk, wrk_script
from bench.procs import cpu_seconds, machine_cores_s, pin_self
from bench.stack import Proxy, Stack, stack, use_compiled_build

BASELINE = Path(__file__).with_name("baseline.json")
Rows = dict[str, list[Result]]
# Each hookshield row: the proxy it measures (`bench.stack`) and the route's path. A row
# whose proxy did not start (no Redis, no compiled build) is left out.
HOOKSHIELD_ROWS = {
    "hookshield": ("hookshield", "/hook"),
    "bare": ("bare", "/hook"),
    "2 workers": ("workers", "/hook"),
    "pure": ("pure", "/hook"),
    "async sqlite": ("hookshield", "/async"),
    "async redis": ("redis", "/async"),
}


def drained(st: Stack, name: str, timeout_s: float = 300.0) -> None:
    """Wait until the async queue behind row `name` is empty (deliveries must not load the
    next row)."""
    proxy = st.proxies[HOOKSHIELD_ROWS[name][0]]
    deadline = time.monotonic() + timeout_s
    while _pending(st, proxy.queue_db) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the queue behind {name!r} did not drain")
        time.sleep(0.2)


def _pending(st: Stack, db: Path | None) -> int:
    if db is None:
        with redis.Redis(port=st.redis_port or 0) as client:
            return int(client.zcard("{hookshield}:q"))
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM deliveries WHERE dead=0").fetchone()
        return int(count)


def closed_paths(st: Stack, nginx_url: str | None) -> dict[str, str]:
    paths = {"direct": st.target_url}
    if nginx_url:
        paths["nginx"] = nginx_url
    paths |= {
        row: st.proxies[proxy].url(path)
        for row, (proxy, path) in HOOKSHIELD_ROWS.items()
        if proxy in st.proxies
    }
    return paths


def measure(paths: dict[str, str], rounds: int, one: Callable[[str], Result], st: Stack) -> Rows:
    """Each path in turn, `rounds` times; after an async row, wait for its queue to drain.
    A hookshield row also notes the CPU its processes used meanwhile."""
    rows: Rows = {name: [] for name in paths}
    for name, url in paths.items():  # warm-up: connections, pools, caches
        one(url)
        _settle(st, name)
    for _ in range(rounds):
        for name, url in paths.items():
            rows[name].append(_with_cpu(one, url, _pid(st, name)))
            _settle(st, name)
    return rows


def _pid(st: Stack, name: str) -> int | None:
    proxy = HOOKSHIELD_ROWS[name][0] if name in HOOKSHIELD_ROWS else None
    return st.proxies[proxy].process.pid if proxy in st.proxies else None


def _with_cpu(one: Callable[[str], Result], url: str, pid: int | None) -> Result:
    """`one(url)`, with the CPU used meanwhile by the proxy (pid and its children), wrk,
    and the whole machine."""
    if pid is None:
        return one(url)
    cpu, children, machine = cpu_seconds(pid), _children_s(), machine_cores_s()
    started = time.monotonic()
    result = one(url)
    wall = time.monotonic() - started
    busy, steal = (after - before for after, before in zip(machine_cores_s(), machine, strict=True))
    return dataclasses.replace(
        result,
        cpu_cores=(cpu_seconds(pid) - cpu) / wall,
        wrk_cores=(_children_s() - children) / wall,
        machine_cores=busy / wall,
        steal_cores=steal / wall,
    )


def _children_s() -> float:
    """CPU seconds of this process's finished children (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _settle(st: Stack, name: str) -> None:
    if name.startswith("async"):
        drained(st, name)
    time.sleep(0.5)


def closed(st: Stack, nginx_url: str | None, workdir: Path, args: argparse.Namespace) -> Rows:
    script = wrk_script(workdir)
    paths = closed_paths(st, nginx_url)
    if script is not None:
        return measure(
            paths, args.rounds, lambda url: run_wrk(url, script, args.wrk_seconds, 32), st
        )
    print("wrk: not installed (Debian package wrk); closed loop uses the Python generator")
    requests = args.wrk_seconds * 1000
    return measure(paths, args.rounds, lambda url: uvloop.run(run(url, requests, 32)), st)


def open_loop(st: Stack, nginx_url: str | None, args: argparse.Namespace) -> Rows:
    paths = {
        k: v
        for k, v in closed_paths(st, nginx_url).items()
        if k in ("direct", "nginx", "hookshield")
    }
    rows = measure(
        paths, args.rounds, lambda url: uvloop.run(run_open(url, args.open_requests, args.rate)), st
    )
    async_paths = {k: v for k, v in closed_paths(st, nginx_url).items() if k.startswith("async")}
    n = int(args.open_requests * args.async_rate / args.rate)
    rows |= measure(
        async_paths, args.rounds, lambda url: uvloop.run(run_open(url, n, args.async_rate)), st
    )
    return rows


def _median(results: list[Result]) -> Result:
    return Result(
        throughput=statistics.median(r.throughput for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        errors=sum(r.errors for r in results),
        cpu_cores=statistics.median(r.cpu_cores for r in results),
        wrk_cores=statistics.median(r.wrk_cores for r in results),
        machine_cores=statistics.median(r.machine_cores for r in results),
        steal_cores=statistics.median(r.steal_cores for r in results),
    )


def report_closed(rows: Rows, args: argparse.Namespace) -> dict[str, float]:
    print(
        f"closed loop: wrk, 32 connections, 1 thread on core 1, {args.wrk_seconds} s x {args.rounds} rounds, ~1 KB JSON POST"
    )
    print(f"{'path':<14}{'req/s median':>14}{'min-max':>18}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'cores':>7}")  # fmt: skip
    med = {name: _median(rs) for name, rs in rows.items()}
    for name, rs in rows.items():
        tps = [r.throughput for r in rs]
        m = med[name]
        spread = f"{min(tps):,.0f}-{max(tps):,.0f}"
        cores = f"{m.cpu_cores:.2f}" if m.cpu_cores else "-"
        print(f"{name:<14}{m.throughput:>14,.0f}{spread:>18}{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}"
              f"{m.errors:>8}{cores:>7}")  # fmt: skip
    tp = {name: m.throughput for name, m in med.items()}
    ratios = {"hookshield/direct": tp["hookshield"] / tp["direct"],
              "2 workers/hookshield": tp["2 workers"] / tp["hookshield"],
              "hookshield/bare": tp["hookshield"] / tp["bare"]}  # fmt: skip
    if "pure" in tp:
        ratios["hookshield/pure"] = tp["hookshield"] / tp["pure"]
    if "nginx" in tp:
        ratios["hookshield/nginx"] = tp["hookshield"] / tp["nginx"]
    else:
        print("nginx: not installed (Debian package nginx); its row is skipped")
    print("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    report_scaling(med)
    report_build(med)
    print(
        "targets: hookshield/nginx >= 0.18, 2 workers/hookshield >= 1.8, async redis >= 5,000 accepted/s"
    )
    if "async redis" not in tp:
        print(
            "redis-server: not installed (Debian package redis-server); the async redis rows are skipped"
        )
    return ratios


def report_scaling(med: dict[str, Result]) -> None:
    """Requests per CPU-second of hookshield, 1 worker against 2: whether the workers scale
    with the CPU they get (the throughput ratio also depends on what else runs on the
    cores: here wrk and the target share core 1 with the second worker)."""
    one, two = med["hookshield"], med["2 workers"]
    if not (one.cpu_cores and two.cpu_cores):
        return
    per_one, per_two = _per_cpu_second(one), _per_cpu_second(two)
    print(f"hookshield CPU: 1 worker {one.cpu_cores:.2f} cores, 2 workers {two.cpu_cores:.2f} "
          f"cores; requests per CPU-second {per_one:,.0f} and {per_two:,.0f}: "
          f"2 workers do {per_two / per_one:.2f} x the work per CPU-second of one")  # fmt: skip
    print(f"the machine during the 2-worker row: {two.machine_cores:.2f} of {os.cpu_count()} "
          f"cores busy (hookshield {two.cpu_cores:.2f}, wrk {two.wrk_cores:.2f}, stolen by "
          f"the hypervisor {two.steal_cores:.2f}; the rest: the target, the kernel)")  # fmt: skip


def report_build(med: dict[str, Result]) -> None:
    """The compiled build against the sources, in throughput and in work per CPU-second."""
    compiled, pure = med["hookshield"], med.get("pure")
    if pure is None or not (compiled.cpu_cores and pure.cpu_cores):
        return
    per_cpu = _per_cpu_second(compiled) / _per_cpu_second(pure)
    print(f"compiled build vs the sources: {compiled.throughput / pure.throughput:.2f} x the "
          f"requests/s, {per_cpu:.2f} x the requests per CPU-second")  # fmt: skip


def _per_cpu_second(row: Result) -> float:
    """Requests served per CPU-second the row's hookshield processes used."""
    return row.throughput / row.cpu_cores


def report_open(rows: Rows, args: argparse.Namespace) -> None:
    print(f"\nopen loop: latency from the scheduled send time, {args.rounds} rounds; medians")
    print(f"{'path':<14}{'rate/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    med = {name: _median(rs) for name, rs in rows.items()}
    for name, m in med.items():
        rate = args.async_rate if name.startswith("async") else args.rate
        print(f"{name:<14}{rate:>8,.0f}{m.p50_ms:>9.2f}{m.p99_ms:>9.2f}{m.errors:>8}")
    d, h = med["direct"], med["hookshield"]
    print(f"added by hookshield at {args.rate:,.0f}/s: p50 {h.p50_ms - d.p50_ms:+.2f} ms, "
          f"p99 {h.p99_ms - d.p99_ms:+.2f} ms (targets <= 0.5 / <= 2 ms)")  # fmt: skip
    if "nginx" in med:
        n = med["nginx"]
        print(
            f"added by nginx: p50 {n.p50_ms - d.p50_ms:+.2f} ms, p99 {n.p99_ms - d.p99_ms:+.2f} ms"
        )
    print("async 202 target: p99 <= 5 ms at 2,000/s into Redis (AOF everysec)")


def check(ratios: dict[str, float], args: argparse.Namespace) -> bool:
    """False on a gross regression: hookshield/direct under half the recorded baseline for
    the same kind of target (the static nginx one, or the Python one without nginx)."""
    key = f"hookshield/direct, {args.target_kind} target"
    recorded: dict[str, float] = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    if args.record:
        recorded[key] = round(ratios["hookshield/direct"], 3)
        BASELINE.write_text(json.dumps(recorded, indent=2) + "\n")
        print(f"\nrecorded {key} in {BASELINE}")
    if not args.check:
        return True
    if key not in recorded:
        print(f"\ncheck: no baseline for {key} in {BASELINE.name}; nothing to compare")
        return True
    ok = ratios["hookshield/direct"] >= 0.5 * recorded[key]
    print(f"\ncheck: {key} {ratios['hookshield/direct']:.3f}, baseline {recorded[key]:.3f}: "
          f"{'ok' if ok else 'REGRESSION (under half the baseline)'}")  # fmt: skip
    return ok


def report_stale(proxy: Proxy) -> None:
    """How often a pooled target connection had been closed by the target when reused
    (each such request was sent again on a new connection, SPEC §9)."""
    url = f"http://127.0.0.1:{proxy.admin}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    stale = _metric_sum(text, "hookshield_upstream_stale_retries_total")
    calls = _metric_sum(text, "hookshield_upstream_requests_total")
    share = f" ({stale / calls:.4%})" if calls else ""
    print(f"stale pooled connections, row hookshield: {stale:,.0f} of {calls:,.0f} attempts{share}")


def _metric_sum(exposition: str, name: str) -> float:
    lines = exposition.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name))


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add = parser.add_argument
    add("--rounds", type=int, default=3, help="repeats of every measurement (default 3)")
    add("--wrk-seconds", type=int, default=10, help="length of each closed-loop measurement")
    add("--rate", type=float, default=1000.0, help="sync open-loop rate (default 1000/s)")
    add("--async-rate", type=float, default=2000.0, help="async open-loop rate (default 2000/s)")
    add("--open-requests", type=int, default=5000, help="requests per sync open-loop measurement")
    add("--soak-seconds", type=int, default=300, help="length of the memory soak (default 300)")
    add("--flood", type=int, default=10000, help="concurrent slow calls (default 10000)")
    add("--quick", action="store_true", help="a two-minute smoke run (1 round, short runs)")
    add(
        "--check", action="store_true", help=f"exit 1 on a gross regression against {BASELINE.name}"
    )
    add("--record", action="store_true", help=f"write this run's ratio to {BASELINE.name}")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.wrk_seconds, args.open_requests, args.soak_seconds = 1, 2, 1000, 10
    return args


def main() -> int:
    args = options()
    compiled = use_compiled_build()
    print(
        f"hookshield rows: the {'compiled build (row pure: the sources)' if compiled else 'sources'}"
    )
    with tempfile.TemporaryDirectory() as tmp, nginx(Path(tmp)) as peer:
        nginx_url = peer.proxy_url if peer else None
        args.target_kind = "nginx" if peer else "python"
        with stack(Path(tmp), peer.target_port if peer else None, pure=compiled) as st:
            pin_self(1)  # the load generator shares core 1 with the target; hookshield has core 0
            closed_rows = closed(st, nginx_url, Path(tmp), args)
            open_rows = open_loop(st, nginx_url, args)
            report_stale(st.proxies["hookshield"])
            hs = st.proxies["hookshield"]
            soaked = uvloop.run(
                memory.soak(hs.url("/hook"), hs.process.pid, args.soak_seconds, args.rate)
            )
        calls = memory.affordable(args.flood)
        flooded = uvloop.run(memory.flood_run(Path(tmp), calls, calls // 2, 5.0))
    ratios = report_closed(closed_rows, args)
    report_open(open_rows, args)
    memory.report(soaked, flooded)
    failed = any(r.errors for rows in (closed_rows, open_rows) for rs in rows.values() for r in rs)
    if args.check:  # CI: only a gross regression fails the run, not a noisy row
        return 0 if check(ratios, args) else 1
    check(ratios, args)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
