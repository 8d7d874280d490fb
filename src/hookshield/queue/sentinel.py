"""Following the Redis master under Sentinel: where it is, and whether a write may go now.

Why more than redis-py's own Sentinel support: it asks Sentinel for the master only when it
opens a connection, and a planned `SENTINEL FAILOVER` leaves the old master running, still
answering as a master, for ~10 s after a replica was promoted, until Sentinel turns it into
a replica and its resync wipes whatever was written to it meanwhile. Measured on Redis 7
with three sentinels: `+try-failover` comes ~180 ms before the replica is promoted and
`+switch-master` ~1 s after; the old master is demoted ~10 s later.

So `SentinelWatch` subscribes to every sentinel's events and stops writes (`open` cleared)
as soon as any of them says a failover of our master has begun (`+try-failover`, any
`+failover-state-*`, `+elected-leader`, `+selected-slave`, `+promoted-slave`,
`+failover-detected`, `+odown`): writes wait (within their caller's deadline) until
`+switch-master` names the new master, which the next connection checks with `ROLE`
before anything is written to it. `epoch` counts the stops: a batch sent before one and
answered after it may have been applied after the promotion, so the store does not
acknowledge it (`redis.RedisStore`). A failover that was aborted, or a stop whose source
went quiet, is ended by asking the sentinels again (`verify`): writes go again once the
sentinel that reported the failover answers that none is in progress (or, if it stays
silent, after `FORCE_OPEN_S`). A lost subscription is made again within a second; while
one is down, the role checks of the store (a `READONLY` reply, the replicas `ROLE` lists
after each batch) still stop writes to a demoted or isolated master.

Without `WAIT` nothing can promise that a write acknowledged by the master just before a
promotion had reached the replica; `queue.min_replicas_acked` is the setting for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import cast

import hiredis

from hookshield import logs, tasks
from hookshield.queue.pipe import NotSent, Pipe, reset_transport
from hookshield.queue.resp import pack

Address = tuple[str, int]

# Events of a failover in progress (or about to be: `+odown`): writes stop.
STOPPING = frozenset(
    {
        "+odown",
        "+try-failover",
        "+elected-leader",
        "+failover-state-select-slave",
        "+selected-slave",
        "+failover-state-send-slaveof-noone",
        "+failover-state-wait-promotion",
        "+promoted-slave",
        "+failover-state-reconf-slaves",
        "+failover-detected",
        "+failover-end",
        "+failover-end-for-timeout",
    }
)
SWITCH = "+switch-master"  # <name> <old ip> <old port> <new ip> <new port>: writes go again
BUSY_FLAGS = frozenset({"failover_in_progress", "o_down"})
WATCH_S = 1.0  # the watch loop's pace: subscriptions checked, a stop verified
STOPPED_WATCH_S = 0.2  # its pace while writes are stopped
PING_S = 3.0  # a subscription that did not answer a PING within this is made again
FORCE_OPEN_S = 15.0  # a stop whose sentinel stays silent ends after this (role checks remain)
ASK_S = 0.5  # a sentinel that does not answer a query within this is left out of it
FRESH_S = 2.0  # a master address verified this recently is used without asking again


def _master_of(channel: str, data: str) -> str | None:
    """The master name an event is about: `master <name> ...`, `... @ <name> ...`, or the
    first word of `+switch-master`."""
    words = data.split()
    if channel == SWITCH:
        return words[0] if words else None
    if words[:1] == ["master"] and len(words) > 1:
        return words[1]
    if "@" in words and words.index("@") + 1 < len(words):
        return words[words.index("@") + 1]
    return None


class _Subscription(asyncio.Protocol):
    """A PSUBSCRIBE to every event of one sentinel; each message goes to `on_event`."""

    def __init__(
        self, source: Address, password: str | None, on_event: Callable[[Address, str, str], None]
    ) -> None:
        self.source, self.on_event = source, on_event
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.password = password
        self.pong = asyncio.get_running_loop().time()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        hello = pack("AUTH", self.password) if self.password is not None else b""
        self.transport.write(hello + pack("PSUBSCRIBE", "*"))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, list) and reply[:1] == [b"pmessage"] and len(reply) == 4:
                channel, body = reply[2].decode(errors="replace"), reply[3]
                self.on_event(self.source, channel, body.decode(errors="replace"))
            elif isinstance(reply, list) and reply[:1] in ([b"pong"], [b"psubscribe"]):
                self.pong = asyncio.get_running_loop().time()
            elif isinstance(reply, Exception):
                logs.event(
                    "sentinel_refused",
                    logging.WARNING,
                    sentinel=_name(self.source),
                    error=str(reply),
                )
                if self.transport is not None:
                    self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    @property
    def alive(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def ping(self) -> None:
        if self.transport is not None and self.alive:
            self.transport.write(pack("PING"))


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class SentinelWatch:
    """The master of `service` as the sentinels say, and whether writes may go to it now."""

    def __init__(
        self,
        sentinels: list[Address],
        service: str,
        password: str | None,
        connect_s: float,
        timeout_s: float,
    ) -> None:
        self.sentinels, self.service, self.password = sentinels, service, password
        self.connect_s, self.timeout_s = connect_s, timeout_s
        self.master: Address | None = None
        self._verified_at = float("-inf")  # when the sentinels last named `master`
        self._config_seen = 0  # the newest configuration epoch a sentinel answered with
        self._config_floor = 0  # answers older than this (after a switch) are stale
        self.epoch = 0  # +1 at every stop and every change of master
        self.on_switch: list[Callable[[], None]] = []  # called when the master changed
        self._open = asyncio.Event()
        self._open.set()
        self._stopped_at = 0.0
        self._held_before = 0.0  # seconds writes were stopped, stops that ended included
        self._stopped_by: Address | None = None  # the sentinel whose event stopped writes
        self._subscriptions: dict[Address, _Subscription] = {}
        self._queries = {
            address: Pipe({"host": address[0], "port": address[1], "password": password},
                          ASK_S, ASK_S)
            for address in sentinels
        }  # fmt: skip
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return self._open.is_set()

    def held_s(self) -> float:
        """How long writes have been stopped in all, the stop under way included."""
        if self._open.is_set():
            return self._held_before
        return self._held_before + asyncio.get_running_loop().time() - self._stopped_at

    async def start(self) -> None:
        """Subscribe to every sentinel and learn where the master is (once, at first use)."""
        if self._task is not None:
            return
        await self._subscribe()
        await self.verify()
        self._task = tasks.service("redis-sentinel-watch", self._watch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for subscription in self._subscriptions.values():
            if subscription.transport is not None:
                subscription.transport.close()
        self._subscriptions.clear()
        for pipe in self._queries.values():
            pipe.close()

    async def wait_open(self, deadline: float) -> bool:
        """True once writes may go, False if they still may not at the loop time `deadline`."""
        if self._open.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._open.wait()
        return self._open.is_set()

    async def locate(self) -> Address:
        """The master's address for a new connection: asked of the sentinels (as redis-py's
        `SentinelManagedConnection` does) unless they named it within `FRESH_S` (the watch
        loop asks every `WATCH_S`); the last known one if none answers."""
        if self.master is None or asyncio.get_running_loop().time() - self._verified_at > FRESH_S:
            self._learn(await self._ask())
        if self.master is None:
            raise NotSent(f"no sentinel named the master of {self.service!r}")
        return self.master

    def stop(self, reason: str, source: Address | None = None) -> None:
        """No more writes until the master is known again (`+switch-master`, `verify`)."""
        if self._open.is_set():
            self._open.clear()
            self._stopped_at = asyncio.get_running_loop().time()
            self._stopped_by = source
            logs.event(
                "redis_writes_held", logging.WARNING, master=self._master_name, reason=reason
            )
        self.epoch += 1
        self._wake.set()

    async def confirm(self, node: Address) -> bool:
        """Every sentinel answers that `node` is the master and no failover is under way."""
        answers = await self._ask()
        return (
            len(answers) == len(self.sentinels)
            and not any(flags & BUSY_FLAGS for _, flags, _ in answers.values())
            and self._best(answers) == node
        )

    async def verify(self) -> None:
        """Ask the sentinels; let writes go again unless a failover is (or may be) under way."""
        answers = await self._ask()
        busy = [source for source, (_, flags, _) in answers.items() if flags & BUSY_FLAGS]
        if busy:
            self.stop("a sentinel reports a failover in progress", busy[0])
            return
        best = self._learn(answers)
        if self._open.is_set():
            return
        silent = self._stopped_by is not None and self._stopped_by not in answers
        waited = asyncio.get_running_loop().time() - self._stopped_at
        if best is not None and (not silent or waited >= FORCE_OPEN_S):
            self._resume("the sentinels report no failover in progress")

    def _event(self, source: Address, channel: str, data: str) -> None:
        if (channel not in STOPPING and channel != SWITCH and not channel.startswith("-")) or (
            _master_of(channel, data) != self.service
        ):
            return
        if channel == SWITCH:
            words = data.split()
            with contextlib.suppress(IndexError, ValueError):
                new = (words[3], int(words[4]))
                if new != self.master:  # answers of the configuration before are stale now
                    self._config_floor = self._config_seen + 1
                self._set_master(new)
                self._resume(f"{SWITCH} from sentinel {_name(source)}")
        elif channel in STOPPING:
            self.stop(f"{channel} from sentinel {_name(source)}", source)
        elif not self._open.is_set():  # -failover-abort-*, -odown, ...: ask whether it is over
            self._wake.set()

    def _set_master(self, address: Address) -> None:
        if address == self.master:
            return
        previous, self.master = self.master, address
        if previous is not None:
            self.epoch += 1  # batches in flight went to the old master
            logs.event("redis_master_changed", logging.WARNING, master=self._master_name,
                       previous=_name(previous), now=_name(address))  # fmt: skip
            for callback in self.on_switch:
                callback()

    def _resume(self, reason: str) -> None:
        if not self._open.is_set():
            self._held_before = self.held_s()
            self._open.set()
            self._stopped_by = None
            logs.event("redis_writes_resumed", master=self._master_name, reason=reason)

    @property
    def _master_name(self) -> str:
        return f"{self.service}@{_name(self.master)}" if self.master else self.service

    async def _ask(self) -> dict[Address, tuple[Address, frozenset[str], int]]:
        """Per sentinel that answered: the master's address, its flags, the config epoch."""
        replies = await asyncio.gather(
            *(self._ask_one(pipe) for pipe in self._queries.values()), return_exceptions=True
        )
        return {
            source: reply
            for source, reply in zip(self._queries, replies, strict=True)
            if isinstance(reply, tuple)
        }

    async def _ask_one(self, pipe: Pipe) -> tuple[Address, frozenset[str], int]:
        [reply] = await pipe.exchange([pack("SENTINEL", "MASTER", self.service)])
        if isinstance(reply, Exception):
            raise reply
        state = {
            key.decode(): value.decode() if isinstance(value, bytes) else value
            for key, value in zip(reply[::2], reply[1::2], strict=True)
        }
        flags = frozenset(state["flags"].split(","))
        return (state["ip"], int(state["port"])), flags, int(state.get("config-epoch", 0))

    @staticmethod
    def _best(answers: dict[Address, tuple[Address, frozenset[str], int]]) -> Address | None:
        """The master named under the newest configuration (the highest config epoch)."""
        named = [(epoch, address) for address, flags, epoch in answers.values()]
        return max(named)[1] if named else None

    def _learn(self, answers: dict[Address, tuple[Address, frozenset[str], int]]) -> Address | None:
        """The master the newest answer names, taken as the master unless it is older than
        a `+switch-master` already seen (a sentinel not yet told, while the one that was
        told did not answer: never back to the old master); None if none is current."""
        if not answers:
            return None
        address, _, epoch = max(answers.values(), key=lambda answer: answer[2])
        if epoch < self._config_floor:
            return None
        self._config_seen = max(self._config_seen, epoch)
        self._set_master(address)
        self._verified_at = asyncio.get_running_loop().time()
        return address

    async def _watch(self) -> None:
        while True:
            self._wake.clear()
            await self._subscribe()
            await self.verify()  # a switch missed while no subscription was live, too
            pace = WATCH_S if self._open.is_set() else STOPPED_WATCH_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pace):
                    await self._wake.wait()

    async def _subscribe(self) -> None:
        """A live subscription to every sentinel: the missing ones made, the silent ones
        (no answer to the last PING within `PING_S`) made again."""
        loop = asyncio.get_running_loop()
        for address in self.sentinels:
            current = self._subscriptions.get(address)
            if current is not None and current.alive and loop.time() - current.pong < PING_S:
                current.ping()
                continue
            if current is not None and current.transport is not None:
                reset_transport(current.transport)
            try:
                async with asyncio.timeout(self.connect_s):
                    _, subscription = await loop.create_connection(
                        partial(_Subscription, address, self.password, self._event), *address
                    )
            except (OSError, TimeoutError) as exc:
                self._subscriptions.pop(address, None)
                if current is not None:
                    logs.event(
                        "sentinel_unreachable",
                        logging.WARNING,
                        sentinel=_name(address),
                        error=str(exc),
                    )
                continue
            self._subscriptions[address] = subscription
