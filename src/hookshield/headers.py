"""Header rules: what the target receives and what the platform gets back (SPEC §3, §4).

Hop-by-hop headers (and any named in `Connection`) never cross the proxy; neither do
hookshield's own `X-Hookshield-*` control headers. A `HeaderPolicy` is built once per
route with its `add`/`remove` lists folded into lower-case sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from hookshield.config.models import HeadersConfig

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
        "te", "trailer", "transfer-encoding", "upgrade",
    }
)  # fmt: skip
# Set anew for the outbound request by the HTTP client: never copied from the platform.
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length"}
CONTROL_PREFIX = "x-hookshield-"


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(","))
    return named


def _kept(name: str, dropped: frozenset[str] | set[str]) -> bool:
    lower = name.lower()
    return lower not in dropped and not lower.startswith(CONTROL_PREFIX)


class HeaderPolicy:
    """A route's outbound header rules, precomputed."""

    def __init__(self, config: HeadersConfig) -> None:
        self.dropped = _NOT_FORWARDED | {name.lower() for name in config.remove}
        self.added = config.add

    def outbound(
        self, incoming: CIMultiDictProxy[str], extra: Iterable[tuple[str, str]]
    ) -> CIMultiDict[str]:
        """The headers sent to the target: the platform's, filtered, then `add`, then `extra`."""
        dropped = self.dropped
        if "Connection" in incoming:
            dropped = dropped | _connection_named(incoming)
        headers = CIMultiDict((k, v) for k, v in incoming.items() if _kept(k, dropped))
        for name, value in self.added:
            headers[name] = value
        for name, value in extra:
            headers[name] = value
        return headers


def returned(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The target's response headers as passed back to the platform."""
    dropped: set[str] | frozenset[str] = _NOT_RETURNED
    if "Connection" in upstream:
        dropped = _NOT_RETURNED | _connection_named(upstream)
    return CIMultiDict((k, v) for k, v in upstream.items() if _kept(k, dropped))
