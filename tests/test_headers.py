"""Header rules (`headers`): the learnt fast paths equal the general rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from hookshield.config.models import HeadersConfig
from hookshield.headers import HeaderPolicy, _kept

NAMES = st.sampled_from(
    [b"Connection", b"connection", b"Keep-Alive", b"Transfer-Encoding", b"Content-Length",
     b"X-Hookshield-Outcome", b"x-hookshield-x", b"X-RateLimit-Limit", b"X-App", b"x-app",
     b"Set-Cookie", b"Server", b"X-Named"]
)  # fmt: skip
VALUES = st.sampled_from([b"1", b"keep-alive", b"close, X-Named", b" X-App ,x-named", b"caf\xe9"])


@given(st.lists(st.tuples(NAMES, VALUES), max_size=12))
def test_returned_lines_equal_returned_encoded(raw: list[tuple[bytes, bytes]]) -> None:
    """`returned_lines` on raw pairs == `returned` on the decoded multidict, encoded."""
    policy = HeaderPolicy(HeadersConfig(), answered=("X-RateLimit-Limit",))
    decoded = CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)
    expected = "".join(f"{n}: {v}\r\n" for n, v in policy.returned(decoded).items())
    for _ in range(2):  # first sight of each name, then learnt
        assert policy.returned_lines(raw) == expected.encode("latin-1")


@given(st.lists(st.tuples(NAMES, VALUES), max_size=12), st.lists(NAMES, max_size=3))
def test_outbound_equals_the_general_rule(
    raw: list[tuple[bytes, bytes]], removed: list[bytes]
) -> None:
    """`outbound` (verdicts learnt per name) == the general filter, then `add`, then extra."""
    config = HeadersConfig(add=(("X-Env", "test"),), remove=tuple(n.decode() for n in removed))
    policy = HeaderPolicy(config, replaced=("X-Request-ID",))
    incoming = CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)
    extra = [("X-Request-ID", "r1")]
    for _ in range(2):  # first sight of each name, then learnt
        expected = _kept(incoming, policy.dropped) + policy.added + extra
        assert policy.outbound(incoming, extra) == expected
