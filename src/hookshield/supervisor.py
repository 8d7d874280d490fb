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
them, restarts a worker that dies on its own, and after a stop waits for all of them.
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
RESTART_DELAY_S = 1.0


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


class Supervisor:
    def __init__(self, config_path: str, grace_s: float, workers: int) -> None:
        self.command = [sys.executable, "-m", "hookshield", "run", "--config", config_path,
                        "--grace", str(grace_s), "--workers", str(workers)]  # fmt: skip
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.stops = 0
        self.exit_code = EXIT_OK
        self.metrics_dir, self.owns_dir = _metrics_dir()

    def _spawn(self, index: int) -> None:
        env = {**os.environ, METRICS_DIR: str(self.metrics_dir)}
        command = [*self.command, "--worker-index", str(index)]
        # Its own process group: a Ctrl-C on the terminal reaches the supervisor only, which
        # passes one SIGTERM on (a second stop signal would cut the worker's drain short).
        self.workers[index] = subprocess.Popen(command, env=env, process_group=0)
        logs.event("worker_started", worker=index, pid=self.workers[index].pid)

    def _signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._forward(signal.SIGHUP)
            return
        self.stops += 1
        self._forward(signal.SIGTERM)

    def _forward(self, signum: int) -> None:
        for process in self.workers.values():
            if process.poll() is None:
                process.send_signal(signum)

    def run(self, count: int) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._signal)
        try:
            for index in range(count):
                self._spawn(index)
            while self.workers:
                self._reap()
                time.sleep(0.1)
        finally:
            if self.owns_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.exit_code

    def _reap(self) -> None:
        """Collect exited workers; restart one that died on its own, unless it could not start."""
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
                logs.event("worker_exited", worker=index, code=code, restart_in_s=RESTART_DELAY_S)
                time.sleep(RESTART_DELAY_S)
                if not self.stops:  # a stop signal may have come during the pause
                    self._spawn(index)


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
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def supervise(config_path: str, grace_s: float, workers: int) -> int:
    return Supervisor(config_path, grace_s, workers).run(workers)
