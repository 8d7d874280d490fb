"""Header rules: what the target receives and what the platform gets back (SPEC §3, §4).

Hop-by-hop headers (and any named in `Connection`) never cross the proxy; neither do
hookshield's own `X-Hookshield-*` control headers, nor `Expect` (hookshield meets the
expectation itself). Platform header names holding `_` are not forwarded (SPEC §9, nginx's
`underscores_in_headers off`) unless the route sets `headers.allow_underscores`: a target
that maps `-` and `_` to one name (CGI's and WSGI's `HTTP_X_USER_ID`) would take a forged
`X_User_Id` for `X-User-Id`. A `HeaderPolicy` is built once per route with its
`add`/`remove` lists folded into lower-case sets.

On the data plane each header name's verdict (keep, drop, or `Connection`) is looked up
by the name as received, learnt on first sight: the names a platform and its targets send
repeat on every call, so lower-casing and set tests are paid once per spelling, not per
call. Only a `Connection` header that names other headers takes the general path.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from multidict import CIMultiDict

from hookshield.config.models import HeadersConfig

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "transfer-encoding", "upgrade",
    }
)  # fmt: skip
# Set anew for the outbound request by the HTTP client: never copied from the platform.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}
CONTROL_PREFIX = "x-hookshield-"
_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})  # a `Connection` value naming no header
_PLAIN_CONNECTION_RAW = frozenset(value.encode() for value in _PLAIN_CONNECTION)

Pairs = list[tuple[str, str]]
RawPairs = list[tuple[bytes, bytes]]

KEEP, DROP, CONNECTION = 0, 1, 2
_MAX_LEARNT = 512  # name spellings remembered per rule; past that, verdicts are worked out anew
Name = TypeVar("Name", str, bytes)


class Verdicts(dict[Name, int], Generic[Name]):
    """Header name as received -> KEEP, DROP or CONNECTION, learnt on first lookup."""

    def __init__(
        self, dropped: frozenset[Name], control: Name, connection: Name, underscore: Name | None
    ) -> None:
        super().__init__()
        self.dropped: frozenset[Name] = dropped
        self.control: Name = control
        self.connection: Name = connection
        self.underscore: Name | None = underscore  # names holding it are dropped (None: kept)

    def __missing__(self, name: Name) -> int:
        lower = name.lower()
        if lower == self.connection:
            verdict = CONNECTION
        elif (
            lower in self.dropped
            or lower.startswith(self.control)
            or (self.underscore is not None and self.underscore in name)
        ):
            verdict = DROP
        else:
            verdict = KEEP
        if len(self) < _MAX_LEARNT:
            self[name] = verdict
        return verdict


def _connection_named(headers: CIMultiDict[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(","))
    return named


def _kept(headers: CIMultiDict[str], dropped: frozenset[str], underscores: bool = True) -> Pairs:
    """The general rule: `dropped`, the names `Connection` lists, control headers and (when
    not `underscores`) names holding `_` go."""
    if "Connection" in headers:
        dropped = dropped | _connection_named(headers)
    return [
        (name, value)
        for name, value in headers.items()
        if (lower := name.lower()) not in dropped
        and not lower.startswith(CONTROL_PREFIX)
        and (underscores or "_" not in name)
    ]


class HeaderPolicy:
    """A route's header rules, precomputed. `replaced` names the headers the proxy always
    sets itself on the request (request id, timeout, signatures): a platform's copy is
    dropped. `answered` names those it sets on the answer (rate-limit headers): a target's
    copy is dropped."""

    def __init__(
        self, config: HeadersConfig, replaced: Iterable[str] = (), answered: Iterable[str] = ()
    ) -> None:
        own = self.replaced = frozenset(name.lower() for name in replaced)
        self.added: Pairs = [(k, v) for k, v in config.add if k.lower() not in own]
        self.dropped = (
            _NOT_FORWARDED
            | {name.lower() for name in config.remove}
            | {name.lower() for name, _ in self.added}
            | own
        )
        self.not_returned = _NOT_RETURNED | {name.lower() for name in answered}
        self.underscores = config.allow_underscores
        underscore = None if self.underscores else "_"
        self._outbound = Verdicts(self.dropped, CONTROL_PREFIX, "connection", underscore)
        raw_dropped = frozenset(name.encode("latin-1") for name in self.not_returned)
        self._returned = Verdicts(raw_dropped, CONTROL_PREFIX.encode(), b"connection", None)

    def outbound(self, incoming: CIMultiDict[str], extra: Pairs) -> Pairs:
        """The headers sent to the target: the platform's, filtered, then `add`, then `extra`."""
        verdicts, kept = self._outbound, []
        for name, value in incoming.items():
            verdict = verdicts[name]
            if verdict == KEEP:
                kept.append((name, value))
            elif verdict == CONNECTION and value.lower() not in _PLAIN_CONNECTION:
                kept = _kept(incoming, self.dropped, self.underscores)
                break
        return kept + self.added + extra

    def returned(self, upstream: CIMultiDict[str]) -> CIMultiDict[str]:
        """The target's answer headers as passed back to the platform."""
        return CIMultiDict(_kept(upstream, self.not_returned))

    def returned_lines(self, raw: RawPairs) -> bytes:
        """`returned` on the target's raw header lines, encoded as they go back (the data
        plane's path: no decoding, no multidict; bytes pass through as received)."""
        verdicts, lines = self._returned, []
        for name, value in raw:
            verdict = verdicts[name]
            if verdict == KEEP:
                lines.append(name + b": " + value + b"\r\n")
            elif verdict == CONNECTION and value.lower() not in _PLAIN_CONNECTION_RAW:
                return self._returned_named(raw)
        return b"".join(lines)

    def _returned_named(self, raw: RawPairs) -> bytes:
        """`returned_lines` when a `Connection` header names headers to drop."""
        decoded = CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)
        kept = self.returned(decoded).items()
        return "".join(f"{name}: {value}\r\n" for name, value in kept).encode("latin-1")
