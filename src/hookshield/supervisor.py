"""`hookshield run --workers N`: N worker processes share the data plane's port.

Each worker binds the data plane with `SO_REUSEPORT`, so the kernel spreads new connections
over them. Worker 0 also serves the admin plane and runs the delivery loop; the others
serve only the data plane (they enqueue async calls into the same store, which worker 0
delivers). Every worker watches the config files and reloads on its own.

Per worker: breakers, rate and concurrency limits, the fallback cache, target connection
pools, health probes, the status page's recent-window statistics. Shared: the queue (and so
the dead-letter queue) and the Prometheus metrics, which the workers write to a directory
of memory-mapped files (prometheus_client's multiprocess mode) and worker 0's `/metrics` sums.

This process, the supervisor, starts the workers, passes SIGTERM, SIGINT and SIGHUP on to
them, and after a stop waits for all of them. A worker that dies on its own is started
again after a pause that doubles while it keeps dying young (1 s, 2 s, 4 s ... 30 s) and
is back to 1 s once a worker has run for 30 s. `POST /admin/reload`, served by worker 0,
reloads the others too: worker 0 sends this process SIGUSR1, which is passed on to the other
workers as SIGHUP.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hookshield import logs

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
RESTART_DELAY_S = 1.0  # the first pause before a dead worker is started again,
RESTART_DELAY_MAX_S = 30.0  # doubled up to this while it keeps dying young,
STABLE_S = 30.0  # which a worker that ran this long is no longer


def _metrics_dir() -> tuple[Path, bool]:
    """The shared metrics directory, emptied; True when this process made it (and removes it)."""
    given = os.environ.get(METRICS_DIR)
    if not given:
        return Path(tempfile.mkdtemp(prefix="hookshield-metrics-")), True
    path = Path(given)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # a previous run's values would be counted again
        stale.unlink()
    return path, False


class Restarts:
    """When to start a dead worker again: the pause doubles for each death of a worker that
    ran less than `STABLE_S`, and is back to the first after one that ran longer. Pure, on
    monotonic times given by the caller."""

    def __init__(self) -> None:
        self.pause_s: dict[int, float] = {}  # worker index -> the pause after its next death
        self.started_at: dict[int, float] = {}

    def started(self, index: int, now: float) -> None:
        self.started_at[index] = now

    def died(self, index: int, now: float) -> float:
        """The pause before starting worker `index` again, which died at `now`."""
        if now - self.started_at.get(index, now) >= STABLE_S:
            self.pause_s[index] = RESTART_DELAY_S
        pause = self.pause_s.get(index, RESTART_DELAY_S)
        self.pause_s[index] = min(pause * 2, RESTART_DELAY_MAX_S)
        return pause


class Supervisor:
    def __init__(self, config_path: str, grace_s: float, workers: int) -> None:
        self.command = [sys.executable, "-m", "hookshield", "run", "--config", config_path,
                        "--grace", str(grace_s), "--workers", str(workers)]  # fmt: skip
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.restarts = Restarts()
        self.due: dict[int, float] = {}  # dead worker index -> when to start it again
        self.stops = 0
        self.exit_code = EXIT_OK
        self.metrics_dir, self.owns_dir = _metrics_dir()

    def _spawn(self, index: int) -> None:
        env = {**os.environ, METRICS_DIR: str(self.metrics_dir), SUPERVISOR_PID: str(os.getpid())}
        command = [*self.command, "--worker-index", str(index)]
        # Its own process group: a Ctrl-C on the terminal reaches the supervisor only, which
        # passes one SIGTERM on (a second stop signal would cut the worker's drain short).
        self.workers[index] = subprocess.Popen(command, env=env, process_group=0)
        self.restarts.started(index, time.monotonic())
        logs.event("worker_started", worker=index, pid=self.workers[index].pid)

    def _signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._forward(signal.SIGHUP)
        elif signum == signal.SIGUSR1:  # worker 0 reloaded through its admin plane
            self._forward(signal.SIGHUP, skip=0)
        else:
            self.stops += 1
            self._forward(signal.SIGTERM)

    def _forward(self, signum: int, skip: int | None = None) -> None:
        for index, process in self.workers.items():
            if index != skip and process.poll() is None:
                process.send_signal(signum)

    def run(self, count: int) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._signal)
        try:
            for index in range(count):
                self._spawn(index)
            while self.workers or self.due:
                self._reap()
                self._restart_due()
                time.sleep(0.1)
        finally:
            if self.owns_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.exit_code

    def _reap(self) -> None:
        """Collect exited workers; schedule the start of one that died on its own, unless it
        could not start (then all stop). As PID 1 (a container's entry point), also reap
        every orphan the kernel hands over, so no zombie stays behind."""
        if os.getpid() == 1:
            _reap_orphans(self.workers)
        for index, process in list(self.workers.items()):
            code = process.poll()
            if code is None:
                continue
            del self.workers[index]
            _mark_dead(process.pid, self.metrics_dir)
            if self.stops:
                self.exit_code = max(self.exit_code, code)
            elif code == EXIT_USAGE:  # invalid config or address in use: stop them all
                logs.event("worker_failed", worker=index, code=code)
                self.exit_code, self.stops = EXIT_USAGE, 1
                self._forward(signal.SIGTERM)
            else:
                pause = self.restarts.died(index, time.monotonic())
                logs.event("worker_exited", worker=index, code=code, restart_in_s=pause)
                self.due[index] = time.monotonic() + pause

    def _restart_due(self) -> None:
        if self.stops:
            self.due.clear()  # stopping: no worker starts again
            return
        now = time.monotonic()
        for index, when in list(self.due.items()):
            if when <= now:
                del self.due[index]
                self._spawn(index)


def _reap_orphans(workers: dict[int, subprocess.Popen[bytes]]) -> None:
    """Wait for any exited child; a worker's exit status is kept for `poll()` to report."""
    by_pid = {process.pid: process for process in workers.values()}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in by_pid:
            by_pid[pid].returncode = os.waitstatus_to_exitcode(status)


def _mark_dead(pid: int, directory: Path) -> None:
    """Drop a dead worker's live gauges from the shared metrics (its counters stay summed)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def die_with_supervisor() -> None:
    """In a worker: get SIGTERM (and so drain and stop) if the supervisor dies, even by
    SIGKILL, instead of serving on as an orphan. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if not supervisor_alive():  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def supervisor_alive() -> bool:
    """In a worker: its parent is still the supervisor that started it (which may be PID 1,
    as a container's entry point; an orphan's parent is some other process)."""
    return str(os.getppid()) == os.environ.get(SUPERVISOR_PID)


def signal_supervisor(signum: int) -> None:
    """In a worker: send the supervisor `signum`, unless it is gone."""
    if supervisor_alive():
        os.kill(os.getppid(), signum)


PR_SET_PDEATHSIG = 1
SUPERVISOR_PID = "HOOKSHIELD_SUPERVISOR_PID"  # set for each worker: who its parent must be


def supervise(config_path: str, grace_s: float, workers: int) -> int:
    return Supervisor(config_path, grace_s, workers).run(workers)
