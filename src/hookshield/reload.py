"""Config reload (SPEC §2, §5): triggers, and the transactional swap.

Triggers: a change of the config file or of a secret file it names (the watcher polls a
digest of their contents, reading through symlinks, so the kubelet's atomic `..data`
swap of a mounted ConfigMap or Secret is seen), `SIGHUP`, and `POST /admin/reload`.

A reload parses the whole file again (secret files are read again too) and builds a new
runtime beside the current one. If anything is invalid the current one stays and every
problem is logged with its YAML path; else one reference is swapped. Requests in flight
finish on the runtime they started with. Listener addresses and the queue store are fixed
for the life of the process: a change to them is reported and needs a restart.

With `--workers N` every worker sees file changes and SIGHUP (the supervisor passes it on)
itself; `POST /admin/reload` reaches worker 0 only, which after a successful reload calls
`others` (asks the supervisor to reload the other workers).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hookshield import logs
from hookshield.config import Config, ConfigError, load_config
from hookshield.runtime import State


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    generation: int
    problems: tuple[str, ...] = ()


def digest(paths: tuple[Path, ...]) -> bytes:
    """One hash over the current contents of `paths` (a missing file counts as a value)."""
    hasher = hashlib.sha256()
    for path in paths:
        try:
            hasher.update(path.read_bytes())
        except OSError:
            hasher.update(b"\0missing\0")
        hasher.update(b"\0")
    return hasher.digest()


def _watched(config: Config) -> tuple[Path, ...]:
    return (config.source, *config.secret_files) if config.source else ()


class Reloader:
    def __init__(self, state: State, others: Callable[[], None] | None = None) -> None:
        self.state, self.others = state, others
        self.counts = {"success": 0, "failure": 0}
        self._lock = asyncio.Lock()
        self._digest = digest(_watched(state.config))

    async def reload(self, trigger: str) -> ReloadResult:
        """Load the config file again and swap it in if valid; one reload at a time."""
        async with self._lock:
            current = self.state.config
            if current.source is None:
                return self._failed(trigger, ["<file>: this process was not started from a file"])
            try:
                config = await asyncio.to_thread(load_config, current.source)
            except ConfigError as exc:
                return self._failed(trigger, exc.problems)
            self._digest = digest(_watched(config))
            _warn_fixed_settings(current, config)
            old = self.state.runtime
            runtime = self.state.install(config)
            logging.getLogger().setLevel(config.log_level)
            if old is not None:
                await old.stop()
            self.counts["success"] += 1
            self.state.metrics.reloads.labels("success").inc()
            logs.event(
                "config_reloaded",
                trigger=trigger,
                generation=runtime.generation,
                routes=len(config.routes),
            )
            if trigger == "admin" and self.others is not None:
                self.others()
            return ReloadResult(True, runtime.generation)

    def _failed(self, trigger: str, problems: list[str]) -> ReloadResult:
        self.counts["failure"] += 1
        self.state.metrics.reloads.labels("failure").inc()
        logs.event("config_reload_failed", logging.ERROR, trigger=trigger, problems=problems)
        generation = self.state.runtime.generation if self.state.runtime else 0
        return ReloadResult(False, generation, tuple(problems))

    async def watch(self) -> None:
        """Poll the config and secret files; reload when their contents change."""
        while True:
            await asyncio.sleep(self.state.config.reload_poll_s)
            paths = _watched(self.state.config)
            current = await asyncio.to_thread(digest, paths)
            if current != self._digest:
                self._digest = current  # an invalid version is not retried until it changes
                await self.reload("file")


def _warn_fixed_settings(old: Config, new: Config) -> None:
    for name in ("listen", "admin", "queue"):
        if getattr(old, name) != getattr(new, name):
            logs.event("restart_needed", logging.WARNING, setting=name,
                       detail="changed in the file; takes effect at the next restart")  # fmt: skip
