"""The platform side's HTTP rules (SPEC §9): which request heads are served, and how
answers are framed.

llhttp (strict, its default) already refuses what RFC 9112 says a server must refuse in
the syntax: obs-fold, whitespace before a colon, bare CR or LF, control characters,
`Content-Length` with `Transfer-Encoding`, repeated or invalid `Content-Length`, chunked
not last. `check_head` adds what it lets through: versions other than 1.0 and 1.1, the
`Host` rules of HTTP/1.1, `Transfer-Encoding` on HTTP/1.0 or other than plain `chunked`,
`Upgrade` and `CONNECT`. `origin_form` turns the request-target into path and query.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Final

from hookshield.errors import BadRequest, VersionNotSupported
from hookshield.message import Answer

OUTCOME_HEADER: Final = "X-Hookshield-Outcome"  # on every data-plane answer (SPEC §4)
# What an answer says about the connection: nothing (HTTP/1.1 keep-alive), keep-alive
# (HTTP/1.0 keep-alive must say so, RFC 9112 §9.3), or close.
KEEP: Final = b""
KEEP_10: Final = b"Connection: keep-alive\r\n"
CLOSE: Final = b"Connection: close\r\n"
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

_STATUS_LINES: Final = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
# RFC 9110 §7.2: uri-host [":" port], an IP literal or a reg-name; not empty, as the
# platform's requests are in origin-form, whose target URI has hookshield as authority.
_HOST: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(:[0-9]*)?")
_HOSTS_LEARNT: Final = 256
_valid_hosts: Final[dict[str, bool]] = {}


def check_head(
    version: str, method: str, hosts: int, host: str, coding: str | None, upgrade: bool
) -> None:
    """Raise the refusal of a request head hookshield does not serve (RFC 9112 §2.3, §3.2,
    §6.1; RFC 9110 §7.8, §9.3.6); return when it is served. `hosts`: how many Host lines
    (`host`, the last); `coding`: the Transfer-Encoding values; `upgrade`: an Upgrade line."""
    if version != "1.1":
        if version != "1.0":
            raise VersionNotSupported(f"HTTP/{version} is not supported: use HTTP/1.1")
        if coding is not None:
            raise BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request")
    elif not hosts:
        raise BadRequest("an HTTP/1.1 request needs a Host header")
    if hosts > 1:
        raise BadRequest("a request must not have more than one Host header")
    if hosts and not (_valid_hosts.get(host) or _valid_host(host)):
        raise BadRequest("the Host header is not a valid host[:port]")
    if coding is not None and coding.strip(" \t").lower() != "chunked":
        raise BadRequest("only the chunked transfer coding is supported")
    if upgrade or method == "CONNECT":
        raise BadRequest("protocol upgrades and CONNECT are not supported")


def _valid_host(host: str) -> bool:
    """`host` is a valid Host value; valid ones are learnt (a platform sends one or two)."""
    valid = _HOST.fullmatch(host) is not None
    if valid and len(_valid_hosts) < _HOSTS_LEARNT:
        _valid_hosts[host] = True
    return valid


def origin_form(text: str) -> str:
    """The request-target as path and query (RFC 9112 §3.2): origin-form as sent, the
    fragment cut off; absolute-form (`http://host/path?q`) reduced to its path and query.
    Asterisk-form and authority-form route nowhere: 400."""
    if "#" in text:
        text = text.partition("#")[0]
    if text.startswith("/"):
        return text
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadRequest("the request-target must be a path or an http(s) URL")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    path = rest[cut:]
    return path if path.startswith("/") else "/" + path


def encode_answer(answer: Answer, connection: bytes, head: bool = False) -> bytes:
    """Status line, the passed and own headers, the outcome, `Content-Length` (none for
    1xx/204/304; a HEAD answer's as the target sent it), `connection`, body."""
    status = answer.status
    own = "".join([f"{name}: {value}\r\n" for name, value in answer.headers.items()])
    if answer.outcome:
        own += f"{OUTCOME_HEADER}: {answer.outcome}\r\n"
    parts = [
        _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status,
        answer.passed,
        own.encode("latin-1", "replace"),
    ]
    body = answer.body
    if status < 200 or status in (204, 304):
        body = b""
    elif answer.length is None:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    elif answer.length >= 0:
        parts.append(b"Content-Length: %d\r\n" % answer.length)
    parts.append(connection)
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)
