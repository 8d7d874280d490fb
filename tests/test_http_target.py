"""The target side of the data plane (SPEC §9 "Target side"): raw targets that write exact
bytes and end connections with a FIN or a reset, against RFC 9112 (HTTP/1.1 messaging)
and RFC 9110 (HTTP semantics). Each test asserts what the platform gets back (status,
JSON `code`, body bytes, headers, `X-Hookshield-Outcome`) and, where it matters, what the
target got and on how many connections.

The table cases (`FRAMING_CASES` and friends) are plain data so that a script can run the
same raw targets behind nginx for the README's comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import resource
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, needs_tool, wait_for
from tests.processes import Hookshield
from tests.rawhttp import (
    Got,
    Peer,
    Platform,
    RawTarget,
    Script,
    call,
    header,
    ok_answer,
    post,
    raw_server,
    request_line,
)

TIMEOUT_MS = 2000  # the route timeout of most tests: an answer that hangs shows as a 504
PROMPT_S = 1.5  # ... and every answer that does not hang comes well before it


def route(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "routes": [
            {"name": "h", "match": {"path_prefix": "/h"}, "target": url, "timeout_ms": TIMEOUT_MS, **extra}
        ]
    }  # fmt: skip


DYNAMIC = {
    "from_header": "X-Hookshield-Target",
    "allow_hosts": ["127.0.0.1"],
    "allow_networks": ["127.0.0.0/8"],
}


def dynamic_route(**extra: Any) -> dict[str, Any]:
    """The route `h` with its target taken from the X-Hookshield-Target header."""
    config = route("", **extra)
    config["routes"][0]["target"] = DYNAMIC
    return config


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Messages of ERROR records: a traceback, "Fatal error on transport", internal_error."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def assert_error(got: Got, status: int, code: str) -> None:
    """hookshield's own JSON error answer, marked as such (never `upstream`)."""
    assert (got.status, got.code, got.outcome) == (status, code, f"error:{code}"), got


def assert_upstream(got: Got, status: int, body: bytes) -> None:
    """The target's answer, passed on."""
    assert (got.status, got.body, got.outcome) == (status, body, "upstream"), got


# The table: one request, one answer written by the target, then the connection is
# kept open ("keep": hookshield must not wait for it to end), half-closed ("fin") or reset
# ("rst"). `code` for hookshield's own error answer, else `body` for the target's.


@dataclass(frozen=True)
class Case:
    id: str
    rfc: str
    answer: bytes
    end: str  # keep | fin | rst
    status: int
    code: str | None = None
    body: bytes | None = None
    or_body: bytes | None = None  # where the RFC equally allows passing on a 200 with this body

    def check(self, got: Got) -> None:
        if self.or_body is not None and got.status == 200:
            assert_upstream(got, 200, self.or_body)
        elif self.code is not None:
            assert_error(got, self.status, self.code)
        else:
            assert self.body is not None
            assert_upstream(got, self.status, self.body)


def answering(answer: bytes, end: str) -> Script:
    """For each request on a connection: write `answer`, then end as `end` says."""

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer)
            if end == "fin":
                peer.fin()
                await peer.wait_eof()
                return
            if end == "rst":
                peer.reset()
                return

    return script


OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED = OK + b"Transfer-Encoding: chunked\r\n\r\n"
UE, UU = "UPSTREAM_ERROR", "UPSTREAM_UNREACHABLE"

# fmt: off
INCOMPLETE_CASES = [  # RFC 9112 §8: an answer cut short is incomplete, never passed on
    Case("content-length-cut-fin", "9112 §8", OK + b"Content-Length: 10\r\n\r\nhalf", "fin", 502, UE),
    Case("content-length-cut-rst", "9112 §8", OK + b"Content-Length: 10\r\n\r\nhalf", "rst", 502, UE),
    Case("chunked-no-last-chunk-fin", "9112 §8", CHUNKED + b"2\r\nok\r\n", "fin", 502, UE),
    Case("chunked-mid-chunk-rst", "9112 §8", CHUNKED + b"5\r\nhel", "rst", 502, UE),
    Case("chunked-last-chunk-no-crlf-fin", "9112 §7.1", CHUNKED + b"2\r\nok\r\n0\r\n", "fin", 502, UE),
    Case("status-line-cut-fin", "9112 §8", b"HTTP/1.1 20", "fin", 502, UE),
    Case("headers-cut-rst", "9112 §8", OK + b"Content-Len", "rst", 502, UE),
    Case("head-without-blank-line-fin", "9112 §8", OK + b"X-A: 1\r\n", "fin", 502, UE),
    Case("close-delimited-rst", "9112 §8", OK + b"\r\nuntil reset", "rst", 502, UE),
    Case("interim-only-fin", "9110 §15.2", b"HTTP/1.1 100 Continue\r\n\r\n", "fin", 502, UE),
    Case("nothing-fin", "9112 §8", b"", "fin", 502, UU),
    Case("nothing-rst", "9112 §8", b"", "rst", 502, UU),
]
COMPLETE_CASES = [  # RFC 9112 §6.3, §8: complete by its framing, whatever follows
    Case("close-delimited-fin", "9112 §6.3", OK + b"X-Old: 1\r\n\r\nuntil close", "fin", 200, body=b"until close"),
    Case("content-length-then-fin", "9112 §6.3", ok_answer(b"ok"), "fin", 200, body=b"ok"),
    Case("content-length-then-rst", "9112 §6.3", ok_answer(b"ok"), "rst", 200, body=b"ok"),
    Case("chunked-then-rst", "9112 §7.1", CHUNKED + b"2\r\nok\r\n0\r\n\r\n", "rst", 200, body=b"ok"),
    Case("content-length-ows", "9110 §5.5", OK + b"Content-Length:  2 \r\n\r\nok", "keep", 200, body=b"ok"),
    Case("content-length-zero", "9112 §6.2", OK + b"Content-Length: 0\r\n\r\n", "keep", 200, body=b""),
]
FRAMING_CASES = [  # RFC 9112 §6.3 items 3 and 5, RFC 9110 §8.6: invalid framing is a 502
    Case("cl-and-te", "9112 §6.3", OK + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "keep", 502, UE, or_body=b"ok"),
    Case("te-and-cl", "9112 §6.3", OK + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n", "keep", 502, UE, or_body=b"ok"),
    Case("two-content-lengths", "9112 §6.3", OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok!", "keep", 502, UE),
    Case("content-length-list", "9112 §6.3", OK + b"Content-Length: 2, 3\r\n\r\nok!", "keep", 502, UE),
    Case("same-content-length-twice", "9110 §8.6", OK + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE, or_body=b"ok"),
    Case("content-length-negative", "9110 §8.6", OK + b"Content-Length: -1\r\n\r\nok", "keep", 502, UE),
    Case("content-length-not-a-number", "9110 §8.6", OK + b"Content-Length: abc\r\n\r\nok", "keep", 502, UE),
    Case("content-length-plus-sign", "9110 §8.6", OK + b"Content-Length: +2\r\n\r\nok", "keep", 502, UE),
    Case("content-length-overflow", "9110 §8.6", OK + b"Content-Length: 99999999999999999999999\r\n\r\nok", "keep", 502, UE),
]
CHUNKED_CASES = [  # RFC 9112 §7.1: the chunked coding, strictly
    Case("chunk-size-not-hex", "9112 §7.1", CHUNKED + b"zz\r\nok\r\n0\r\n\r\n", "keep", 502, UE),
    Case("chunk-size-overflow", "9112 §7.1", CHUNKED + b"fffffffffffffffffff\r\nok\r\n0\r\n\r\n", "keep", 502, UE),
    Case("chunk-size-negative", "9112 §7.1", CHUNKED + b"-2\r\nok\r\n0\r\n\r\n", "keep", 502, UE),
    Case("chunk-data-longer-than-size", "9112 §7.1", CHUNKED + b"2\r\nokX\r\n0\r\n\r\n", "keep", 502, UE),
    Case("chunk-size-bare-lf", "9112 §7.1", CHUNKED + b"2\nok\n0\n\n", "keep", 502, UE),
    Case("chunk-extension", "9112 §7.1.1", CHUNKED + b"5;name=value\r\nhello\r\n0\r\n\r\n", "keep", 200, body=b"hello"),
    Case("chunk-extension-quoted", "9112 §7.1.1", CHUNKED + b'5;n="v;x"\r\nhello\r\n0;last=1\r\n\r\n', "keep", 200, body=b"hello"),
    Case("chunk-size-upper-hex-leading-zeros", "9112 §7.1", CHUNKED + b"00A\r\n0123456789\r\n0\r\n\r\n", "keep", 200, body=b"0123456789"),
    Case("chunked-empty-body", "9112 §7.1", CHUNKED + b"0\r\n\r\n", "keep", 200, body=b""),
    Case("content-length-in-trailers", "9110 §6.5.1", CHUNKED + b"2\r\nok\r\n0\r\nContent-Length: 999\r\n\r\n", "keep", 502, UE, or_body=b"ok"),
    Case("chunked-many-chunks", "9112 §7.1.3", CHUNKED + b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", "keep", 200, body=b"abc"),
]
STATUS_CASES = [  # RFC 9112 §4 status line, RFC 9110 §15 (100..599), §2.5 (version)
    Case("status-099", "9110 §15", b"HTTP/1.1 099 Weird\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
    Case("status-600", "9110 §15", b"HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
    Case("status-abc", "9112 §4", b"HTTP/1.1 abc Weird\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
    Case("status-two-digits", "9112 §4", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
    Case("status-four-digits", "9112 §4", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
    Case("version-2.0", "9110 §2.5", b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
    Case("version-lower-case", "9112 §2.3", b"http/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
    Case("reason-empty", "9112 §4", b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok", "keep", 200, body=b"ok"),
    Case("reason-missing", "9112 §4", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", "keep", 200, body=b"ok"),
    Case("reason-obs-text", "9112 §4", b"HTTP/1.1 200 caf\xe9\r\nContent-Length: 2\r\n\r\nok", "keep", 200, body=b"ok"),
]
FIELD_CASES = [  # RFC 9112 §2.2, §5.1, §5.2, RFC 9110 §5.5: reject, or clean before passing on
    Case("bare-lf-line-ends", "9112 §2.2", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "keep", 502, UE, or_body=b"ok"),
    Case("obs-fold", "9112 §5.2", OK + b"X-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE, or_body=b"ok"),
    Case("nul-in-value", "9110 §5.5", OK + b"X-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE, or_body=b"ok"),
    Case("bare-cr-in-value", "9110 §5.5", OK + b"X-Bad: a\rb\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE, or_body=b"ok"),
    Case("space-before-colon", "9112 §5.1", OK + b"X-Bad : 1\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE, or_body=b"ok"),
    Case("whitespace-before-first-field", "9112 §2.2", OK + b" X-Lead: 1\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE, or_body=b"ok"),
    Case("field-without-colon", "9112 §5.1", OK + b"Garbage\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
    Case("empty-field-name", "9112 §5.1", OK + b": x\r\nContent-Length: 2\r\n\r\nok", "keep", 502, UE),
]
INTERIM_CASES = [  # RFC 9110 §15.2: 1xx answers other than 101 are skipped
    Case("100-then-200", "9110 §15.2", b"HTTP/1.1 100 Continue\r\n\r\n" + ok_answer(b"ok"), "keep", 200, body=b"ok"),
    Case("103-then-200", "9110 §15.2", b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok_answer(b"ok"), "keep", 200, body=b"ok"),
    Case("100-102-103-then-chunked", "9110 §15.2", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + CHUNKED + b"2\r\nok\r\n0\r\n\r\n", "keep", 200, body=b"ok"),
    Case("101-switching-protocols", "9110 §15.2.2", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nsome other protocol", "keep", 502, UE),
]
# fmt: on
TABLE = INCOMPLETE_CASES + COMPLETE_CASES + FRAMING_CASES + CHUNKED_CASES + STATUS_CASES
TABLE += FIELD_CASES + INTERIM_CASES


@pytest.mark.parametrize("case", INCOMPLETE_CASES, ids=lambda c: c.id)
async def test_answer_cut_short_is_a_failed_attempt(
    proxy: Any, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9112 §8: an answer that ends early is 502 UPSTREAM_ERROR (UNREACHABLE before any byte)."""
    await _run_case(proxy, case, caplog)


@pytest.mark.parametrize("case", COMPLETE_CASES, ids=lambda c: c.id)
async def test_answer_complete_by_its_framing_is_passed_on(
    proxy: Any, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9112 §6.3: complete by Content-Length, last chunk or a clean close (FIN) is passed on."""
    await _run_case(proxy, case, caplog)


@pytest.mark.parametrize("case", FRAMING_CASES, ids=lambda c: c.id)
async def test_invalid_framing_is_bad_gateway(
    proxy: Any, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9112 §6.3 (items 3, 5), RFC 9110 §8.6: CL with TE, differing or invalid CLs: 502."""
    await _run_case(proxy, case, caplog)


@pytest.mark.parametrize("case", CHUNKED_CASES, ids=lambda c: c.id)
async def test_chunked_coding(proxy: Any, case: Case, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 9112 §7.1: bad chunk sizes or chunk data are 502; extensions and hex forms decode."""
    await _run_case(proxy, case, caplog)


@pytest.mark.parametrize("case", STATUS_CASES, ids=lambda c: c.id)
async def test_status_line(proxy: Any, case: Case, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 9112 §4, RFC 9110 §15: a status outside 100..599 or a bad version is 502."""
    await _run_case(proxy, case, caplog)


@pytest.mark.parametrize("case", FIELD_CASES, ids=lambda c: c.id)
async def test_malformed_field_lines(
    proxy: Any, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9112 §5.1, §5.2, RFC 9110 §5.5: a bad field line is 502 or cleaned, never passed raw."""
    got = await _run_case(proxy, case, caplog)
    for name, value in got.raw_headers:
        assert not re.search(rb"[\r\n\x00]", name + value)
        assert not name.endswith(b" ")
        assert name.lower() != b"x-lead"


@pytest.mark.parametrize("case", INTERIM_CASES, ids=lambda c: c.id)
async def test_interim_answers(proxy: Any, case: Case, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 9110 §15.2: 1xx answers are skipped (their fields dropped); a 101 is 502 UPSTREAM_ERROR."""
    got = await _run_case(proxy, case, caplog)
    assert "link" not in got.names()
    assert not any("Fatal error" in message for message in errors_logged(caplog))


async def _run_case(proxy: Any, case: Case, caplog: pytest.LogCaptureFixture) -> Got:
    async with raw_server(answering(case.answer, case.end)) as target:
        client = await proxy(route(target.url))
        got = await call(client)
    case.check(got)
    assert got.elapsed_s < PROMPT_S
    assert errors_logged(caplog) == []
    return got


# Trailers (RFC 9112 §7.1.2, RFC 9110 §6.5).


async def test_trailers_are_dropped(proxy: Any) -> None:
    """RFC 9112 §7.1.2: trailer fields are not merged into the answer's header section."""
    trailers = b"0\r\nSet-Cookie: x=1\r\nLocation: /evil\r\nX-Hookshield-Outcome: forged\r\n\r\n"
    answer = OK + b"Transfer-Encoding: chunked\r\nX-Before: 1\r\n\r\n2\r\nok\r\n" + trailers
    async with raw_server(answering(answer, "keep")) as target:
        got = await call(await proxy(route(target.url)))
    assert_upstream(got, 200, b"ok")
    assert got.headers["X-Before"] == "1"
    assert {"set-cookie", "location"} & got.names() == set()
    assert got.headers.getall("Content-Length") == ["2"]


async def test_set_cookie_lines_stay_apart(proxy: Any) -> None:
    """RFC 9110 §5.3: several Set-Cookie lines are passed back as they are, never combined."""
    answer = OK + b"Set-Cookie: a=1; Path=/\r\nSet-Cookie: b=2, c=3\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(answering(answer, "keep")) as target:
        got = await call(await proxy(route(target.url)))
    assert_upstream(got, 200, b"ok")
    assert got.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2, c=3"]


# No body: HEAD, 204, 304 (RFC 9110 §6.4.1, §9.3.2, RFC 9112 §6.3 item 1).


async def test_head_answer_keeps_content_length_without_a_body(proxy: Any) -> None:
    """RFC 9110 §9.3.2: a HEAD answer's Content-Length is passed back; no body is awaited."""
    answer = OK + b"Content-Length: 1234\r\nX-Head: 1\r\n\r\n"
    async with raw_server(answering(answer, "keep")) as target:
        client = await proxy(route(target.url))
        got = await call(client, method="HEAD", data=b"")
        again = await call(client, method="HEAD", data=b"")
    assert (got.status, got.body, got.outcome, got.headers["X-Head"]) == (200, b"", "upstream", "1")
    assert got.headers["Content-Length"] == "1234"
    assert max(got.elapsed_s, again.elapsed_s) < PROMPT_S
    assert (again.status, again.headers["Content-Length"]) == (200, "1234")
    assert [request_line(r) for r in target.requests] == [b"HEAD / HTTP/1.1"] * 2


async def test_head_answer_saying_chunked_has_no_body(proxy: Any) -> None:
    """RFC 9112 §6.3 item 1: a HEAD answer ends at its header section even when it says chunked."""
    async with raw_server(answering(CHUNKED, "keep")) as target:
        got = await call(await proxy(route(target.url)), method="HEAD", data=b"")
    assert (got.status, got.body, got.outcome) == (200, b"", "upstream")
    assert got.elapsed_s < PROMPT_S


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", 204),
        (b"HTTP/1.1 204 No Content\r\n\r\nEXTRA", 204),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", 304),
    ],
    ids=["204-with-content-length-and-body", "204-with-bytes-after", "304-with-body"],
)
async def test_no_body_status_with_bytes_after_is_not_reused(
    proxy: Any, answer: bytes, status: int
) -> None:
    """RFC 9112 §6.3 item 1: 204/304 end at their header section; bytes after them spoil the connection."""

    async def script(peer: Peer) -> None:
        await peer.serve_keepalive(lambda r: answer if peer.number == 1 else ok_answer(b"two"))

    async with raw_server(script) as target:
        client = await proxy(route(target.url))
        first = await call(client)
        await asyncio.sleep(0.05)  # the extra bytes are in before the next call
        second = await call(client)
    assert (first.status, first.body, first.outcome) == (status, b"", "upstream")
    assert_upstream(second, 200, b"two")
    assert len(target.peers) == 2


async def test_304_with_content_length_and_no_body_does_not_hang(proxy: Any) -> None:
    """RFC 9110 §15.4.5: a 304's Content-Length describes the representation; no body follows."""
    answer = b'HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: "x"\r\n\r\n'
    async with raw_server(answering(answer, "keep")) as target:
        got = await call(await proxy(route(target.url)), method="GET", data=b"")
    assert (got.status, got.body, got.outcome, got.headers["ETag"]) == (304, b"", "upstream", '"x"')
    assert got.elapsed_s < PROMPT_S


# 101 (RFC 9110 §15.2.2) - also in INTERIM_CASES; here with the connection ended at once.


async def test_101_then_close_is_upstream_error_without_fatal_error(
    proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9110 §15.2.2: a 101 nobody asked for is 502 UPSTREAM_ERROR, logged without a traceback."""
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n\x00\x00"
    )
    async with raw_server(answering(answer, "rst")) as target:
        client = await proxy(route(target.url))
        got = await call(client)
        await asyncio.sleep(0.1)  # a late transport error would be logged by now
    assert_error(got, 502, "UPSTREAM_ERROR")
    assert errors_logged(caplog) == []
    assert not any("Traceback" in r.getMessage() or r.exc_info for r in caplog.records)


# Persistence (RFC 9112 §9.3): which connections are used again.


def numbered(peer: Peer, request: bytes) -> bytes:
    """A keep-alive answer naming the connection and the request's body."""
    body = request.split(b"\r\n\r\n", 1)[1]
    return ok_answer(b"%d:%s" % (peer.number, body))


async def two_calls(proxy: Any, script: Script, gap_s: float = 0.05) -> tuple[Got, Got, RawTarget]:
    async with raw_server(script) as target:
        client = await proxy(route(target.url))
        first = await call(client, data=b"one")
        await asyncio.sleep(gap_s)  # what the target does after its answer happens now
        second = await call(client, data=b"two")
    return first, second, target


async def test_keep_alive_connection_is_used_again(proxy: Any) -> None:
    """RFC 9112 §9.3: an HTTP/1.1 answer without `close` leaves the connection open for the next call."""

    async def script(peer: Peer) -> None:
        await peer.serve_keepalive(lambda r: numbered(peer, r))

    first, second, target = await two_calls(proxy, script)
    assert (first.body, second.body) == (b"1:one", b"1:two")
    assert len(target.peers) == 1


@pytest.mark.parametrize(
    "answer",
    [
        OK + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s",
        b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: %d\r\n\r\n%s",
    ],
    ids=["connection-close", "http-1.0", "keep-alive-and-close"],
)
async def test_answer_ending_persistence_is_not_reused(proxy: Any, answer: bytes) -> None:
    """RFC 9112 §9.3: after `Connection: close`, or HTTP/1.0 without keep-alive, a new connection."""

    async def script(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            body = b"%d:%s" % (peer.number, request.split(b"\r\n\r\n", 1)[1])
            await peer.send(answer % (len(body), body))  # and the target keeps it open

    first, second, target = await two_calls(proxy, script)
    assert_upstream(first, 200, b"1:one")
    assert_upstream(second, 200, b"2:two")
    assert len(target.peers) == 2
    assert second.elapsed_s < PROMPT_S


async def test_http_1_0_keep_alive_answer_is_reused(proxy: Any) -> None:
    """RFC 9112 §9.3: an HTTP/1.0 answer with `Connection: keep-alive` keeps the connection."""

    async def script(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            body = b"%d:%s" % (peer.number, request.split(b"\r\n\r\n", 1)[1])
            await peer.send(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )

    first, second, target = await two_calls(proxy, script)
    assert (first.body, second.body) == (b"1:one", b"1:two")
    assert len(target.peers) == 1


@pytest.mark.parametrize(
    "extra",
    [b"EXTRA", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"],
    ids=["garbage", "a-second-answer"],
)
async def test_bytes_past_the_content_length_spoil_the_connection(proxy: Any, extra: bytes) -> None:
    """RFC 9112 §6.3 item 6: bytes past the Content-Length are not this answer's and not reused."""

    async def script(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await peer.send(numbered(peer, request) + (extra if peer.number == 1 else b""))

    first, second, target = await two_calls(proxy, script)
    assert_upstream(first, 200, b"1:one")
    assert_upstream(second, 200, b"2:two")
    assert first.headers.getall("Content-Length") == ["5"]
    assert len(target.peers) == 2


async def test_bytes_after_the_last_chunk_spoil_the_connection(proxy: Any) -> None:
    """RFC 9112 §7.1: the chunked body ends with its last chunk; bytes after it are not reused."""

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            tail = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil" if peer.number == 1 else b""
            await peer.send(CHUNKED + b"1\r\n%d\r\n0\r\n\r\n" % peer.number + tail)

    first, second, target = await two_calls(proxy, script)
    assert (first.body, second.body) == (b"1", b"2")
    assert len(target.peers) == 2


async def test_unsolicited_answer_while_idle_is_never_served(proxy: Any) -> None:
    """RFC 9112 §9.3 (SPEC §9): a pooled connection that received bytes while idle is discarded."""
    sent = asyncio.Event()

    async def script(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await peer.send(numbered(peer, request))
            if peer.number == 1:
                await asyncio.sleep(0.02)
                await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
                sent.set()

    async with raw_server(script) as target:
        client = await proxy(route(target.url))
        first = await call(client, data=b"one")
        await asyncio.wait_for(sent.wait(), 2)
        await asyncio.sleep(0.05)  # the unsolicited answer has arrived at hookshield
        second = await call(client, data=b"two")
        third = await call(client, data=b"three")
    assert (first.body, second.body, third.body) == (b"1:one", b"2:two", b"2:three")
    assert len(target.peers) == 2
    assert [len(p.requests) for p in target.peers] == [1, 2]


@pytest.mark.parametrize("end", ["fin", "rst"])
async def test_target_ending_an_idle_connection(proxy: Any, end: str) -> None:
    """RFC 9112 §9.6: a connection the target closes or resets while idle is not used again."""

    async def script(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(numbered(peer, request))
        await asyncio.sleep(0.01)
        if end == "rst":
            peer.reset()
            return
        peer.fin()
        await peer.wait_eof()

    first, second, target = await two_calls(proxy, script, gap_s=0.1)
    assert_upstream(first, 200, b"1:one")
    assert_upstream(second, 200, b"2:two")
    assert len(target.peers) == 2


# A reused connection that ends before the answer's first byte (SPEC §9; RFC 9112 §9.3.1).


def ending(peer: Peer, how: str) -> Any:
    """End `peer` as `how` says, after reading (part of) the next request."""

    async def end() -> None:
        if how == "rst-mid-request":
            await peer.read_some(20)
            peer.reset()
            return
        await peer.request()
        if how == "rst-after-request":
            peer.reset()
            return
        peer.fin()
        await peer.wait_eof()

    return end()


@pytest.mark.parametrize("how", ["fin-after-request", "rst-after-request", "rst-mid-request"])
async def test_reused_connection_ending_before_the_answer_is_retried_once(
    stack: Any, how: str
) -> None:
    """RFC 9112 §9.3.1 (SPEC §9): retried at once on a new connection, same request, not counted."""

    async def script(peer: Peer) -> None:
        if peer.number == 1:
            request = await peer.request()
            assert request is not None
            await peer.send(numbered(peer, request))
            await ending(peer, how)
            return
        await peer.serve_keepalive(lambda r: numbered(peer, r))

    async with raw_server(script) as target:
        hs: Stack = await stack(route(target.url, breaker={"failure_threshold": 1}))
        first = await call(hs.data, data=b"one")
        second = await call(hs.data, data=b"two", headers={"X-Request-ID": "rid-2"})
        third = await call(hs.data, data=b"three")
    assert_upstream(first, 200, b"1:one")
    assert_upstream(second, 200, b"2:two")  # the target's real answer, never an empty 200
    assert_upstream(third, 200, b"2:three")  # the breaker (threshold 1) did not open
    assert len(target.peers) == 2
    retried = target.peers[1].requests[0]
    assert (header(retried, "X-Request-ID"), retried.endswith(b"\r\n\r\ntwo")) == ("rid-2", True)
    if how != "rst-mid-request":
        assert header(target.peers[0].requests[1], "X-Request-ID") == "rid-2"


async def test_retried_request_keeps_a_generated_request_id(proxy: Any) -> None:
    """RFC 9112 §9.3.1 (SPEC §9): the retry carries the same (generated) X-Request-ID."""

    async def script(peer: Peer) -> None:
        if peer.number == 1:
            request = await peer.request()
            assert request is not None
            await peer.send(numbered(peer, request))
            await ending(peer, "fin-after-request")
            return
        await peer.serve_keepalive(lambda r: numbered(peer, r))

    first, second, target = await two_calls(proxy, script)
    assert (first.body, second.body) == (b"1:one", b"2:two")
    ids = [
        header(r, "X-Request-ID") for r in target.peers[0].requests[1:] + target.peers[1].requests
    ]
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert ids[0]


async def test_retry_on_a_new_connection_that_also_fails_is_unreachable(proxy: Any) -> None:
    """RFC 9112 §9.3.1 (SPEC §9): one retry only: a new connection closing unanswered is 502."""

    async def script(peer: Peer) -> None:
        if peer.number == 1:
            request = await peer.request()
            assert request is not None
            await peer.send(numbered(peer, request))
        await ending(peer, "fin-after-request")

    first, second, target = await two_calls(proxy, script)
    assert_upstream(first, 200, b"1:one")
    assert_error(second, 502, "UPSTREAM_UNREACHABLE")
    assert len(target.peers) == 2
    assert [len(p.requests) for p in target.peers] == [2, 1]


async def test_fresh_connection_closing_before_answer_is_not_retried(proxy: Any) -> None:
    """RFC 9112 §9.3.1 (SPEC §9): a new connection closing before answering is 502, not retried."""

    async def script(peer: Peer) -> None:
        await ending(peer, "fin-after-request")

    async with raw_server(script) as target:
        got = await call(await proxy(route(target.url)))
    assert_error(got, 502, "UPSTREAM_UNREACHABLE")
    assert len(target.peers) == 1


async def test_reused_connection_ending_mid_answer_is_not_retried(proxy: Any) -> None:
    """RFC 9112 §8 (SPEC §9): once a byte of the answer came, a broken reused connection is 502."""

    async def script(peer: Peer) -> None:
        request = await peer.request()
        assert request is not None
        await peer.send(numbered(peer, request))
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Le")
        peer.fin()
        await peer.wait_eof()

    first, second, target = await two_calls(proxy, script)
    assert_upstream(first, 200, b"1:one")
    assert_error(second, 502, "UPSTREAM_ERROR")
    assert len(target.peers) == 1


# Answer header limits (SPEC §9: limits.max_response_header_bytes, max_response_headers).


def sized_answer(request: bytes) -> bytes:
    """An answer shaped by the request body: `h<bytes>` one field of that many bytes in all,
    `n<count>` that many fields, `r<bytes>` a reason phrase of that many bytes."""
    spec = request.split(b"\r\n\r\n", 1)[1].decode()
    kind, size = spec[0], int(spec[1:])
    if kind == "h":
        return OK + b"X-Big: " + b"a" * (size - 9) + b"\r\nContent-Length: 2\r\n\r\nok"
    if kind == "n":
        fields = b"".join(b"X-F%d: v\r\n" % n for n in range(size - 1))
        return OK + fields + b"Content-Length: 2\r\n\r\nok"
    return b"HTTP/1.1 200 " + b"r" * size + b"\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    ("limits", "spec", "passes"),
    [
        ({"max_response_header_bytes": 1024}, "h700", True),
        ({"max_response_header_bytes": 1024}, "h1100", False),
        ({"max_response_header_bytes": 1024}, "r1030", False),
        ({"max_response_headers": 10}, "n10", True),
        ({"max_response_headers": 10}, "n11", False),
        ({}, "h60000", True),
        ({}, "h70000", False),
        ({}, "n100", True),
        ({}, "n101", False),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={x}" for k, x in v.items()) or "defaults",
)  # fmt: skip
async def test_answer_header_limits(
    proxy: Any, limits: dict[str, int], spec: str, passes: bool
) -> None:
    """RFC 9112 §5 (SPEC §9): answer headers over the byte or line limit are 502 UPSTREAM_ERROR."""

    async def script(peer: Peer) -> None:
        await peer.serve_keepalive(sized_answer)

    async with raw_server(script) as target:
        client = await proxy({"limits": limits, **route(target.url)})
        platform = await Platform.connect(client.port)  # aiohttp's client refuses 8 KiB+ fields
        try:
            got = await platform.ask(post("/h", spec.encode()))
        finally:
            await platform.close()
    if passes:
        assert_upstream(got, 200, b"ok")
    else:
        assert_error(got, 502, "UPSTREAM_ERROR")
    assert got.elapsed_s < PROMPT_S


# Dynamic targets (SPEC §9; RFC 9112 §3.2.1 origin-form, RFC 3986 §3.2.1 userinfo).


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@127.0.0.1:{port}/x",
        "http://user@127.0.0.1:{port}/x",
        "https://:secret@127.0.0.1:{port}/x",
        "ftp://127.0.0.1:{port}/x",
        "file:///etc/passwd",
        "//127.0.0.1:{port}/x",
        "127.0.0.1:{port}/x",
        "http:///x",
    ],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_dynamic_target_url_must_be_plain_http(stack: Any, url: str, mode: str) -> None:
    """RFC 3986 §3.2.1 (SPEC §9): only http/https without userinfo: else 400, nothing sent or queued."""
    async with raw_server(answering(ok_answer(), "keep")) as target:
        hs: Stack = await stack(dynamic_route(mode=mode))
        headers = {"X-Hookshield-Target": url.format(port=target.port)}
        got = await call(hs.data, headers=headers)
        await asyncio.sleep(0.1)  # a delivery would have started by now
    assert_error(got, 400, "BAD_REQUEST")
    assert target.peers == []
    assert hs.state.store is not None
    assert await hs.state.store.sizes() in ({}, {"h": (0, 0)})


async def test_dynamic_target_gets_origin_form_only(proxy: Any) -> None:
    """RFC 9112 §3.2.1: the target receives `/path?query`, its Host, and no control header."""
    async with raw_server(answering(ok_answer(), "keep")) as target:
        client = await proxy(dynamic_route())
        url = f"HTTP://127.0.0.1:{target.port}/base?k=v#fragment"
        got = await call(client, "/h/more?q=1", headers={"X-Hookshield-Target": url})
    assert_upstream(got, 200, b"ok")
    [request] = target.requests
    assert request_line(request) == b"POST /base/more?k=v&q=1 HTTP/1.1"
    assert header(request, "Host") == f"127.0.0.1:{target.port}"
    assert header(request, "X-Hookshield-Target") is None
    assert b"fragment" not in request
    assert b"127.0.0.1" not in request_line(request)


# Timing: a slow target within the deadline, one past it (RFC 9112 §9.5).


async def test_answer_trickling_within_the_deadline_passes(proxy: Any) -> None:
    """RFC 9112 §9.5: an answer written byte by byte that completes within the deadline is passed on."""
    answer = ok_answer(b"slow but whole")

    async def script(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(*(answer[n : n + 1] for n in range(len(answer))), pause_s=0.005)

    async with raw_server(script) as target:
        got = await call(await proxy(route(target.url, timeout_ms=5000)))
    assert_upstream(got, 200, b"slow but whole")


@pytest.mark.parametrize("where", ["headers", "body"])
async def test_answer_trickling_past_the_deadline_is_a_timeout(proxy: Any, where: str) -> None:
    """RFC 9112 §9.5: bytes that keep coming do not extend the deadline: 504 TIMEOUT at timeout_ms."""
    start = OK + b"X-Slow: " if where == "headers" else OK + b"Content-Length: 1000\r\n\r\n"

    async def script(peer: Peer) -> None:
        await peer.request()
        await peer.send(start)
        while await peer.send(b"a", pause_s=0.05):
            pass

    async with raw_server(script) as target:
        got = await call(await proxy(route(target.url, timeout_ms=300)))
    assert_error(got, 504, "TIMEOUT")
    assert 0.28 < got.elapsed_s < 1.5


# An answer before the whole request was read (RFC 9112 §9.5, RFC 9110 §15.5.14).


@pytest.mark.parametrize("status", [413, 401])
async def test_early_answer_before_the_body_was_read(proxy: Any, status: int) -> None:
    """RFC 9112 §9.5: a final answer sent before the target read the body is passed back as it is."""
    answer = b"HTTP/1.1 %d Early\r\nConnection: close\r\nContent-Length: 5\r\n\r\nearly" % status

    async def script(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")  # the head only
        await peer.send(answer)
        peer.fin()
        await peer.wait_eof()  # read and drop the body (a close would reset the answer away)

    async with raw_server(script) as target:
        got = await call(await proxy(route(target.url)), data=b"x" * 600_000)
    assert_upstream(got, status, b"early")


# Other: answers over the size limit, a cut 5xx with pass_errors, the fallback cache.


@pytest.mark.parametrize(
    "answer",
    [
        OK + b"Content-Length: 20\r\n\r\n" + b"x" * 20,
        CHUNKED + b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_answer_over_max_response_bytes(proxy: Any, answer: bytes) -> None:
    """RFC 9110 §15.6.3 (SPEC §4): an answer over limits.max_response_bytes is 502 UPSTREAM_ERROR."""
    async with raw_server(answering(answer, "keep")) as target:
        got = await call(await proxy({"limits": {"max_response_bytes": 10}, **route(target.url)}))
    assert_error(got, 502, "UPSTREAM_ERROR")


async def test_cut_5xx_is_not_passed_through(proxy: Any) -> None:
    """RFC 9112 §8: with pass_errors a whole 500 passes, a cut one is 502 UPSTREAM_ERROR."""

    async def script(peer: Peer) -> None:
        await peer.request()
        length = 4 if peer.number == 1 else 40
        await peer.send(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\nbad!" % length)
        peer.fin()
        await peer.wait_eof()

    async with raw_server(script) as target:
        client = await proxy(route(target.url, pass_errors=True))
        whole = await call(client)
        cut = await call(client)
    assert_upstream(whole, 500, b"bad!")
    assert_error(cut, 502, "UPSTREAM_ERROR")


async def test_cut_answer_is_never_cached_for_the_fallback(proxy: Any) -> None:
    """RFC 9112 §8: an incomplete answer is not cached; the fallback serves the last whole one."""

    async def script(peer: Peer) -> None:
        await peer.request()
        if peer.number == 1:
            await peer.send(ok_answer(b"whole"))
        else:
            await peer.send(OK + b"Content-Length: 40\r\n\r\ncut")
        peer.fin()
        await peer.wait_eof()

    fallback = {"cached": {"ttl_s": 60}, "response": {"status": 299, "body": "static"}}
    async with raw_server(script) as target:
        client = await proxy(route(target.url, fallback=fallback))
        whole = await call(client)
        cut = await call(client)
        again = await call(client)
    assert_upstream(whole, 200, b"whole")
    assert (cut.status, cut.body, cut.outcome) == (200, b"whole", "fallback:upstream_error")
    assert (again.status, again.body, again.outcome) == (200, b"whole", "fallback:upstream_error")


# Pools (SPEC §9: limits.upstream_keepalive_s, limits.max_idle_connections).


async def test_idle_connection_closed_after_its_keepalive_time(proxy: Any) -> None:
    """RFC 9112 §9.5 (SPEC §9): a pooled connection idle past upstream_keepalive_s is closed unused."""

    async def script(peer: Peer) -> None:
        await peer.serve_keepalive(lambda r: numbered(peer, r))

    async with raw_server(script) as target:
        client = await proxy({"limits": {"upstream_keepalive_s": 1}, **route(target.url)})
        first = await call(client, data=b"one")
        second = await call(client, data=b"two")  # well within the keep-alive time: reused
        answered = time.monotonic()
        await wait_for(lambda: target.peers[0].eof_at is not None, timeout_s=5.0)
    assert (first.body, second.body, len(target.peers)) == (b"1:one", b"1:two", 1)
    eof_at = target.peers[0].eof_at
    assert eof_at is not None
    assert 0.9 < eof_at - answered < 4.0


async def test_at_most_max_idle_connections_stay_open(proxy: Any) -> None:
    """RFC 9112 §9.4 (SPEC §9): idle connections across all pools stay within max_idle_connections."""

    async def script(peer: Peer) -> None:
        await peer.serve_keepalive(lambda r: numbered(peer, r))

    async with contextlib.AsyncExitStack() as servers:
        targets = [await servers.enter_async_context(raw_server(script)) for _ in range(6)]
        client = await proxy({"limits": {"max_idle_connections": 3}, **dynamic_route()})
        for target in targets:
            got = await call(client, headers={"X-Hookshield-Target": target.url})
            assert (got.status, got.body, got.outcome) == (200, b"1:{}", "upstream")

        def open_connections() -> int:
            return sum(t.open_connections() for t in targets)

        await wait_for(lambda: open_connections() <= 3, timeout_s=3.0)
        await asyncio.sleep(0.2)
        assert open_connections() <= 3
        assert sum(len(t.peers) for t in targets) == 6


# Local resource errors (SPEC §9): out of file descriptors while connecting.


@asynccontextmanager
async def descriptors_exhausted() -> AsyncIterator[None]:
    """No new file descriptor can be had in this process until exit: the soft limit is
    lowered to just above the highest one open, every free number below it is taken, and
    any number freed meanwhile is taken again at once (every millisecond)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(n) for n in os.listdir("/proc/self/fd")) + 1
    fillers: list[int] = []

    def fill() -> None:
        while (fd := _open_devnull()) is not None:
            fillers.append(fd)

    async def keep_filling() -> None:
        while True:
            await asyncio.sleep(0.001)
            fill()

    resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
    refill: asyncio.Task[None] | None = None
    try:
        fill()
        refill = asyncio.create_task(keep_filling())
        yield
    finally:
        if refill is not None:
            refill.cancel()
            await asyncio.gather(refill, return_exceptions=True)
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_devnull() -> int | None:
    """A new descriptor, or None once the process has no more (EMFILE)."""
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError as exc:
        if exc.errno != errno.EMFILE:
            raise
        return None


async def local_errors(admin: Platform) -> float:
    """hookshield_local_errors_total{kind="emfile"} read from GET /metrics (0 when absent)."""
    got = await admin.ask(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
    match = re.search(
        rb'^hookshield_local_errors_total\{[^}]*kind="emfile"[^}]*\} (\S+)$', got.body, re.M
    )
    return float(match.group(1)) if match else 0.0


def closing_answer(peer: Peer, request: bytes) -> bytes:
    return OK + b"Connection: close\r\nContent-Length: %d\r\n\r\n%d" % (
        len(str(peer.number)),
        peer.number,
    )


async def closing_script(peer: Peer) -> None:
    request = await peer.request()
    if request is not None:
        await peer.send(closing_answer(peer, request))


@pytest.mark.parametrize("fallback", [False, True])
async def test_out_of_descriptors_is_overloaded_not_the_targets_fault(
    stack: Any, fallback: bool
) -> None:
    """RFC 9110 §15.6.4 (SPEC §9): EMFILE on connect is 503 OVERLOADED (or fallback), not the breaker's."""
    extra: dict[str, Any] = {"breaker": {"failure_threshold": 1}}
    if fallback:
        extra["fallback"] = {"response": {"status": 200, "body": {"fallback": True}}}
    async with raw_server(closing_script) as target:
        hs: Stack = await stack(route(target.url, **extra))
        platform = await Platform.connect(hs.data.port)
        assert hs.admin.port is not None
        admin = await Platform.connect(hs.admin.port)
        try:
            warm = await platform.ask(post())  # connections up, the pool left empty (close)
            assert (warm.status, warm.body) == (200, b"1")
            assert await local_errors(admin) == 0
            async with descriptors_exhausted():
                got = await platform.ask(post())
                counted = await local_errors(admin)
            after = await platform.ask(post())
        finally:
            await platform.close()
            await admin.close()
    if fallback:
        assert (got.status, json.loads(got.body), got.outcome) == (
            200, {"fallback": True}, "fallback:overloaded",
        )  # fmt: skip
    else:
        assert_error(got, 503, "OVERLOADED")
    assert counted >= 1
    assert (after.status, after.body, after.outcome) == (200, b"2", "upstream")  # breaker closed
    assert len(target.peers) == 2


async def test_out_of_descriptors_defers_an_async_delivery(stack: Any) -> None:
    """RFC 9110 §15.6.4 (SPEC §9, §5): a delivery hit by EMFILE is deferred: no attempt used."""
    arrived = asyncio.Event()

    async def script(peer: Peer) -> None:
        request = await peer.request()
        if request is None:
            return
        if peer.number == 1:  # attempt 1 fails: the retry comes 400 ms later
            peer.fin()
            await peer.wait_eof()  # hookshield closed its socket: no descriptor frees later
            arrived.set()
            return
        await peer.send(closing_answer(peer, request))

    retry = {"max_attempts": 2, "initial_delay_ms": 400, "jitter": False}
    async with raw_server(script) as target:
        hs: Stack = await stack(
            {
                "queue": {"workers": 2},
                **route(target.url, mode="async", retry=retry, timeout_ms=1000),
            }
        )
        platform = await Platform.connect(hs.data.port)
        assert hs.admin.port is not None
        admin = await Platform.connect(hs.admin.port)
        try:
            assert await local_errors(admin) == 0  # both connections accepted before
            queued = await platform.ask(post("/h", b"deferred", "X-Request-ID: emfile-1"))
            assert queued.status == 202
            await asyncio.wait_for(arrived.wait(), 5)
            async with descriptors_exhausted():  # attempt 2 falls due within it
                async with asyncio.timeout(5):
                    while await local_errors(admin) == 0:  # noqa: ASYNC110 - polled over HTTP
                        await asyncio.sleep(0.05)
            await wait_for(lambda: len(target.requests) == 2, timeout_s=10)
        finally:
            await platform.close()
            await admin.close()
        await asyncio.sleep(0.1)
        assert hs.state.store is not None
        sizes = await hs.state.store.sizes()
    assert [header(r, "X-Retry-Attempt") for r in target.requests] == ["1", "2"]
    assert {header(r, "X-Request-ID") for r in target.requests} == {"emfile-1"}
    assert sizes.get("h", (0, 0)) == (0, 0)  # delivered: neither queued nor dead-lettered


# TLS (RFC 9112 §9.8): a close-delimited answer needs close_notify. hookshield has no
# per-route CA setting yet (SPEC §14 `tls.ca_file`), so a real process trusts the test CA
# through SSL_CERT_FILE.


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 and localhost, with `openssl`."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "key.pem", "csr.pem", "cert.pem")
    )
    ext = directory / "ext.cnf"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = ["openssl", "req", *ec]
    subprocess.run([*run, "-x509", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=hookshield test CA",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        [*run, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                    "-out", cert, "-days", "2", "-extfile", ext], check=True, capture_output=True)  # fmt: skip
    return ca, cert, key


@asynccontextmanager
async def tls_target(directory: Path, script: Script) -> AsyncIterator[RawTarget]:
    import ssl

    _, cert, key = make_certificates(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    target = RawTarget(script)
    target.server = await asyncio.start_server(target._accepted, "127.0.0.1", 0, ssl=context)
    assert target.port
    try:
        yield target
    finally:
        await target.close()


def tls_script(answer: bytes, close_notify: bool) -> Script:
    async def script(peer: Peer) -> None:
        if await peer.request() is None:
            return
        await peer.send(answer)
        if close_notify:
            return  # the stream's close sends close_notify first
        peer.writer.get_extra_info("socket").shutdown(socket.SHUT_WR)  # a bare FIN
        await peer.wait_eof()
        peer.reset()

    return script


@needs_tool("openssl")
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("answer", "close_notify", "status", "code"),
    [
        (OK + b"\r\nuntil close", False, 502, "UPSTREAM_ERROR"),
        (OK + b"\r\nuntil close", True, 200, None),
        (OK + b"Connection: close\r\nContent-Length: 11\r\n\r\nuntil close", False, 200, None),
        (CHUNKED + b"b\r\nuntil close\r\n0\r\n\r\n", False, 200, None),
    ],
    ids=["close-delimited-fin-only", "close-delimited-close-notify", "content-length-fin-only", "chunked-fin-only"],
)  # fmt: skip
async def test_tls_close_delimited_answer_needs_close_notify(
    tmp_path: Path, answer: bytes, close_notify: bool, status: int, code: str | None
) -> None:
    """RFC 9112 §9.8: over TLS a FIN without close_notify ends only an answer framed by length."""
    import aiohttp

    async with tls_target(tmp_path, tls_script(answer, close_notify)) as target:
        config = route(f"https://127.0.0.1:{target.port}")
        hs = await Hookshield(tmp_path, config).start(
            env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")}
        )
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{hs.url}/h", data=b"{}") as resp,
            ):
                got = Got(resp.status, await resp.read(), resp.headers)
        finally:
            await hs.stop()
    if code is None:
        assert_upstream(got, status, b"until close")
    else:
        assert_error(got, status, code)
    assert len(target.requests) == 1
