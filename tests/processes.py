"""hookshield as a real process (`python -m hookshield run`), for kill -9 and signal tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import free_port


class Hookshield:
    """One `hookshield run` process on its own free ports; output goes to a log file."""

    def __init__(self, workdir: Path, config: dict[str, Any], name: str = "hs") -> None:
        self.listen, self.admin = free_port(), free_port()
        config = {**config, "listen": {"port": self.listen}, "admin": {"port": self.admin}}
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    async def start(
        self, *args: str, env: dict[str, str] | None = None, own_group: bool = False
    ) -> Hookshield:
        """Start `hookshield run` (extra `args` such as `--grace 1`) and wait until ready;
        `own_group`: in a process group of its own, as a shell starts a command."""
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "hookshield", "run", "--config", str(self.config_path), *args,
                stdout=log, stderr=log, env={**os.environ, **(env or {})},
                process_group=0 if own_group else None,
            )  # fmt: skip
        await self.wait_ready()
        return self

    async def wait_ready(self, timeout_s: float = 15.0) -> None:
        async with aiohttp.ClientSession() as session, asyncio.timeout(timeout_s):
            while not await _answers(session, f"{self.admin_url}/readyz"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no drain, no lease release, nothing flushed."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def _answers(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False
