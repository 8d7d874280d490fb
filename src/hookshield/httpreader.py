"""Reading the platform's requests: llhttp's callbacks (`httptools`) turn bytes into
`Request`s under the limits and rules of SPEC §9, and tell the connection (`Events`).

The head (request line and header block) is measured as it arrives. While it is
incomplete, every chunk wholly of the head counts, so a 4 MiB header line is refused once
`limits.max_header_bytes` is past, not once it is whole (llhttp hands a line over only
when it ends). Once complete, it is measured exactly only when the chunks it came in
could hold more than the limit: small requests cost nothing. The request-target is counted
as llhttp hands it over (`limits.max_url_bytes`). A refusal from inside a callback raises
`_Refused`, the answer waiting in `refusal`. The limits are those of the config in force
when each request begins.

The few headers the rules need (Host, Connection, Transfer-Encoding, Content-Length,
Expect, Upgrade) are noted as they come (`_BY_LENGTH`), so a request costs no header
lookups. A request without a Connection header that llhttp would keep alive is HTTP/1.1;
only the others ask llhttp for the version string (which is slow). `Deadline` is the
connection's one timer, shared by the reader (header block, body gaps) and the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, NoReturn, Protocol

import httptools
from multidict import CIMultiDict

from hookshield.config.models import Limits
from hookshield.errors import (
    BadRequest,
    HeadersTooLarge,
    ProxyError,
    UriTooLong,
    VersionNotSupported,
)
from hookshield.httprules import CLOSE, KEEP, KEEP_10, check_head, origin_form
from hookshield.message import Answer, Request

# What a connection's deadline is for (0: none).
IDLE: Final = 1
HEAD: Final = 2
BODY: Final = 3
LINGER: Final = 4
# The header names the rules look at, found by length, then first letter, then the name:
# no name has the length of another, and most headers fail at the first or second test.
_HOST: Final = 1
_CONNECTION: Final = 2
_CODING: Final = 3
_LENGTH: Final = 4
_EXPECT: Final = 5
_UPGRADE: Final = 6
_NOTED: Final = {
    b"Host": _HOST, b"Connection": _CONNECTION, b"Proxy-Connection": _CONNECTION,
    b"Transfer-Encoding": _CODING, b"Content-Length": _LENGTH, b"Expect": _EXPECT,
    b"Upgrade": _UPGRADE,
}  # fmt: skip
_LONGEST: Final = 17  # len(b"Transfer-Encoding")
# length -> (first letter in lower case, the name as usually spelt, in lower case, kind)
_BY_LENGTH: Final[tuple[tuple[int, bytes, bytes, int] | None, ...]] = tuple(
    next(((n[0] | 32, n, n.lower(), k) for n, k in _NOTED.items() if len(n) == size), None)
    for size in range(_LONGEST + 1)
)
assert max(map(len, _NOTED)) == _LONGEST


class Events(Protocol):
    """What a `RequestReader` tells its connection."""

    def dispatch(self, request: Request, connection: bytes) -> None: ...
    def refuse(self, answer: Answer) -> None: ...
    def expect_continue(self) -> None: ...


class Deadline:
    """A connection's one deadline (what for: `phase`, 0 for none; when: `at`) and the
    loop timer that enforces it, re-created only when a deadline comes before the one it
    waits for (so a request costs two stores). Once past `at`, `expired(phase)` is called."""

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[int], None]) -> None:
        self.loop, self.expired = loop, expired
        self.phase, self.at = 0, 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def arm(self, phase: int, at: float) -> None:
        self.phase, self.at = phase, at
        if phase and (self.timer is None or at < self.timer_at):
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.timer_at = self.loop.call_at(at, self._fire), at

    def cancel(self) -> None:
        self.phase = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        if not self.phase:
            return
        if self.loop.time() < self.at:
            self.timer, self.timer_at = self.loop.call_at(self.at, self._fire), self.at
        else:
            self.expired(self.phase)


class Bounds:
    """The `Limits` a request is read under, as plain numbers (timeouts in seconds): read
    on every request, where the config's dataclass would cost an attribute lookup each."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.header_bytes, self.headers = limits.max_header_bytes, limits.max_headers
        self.url_bytes, self.body_bytes = limits.max_url_bytes, limits.max_body_bytes
        self.header_s = limits.header_timeout_ms / 1000.0
        self.body_s = limits.body_timeout_ms / 1000.0
        self.idle_s = limits.idle_timeout_s


class _Refused(Exception):
    """Raised in an llhttp callback to stop the parser (the answer is in `refusal`)."""


class RequestReader:
    """One connection's parser and the request it is reading."""

    def __init__(self, events: Events, limits: Callable[[], Limits], deadline: Deadline) -> None:
        self.events, self.limits_now, self.deadline = events, limits, deadline
        self.parser = httptools.HttpRequestParser(self)
        self.bounds = Bounds(limits())
        self.reading = True  # False once no further request will be read
        self.refusal: Answer | None = None  # set by a callback that stopped the parser
        self.now, self.fed = 0.0, 0  # loop time and size of the bytes being fed
        self.head_due = 0.0  # when the head being read must be whole
        self.begun = 0  # requests begun on this connection
        self.clean = True  # no request ended earlier in the bytes being fed
        self.head_at_start = False  # this head began at the start of the bytes being fed
        self._begin()

    def _begin(self) -> None:
        self.url: list[bytes] = []
        self.header_list: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.request: Request | None = None
        self.dispatched = False
        self.in_head = False
        self.head_fed = 0  # bytes of the chunks wholly of this head: at most its size
        self.head_bound = 0  # bytes of the chunks it came in: at least its size
        self.url_size = self.trailers = 0
        self.http10 = False
        self.hosts, self.host, self.connection = 0, "", False  # the headers' facts
        self.coding: str | None = None
        self.length: str | None = None
        self.expect = self.upgrade = False

    def feed(self, data: bytes, now: float) -> None:
        """Parse `data`; requests and refusals go to `events`."""
        if not self.reading:
            return  # after the last request: drained, never parsed
        self.now, self.fed = now, len(data)
        if self.in_head:
            self.head_bound += len(data)
        begun, self.clean = self.begun, True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._failed(exc)
            return
        except httptools.HttpParserUpgrade:  # refused in on_headers_complete: a safety net
            self._refuse(BadRequest("protocol upgrades are not supported"))
            return
        if self.in_head:  # a head still incomplete: its deadline, and maybe its size
            if self.deadline.phase != HEAD:
                self.deadline.arm(HEAD, self.head_due)
            if self.begun == begun or self.head_at_start:  # all of the bytes are head
                self.head_fed += len(data)
                if self.head_fed > self.bounds.header_bytes:
                    self._refuse(_too_large_head(self.bounds))
        elif self.request is not None and not self.dispatched:  # a body still to come
            self.deadline.arm(BODY, now + self.bounds.body_s)  # the gap starts again

    def _failed(self, exc: httptools.HttpParserError) -> None:
        if self.refusal is not None:
            self.reading = False
            self.events.refuse(self.refusal)
        elif self.reading:  # else: bytes after the last request, ignored
            error: ProxyError = BadRequest(f"the request is not valid HTTP/1.1: {exc}")
            if str(exc) == "Invalid HTTP version":
                error = VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are supported")
            self._refuse(error)

    def _refuse(self, error: ProxyError, request_id: str = "-") -> None:
        self.reading = False
        self.events.refuse(error.to_answer(request_id))

    def _stop(self, error: ProxyError, request_id: str = "-") -> NoReturn:
        self.refusal = error.to_answer(request_id)
        raise _Refused

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if not self.reading:
            raise _Refused  # bytes after the last request (`Connection: close`, a 413)
        self._begin()
        limits = self.limits_now()
        if limits is not self.bounds.limits:  # a reload
            self.bounds = Bounds(limits)
        self.in_head, self.head_at_start, self.head_bound = True, self.clean, self.fed
        self.begun += 1
        self.head_due = self.now + self.bounds.header_s  # armed if the bytes fed end mid-head

    def on_url(self, url: bytes) -> None:
        self.url.append(url)
        self.url_size += len(url)
        if self.url_size > self.bounds.url_bytes:
            limit = self.bounds.url_bytes
            self._stop(UriTooLong(f"the request-target is longer than {limit} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:  # a trailer field (RFC 9112 §7.1.2): dropped, counted as head
            self.trailers += len(name) + len(value) + 4
            if self.trailers > self.bounds.header_bytes:
                self._stop(_too_large_head(self.bounds))
            return
        text = value.decode("latin-1")
        self.header_list.append((name.decode("latin-1"), text))
        size = len(name)
        if size <= _LONGEST:
            noted = _BY_LENGTH[size]
            if (
                noted is not None
                and name[0] | 32 == noted[0]
                and (name == noted[1] or name.lower() == noted[2])
            ):
                kind = noted[3]
                if kind == _HOST:
                    self.hosts += 1
                    self.host = text
                elif kind == _LENGTH:
                    self.length = text
                else:
                    self._note(kind, text)

    def _note(self, kind: int, value: str) -> None:
        """Keep what the rules need of a Connection, Transfer-Encoding, Expect or Upgrade."""
        if kind == _CONNECTION:
            self.connection = True
        elif kind == _CODING:
            self.coding = value if self.coding is None else f"{self.coding}, {value}"
        elif kind == _EXPECT:
            self.expect = value.strip(" \t").lower() == "100-continue"
        else:
            self.upgrade = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser, bounds = self.parser, self.bounds
        method = parser.get_method().decode("ascii", "replace")
        headers = CIMultiDict(self.header_list)
        version = "1.1"
        if self.connection or not parser.should_keep_alive():
            version = parser.get_http_version()
        url = self.url[0] if len(self.url) == 1 else b"".join(self.url)
        target = url.decode("latin-1")
        try:
            if self.head_bound > bounds.header_bytes or len(self.header_list) > bounds.headers:
                self._measure(method)
            check_head(version, method, self.hosts, self.host, self.coding, self.upgrade)
            if not target.startswith("/") or "#" in target:
                target = origin_form(target)
        except ProxyError as exc:
            self._stop(exc, headers.get("X-Request-ID", "-"))
        self.http10 = version == "1.0"
        self.request = Request(method, target, headers, b"", self.now)
        length = self.length
        if length is not None and length.isdigit() and int(length) > bounds.body_bytes:
            self._dispatch_too_large()
            return
        if self.expect and not self.http10:
            self.events.expect_continue()

    def _measure(self, method: str) -> None:
        """Raise 431 when the request line and header block are over the limits."""
        lines = self.header_list
        size = len(method) + self.url_size + 12 + sum(len(n) + len(v) + 4 for n, v in lines)
        if size > self.bounds.header_bytes or len(lines) > self.bounds.headers:
            raise _too_large_head(self.bounds)

    def on_body(self, body: bytes) -> None:
        if self.dispatched:
            return
        self.size += len(body)
        if self.size > self.bounds.body_bytes:
            self._dispatch_too_large()
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.clean = False
        if self.dispatched or self.request is None:
            return
        self.request.body = b"".join(self.chunks)
        keep = self.parser.should_keep_alive()
        self._dispatch(self.request, (KEEP_10 if self.http10 else KEEP) if keep else CLOSE)

    def _dispatch_too_large(self) -> None:
        assert self.request is not None
        self.request.too_large, self.chunks = True, []
        self._dispatch(self.request, CLOSE)  # the unread body makes the stream unusable

    def _dispatch(self, request: Request, connection: bytes) -> None:
        self.dispatched = True
        if connection == CLOSE:
            self.reading = False
        self.events.dispatch(request, connection)


def _too_large_head(bounds: Bounds) -> HeadersTooLarge:
    return HeadersTooLarge(
        f"the request head is over {bounds.header_bytes} bytes or {bounds.headers} lines"
    )
