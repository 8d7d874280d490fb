"""Metrics, /status and the status page after a known sequence of calls."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, Target, needs_tool


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and label set."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


class Sequence:
    """A target answering 200, 200, 200, 500, then slowly (a timeout), as asked."""

    def __init__(self) -> None:
        self.answers: list[int | None] = [200, 200, 200, 500, None]  # None: too slow

    async def __call__(self, request: web.Request) -> web.Response:
        answer = self.answers.pop(0) if self.answers else 200
        if answer is None:
            await asyncio.sleep(1)
        return web.Response(status=answer or 200, text="x")


async def known_sequence(stack: Any, target: Any) -> tuple[Stack, Target, Target]:
    """3 successes, 1 target 500, 1 timeout (opening the breaker), 1 breaker-open call on
    route `known`; 5 successes on route `fine`."""
    bad: Target = await target(Sequence())
    good: Target = await target()
    hs: Stack = await stack({
        "routes": [
            {"name": "known", "match": {"path_prefix": "/known"}, "target": bad.url, "timeout_ms": 150,
             "breaker": {"failure_threshold": 2, "recovery_timeout_s": 60},
             "fallback": {"response": {"status": 200, "body": {"fallback": True}}}},
            {"name": "fine", "match": {"path_prefix": "/fine"}, "target": good.url},
        ]
    })  # fmt: skip
    for _ in range(6):
        await hs.data.post("/known", data=b"{}")
    for _ in range(5):
        await hs.data.post("/fine", data=b"{}")
    return hs, bad, good


async def test_metrics_count_exactly_the_known_sequence(stack: Any, target: Any) -> None:
    """Every SPEC §7 series shows exactly the numbers of the sequence."""
    hs, bad, _ = await known_sequence(stack, target)
    text = await (await hs.admin.get("/metrics")).text()
    found = samples(text)
    origin = bad.url
    route = {"route": "known"}
    assert value(found, "hookshield_requests_total", **route, outcome="success") == 3
    assert value(found, "hookshield_requests_total", **route, outcome="fallback") == 3
    assert value(found, "hookshield_requests_total", **route, outcome="error") == 0
    for result, count in (("success", 3), ("http_error", 1), ("timeout", 1), ("connect_error", 0)):
        assert (
            value(
                found, "hookshield_upstream_requests_total", **route, target=origin, result=result
            )
            == count
        )
    assert value(found, "hookshield_upstream_duration_seconds_count", **route, target=origin) == 5
    for reason, count in (
        ("upstream_error", 1),
        ("timeout", 1),
        ("circuit_open", 1),
        ("rate_limited", 0),
    ):
        assert value(found, "hookshield_fallbacks_total", **route, reason=reason) == count
    assert value(found, "hookshield_circuit_state", **route, target=origin) == 2
    assert (
        value(found, "hookshield_circuit_transitions_total", **route, target=origin, to="open") == 1
    )
    assert value(found, "hookshield_queue_depth", **route) == 0
    assert value(found, "hookshield_dlq_size", **route) == 0
    assert value(found, "hookshield_config_reloads_total", result="success") == 0
    assert value(found, "hookshield_config_generation") == 1
    assert value(found, "hookshield_requests_total", route="fine", outcome="success") == 5


@needs_tool("promtool")
async def test_exposition_passes_promtool(stack: Any, target: Any) -> None:
    """`promtool check metrics` accepts the exposition (names, help, units, types)."""
    hs, _, _ = await known_sequence(stack, target)
    text = await (await hs.admin.get("/metrics")).text()
    result = await asyncio.to_thread(
        subprocess.run, ["promtool", "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_status_matches_the_sequence(stack: Any, target: Any) -> None:
    """/status: 5 attempts, 60 % success, 20 % timeouts, circuit open, failing; the other healthy."""
    hs, bad, good = await known_sequence(stack, target)
    doc = await (await hs.admin.get("/status")).json()
    assert doc["config_generation"] == 1
    known, fine = doc["routes"]
    assert (known["name"], known["mode"], known["queue_depth"], known["dlq_size"]) == (
        "known",
        "sync",
        0,
        0,
    )
    [t] = known["targets"]
    assert (t["target"], t["circuit"], t["health"], t["requests"]) == (
        bad.url,
        "open",
        "failing",
        5,
    )
    assert (t["success_rate"], t["timeout_rate"]) == (0.6, 0.2)
    assert t["p50_ms"] <= t["p95_ms"] <= t["p99_ms"]
    assert t["p99_ms"] >= 150  # the timed-out attempt
    [g] = fine["targets"]
    assert (g["target"], g["health"], g["requests"], g["success_rate"]) == (
        good.url,
        "healthy",
        5,
        1.0,
    )


async def test_status_page_is_self_contained(stack: Any, target: Any) -> None:
    """The page is one HTML document that loads nothing from elsewhere."""
    hs, _, _ = await known_sequence(stack, target)
    page = await (await hs.admin.get("/")).text()
    assert page.startswith("<!doctype html>")
    for external in ("http://", "https://", "<link", "src="):
        assert external not in page


@needs_tool("chromium")
async def test_status_page_in_chromium_shows_failing_and_healthy(
    stack: Any, target: Any, tmp_path: Path
) -> None:
    """Rendered by headless Chromium: the failing and the healthy target as people see them.
    (HOOKSHIELD_SCREENSHOT=docs/status-page.png keeps the screenshot for the docs.)"""
    from playwright.async_api import async_playwright

    hs, bad, good = await known_sequence(stack, target)
    url = f"http://127.0.0.1:{hs.admin.port}/"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        page = await browser.new_page(viewport={"width": 1100, "height": 520})
        await page.goto(url)
        failing = page.locator(f'tr[data-target="{bad.url}"] .badge')
        healthy = page.locator(f'tr[data-target="{good.url}"] .badge')
        await failing.wait_for()
        assert await failing.inner_text() == "failing"
        assert await healthy.inner_text() == "healthy"
        assert (
            await failing.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(207, 34, 46)"
        )
        assert await page.locator("#tile-failing b").inner_text() == "1"
        shot = Path(os.environ.get("HOOKSHIELD_SCREENSHOT", tmp_path / "status-page.png"))
        await page.screenshot(path=str(shot), full_page=True)
        assert (await asyncio.to_thread(shot.stat)).st_size > 10_000
        await browser.close()
