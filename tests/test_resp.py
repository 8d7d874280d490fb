"""The hot path's own RESP encoder writes exactly what redis-py's general one does."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from hookshield.queue.resp import pack

argument = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=50),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(st.lists(argument, min_size=1, max_size=20))
def test_pack_matches_redis_py(args: list[Any]) -> None:
    """Any mix of bytes, text, ints and floats: byte for byte redis-py's encoding."""
    expected = b"".join(Connection().pack_command("EVALSHA", *args))
    assert pack("EVALSHA", *args) == expected
