"""A batch of commands to one Redis in one write, encoded here (RESP) rather than by redis-py.

The group commit (`batch`) sends every enqueue of a moment as one batch, so encoding sits on
the async hot path: redis-py's general `pack_command` takes ~25 us for one enqueue's
arguments, this one a few. A standalone Redis gets the batch on the group commit's own
connection (`pipe`); otherwise (TLS, Sentinel) `exchange` sends it on a connection borrowed
from the client's pool, which keeps its settings, and reads the replies with redis-py's own
parser. A Redis Cluster client goes through redis-py's cluster pipeline instead.
"""

from __future__ import annotations

from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis


def _bulk(value: Any) -> bytes:
    """One argument as redis-py would encode it: bytes as they are, str as UTF-8, numbers
    by `repr` (floats) or `str` (ints)."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif isinstance(value, float):
        data = repr(value).encode()
    else:
        data = str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def pack(*args: Any) -> bytes:
    """One command in RESP: `*<n>` then each argument as a bulk string."""
    return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))


async def exchange(client: Redis, commands: list[bytes]) -> list[Any]:
    """Send the packed `commands` in one write; one reply each, an error reply as its
    exception. A connection found dead (Redis restarted since it was pooled) is replaced
    once, as redis-py's own retry would."""
    try:
        return await _on_one_connection(client, commands)
    except redis_errors.ConnectionError:
        return await _on_one_connection(client, commands)


async def _on_one_connection(client: Redis, commands: list[bytes]) -> list[Any]:
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_packed_command(b"".join(commands), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except redis_errors.ResponseError as exc:  # the stream stays in step
                replies.append(exc)
        return replies
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
