"""One pipelined connection to a standalone Redis for the group commit (`batch`).

A batch of packed commands (`resp.pack`) leaves in one write; the replies are parsed by
hiredis as they arrive and handed back in order, one list per batch. redis-py's pooled
connection spends ~120 us of Python per exchange (pool, timers, one read call per reply);
this spends one write and one parse. It serves `redis://` and `unix://` URLs; TLS
(`rediss://`), Sentinel and Cluster keep going through redis-py (`resp.exchange`, the
cluster pipeline).

Every failure means "not acknowledged": a lost connection fails the batches in flight
(their writes may or may not have happened, as with any store that stops answering) and the
next batch connects again; a reply that does not come within `timeout_s` closes the
connection, since the replies after it would be out of step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from hookshield.queue.resp import pack


def _reply_error(message: str) -> Exception:
    """An error reply as redis-py would raise it, for the kinds the store tells apart."""
    if message.startswith("NOSCRIPT"):
        return redis_errors.NoScriptError(message)
    return redis_errors.ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=_reply_error)
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.waiting:
            reply = self.reader.gets()
            if reply is False:
                return
            answer, expected, replies = self.waiting[0]
            replies.append(reply)
            if len(replies) == expected:
                self.waiting.popleft()
                if not answer.done():
                    answer.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.waiting:
            answer = self.waiting.popleft()[0]
            if not answer.done():
                answer.set_exception(redis_errors.ConnectionError("redis closed the connection"))

    @property
    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def send(self, commands: list[bytes]) -> asyncio.Future[list[Any]]:
        if not self.usable or self.transport is None:
            raise redis_errors.ConnectionError("the connection to redis is closed")
        answer: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((answer, len(commands), []))
        self.transport.write(b"".join(commands))
        return answer


class Pipe:
    """Connects on first use and again after a loss; `exchange` answers one reply per command
    (an error reply as its exception)."""

    def __init__(self, address: dict[str, Any], connect_s: float, timeout_s: float) -> None:
        self.address, self.connect_s, self.timeout_s = address, connect_s, timeout_s
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    @staticmethod
    def for_client(client: Redis, connect_s: float, timeout_s: float) -> Pipe | None:
        """A pipe to the Redis `client` talks to, when it is a plain TCP or Unix socket."""
        pool = client.connection_pool
        if pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        keys = ("host", "port", "path", "db", "username", "password")
        address = {k: pool.connection_kwargs[k] for k in keys if k in pool.connection_kwargs}
        return Pipe(address, connect_s, timeout_s)

    async def exchange(self, commands: list[bytes]) -> list[Any]:
        protocol = await self._connected()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await protocol.send(commands)
        except TimeoutError:
            self.close()  # later replies would answer the wrong batch
            raise redis_errors.TimeoutError("redis did not answer in time") from None

    async def _connected(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is None or not self._protocol.usable:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        loop, address = asyncio.get_running_loop(), self.address
        try:
            async with asyncio.timeout(self.connect_s):
                if "path" in address:
                    _, protocol = await loop.create_unix_connection(_Protocol, address["path"])
                else:
                    _, protocol = await loop.create_connection(
                        _Protocol, address.get("host", "localhost"), address.get("port", 6379)
                    )
                await self._handshake(protocol)
        except (OSError, TimeoutError) as exc:
            raise redis_errors.ConnectionError(f"cannot connect to redis: {exc}") from exc
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        """AUTH and SELECT, as the URL asks; a refusal closes the connection."""
        commands = []
        if self.address.get("password") is not None:
            user = self.address.get("username")
            secret = self.address["password"]
            commands.append(pack("AUTH", user, secret) if user else pack("AUTH", secret))
        if self.address.get("db"):
            commands.append(pack("SELECT", self.address["db"]))
        if not commands:
            return
        for reply in await protocol.send(commands):
            if isinstance(reply, Exception):
                assert protocol.transport is not None
                protocol.transport.close()
                raise redis_errors.ConnectionError(f"redis refused the connection: {reply}")

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
