"""The sync data plane end to end: real target servers, hookshield on a real port."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from hookshield.proxy import new_request_id
from tests.conftest import Target, free_port


def route(target_url: str, **extra: Any) -> dict[str, Any]:
    return {"name": "hook", "match": {"path_prefix": "/hook"}, "target": target_url, **extra}


def one_route(target_url: str, **extra: Any) -> dict[str, Any]:
    return {"routes": [route(target_url, **extra)]}


async def test_forwards_method_body_path_and_query_byte_for_byte(proxy: Any, target: Any) -> None:
    """Body bytes, method, path remainder and query reach the target intact."""
    app: Target = await target()
    client = await proxy(one_route(app.url + "/api/in"))
    body = b'{"b": 1,   "a": "\\u00e9"}\n\x00\xff'
    resp = await client.put("/hook/x/y%25z?b=2&a=1&a=%20", data=body)  # %2F: 400 (SPEC §9)
    assert resp.status == 200
    [seen] = app.seen
    assert (seen.method, seen.path_qs, seen.body) == ("PUT", "/api/in/x/y%25z?b=2&a=1&a=%20", body)


async def test_response_comes_back_unchanged_with_outcome_upstream(proxy: Any, target: Any) -> None:
    """The target's status, headers and body are returned as-is, plus the outcome header."""

    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418, body=b"\x01short and stout", headers={"X-App": "v1"})

    app = await target(teapot)
    client = await proxy(one_route(app.url))
    resp = await client.post("/hook", data=b"{}")
    assert resp.status == 418
    assert await resp.read() == b"\x01short and stout"
    assert resp.headers["X-App"] == "v1"
    assert resp.headers["X-Hookshield-Outcome"] == "upstream"


async def test_headers_added_removed_and_stripped(proxy: Any, target: Any) -> None:
    """headers.add/remove apply; hop-by-hop, Connection-named and X-Hookshield-* never pass."""
    app = await target()
    headers_rule = {"add": {"X-Platform-Id": "acme"}, "remove": ["Cookie"]}
    client = await proxy(one_route(app.url, headers=headers_rule))
    await client.post(
        "/hook",
        data=b"{}",
        headers={
            "Cookie": "session=1",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Keep-Alive": "timeout=5",
            "X-Hookshield-Target": "http://elsewhere",
            "X-Custom": "kept",
        },
    )
    seen = app.seen[0].headers
    assert seen["X-Platform-Id"] == "acme"
    assert seen["X-Custom"] == "kept"
    for gone in ("Cookie", "X-Drop-Me", "Keep-Alive", "X-Hookshield-Target"):
        assert gone not in seen, gone


async def test_request_id_kept_or_generated_and_timeout_header_sent(
    proxy: Any, target: Any
) -> None:
    """A platform X-Request-ID is kept; otherwise a UUID is made; X-Timeout-Ms tells the budget."""
    app = await target()
    client = await proxy(one_route(app.url, timeout_ms=2000))
    await client.post("/hook", data=b"1", headers={"X-Request-ID": "req-42"})
    await client.post("/hook", data=b"2")
    kept, made = app.seen[0].headers, app.seen[1].headers
    assert kept["X-Request-ID"] == "req-42"
    uuid.UUID(made["X-Request-ID"])
    assert 1900 <= int(kept["X-Timeout-Ms"]) <= 2000


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(3)
    return web.json_response({"late": True})


async def test_slow_target_times_out_at_route_deadline(proxy: Any, target: Any) -> None:
    """A 3 s target behind a 300 ms route answers 504 TIMEOUT at the deadline (under 1 s, not 3 s)."""
    app = await target(slow)
    client = await proxy(one_route(app.url, timeout_ms=300))
    started = time.monotonic()
    resp = await client.post("/hook", data=b"{}", headers={"X-Request-ID": "r1"})
    elapsed = time.monotonic() - started
    assert resp.status == 504
    body = await resp.json()
    assert (body["success"], body["code"], body["requestId"]) == (False, "TIMEOUT", "r1")
    assert body["error"].startswith("the target did not answer within")
    assert resp.headers["X-Hookshield-Outcome"] == "error:TIMEOUT"
    assert 0.29 <= elapsed < 1.0  # the slack absorbs a noisy machine, not the target's 3 s


async def test_platform_timeout_header_shortens_the_deadline(proxy: Any, target: Any) -> None:
    """X-Timeout-Ms: 250 on a 5 s route gives 504 in under 1 s (not the 3 s target); it sees <= 250."""
    app = await target(slow)
    client = await proxy(one_route(app.url, timeout_ms=5000))
    started = time.monotonic()
    resp = await client.post("/hook", data=b"{}", headers={"X-Timeout-Ms": "250"})
    assert resp.status == 504
    assert time.monotonic() - started < 1.0
    assert int(app.seen[0].headers["X-Timeout-Ms"]) <= 250


async def test_bad_platform_timeout_header_is_bad_request(proxy: Any, target: Any) -> None:
    """A non-numeric or non-positive X-Timeout-Ms gets 400 BAD_REQUEST and no target call."""
    app = await target()
    client = await proxy(one_route(app.url))
    for value in ("soon", "0", "-5"):
        resp = await client.post("/hook", headers={"X-Timeout-Ms": value})
        assert resp.status == 400
        assert (await resp.json())["code"] == "BAD_REQUEST"
    assert app.seen == []


async def test_closed_port_is_upstream_unreachable(proxy: Any) -> None:
    """Nothing listening on the target port gives 502 UPSTREAM_UNREACHABLE."""
    client = await proxy(one_route(f"http://127.0.0.1:{free_port()}"))
    resp = await client.post("/hook", data=b"{}")
    assert resp.status == 502
    assert (await resp.json())["code"] == "UPSTREAM_UNREACHABLE"
    assert resp.headers["X-Hookshield-Outcome"] == "error:UPSTREAM_UNREACHABLE"


async def test_redirect_is_passed_back_not_followed(proxy: Any, target: Any) -> None:
    """A 302 comes back to the platform as-is and its Location is never fetched."""

    async def redirect(request: web.Request) -> web.Response:
        if request.path == "/moved":
            return web.Response(text="fetched")
        return web.Response(status=302, headers={"Location": "/moved"})

    app = await target(redirect)
    client = await proxy(one_route(app.url))
    resp = await client.post("/hook", data=b"{}", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/moved"
    assert [s.path_qs for s in app.seen] == ["/"]


async def test_target_5xx_is_upstream_error_unless_pass_errors(proxy: Any, target: Any) -> None:
    """A 500 becomes 502 UPSTREAM_ERROR; with pass_errors: true it is passed through."""

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    app = await target(broken)
    client = await proxy(
        {
            "routes": [
                route(app.url),
                {
                    "name": "raw",
                    "match": {"path_prefix": "/raw"},
                    "target": app.url,
                    "pass_errors": True,
                },
            ]
        }
    )
    resp = await client.post("/hook")
    assert (resp.status, (await resp.json())["code"]) == (502, "UPSTREAM_ERROR")
    raw = await client.post("/raw")
    assert (raw.status, await raw.text()) == (500, "boom")
    assert raw.headers["X-Hookshield-Outcome"] == "upstream"


async def test_body_over_limit_is_413_before_reaching_target(proxy: Any, target: Any) -> None:
    """A body over limits.max_body_bytes gets 413 PAYLOAD_TOO_LARGE, with or without a length."""
    app = await target()
    client = await proxy({"limits": {"max_body_bytes": 1000}, **one_route(app.url)})
    resp = await client.post("/hook", data=b"x" * 1001)
    assert (resp.status, (await resp.json())["code"]) == (413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> Any:
        for _ in range(5):
            yield b"y" * 300

    chunked = await client.post("/hook", data=chunks())
    assert chunked.status == 413
    exact = await client.post("/hook", data=b"z" * 1000)
    assert exact.status == 200
    assert [len(s.body) for s in app.seen] == [1000]


async def test_no_route_and_wrong_method(proxy: Any, target: Any) -> None:
    """Unknown paths get 404 NO_ROUTE; a method the route excludes gets 405 with Allow."""
    app = await target()
    client = await proxy(one_route(app.url, match={"path_prefix": "/hook", "methods": ["POST"]}))
    missing = await client.post("/nowhere")
    assert (missing.status, (await missing.json())["code"]) == (404, "NO_ROUTE")
    wrong = await client.get("/hook")
    assert (wrong.status, (await wrong.json())["code"]) == (405, "METHOD_NOT_ALLOWED")
    assert wrong.headers["Allow"] == "POST"


async def test_keep_alive_reuses_upstream_connections(proxy: Any, target: Any) -> None:
    """Sequential calls share one pooled upstream connection."""
    peers: set[Any] = set()

    async def peer(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(text="ok")

    app = await target(peer)
    client = await proxy(one_route(app.url))
    for _ in range(5):
        assert (await client.post("/hook", data=b"{}")).status == 200
    assert len(peers) == 1


async def test_error_body_is_spec_json(proxy: Any) -> None:
    """hookshield's own errors are JSON with success, error, code and requestId."""
    client = await proxy(one_route("http://127.0.0.1:1"))
    resp = await client.get("/nope", headers={"X-Request-ID": "abc"})
    assert resp.headers["Content-Type"].startswith("application/json")
    data = json.loads(await resp.read())
    assert set(data) == {"success", "error", "code", "requestId"}
    assert data["requestId"] == "abc"


async def test_answer_over_response_limit_is_upstream_error(proxy: Any, target: Any) -> None:
    """An answer larger than limits.max_response_bytes (declared or streamed) is 502 UPSTREAM_ERROR."""

    async def big(request: web.Request) -> web.StreamResponse:
        if request.path == "/streamed":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(4):
                await response.write(b"x" * 400)
            await response.write_eof()
            return response
        return web.Response(body=b"y" * (1000 if request.path == "/exact" else 1001))

    app = await target(big)
    client = await proxy({"limits": {"max_response_bytes": 1000}, **one_route(app.url)})
    for path in ("/hook/declared", "/hook/streamed"):
        resp = await client.post(path)
        assert (resp.status, (await resp.json())["code"]) == (502, "UPSTREAM_ERROR"), path
    exact = await client.post("/hook/exact")
    assert (exact.status, len(await exact.read())) == (200, 1000)


def test_generated_request_ids_are_distinct_version_4_uuids() -> None:
    """new_request_id gives RFC 4122 version-4 UUIDs in canonical form, no repeats."""
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert (str(parsed), parsed.version, parsed.variant) == (value, 4, uuid.RFC_4122)
