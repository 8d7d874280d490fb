"""Header rules: what the target receives and what the platform gets back (SPEC §3, §4).

Hop-by-hop headers (and any named in `Connection`) never cross the proxy; neither do
hookshield's own `X-Hookshield-*` control headers. A `HeaderPolicy` is built once per
route with its `add`/`remove` lists folded into lower-case sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict

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


def _connection_named(headers: CIMultiDict[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall("Connection", ()):
        named.update(token.strip().lower() for token in value.split(","))
    return named


Pairs = list[tuple[str, str]]


class HeaderPolicy:
    """A route's outbound header rules, precomputed. `replaced` names the headers the
    proxy always sets itself (request id, timeout, signatures): a platform's copy is dropped."""

    def __init__(self, config: HeadersConfig, replaced: Iterable[str] = ()) -> None:
        own = {name.lower() for name in replaced}
        self.added: Pairs = [(k, v) for k, v in config.add if k.lower() not in own]
        self.dropped = (
            _NOT_FORWARDED
            | {name.lower() for name in config.remove}
            | {name.lower() for name, _ in self.added}
            | own
        )

    def outbound(self, incoming: CIMultiDict[str], extra: Pairs) -> Pairs:
        """The headers sent to the target: the platform's, filtered, then `add`, then `extra`."""
        dropped = self.dropped
        if "Connection" in incoming:
            dropped = dropped | _connection_named(incoming)
        kept = [
            (name, value)
            for name, value in incoming.items()
            if (lower := name.lower()) not in dropped and not lower.startswith(CONTROL_PREFIX)
        ]
        return kept + self.added + extra


def returned(upstream: CIMultiDict[str]) -> CIMultiDict[str]:
    """The target's response headers as passed back to the platform."""
    dropped: set[str] | frozenset[str] = _NOT_RETURNED
    if "Connection" in upstream:
        dropped = _NOT_RETURNED | _connection_named(upstream)
    return CIMultiDict(
        (name, value)
        for name, value in upstream.items()
        if (lower := name.lower()) not in dropped and not lower.startswith(CONTROL_PREFIX)
    )
