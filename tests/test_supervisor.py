"""`hookshield run --workers N` as real processes: one port, summed metrics, restarts, stops."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.mmap_dict import MmapedDict

from hookshield.supervisor import RESTART_DELAY_MAX_S, STABLE_S, Restarts
from tests.conftest import Target, free_port, wait_for
from tests.processes import Hookshield
from tests.test_cli import hookshield


def _config(target_url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "queue": {"sqlite_path": str(tmp_path / "queue.db")},
        "routes": [
            {"name": "r", "match": {"path_prefix": "/r"}, "target": target_url},
            {"name": "q", "match": {"path_prefix": "/q"}, "target": target_url, "mode": "async"},
        ],
    }


def _events(hs: Hookshield, name: str) -> list[dict[str, Any]]:
    """The supervisor's log lines of event `name`, in order."""
    lines = hs.log().splitlines()
    return [json.loads(line) for line in lines if f'"event": "{name}"' in line]


def _workers(hs: Hookshield) -> dict[int, int]:
    """Worker index -> pid, from the supervisor's `worker_started` lines (latest wins)."""
    return {event["worker"]: event["pid"] for event in _events(hs, "worker_started")}


STARTED: list[Hookshield] = []


@pytest.fixture(autouse=True)
def _no_strays() -> Iterator[None]:
    """A failed test leaves no supervisor behind (and so no workers: they die with it)."""
    yield
    while STARTED:
        STARTED.pop().kill()


async def _start(hs: Hookshield, env: dict[str, str] | None = None) -> None:
    """Start with two workers and wait until both listen (readiness is worker 0's)."""
    STARTED.append(hs)
    await hs.start("--workers", "2", env=env, own_group=True)
    await wait_for(lambda: hs.log().count('"event": "started"') == 2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def _fresh_posts(url: str, count: int) -> list[int]:
    """`count` POSTs, each on its own connection (so the kernel picks a worker for each)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        statuses = []
        for _ in range(count):
            async with session.post(url, data=b"{}") as resp:
                statuses.append(resp.status)
        return statuses


def _served_by(metrics_dir: Path, pid: int) -> float:
    """The requests a worker counted, read from its own file in the shared metrics dir."""
    counters: Any = MmapedDict(str(metrics_dir / f"counter_{pid}.db"), read_mode=True)  # type: ignore[no-untyped-call]
    try:
        values: list[tuple[str, float, float]] = list(counters.read_all_values())
    finally:
        counters.close()
    return sum(v for key, v, _ in values if '"hookshield_requests_total"' in key)


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(0.3)
    return web.json_response({"ok": True})


async def _six_slow_calls_in_flight(
    tmp_path: Path, target: Any
) -> tuple[Hookshield, asyncio.Future[list[list[int]]]]:
    """Two workers in front of a target answering after 0.3 s, and six calls it holds."""
    app: Target = await target(_slow)
    hs = Hookshield(tmp_path, _config(app.url, tmp_path))
    await _start(hs)
    calls = asyncio.gather(*(_fresh_posts(f"{hs.url}/r", 1) for _ in range(6)))
    await wait_for(lambda: len(app.seen) == 6)
    return hs, calls


async def test_two_workers_share_the_port_and_metrics_add_up(tmp_path: Path, target: Any) -> None:
    """With --workers 2 both processes answer on one port and /metrics sums what both counted."""
    app: Target = await target()
    metrics_dir = tmp_path / "metrics"
    hs = Hookshield(tmp_path, _config(app.url, tmp_path))
    await _start(hs, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    assert await _fresh_posts(f"{hs.url}/r", 60) == [200] * 60
    pids = _workers(hs)
    await wait_for(lambda: all(_served_by(metrics_dir, pid) > 0 for pid in pids.values()))
    summed = 'hookshield_requests_total{outcome="success",route="r"} 60.0'
    async with aiohttp.ClientSession() as session:  # each worker folds its counts once a second
        for _ in range(50):
            async with session.get(f"{hs.admin_url}/metrics") as resp:
                if summed in await resp.text():
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"/metrics never showed {summed}")
    assert await hs.stop() == 0


async def test_any_worker_enqueues_and_worker_0_delivers(tmp_path: Path, target: Any) -> None:
    """Async calls accepted by either worker reach the target: one shared queue, one deliverer."""
    app: Target = await target()
    hs = Hookshield(tmp_path, _config(app.url, tmp_path))
    await _start(hs)
    assert await _fresh_posts(f"{hs.url}/q", 20) == [202] * 20
    await wait_for(lambda: len(app.seen) == 20, timeout_s=10)
    assert await hs.stop() == 0


async def test_a_worker_that_dies_is_restarted(tmp_path: Path, target: Any) -> None:
    """SIGKILL on worker 1: the supervisor starts a new worker 1 and the port keeps answering."""
    app: Target = await target()
    hs = Hookshield(tmp_path, _config(app.url, tmp_path))
    await _start(hs)
    old = _workers(hs)[1]
    os.kill(old, signal.SIGKILL)
    await wait_for(lambda: _workers(hs)[1] != old, timeout_s=10)
    assert '"worker_exited"' in hs.log()
    await wait_for(lambda: hs.log().count('"event": "started"') == 3, timeout_s=10)
    assert await _fresh_posts(f"{hs.url}/r", 20) == [200] * 20
    assert await hs.stop() == 0


async def _wait_for_starts(hs: Hookshield, count: int) -> None:
    await wait_for(lambda: len(_events(hs, "worker_started")) == count, timeout_s=10)


def _restart_pauses(hs: Hookshield) -> list[float]:
    return [event["restart_in_s"] for event in _events(hs, "worker_exited")]


async def test_a_worker_dying_young_is_restarted_after_longer_pauses(
    tmp_path: Path, target: Any
) -> None:
    """Worker 1 killed three times soon after each start: pauses of 1, 2, then 4 s before its
    next start (no restart loop); a stop does not wait for the pending restart."""
    app: Target = await target()
    hs = Hookshield(tmp_path, _config(app.url, tmp_path))
    await _start(hs)
    for deaths in (1, 2, 3):
        os.kill(_workers(hs)[1], signal.SIGKILL)
        if deaths < 3:  # wait for its next start: the two first starts, then one per restart
            await _wait_for_starts(hs, 2 + deaths)
    await wait_for(lambda: len(_restart_pauses(hs)) == 3)
    assert _restart_pauses(hs) == [1.0, 2.0, 4.0]
    started = asyncio.get_running_loop().time()
    assert await hs.stop() == 0
    assert asyncio.get_running_loop().time() - started < 3.0
    assert len(_events(hs, "worker_started")) == 4  # two workers, two restarts


def test_restart_pause_doubles_while_young_and_resets_once_stable() -> None:
    """Restarts: 1, 2, 4 ... capped; a worker that ran for STABLE_S gets the first pause again;
    each worker index has its own."""
    restarts, now = Restarts(), 0.0
    pauses = []
    for _ in range(7):
        restarts.started(1, now)
        now += 0.5
        pauses.append(restarts.died(1, now))
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, RESTART_DELAY_MAX_S, RESTART_DELAY_MAX_S]
    restarts.started(0, now)
    assert restarts.died(0, now + 1) == 1.0
    restarts.started(1, now)
    assert restarts.died(1, now + STABLE_S) == 1.0


async def test_sigterm_drains_every_worker(tmp_path: Path, target: Any) -> None:
    """One SIGTERM to the supervisor: each worker drains and stops, and the command exits 0."""
    hs, calls = await _six_slow_calls_in_flight(tmp_path, target)
    assert await hs.stop() == 0
    assert await calls == [[200]] * 6  # in-flight calls finished during the drain
    assert hs.log().count('"event": "stopped"') == 2, hs.log()


async def test_sighup_to_the_supervisor_reloads_every_worker(tmp_path: Path, target: Any) -> None:
    """SIGHUP is passed on: each worker reloads, and a route added to the file answers on
    connections that land on either worker."""
    app: Target = await target()
    config = _config(app.url, tmp_path)
    hs = Hookshield(tmp_path, config)
    await _start(hs)
    assert await _fresh_posts(f"{hs.url}/new", 4) == [404] * 4
    route = {"name": "new", "match": {"path_prefix": "/new"}, "target": app.url}
    written = {**config, "routes": [*config["routes"], route]}
    hs.config_path.write_text(json.dumps({**written, "listen": {"port": hs.listen},
                                          "admin": {"port": hs.admin}}))  # fmt: skip
    assert hs.process is not None
    hs.process.send_signal(signal.SIGHUP)
    await wait_for(lambda: hs.log().count('"trigger": "SIGHUP"') == 2)
    assert await _fresh_posts(f"{hs.url}/new", 20) == [200] * 20
    assert await hs.stop() == 0


async def test_admin_reload_reloads_every_worker(tmp_path: Path, target: Any) -> None:
    """POST /admin/reload (served by worker 0) reloads the other workers too: a route added to
    the file answers on connections that land on either worker."""
    app: Target = await target()
    config = {**_config(app.url, tmp_path), "reload": {"poll_interval_s": 600}}  # no file watch
    hs = Hookshield(tmp_path, config)
    await _start(hs)
    route = {"name": "new", "match": {"path_prefix": "/new"}, "target": app.url}
    written = {**config, "routes": [*config["routes"], route]}
    hs.config_path.write_text(json.dumps({**written, "listen": {"port": hs.listen},
                                          "admin": {"port": hs.admin}}))  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{hs.admin_url}/admin/reload") as resp,
    ):
        assert resp.status == 200
    await wait_for(lambda: '"trigger": "SIGHUP"' in hs.log())
    assert hs.log().count('"trigger": "admin"') == 1
    assert await _fresh_posts(f"{hs.url}/new", 20) == [200] * 20
    assert await hs.stop() == 0


async def test_ctrl_c_on_the_terminal_drains_the_workers(tmp_path: Path, target: Any) -> None:
    """SIGINT to the whole foreground process group (Ctrl-C) still drains in-flight calls."""
    hs, calls = await _six_slow_calls_in_flight(tmp_path, target)
    assert hs.process is not None
    os.killpg(hs.process.pid, signal.SIGINT)
    assert await asyncio.wait_for(hs.process.wait(), 15) == 0
    assert await calls == [[200]] * 6
    assert "stopped_without_drain" not in hs.log()


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path, target: Any) -> None:
    """SIGKILL on the supervisor: its workers get SIGTERM, drain and exit; none serves on."""
    app: Target = await target()
    hs = Hookshield(tmp_path, _config(app.url, tmp_path))
    await _start(hs)
    pids = list(_workers(hs).values())
    hs.kill()
    await wait_for(lambda: not any(_alive(pid) for pid in pids), timeout_s=10)
    assert hs.log().count('"event": "stopped"') == 2


async def test_address_in_use_stops_every_worker_with_exit_2(tmp_path: Path) -> None:
    """A taken data port: the workers fail to listen and the command exits 2, not in a restart loop."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()  # no SO_REUSEPORT on this socket: the workers cannot share it
        port = taken.getsockname()[1]
        config = {**_config("http://127.0.0.1:9", tmp_path), "listen": {"port": port}}
        path = tmp_path / "taken.yaml"
        path.write_text(json.dumps({**config, "admin": {"port": free_port()}}))
        result = await asyncio.to_thread(hookshield, "run", "--config", str(path), "--workers", "2")
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} (data plane)" in result.stdout


def _children(pid: int) -> list[int]:
    """The host pids of a process's children (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _host_pid(children: list[int], namespace_pid: int) -> int:
    """Which of `children` has pid `namespace_pid` inside its PID namespace (`NSpid`)."""
    for child in children:
        if int(_status(child)["NSpid"].split()[-1]) == namespace_pid:
            return child
    raise LookupError(namespace_pid)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
async def test_supervisor_as_pid_1_serves_reaps_and_stops(tmp_path: Path, target: Any) -> None:
    """`run --workers 2` as PID 1 of a new PID namespace (a container's entry point): no worker
    takes itself for an orphan, both serve for 10 s, a killed worker is reaped (no zombie) and
    started again, and SIGTERM stops every worker cleanly."""
    app: Target = await target()
    hs = Hookshield(tmp_path, _config(app.url, tmp_path))
    command = [sys.executable, "-m", "hookshield", "run", "--config", str(hs.config_path),
               "--workers", "2"]  # fmt: skip
    with hs.log_path.open("ab") as log:
        hs.process = await asyncio.create_subprocess_exec(
            "unshare", "--pid", "--fork", "--mount-proc", *command, stdout=log, stderr=log
        )
    STARTED.append(hs)
    await hs.wait_ready()
    [supervisor] = _children(hs.process.pid)  # unshare's child: PID 1 inside the namespace
    assert _status(supervisor)["NSpid"].split()[-1] == "1"
    await wait_for(lambda: len(_workers(hs)) == 2)
    loop = asyncio.get_running_loop()
    until = loop.time() + 10.0
    while loop.time() < until:  # fresh connections spread over both workers by the kernel
        assert await _fresh_posts(f"{hs.url}/r", 8) == [200] * 8
        await asyncio.sleep(0.2)
    assert _events(hs, "worker_exited") == [], hs.log()
    assert hs.log().count('"event": "started"') == 2
    killed = _host_pid(_children(supervisor), _workers(hs)[1])
    os.kill(killed, signal.SIGKILL)
    await wait_for(lambda: hs.log().count('"event": "started"') == 3, timeout_s=10)
    states = [_status(child)["State"] for child in _children(supervisor)]
    assert len(states) == 2, states
    assert not any(state.startswith("Z") for state in states), states
    os.kill(supervisor, signal.SIGTERM)
    assert await asyncio.wait_for(hs.process.wait(), 15) == 0
    assert hs.log().count('"event": "stopped"') == 2, hs.log()  # the killed one said nothing
