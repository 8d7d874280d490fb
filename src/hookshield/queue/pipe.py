"""One pipelined connection to a Redis for the group commit (`batch`).

A batch of packed commands (`resp.pack`) leaves in one write; the replies are parsed by
hiredis as they arrive and handed back in order, one list per batch. redis-py's pooled
connection spends ~120 us of Python per exchange (pool, timers, one read call per reply);
this spends one write and one parse. It serves `redis://` and `unix://` URLs, and the
master behind Sentinel (`locate` finds its address at every connect, `role` checks with
`ROLE` that the node is a master before anything is written to it); TLS (`rediss://`)
and Cluster keep going through redis-py (`resp.exchange`, the cluster pipeline).

Every failure means "not acknowledged". `NotSent` says more: nothing of the batch reached
Redis (it could not connect, the handshake failed, the node is not the master), so none of
its writes happened and it may be sent again elsewhere. A lost connection fails the
batches in flight (their writes may or may not have happened, as with any store that stops
answering) and the next batch connects again. A caller waits at most `timeout_s` in all,
connecting included (less when its `deadline` comes sooner); a reply that does not come
in time resets the connection (TCP RST), since the replies after it would be out of step:
the reset also makes the kernel drop what a stalled Redis had not read yet, so a write of a
timed-out batch is not applied minutes later by a Redis that was paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from hookshield import logs
from hookshield.queue.resp import pack

Locate = Callable[[], Awaitable[tuple[str, int]]]  # the master's (host, port), asked anew
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class NotSent(redis_errors.ConnectionError):
    """Nothing of the batch reached Redis: none of its writes happened."""


class NotMaster(NotSent):
    """The node connected to is not (or no longer) a master."""


def _reply_error(message: str) -> Exception:
    """An error reply as redis-py would raise it, for the kinds the store tells apart."""
    if message.startswith("NOSCRIPT"):
        return redis_errors.NoScriptError(message)
    if message.startswith("READONLY"):
        return redis_errors.ReadOnlyError(message)
    return redis_errors.ResponseError(message)


def reset_transport(transport: asyncio.Transport) -> None:
    """Close with a TCP RST: unread bytes on the other side are dropped, not served later."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=_reply_error)
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = deque()
        self.lost = False
        self.peer: tuple[str, int] | None = None

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
            raise NotSent("the connection to redis is closed")
        answer: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiting.append((answer, len(commands), []))
        self.transport.write(b"".join(commands))
        return answer


class Pipe:
    """Connects on first use and again after a loss; `exchange` answers one reply per command
    (an error reply as its exception)."""

    def __init__(
        self,
        address: dict[str, Any],
        connect_s: float,
        timeout_s: float,
        locate: Locate | None = None,
        role: bool = False,
    ) -> None:
        self.address, self.connect_s, self.timeout_s = address, connect_s, timeout_s
        self.locate, self.role = locate, role
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

    @property
    def peer(self) -> tuple[str, int] | None:
        """The (host, port) of the node connected to now, if connected over TCP."""
        protocol = self._protocol
        return protocol.peer if protocol is not None and protocol.usable else None

    async def exchange(self, commands: list[bytes], deadline: float | None = None) -> list[Any]:
        """One reply per command, within `timeout_s` (or by the loop time `deadline`, when
        sooner), connecting first if need be."""
        loop = asyncio.get_running_loop()
        limit = loop.time() + self.timeout_s
        if deadline is not None and deadline < limit:
            if deadline <= loop.time():
                raise NotSent("no time was left to send it")
            limit = deadline
        sent: _Protocol | None = None
        try:
            async with asyncio.timeout_at(limit):
                protocol = await self._connected()
                answer = protocol.send(commands)
                sent = protocol
                return await answer
        except TimeoutError:
            if sent is None:
                raise NotSent("redis did not accept a connection in time") from None
            self._drop(sent)  # later replies would answer the wrong batch
            raise redis_errors.TimeoutError("redis did not answer in time") from None
        except asyncio.CancelledError:
            if sent is not None:
                self._drop(sent)
            raise

    async def _connected(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is None or not self._protocol.usable:
                self._protocol = await self._connect()
            return self._protocol

    async def _connect(self) -> _Protocol:
        loop, address = asyncio.get_running_loop(), dict(self.address)
        try:
            async with asyncio.timeout(self.connect_s):
                if self.locate is not None:
                    address["host"], address["port"] = await self.locate()
                if "path" in address:
                    _, protocol = await loop.create_unix_connection(_Protocol, address["path"])
                else:
                    host, port = address.get("host", "localhost"), address.get("port", 6379)
                    _, protocol = await loop.create_connection(_Protocol, host, port)
                    protocol.peer = (str(host), int(port))
                try:
                    await self._handshake(protocol)
                except BaseException:
                    if protocol.transport is not None:
                        protocol.transport.close()
                    raise
        except (OSError, TimeoutError, redis_errors.ConnectionError) as exc:
            if isinstance(exc, NotSent):
                raise
            raise NotSent(f"cannot connect to redis: {exc}") from exc
        return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        """AUTH and SELECT, as the URL asks, and `ROLE` when the node must be a master; a
        refusal closes the connection."""
        commands = []
        if self.address.get("password") is not None:
            user = self.address.get("username")
            secret = self.address["password"]
            commands.append(pack("AUTH", user, secret) if user else pack("AUTH", secret))
        if self.address.get("db"):
            commands.append(pack("SELECT", self.address["db"]))
        if self.role:
            commands.append(pack("ROLE"))
        if not commands:
            return
        replies = await protocol.send(commands)
        role = replies.pop() if self.role else None
        for reply in replies:
            if isinstance(reply, Exception):
                raise NotSent(f"redis refused the connection: {reply}")
        if isinstance(role, Exception):  # an ACL without ROLE, a renamed command
            self.role = False
            logs.event("redis_role_unchecked", logging.WARNING, error=str(role),
                       detail="ROLE refused: writes follow Sentinel's events and READONLY only")  # fmt: skip
        elif role is not None and role[0] != b"master":
            raise NotMaster(f"redis at {protocol.peer} is a {role[0].decode()}, not the master")

    def _drop(self, protocol: _Protocol) -> None:
        if protocol.transport is not None:
            reset_transport(protocol.transport)
        if self._protocol is protocol:
            self._protocol = None

    def close(self, reset: bool = False) -> None:
        """Close the connection (the next exchange connects again, asking `locate` anew);
        `reset`: with a TCP RST, so that the node does not serve what it has not read yet."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            if reset:
                reset_transport(protocol.transport)
            else:
                protocol.transport.close()
