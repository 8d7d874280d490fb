"""The group commit's own Redis connection, against real redis-server processes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from hookshield.queue.pipe import Pipe
from hookshield.queue.resp import pack
from tests.redis_servers import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path, "--unixsocket", str(tmp_path / "redis.sock")).start()
    yield started
    started.stop()


def pipe_for(url: str, timeout_s: float = 2.0) -> Pipe:
    pipe = Pipe.for_client(Redis.from_url(url), connect_s=1.0, timeout_s=timeout_s)
    assert pipe is not None
    return pipe


async def test_concurrent_batches_get_their_own_replies_in_order(server: RedisServer) -> None:
    """Two batches in flight at once: each gets its own replies, in its commands' order."""
    pipe = pipe_for(server.url)
    first = [pack("SET", "a", "1"), pack("INCR", "a"), pack("GET", "a")]
    second = [pack("SET", "b", "x"), pack("APPEND", "b", "yz"), pack("GET", "b")]
    one, two = await asyncio.gather(pipe.exchange(first), pipe.exchange(second))
    pipe.close()
    assert (one, two) == ([b"OK", 2, b"2"], [b"OK", 3, b"xyz"])


async def test_an_error_reply_is_its_exception_and_the_rest_stay_in_step(
    server: RedisServer,
) -> None:
    """A refused command answers its exception (NOSCRIPT as redis-py's NoScriptError); the
    replies after it are still the right ones."""
    pipe = pipe_for(server.url)
    replies = await pipe.exchange(
        [pack("INCR", "n"), pack("EVALSHA", "0" * 40, 0), pack("HGET", "n", "f"), pack("INCR", "n")]
    )
    pipe.close()
    assert replies[0] == 1
    assert isinstance(replies[1], redis_errors.NoScriptError)
    assert isinstance(replies[2], redis_errors.ResponseError)  # WRONGTYPE
    assert replies[3] == 2


async def test_password_and_database_come_from_the_url(server: RedisServer) -> None:
    """AUTH and SELECT as the URL says; a wrong password is a connection error."""
    with redis.Redis(port=server.port) as admin:
        admin.config_set("requirepass", "s3cret")
    pipe = pipe_for(f"redis://:s3cret@127.0.0.1:{server.port}/3")
    assert await pipe.exchange([pack("SET", "k", "in-3")]) == [b"OK"]
    pipe.close()
    with redis.Redis(port=server.port, password="s3cret", db=3) as check:
        assert check.get("k") == b"in-3"
    wrong = pipe_for(f"redis://:nope@127.0.0.1:{server.port}/0")
    with pytest.raises(redis_errors.ConnectionError, match="refused"):
        await wrong.exchange([pack("PING")])


async def test_unix_socket_url(server: RedisServer, tmp_path: Path) -> None:
    """unix:// URLs go through the pipe too."""
    pipe = pipe_for(f"unix://{tmp_path / 'redis.sock'}?db=1")
    assert await pipe.exchange([pack("SET", "u", "1"), pack("GET", "u")]) == [b"OK", b"1"]
    pipe.close()


async def test_a_restarted_redis_is_connected_to_again(server: RedisServer) -> None:
    """While Redis is down an exchange fails with a connection error; after it restarts,
    the next one connects again."""
    pipe = pipe_for(server.url)
    assert await pipe.exchange([pack("PING")]) == [b"PONG"]
    server.kill()
    with pytest.raises(redis_errors.ConnectionError):
        await pipe.exchange([pack("PING")])
    server.start()
    assert await pipe.exchange([pack("PING")]) == [b"PONG"]
    pipe.close()


async def test_no_reply_in_time_is_a_timeout_and_drops_the_connection() -> None:
    """A server that never answers: a TimeoutError after timeout_s, and the connection is
    closed (its late replies would answer the wrong batch)."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = pipe_for(f"redis://127.0.0.1:{port}/0", timeout_s=0.1)
    with pytest.raises(redis_errors.TimeoutError):
        await pipe.exchange([pack("PING")])
    assert pipe._protocol is None
    for writer in accepted:
        writer.close()
    server.close()
    await server.wait_closed()


def test_tls_urls_are_left_to_redis_py() -> None:
    """rediss:// (TLS) gets no pipe: redis-py's own connection carries its TLS settings."""
    assert Pipe.for_client(Redis.from_url("rediss://127.0.0.1:6380/0"), 1.0, 2.0) is None
