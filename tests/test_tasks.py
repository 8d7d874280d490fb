"""The one way to start background work: named, kept, crashes logged, services restarted."""

from __future__ import annotations

import asyncio
import gc

import pytest

from hookshield.tasks import running, service, spawn
from tests.conftest import wait_for


def _failures(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records if r.getMessage() == "task_failed"]  # type: ignore[attr-defined]


async def test_a_crashed_task_is_logged_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    """A task that raises is logged as `task_failed` with its name and the error."""

    async def crash() -> None:
        raise RuntimeError("boom")

    task = spawn("doomed", crash())
    await asyncio.gather(task, return_exceptions=True)
    assert _failures(caplog) == [{"task": "doomed", "error": "RuntimeError('boom')"}]


async def test_a_cancelled_task_is_no_crash(caplog: pytest.LogCaptureFixture) -> None:
    """Cancellation is a stop: nothing is logged."""
    task = spawn("sleeper", asyncio.sleep(10))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert _failures(caplog) == []


async def test_a_spawned_task_is_kept_until_it_ends() -> None:
    """With no reference of the caller's, the task is neither collected nor lost."""
    done = asyncio.Event()

    async def later() -> None:
        await asyncio.sleep(0.02)
        done.set()

    spawn("kept", later())
    gc.collect()
    assert "kept" in running()
    await asyncio.wait_for(done.wait(), 5)
    await wait_for(lambda: "kept" not in running())


async def test_a_crashed_service_starts_again(caplog: pytest.LogCaptureFixture) -> None:
    """A service loop that crashes is logged and run again after the pause, until it ends."""
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise OSError("transient")

    task = service("flaky", flaky, restart_s=0.01)
    await asyncio.wait_for(task, 5)
    assert runs == [0, 1, 2]
    assert [f["task"] for f in _failures(caplog)] == ["flaky", "flaky"]
    assert all(f["restart_in_s"] == 0.01 for f in _failures(caplog))
