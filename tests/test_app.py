"""The lifecycle's one owner: parts started in order, a failed start unwound, stop in reverse."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from hookshield.app import App, BindError, Role
from hookshield.config.models import Address
from hookshield.queue.base import StoreUnavailable
from hookshield.tasks import running
from tests.conftest import make_config


def _config(tmp_path: Path, target_url: str) -> dict[str, Any]:
    route = {"name": "r", "match": {"path_prefix": "/r"}, "target": target_url,
             "health_check": {"path": "/health", "interval_s": 0.05}}  # fmt: skip
    return {"queue": {"sqlite_path": str(tmp_path / "q.db")}, "routes": [route]}


async def test_a_start_that_fails_half_way_stops_what_it_started(
    tmp_path: Path, target: Any
) -> None:
    """The data port is taken: `start` raises `BindError` and every part it had started (the
    store, the runtime's health checks, the deliverer, the watcher, metrics folding) is
    stopped again; no background task is left running."""
    app_target = await target()
    before = running()
    app = App(make_config(_config(tmp_path, app_target.url), tmp_path), grace_s=0.5)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(BindError, match="data plane"):
            await app.start(Address("127.0.0.1", taken.getsockname()[1]))
    assert running() == before
    assert app.state.runtime is None
    store = app.state.store
    assert store is not None
    with pytest.raises(StoreUnavailable, match="after shutdown"):  # the store was closed
        await store.sizes()


async def test_every_part_runs_until_stop_and_none_after(tmp_path: Path, target: Any) -> None:
    """A started app runs its named background services; `stop` ends all of them."""
    app_target = await target()
    before = running()
    app = App(make_config(_config(tmp_path, app_target.url), tmp_path), grace_s=0.5)
    await app.start(Address("127.0.0.1", 0))
    started = set(running()) - set(before)
    assert {"metrics_fold", "config_watch", "delivery-loop"} <= started
    assert any(name.startswith("health_check r ") for name in started)
    assert app.data_port > 0
    await app.stop()
    assert running() == before


async def test_a_worker_without_the_admin_plane_runs_no_deliveries(
    tmp_path: Path, target: Any
) -> None:
    """Worker 1 of 2 has the same owner, without the delivery loop (worker 0's)."""
    app_target = await target()
    app = App(make_config(_config(tmp_path, app_target.url), tmp_path), role=Role(1, 2))
    await app.start(Address("127.0.0.1", 0), Address("127.0.0.1", 0))
    assert "delivery-loop" not in running()
    assert app.state.deliverer is None
    await app.stop()
