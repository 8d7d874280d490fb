"""The platform side of SPEC §9 on raw sockets: exact request bytes in; out, the exact
status and code the platform gets and exactly what the target received (or that it got
nothing). The same bytes against nginx as a reverse proxy: README, "HTTP rules"."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookshield.routing import remove_dot_segments
from tests.platformwire import Recorder, exchange, recording, replies, request

H = "Host: hookshield"
CLOSE = "Connection: close"


def config(url: str, limits: dict[str, Any] | None = None, **route: Any) -> dict[str, Any]:
    """One route `/h` -> `url` (the recorder's `/hooks`), with `limits` if given."""
    data: dict[str, Any] = {
        "routes": [{"name": "h", "match": {"path_prefix": "/h"}, "target": url, **route}]
    }
    if limits:
        data["limits"] = limits
    return data


async def served(proxy: Any, target: Recorder, **kwargs: Any) -> int:
    """hookshield's data-plane port, routing `/h` to `target`."""
    return int((await proxy(config(target.url, **kwargs))).port)


async def refused(port: int, data: bytes, **kwargs: Any) -> tuple[int, str | None]:
    """The one answer to `data` on a connection hookshield then closes: status and code."""
    raw, _ = await exchange(port, data, **kwargs)
    (reply,) = replies(raw)
    assert reply.headers["Connection"] == "close"
    return reply.status, reply.code


# Limits (SPEC §9)


async def test_header_block_over_max_header_bytes_is_431(proxy: Any) -> None:
    """RFC 9110 §15.5.20 / RFC 6585 §5: a head over `limits.max_header_bytes` gets 431 and a close."""
    async with recording() as target:
        port = await served(proxy, target, limits={"max_header_bytes": 1024})
        data = request("GET /h HTTP/1.1", H, "X-Big: " + "a" * 1100)
        assert await refused(port, data) == (431, "HEADERS_TOO_LARGE")
        assert target.requests == []


async def test_huge_header_line_is_refused_before_it_arrives_whole(proxy: Any) -> None:
    """RFC 9112 §2.3 (a server may refuse a long line): 4 MiB of one header line, never ended,
    gets 431 as soon as 64 KiB are past, not after the line is whole."""
    async with recording() as target:
        port = await served(proxy, target)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /h HTTP/1.1\r\nHost: hookshield\r\nX-Big: ")
        for _ in range(64):  # up to 4 MiB, stopping once answered
            writer.write(b"a" * 65536)
            await writer.drain()
            if reader._buffer:  # type: ignore[attr-defined]  # an answer arrived
                break
        answer = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        (reply,) = replies(answer)
        assert (reply.status, reply.code) == (431, "HEADERS_TOO_LARGE")
        assert target.requests == []


async def test_more_than_max_headers_lines_is_431_and_max_is_served(proxy: Any) -> None:
    """RFC 6585 §5: 101 header lines (default `limits.max_headers` 100) get 431; 100 are served."""
    async with recording() as target:
        port = await served(proxy, target)
        many = [f"X-{n}: 1" for n in range(99)]
        assert await refused(port, request("GET /h HTTP/1.1", H, CLOSE, *many)) == (
            431,
            "HEADERS_TOO_LARGE",
        )
        assert target.requests == []
        raw, _ = await exchange(port, request("GET /h HTTP/1.1", H, CLOSE, *many[:-1]))
        assert replies(raw)[0].status == 200
        assert len(target.names()) > 98


async def test_request_target_over_max_url_bytes_is_414(proxy: Any) -> None:
    """RFC 9112 §3 / RFC 9110 §15.5.15: a request-target over `limits.max_url_bytes` gets 414."""
    async with recording() as target:
        port = await served(proxy, target)
        data = request("GET /h/" + "a" * 8200 + " HTTP/1.1", H)
        assert await refused(port, data) == (414, "URI_TOO_LONG")
        assert target.requests == []


async def test_limits_are_those_of_the_config_in_force(stack: Any, tmp_path: Path) -> None:
    """RFC 6585 §5 under a reload: a head refused under `max_header_bytes: 1024` is served
    once a reload raised the limit."""
    async with recording() as target:
        hs = await stack(config(target.url, limits={"max_header_bytes": 1024}))
        data = request("GET /h HTTP/1.1", H, CLOSE, "X-Big: " + "a" * 2000)
        assert await refused(hs.data.port, data) == (431, "HEADERS_TOO_LARGE")
        new = config(target.url, limits={"max_header_bytes": 4096})
        (tmp_path / "hookshield.yaml").write_text(yaml.safe_dump(new))
        assert (await hs.admin.post("/admin/reload")).status == 200
        raw, _ = await exchange(hs.data.port, data)
        assert replies(raw)[0].status == 200
        assert target.lines == [b"GET /hooks HTTP/1.1"]


# Timeouts (SPEC §9)


async def test_header_block_trickled_past_header_timeout_is_408(proxy: Any) -> None:
    """RFC 9110 §15.5.9: one byte every 100 ms against `header_timeout_ms: 300` gets 408 and a close."""
    async with recording() as target:
        port = await served(proxy, target, limits={"header_timeout_ms": 300})
        data = request("GET /h HTTP/1.1", H)
        parts = [data[i : i + 1] for i in range(len(data))]
        raw, elapsed = await exchange(port, *parts, pause_s=0.1)
        (reply,) = replies(raw)
        assert (reply.status, reply.code) == (408, "REQUEST_TIMEOUT")
        assert 0.28 < elapsed < 1.5
        assert target.requests == []


async def test_header_timeout_runs_from_the_first_byte_of_the_next_request(proxy: Any) -> None:
    """RFC 9112 §9.3: idle time on a keep-alive connection is not part of the next request's
    header time; a next head that then stalls gets 408 after the timeout."""
    async with recording() as target:
        port = await served(proxy, target, limits={"header_timeout_ms": 300})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("GET /h/1 HTTP/1.1", H))
        first = await reader.readuntil(b"hello")
        await asyncio.sleep(0.5)  # idle longer than the header timeout
        writer.write(request("GET /h/2 HTTP/1.1", H))
        second = await reader.readuntil(b"hello")
        writer.write(b"GET /h/3 HTTP/1.1\r\n")  # and stall
        started = asyncio.get_running_loop().time()
        third = await asyncio.wait_for(reader.read(), 3.0)
        elapsed = asyncio.get_running_loop().time() - started
        writer.close()
        assert [r.status for r in replies(first + second + third)] == [200, 200, 408]
        assert 0.28 < elapsed < 1.5
        assert target.lines == [b"GET /hooks/1 HTTP/1.1", b"GET /hooks/2 HTTP/1.1"]


async def test_body_gap_longer_than_body_timeout_is_408(proxy: Any) -> None:
    """RFC 9110 §15.5.9: a body that stops for longer than `body_timeout_ms: 300` gets 408."""
    async with recording() as target:
        port = await served(proxy, target, limits={"body_timeout_ms": 300})
        head = request("POST /h HTTP/1.1", H, "Content-Length: 10")
        raw, elapsed = await exchange(port, head + b"12", timeout_s=3.0)
        (reply,) = replies(raw)
        assert (reply.status, reply.code) == (408, "REQUEST_TIMEOUT")
        assert 0.28 < elapsed < 1.5
        assert target.requests == []


async def test_body_with_short_gaps_is_served_however_long_it_takes(proxy: Any) -> None:
    """RFC 9110 §15.5.9: the body timeout is a gap: ten bytes 100 ms apart (1 s in all)
    under `body_timeout_ms: 300` reach the target whole."""
    async with recording() as target:
        port = await served(proxy, target, limits={"body_timeout_ms": 300})
        head = request("POST /h HTTP/1.1", H, CLOSE, "Content-Length: 10")
        raw, elapsed = await exchange(port, head, *[b"%d" % n for n in range(10)], pause_s=0.1)
        assert replies(raw)[0].status == 200
        assert elapsed > 0.9
        assert target.requests[0].endswith(b"\r\n\r\n0123456789")


async def test_idle_keepalive_connection_is_closed_after_idle_timeout(proxy: Any) -> None:
    """RFC 9112 §9.5: a keep-alive connection idle past `limits.idle_timeout_s` is closed."""
    async with recording() as target:
        port = await served(proxy, target, limits={"idle_timeout_s": 0.3})
        raw, elapsed = await exchange(port, request("GET /h HTTP/1.1", H), timeout_s=3.0)
        assert [r.status for r in replies(raw)] == [200]
        assert 0.28 < elapsed < 1.5
        assert target.lines == [b"GET /hooks HTTP/1.1"]


async def test_stalled_pipelined_head_gets_408_after_the_answer_due(proxy: Any) -> None:
    """RFC 9112 §9.3.2: the answer to a whole request goes first, then the 408 of the
    stalled head behind it, then the close."""
    async with recording(delay_s=0.2) as target:
        port = await served(proxy, target, limits={"header_timeout_ms": 300})
        data = request("GET /h/1 HTTP/1.1", H) + b"GET /h/2 HTTP/1.1\r\nHost: h"
        raw, _ = await exchange(port, data, timeout_s=3.0)
        assert [(r.status, r.code) for r in replies(raw)] == [(200, None), (408, "REQUEST_TIMEOUT")]
        assert target.lines == [b"GET /hooks/1 HTTP/1.1"]


# Heads refused (SPEC §9)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param((), id="no-host"),
        pytest.param((H, H), id="host-twice"),
        pytest.param((H, "Host: other"), id="host-twice-differing"),
        pytest.param(("Host: a b",), id="host-with-space"),
        pytest.param(("Host: a/b",), id="host-with-slash"),
        pytest.param(("Host:",), id="host-empty"),
    ],
)
async def test_http11_host_missing_repeated_or_invalid_is_400(
    proxy: Any, headers: tuple[str, ...]
) -> None:
    """RFC 9112 §3.2: an HTTP/1.1 request without exactly one valid Host gets 400, unforwarded."""
    async with recording() as target:
        port = await served(proxy, target)
        assert await refused(port, request("GET /h HTTP/1.1", *headers)) == (400, "BAD_REQUEST")
        assert target.requests == []


async def test_http10_without_host_is_served(proxy: Any) -> None:
    """RFC 9112 §3.2: Host is required of HTTP/1.1 only; an HTTP/1.0 request without it is
    served, and the target gets hookshield's own Host."""
    async with recording() as target:
        port = await served(proxy, target)
        raw, _ = await exchange(port, request("GET /h HTTP/1.0"))
        assert [r.status for r in replies(raw)] == [200]
        assert target.lines == [b"GET /hooks HTTP/1.1"]
        assert "host" in target.names()


async def test_transfer_encoding_on_http10_is_400(proxy: Any) -> None:
    """RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 request cannot be trusted: 400."""
    async with recording() as target:
        port = await served(proxy, target)
        data = request(
            "POST /h HTTP/1.0", "Transfer-Encoding: chunked", body=b"2\r\n{}\r\n0\r\n\r\n"
        )
        assert await refused(port, data) == (400, "BAD_REQUEST")
        assert target.requests == []


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            request("GET /h HTTP/1.1", H, "Connection: Upgrade", "Upgrade: websocket"),
            id="websocket",
        ),
        pytest.param(
            request(
                "POST /h HTTP/1.1",
                H,
                "Connection: Upgrade",
                "Upgrade: h2c",
                "Content-Length: 2",
                body=b"{}",
            ),
            id="h2c-with-body",
        ),
        pytest.param(
            request("GET /h HTTP/1.1", H, "Upgrade: h2c"), id="upgrade-without-connection"
        ),
        pytest.param(
            request("CONNECT example.com:443 HTTP/1.1", "Host: example.com:443"), id="connect"
        ),
    ],
)
async def test_upgrade_and_connect_are_400_without_transport_errors(
    proxy: Any, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9110 §7.8, §9.3.6: an Upgrade request or CONNECT gets 400, is never forwarded,
    and leaves no transport error in the log."""
    async with recording() as target:
        port = await served(proxy, target)
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            assert await refused(port, data) == (400, "BAD_REQUEST")
        assert target.requests == []
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"GET /h HTTP/2.0\r\nHost: hookshield\r\n\r\n", id="http-2.0"),
        pytest.param(b"GET /h HTTP/3.0\r\nHost: hookshield\r\n\r\n", id="http-3.0"),
        pytest.param(b"GET /h HTTP/1.2\r\nHost: hookshield\r\n\r\n", id="http-1.2"),
        pytest.param(b"GET /h HTTP/0.9\r\nHost: hookshield\r\n\r\n", id="http-0.9"),
        pytest.param(b"GET /h\r\n\r\n", id="http-0.9-simple-request"),
    ],
)
async def test_versions_other_than_10_and_11_are_505(proxy: Any, line: bytes) -> None:
    """RFC 9110 §15.6.6, RFC 9112 §2.3: a version other than HTTP/1.0 or HTTP/1.1 gets 505."""
    async with recording() as target:
        port = await served(proxy, target)
        assert await refused(port, line) == (505, "VERSION_NOT_SUPPORTED")
        assert target.requests == []


# The request-target and the path (SPEC §9, RFC 3986 §5.2.4)


@pytest.mark.parametrize(
    "path",
    [
        "/h/../admin",
        "/h/%2e%2e/admin",
        "/h/%2E%2E/admin",
        "/h/..%2fadmin",
        "/h/x/../../admin",
        "/h/..",
        "/h/%2e%2e",
        "/h/a%2Fb",
        "/h/a%2fb",
        "/h/a%5Cb",
        "/h/a%5cb",
        "/h/a\\b",
        "/h/.%2e/admin",
    ],
)
async def test_path_leaving_the_prefix_or_holding_encoded_separators_is_400(
    proxy: Any, path: str
) -> None:
    """RFC 3986 §5.2.4: a path that leaves `/h` once `%2E` is decoded and dot-segments are
    removed, or holds `%2F`, `%5C` or `\\`, gets 400 and reaches neither `/h`'s target nor
    the catch-all's."""
    async with recording() as target, recording() as other:
        data = config(target.url)
        data["routes"].append({"name": "all", "match": {"path_prefix": "/"}, "target": other.url})
        port = (await proxy(data)).port
        raw, _ = await exchange(port, request(f"GET {path} HTTP/1.1", H), timeout_s=2.0, eof=True)
        (reply,) = replies(raw)
        assert (reply.status, reply.code) == (400, "BAD_REQUEST")
        assert (target.requests, other.requests) == ([], [])


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        ("/h/x/../y", b"/hooks/y"),
        ("/h/%2e/y", b"/hooks/y"),
        ("/h/./a/.", b"/hooks/a/"),
        ("/h/x/..", b"/hooks/"),
        ("/h/v1.2/x.json", b"/hooks/v1.2/x.json"),
        ("/h/y?next=../%2f&a=%2e%2e", b"/hooks/y?next=../%2f&a=%2e%2e"),
        ("/h/a?x=1#frag", b"/hooks/a?x=1"),
        ("/h/a#frag/../../x", b"/hooks/a"),
        ("http://example.com/h/a?x=1", b"/hooks/a?x=1"),
        ("HTTPS://example.com/h", b"/hooks"),
    ],
)
async def test_path_inside_the_prefix_is_forwarded_normalised(
    proxy: Any, path: str, forwarded: bytes
) -> None:
    """RFC 3986 §5.2.4, RFC 9112 §3.2.2: dot-segments that stay inside `/h` are resolved, the
    query passes untouched, a fragment is cut off, absolute-form becomes origin-form."""
    async with recording() as target:
        port = await served(proxy, target)
        raw, _ = await exchange(port, request(f"GET {path} HTTP/1.1", H, CLOSE))
        assert [r.status for r in replies(raw)] == [200]
        assert target.lines == [b"GET " + forwarded + b" HTTP/1.1"]


async def test_path_refusal_keeps_the_connection(proxy: Any) -> None:
    """RFC 9112 §9.3: a path refused with 400 was framed well: the next request on the same
    connection is served."""
    async with recording() as target:
        port = await served(proxy, target)
        data = request("GET /h/../x HTTP/1.1", H) + request("GET /h/y HTTP/1.1", H, CLOSE)
        raw, _ = await exchange(port, data)
        assert [r.status for r in replies(raw)] == [400, 200]
        assert target.lines == [b"GET /hooks/y HTTP/1.1"]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param("OPTIONS * HTTP/1.1", id="asterisk-form"),
        pytest.param("GET ftp://example.com/h HTTP/1.1", id="absolute-form-not-http"),
        pytest.param("GET example.com:80 HTTP/1.1", id="authority-form-not-connect"),
    ],
)
async def test_request_target_that_routes_nowhere_is_400(proxy: Any, line: str) -> None:
    """RFC 9112 §3.2: asterisk-form, and forms without an http(s) path, route nowhere: 400."""
    async with recording() as target:
        port = await served(proxy, target)
        assert await refused(port, request(line, H)) == (400, "BAD_REQUEST")
        assert target.requests == []


# Headers (SPEC §3, §9)


async def test_underscored_header_names_are_not_forwarded_unless_allowed(proxy: Any) -> None:
    """RFC 9110 §5.1 (names are tokens; nginx drops `_` ones): `X_User_Id` is not forwarded,
    `X-User-Id` is; with `headers.allow_underscores: true` both are."""
    data = request("GET /h HTTP/1.1", H, CLOSE, "X_User_Id: forged", "X-User-Id: 42")
    async with recording() as target, recording() as allowing:
        port = await served(proxy, target)
        assert replies((await exchange(port, data))[0])[0].status == 200
        assert ("x_user_id" in target.names(), "x-user-id" in target.names()) == (False, True)
        port = await served(proxy, allowing, headers={"allow_underscores": True})
        assert replies((await exchange(port, data))[0])[0].status == 200
        assert ("x_user_id" in allowing.names(), "x-user-id" in allowing.names()) == (True, True)


async def test_hop_by_hop_and_expect_are_not_forwarded(proxy: Any) -> None:
    """RFC 9110 §7.6.1, §10.1.1: Connection, the headers it names, Keep-Alive, TE and an
    (unknown) Expect stay with hookshield; the call is served."""
    async with recording() as target:
        port = await served(proxy, target)
        data = request(
            "POST /h HTTP/1.1", H, "Connection: close, X-Hop", "X-Hop: 1", "Keep-Alive: 5",
            "TE: trailers", "Expect: foo", "X-App: 1", "Content-Length: 2", body=b"{}",
        )  # fmt: skip
        raw, _ = await exchange(port, data)
        assert [r.status for r in replies(raw)] == [200]
        names = target.names()
        assert [
            n for n in ("connection", "x-hop", "keep-alive", "te", "expect") if n in names
        ] == []
        assert "x-app" in names


# Bytes llhttp refuses: 400, never forwarded, connection closed


MALFORMED = [
    # (id, RFC section, request bytes)
    ("obs-fold", "RFC 9112 §5.2", request("GET /h HTTP/1.1", H, "X-A: a", " b")),
    ("space-before-colon", "RFC 9112 §5.1", request("GET /h HTTP/1.1", H, "X-A : a")),
    (
        "te-space-before-colon",
        "RFC 9112 §5.1",
        request(
            "POST /h HTTP/1.1",
            H,
            "Transfer-Encoding : chunked",
            "Content-Length: 5",
            body=b"0\r\n\r\n",
        ),
    ),
    (
        "cl-and-te",
        "RFC 9112 §6.3",
        request(
            "POST /h HTTP/1.1",
            H,
            "Content-Length: 4",
            "Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
    ),
    (
        "te-and-cl-smuggle",
        "RFC 9112 §6.3",
        request(
            "POST /h HTTP/1.1",
            H,
            "Transfer-Encoding: chunked",
            "Content-Length: 3",
            body=b"0\r\n\r\n" + request("GET /h/smuggled HTTP/1.1", H),
        ),
    ),
    (
        "cl-twice-differing",
        "RFC 9112 §6.3",
        request("POST /h HTTP/1.1", H, "Content-Length: 2", "Content-Length: 3", body=b"{}x"),
    ),
    (
        "cl-twice-same",
        "RFC 9110 §8.6",
        request("POST /h HTTP/1.1", H, "Content-Length: 2", "Content-Length: 2", body=b"{}"),
    ),
    (
        "cl-list",
        "RFC 9110 §8.6",
        request("POST /h HTTP/1.1", H, "Content-Length: 2, 2", body=b"{}"),
    ),
    ("cl-not-a-number", "RFC 9110 §8.6", request("POST /h HTTP/1.1", H, "Content-Length: abc")),
    ("cl-negative", "RFC 9110 §8.6", request("POST /h HTTP/1.1", H, "Content-Length: -1")),
    (
        "cl-plus-sign",
        "RFC 9110 §8.6",
        request("POST /h HTTP/1.1", H, "Content-Length: +2", body=b"{}"),
    ),
    (
        "cl-overflow",
        "RFC 9110 §8.6",
        request("POST /h HTTP/1.1", H, "Content-Length: 99999999999999999999999"),
    ),
    (
        "te-gzip",
        "RFC 9112 §6.3",
        request("POST /h HTTP/1.1", H, "Transfer-Encoding: gzip", body=b"xx"),
    ),
    (
        "te-gzip-chunked",
        "RFC 9112 §6.1",
        request(
            "POST /h HTTP/1.1", H, "Transfer-Encoding: gzip, chunked", body=b"2\r\n{}\r\n0\r\n\r\n"
        ),
    ),
    (
        "te-chunked-gzip",
        "RFC 9112 §6.3",
        request(
            "POST /h HTTP/1.1", H, "Transfer-Encoding: chunked, gzip", body=b"2\r\n{}\r\n0\r\n\r\n"
        ),
    ),
    (
        "te-twice",
        "RFC 9112 §7",
        request(
            "POST /h HTTP/1.1",
            H,
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: chunked",
            body=b"2\r\n{}\r\n0\r\n\r\n",
        ),
    ),
    (
        "te-unknown",
        "RFC 9112 §6.1",
        request("POST /h HTTP/1.1", H, "Transfer-Encoding: xchunked", body=b"0\r\n\r\n"),
    ),
    (
        "chunk-size-overflow",
        "RFC 9112 §7.1",
        request(
            "POST /h HTTP/1.1",
            H,
            "Transfer-Encoding: chunked",
            body=b"FFFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n",
        ),
    ),
    (
        "chunk-size-not-hex",
        "RFC 9112 §7.1",
        request("POST /h HTTP/1.1", H, "Transfer-Encoding: chunked", body=b"zz\r\n{}\r\n0\r\n\r\n"),
    ),
    (
        "chunk-data-without-crlf",
        "RFC 9112 §7.1",
        request("POST /h HTTP/1.1", H, "Transfer-Encoding: chunked", body=b"2\r\n{}XX0\r\n\r\n"),
    ),
    ("bare-lf", "RFC 9112 §2.2", b"GET /h HTTP/1.1\nHost: hookshield\n\n"),
    (
        "bare-lf-after-header",
        "RFC 9112 §2.2",
        b"GET /h HTTP/1.1\r\nHost: hookshield\nX-A: 1\r\n\r\n",
    ),
    ("bare-cr", "RFC 9112 §2.2", b"GET /h HTTP/1.1\r\nHost: hookshield\rX-A: 1\r\n\r\n"),
    ("nul-in-value", "RFC 9110 §5.5", request("GET /h HTTP/1.1", H, "X-A: a\x00b")),
    ("control-in-value", "RFC 9110 §5.5", request("GET /h HTTP/1.1", H, "X-A: a\x01b")),
    ("name-not-a-token", "RFC 9110 §5.1", request("GET /h HTTP/1.1", H, "X(A): 1")),
    ("line-without-colon", "RFC 9112 §5", request("GET /h HTTP/1.1", H, "nocolon")),
    ("empty-name", "RFC 9112 §5", request("GET /h HTTP/1.1", H, ": 1")),
    ("method-unknown", "RFC 9110 §9.1", request("FOO /h HTTP/1.1", H)),
    ("method-lowercase", "RFC 9110 §9.1", request("get /h HTTP/1.1", H)),
    ("version-lowercase", "RFC 9112 §2.3", request("GET /h http/1.1", H)),
    ("version-1.10", "RFC 9112 §2.3", request("GET /h HTTP/1.10", H)),
    ("tab-in-request-line", "RFC 9112 §3", request("GET\t/h HTTP/1.1", H)),
    ("space-in-target", "RFC 9112 §3.2", request("GET /h/a b HTTP/1.1", H)),
    ("non-ascii-in-target", "RFC 3986 §2", request("GET /h/caf\xe9 HTTP/1.1", H)),
    ("not-http", "RFC 9112 §2.2", b"HELLO\x00 there\r\n\r\n"),
]


@pytest.mark.parametrize(
    ("rfc", "data"), [pytest.param(rfc, data, id=name) for name, rfc, data in MALFORMED]
)
async def test_malformed_request_is_400_and_never_forwarded(
    proxy: Any, rfc: str, data: bytes
) -> None:
    """RFC 9112 §2-7, RFC 9110 §5, §8.6, §9.1 (each case names its section): bytes llhttp
    refuses get 400 BAD_REQUEST and a close; the target gets nothing, not even a smuggled part."""
    async with recording() as target:
        port = await served(proxy, target)
        assert await refused(port, data) == (400, "BAD_REQUEST"), rfc
        assert target.requests == []


ACCEPTED = [
    # (id, RFC section, request bytes, what the target gets: request line, then the body)
    (
        "leading-empty-lines",
        "RFC 9112 §2.2",
        b"\r\n\r\n" + request("GET /h HTTP/1.1", H, CLOSE),
        b"GET /hooks",
        b"",
    ),
    (
        "extra-spaces-in-request-line",
        "RFC 9112 §3",
        request("GET  /h  HTTP/1.1", H, CLOSE),
        b"GET /hooks",
        b"",
    ),
    (
        "chunk-extension",
        "RFC 9112 §7.1.1",
        request(
            "POST /h HTTP/1.1",
            H,
            CLOSE,
            "Transfer-Encoding: chunked",
            body=b'2;a="b c"\r\n{}\r\n0\r\n\r\n',
        ),
        b"POST /hooks",
        b"{}",
    ),
    (
        "chunked-trailer-dropped",
        "RFC 9112 §7.1.2",
        request(
            "POST /h HTTP/1.1",
            H,
            CLOSE,
            "Transfer-Encoding: chunked",
            body=b"2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n",
        ),
        b"POST /hooks",
        b"{}",
    ),
    (
        "chunked-uppercase",
        "RFC 9112 §7",
        request(
            "POST /h HTTP/1.1", H, CLOSE, "Transfer-Encoding: CHUNKED", body=b"2\r\n{}\r\n0\r\n\r\n"
        ),
        b"POST /hooks",
        b"{}",
    ),
    (
        "get-with-body",
        "RFC 9110 §9.3.1",
        request("GET /h HTTP/1.1", H, CLOSE, "Content-Length: 2", body=b"{}"),
        b"GET /hooks",
        b"{}",
    ),
    (
        "obs-text-value",
        "RFC 9110 §5.5",
        request("POST /h HTTP/1.1", H, CLOSE, "X-A: caf\xe9", "Content-Length: 0"),
        b"POST /hooks",
        b"",
    ),
    (
        "registered-method",
        "RFC 9110 §16.1",
        request("PURGE /h HTTP/1.1", H, CLOSE),
        b"PURGE /hooks",
        b"",
    ),
    (
        "host-with-port",
        "RFC 9110 §7.2",
        request("GET /h HTTP/1.1", "Host: hookshield:8080", CLOSE),
        b"GET /hooks",
        b"",
    ),
]


@pytest.mark.parametrize(
    ("rfc", "data", "line", "body"),
    [pytest.param(rfc, data, line, body, id=name) for name, rfc, data, line, body in ACCEPTED],
)
async def test_lenient_but_valid_request_is_forwarded(
    proxy: Any, rfc: str, data: bytes, line: bytes, body: bytes
) -> None:
    """RFC 9112 §2-7, RFC 9110 §5-9 (each case names its section): what the RFCs allow a
    server to accept is served, and the target gets the request with its body whole."""
    async with recording() as target:
        port = await served(proxy, target)
        raw, _ = await exchange(port, data)
        assert [r.status for r in replies(raw)] == [200], rfc
        assert target.lines == [line + b" HTTP/1.1"]
        assert target.requests[0].split(b"\r\n\r\n", 1)[1] == body
        if b"caf\xe9" in data:
            assert b"\r\nX-A: caf\xe9\r\n" in target.requests[0]


# Pipelining and connection handling (SPEC §9)


async def test_malformed_request_after_good_ones_is_answered_after_them(proxy: Any) -> None:
    """RFC 9112 §9.3.2: two pipelined requests then bad bytes: 200, 200, then 400 and a
    close; the first answer is slow and still not lost."""
    async with recording(delay_s=0.2) as target:
        port = await served(proxy, target)
        data = (
            request("GET /h/1 HTTP/1.1", H) + request("GET /h/2 HTTP/1.1", H) + b"GARBAGE\r\n\r\n"
        )
        raw, _ = await exchange(port, data)
        assert [(r.status, r.code) for r in replies(raw)] == [
            (200, None),
            (200, None),
            (400, "BAD_REQUEST"),
        ]
        assert target.lines == [b"GET /hooks/1 HTTP/1.1", b"GET /hooks/2 HTTP/1.1"]


async def test_refused_head_after_good_ones_is_answered_after_them(proxy: Any) -> None:
    """RFC 9112 §3.2, §9.3.2: a pipelined request without Host gets its 400 after the
    answer to the one before it."""
    async with recording() as target:
        port = await served(proxy, target)
        data = request("GET /h/1 HTTP/1.1", H) + request("GET /h/2 HTTP/1.1")
        raw, _ = await exchange(port, data)
        assert [r.status for r in replies(raw)] == [200, 400]
        assert target.lines == [b"GET /hooks/1 HTTP/1.1"]


async def test_connection_close_ends_the_connection_and_later_bytes_are_ignored(proxy: Any) -> None:
    """RFC 9112 §9.6: after a `Connection: close` request nothing more is read; its answer
    arrives whole even with 256 KiB unread behind it (no reset under the answer)."""
    async with recording() as target:
        port = await served(proxy, target)
        later = request("GET /h/2 HTTP/1.1", H) * 6000  # ~256 KiB
        raw, _ = await exchange(port, request("GET /h/1 HTTP/1.1", H, CLOSE) + later)
        (reply,) = replies(raw)
        assert (reply.status, reply.body, reply.headers["Connection"]) == (200, b"hello", "close")
        assert target.lines == [b"GET /hooks/1 HTTP/1.1"]


async def test_bad_request_closes_and_what_follows_is_not_served(proxy: Any) -> None:
    """RFC 9112 §9.3.2: after a 400 for a head the connection closes; a valid request
    pipelined behind it is not served."""
    async with recording() as target:
        port = await served(proxy, target)
        data = request("GET /h/1 HTTP/1.1") + request("GET /h/2 HTTP/1.1", H, CLOSE)
        assert await refused(port, data) == (400, "BAD_REQUEST")
        assert target.requests == []


async def test_34_pipelined_requests_are_answered_in_order(proxy: Any) -> None:
    """RFC 9112 §9.3.2: more pipelined requests than hookshield queues (32) are all
    answered, in order; reading pauses and resumes."""
    async with recording() as target:
        port = await served(proxy, target)
        data = b"".join(request(f"GET /h/{n} HTTP/1.1", H) for n in range(33))
        raw, _ = await exchange(
            port, data + request("GET /h/33 HTTP/1.1", H, CLOSE), timeout_s=10.0
        )
        assert [r.status for r in replies(raw)] == [200] * 34
        assert target.lines == [f"GET /hooks/{n} HTTP/1.1".encode() for n in range(34)]


async def test_answer_is_written_after_the_platform_half_closes(proxy: Any) -> None:
    """RFC 9112 §9.6: a platform that sends its request and shuts down its writing side
    still gets the answer, then the close."""
    async with recording(delay_s=0.1) as target:
        port = await served(proxy, target)
        raw, _ = await exchange(
            port, request("POST /h HTTP/1.1", H, "Content-Length: 2", body=b"{}"), eof=True
        )
        assert [(r.status, r.body) for r in replies(raw)] == [(200, b"hello")]
        assert target.requests[0].endswith(b"\r\n\r\n{}")


async def test_oversized_body_being_sent_still_gets_its_413(proxy: Any) -> None:
    """RFC 9110 §15.5.14: a 2 MiB body over `max_body_bytes` gets its 413 and a close, not a
    reset, while the platform is still sending; nothing is forwarded."""
    async with recording() as target:
        port = await served(proxy, target, limits={"max_body_bytes": 1000})
        head = request("POST /h HTTP/1.1", H, "Content-Length: 2097152")
        raw, _ = await exchange(port, head, *[b"x" * 65536] * 32)
        (reply,) = replies(raw)
        assert (reply.status, reply.code) == (413, "PAYLOAD_TOO_LARGE")
        assert target.requests == []


# HTTP/1.0, Expect, HEAD (SPEC §9)


async def test_no_100_continue_for_http10(proxy: Any) -> None:
    """RFC 9110 §10.1.1: an HTTP/1.0 client gets no `100 Continue`, whatever Expect says;
    its body is read when it comes."""
    async with recording() as target:
        port = await served(proxy, target)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("POST /h HTTP/1.0", "Expect: 100-continue", "Content-Length: 2"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        writer.write(b"{}")
        raw = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        assert [r.status for r in replies(raw)] == [200]
        assert target.requests[0].endswith(b"\r\n\r\n{}")


async def test_100_continue_for_http11(proxy: Any) -> None:
    """RFC 9110 §10.1.1: an HTTP/1.1 `Expect: 100-continue` gets `100 Continue` before the
    body is sent; the target gets the body and no Expect."""
    async with recording() as target:
        port = await served(proxy, target)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            request("POST /h HTTP/1.1", H, CLOSE, "Expect: 100-continue", "Content-Length: 2")
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        writer.write(b"{}")
        raw = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert [r.status for r in replies(raw)] == [200]
        assert "expect" not in target.names()


async def test_http10_keepalive_is_kept_and_said(proxy: Any) -> None:
    """RFC 9112 §9.3, RFC 9110 §7.6.1: an HTTP/1.0 `Connection: keep-alive` request gets an
    answer saying `Connection: keep-alive` and the connection serves the next request; one
    without it gets `Connection: close`."""
    async with recording() as target:
        port = await served(proxy, target)
        data = request("GET /h/1 HTTP/1.0", "Connection: keep-alive") + request("GET /h/2 HTTP/1.0")
        raw, _ = await exchange(port, data)
        first, second = replies(raw)
        assert (first.status, first.headers["Connection"]) == (200, "keep-alive")
        assert (second.status, second.headers["Connection"]) == (200, "close")
        assert target.lines == [b"GET /hooks/1 HTTP/1.1", b"GET /hooks/2 HTTP/1.1"]


def _head_answer(request: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nX-T: 1\r\n\r\n"


def _head_answer_chunked(request: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-T: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "length"), [(_head_answer, "12345"), (_head_answer_chunked, None)]
)
async def test_head_answer_keeps_the_targets_content_length(
    proxy: Any, answer: Any, length: str | None
) -> None:
    """RFC 9110 §9.3.2, §8.6: a HEAD answer carries the target's Content-Length (none when
    the target sent none), and no body."""
    async with recording(answer) as target:
        port = await served(proxy, target)
        raw, _ = await exchange(port, request("HEAD /h HTTP/1.1", H, CLOSE))
        (reply,) = replies(raw, head=True)
        assert (reply.status, reply.headers.get("Content-Length"), reply.headers["X-T"]) == (
            200,
            length,
            "1",
        )
        assert raw.endswith(b"\r\n\r\n")
        assert target.lines == [b"HEAD /hooks HTTP/1.1"]


# More of RFC 9112 §3.2, §7.1.2, §9.3 and RFC 3986 §5.2.4


async def test_http10_with_two_hosts_is_400(proxy: Any) -> None:
    """RFC 9112 §3.2: more than one Host line is refused whatever the version."""
    async with recording() as target:
        port = await served(proxy, target)
        assert await refused(port, request("GET /h HTTP/1.0", H, H)) == (400, "BAD_REQUEST")
        assert target.requests == []


@pytest.mark.parametrize(
    ("data", "said"),
    [
        pytest.param(
            request("GET /h/1 HTTP/1.1", H, "Connection: keep-alive"),
            None,
            id="http11-connection-keep-alive",
        ),
        pytest.param(
            request("GET /h/1 HTTP/1.0", "Proxy-Connection: keep-alive"),
            "keep-alive",
            id="http10-proxy-connection",
        ),
    ],
)
async def test_keepalive_spelt_out_keeps_the_connection(
    proxy: Any, data: bytes, said: str | None
) -> None:
    """RFC 9112 §9.3: `Connection: keep-alive` on HTTP/1.1 (and llhttp's `Proxy-Connection`
    on HTTP/1.0) keep the connection for a second request; Host stays optional on 1.0."""
    async with recording() as target:
        port = await served(proxy, target)
        raw, _ = await exchange(port, data + request("GET /h/2 HTTP/1.1", H, CLOSE))
        first, second = replies(raw)
        assert (first.status, first.headers.get("Connection"), second.status) == (200, said, 200)
        assert target.lines == [b"GET /hooks/1 HTTP/1.1", b"GET /hooks/2 HTTP/1.1"]


async def test_trailers_over_max_header_bytes_are_431(proxy: Any) -> None:
    """RFC 9112 §7.1.2: trailer fields are dropped, and count against `max_header_bytes`:
    2 KiB of them under a 1 KiB limit get 431, nothing forwarded."""
    async with recording() as target:
        port = await served(proxy, target, limits={"max_header_bytes": 1024})
        trailers = b"".join(b"X-T%d: %s\r\n" % (n, b"v" * 90) for n in range(20))
        body = b"2\r\n{}\r\n0\r\n" + trailers + b"\r\n"
        data = request("POST /h HTTP/1.1", H, "Transfer-Encoding: chunked", body=body)
        assert await refused(port, data) == (431, "HEADERS_TOO_LARGE")
        assert target.requests == []


async def test_100_continue_waits_for_the_answer_due_before_it(proxy: Any) -> None:
    """RFC 9110 §10.1.1, RFC 9112 §9.3.2: a pipelined `Expect: 100-continue` behind a slow
    request gets its `100 Continue` after that request's answer, never before it."""
    async with recording(delay_s=0.3) as target:
        port = await served(proxy, target)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            request("GET /h/1 HTTP/1.1", H)
            + request("POST /h/2 HTTP/1.1", H, CLOSE, "Expect: 100-continue", "Content-Length: 2")
        )
        before = await asyncio.wait_for(reader.readuntil(b"HTTP/1.1 100 Continue\r\n\r\n"), 3.0)
        writer.write(b"{}")
        after = await asyncio.wait_for(reader.read(), 3.0)
        writer.close()
        assert [r.status for r in replies(before)] == [200, 100]
        assert [r.status for r in replies(after)] == [200]
        assert target.lines == [b"GET /hooks/1 HTTP/1.1", b"POST /hooks/2 HTTP/1.1"]


@pytest.mark.parametrize(
    ("path", "result"),
    [
        ("/a/b/c/./../../g", "/a/g"),  # RFC 3986 §5.2.4's own example
        ("/a/b/c/../../../../g", "/g"),  # never above the root (§5.4.2)
        ("/a/b/./g/.", "/a/b/g/"),
        ("/a/b/..", "/a/"),
        ("/a//../b", "/a/b"),
        ("/./", "/"),
        ("/..", "/"),
        ("/a/...b/.c", "/a/...b/.c"),  # dots inside a segment are data
    ],
)
def test_remove_dot_segments_follows_rfc3986(path: str, result: str) -> None:
    """RFC 3986 §5.2.4, §5.4: the dot-segment removal the path check relies on."""
    assert remove_dot_segments(path) == result
