"""The shared queue store on Redis: standalone, Sentinel (`redis+sentinel://`) or Cluster.

Every state change is one Lua script. All keys share the hash tag `{hookshield}`, so every
script touches one slot and runs unchanged on a Redis Cluster (the queue then lives on one
shard). Keys:

- `{hookshield}:q`: ZSET of due and leased ids, scored by due time or lease deadline
- `{hookshield}:d:<id>`: HASH `meta`, `body`, `route`, `lease` (token), `dead` ("0"/"1")
- `{hookshield}:dead` and `{hookshield}:dead:<route>`: ZSETs of dead ids by failure time
- `{hookshield}:depth`: HASH route -> due + leased count
- `{hookshield}:idem:<route>:<key>`: the first delivery id for a dedupe key, expiring in 24 h

Every write (enqueues, leases, renewals, the outcomes of deliveries, releases, replays,
deletes) is group-committed (`batch`): those made concurrently go to Redis as one pipeline
of script calls, and each caller gets its own script's reply, within `TIMEOUT_S` of its
call (once: not once per batch ahead of it). Reads go through redis-py.

Under Sentinel every write goes to the master only (`sentinel.SentinelWatch`): writes are
held from the first sign of a failover until `+switch-master`; each new connection checks
`ROLE` before writing; `ROLE` follows every batch, and a batch after which a replica is gone
is acknowledged only if every sentinel confirms the master and no failover; a batch whose
master changed (or stopped) while it was in flight is not acknowledged (its outcome is
unknown: `StoreUnavailable`); a write refused as `READONLY` (or not sent at all) is sent
again to the new master, within `HOLD_S` of its call and its caller's own deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from hookshield import logs, tasks
from hookshield.queue import resp
from hookshield.queue.base import DEDUPE_TTL_S, Delivery, StoreUnavailable
from hookshield.queue.batch import Batcher, Write
from hookshield.queue.pipe import NotMaster, NotSent, Pipe
from hookshield.queue.scripts import SCRIPTS, SHAS
from hookshield.queue.sentinel import Address, SentinelWatch

P = "{hookshield}"
Q, DEPTH, DEAD = f"{P}:q", f"{P}:depth", f"{P}:dead"
# Any error Redis or the connection gives means the write is not acknowledged: a lost
# connection, a timeout, a Cluster error, or a refusal such as OOM or READONLY.
_ERRORS = (redis_errors.RedisError, OSError)
CONNECT_S = 1.0
TIMEOUT_S = 2.0  # a write is answered (or fails) within this of its call
HOLD_S = 10.0  # a write held during a Sentinel failover waits at most this (plus TIMEOUT_S)
MAX_TRIES = 10  # sends of one batch under Sentinel (READONLY, NOSCRIPT, not sent: again)
_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": CONNECT_S,
    "socket_timeout": TIMEOUT_S,
    "retry": Retry(NoBackoff(), 1),
}
_ROLE = resp.pack("ROLE")


def _d(delivery_id: str) -> str:
    return f"{P}:d:{delivery_id}"


def _dead(route: str) -> str:
    return f"{DEAD}:{route}"


@dataclass(frozen=True)
class SentinelUrl:
    """`redis+sentinel://[:password@]h1:p1,h2:p2/service[/db]`"""

    sentinels: list[Address]
    service: str
    db: int
    password: str | None

    @staticmethod
    def parse(url: str) -> SentinelUrl:
        parts = urlsplit(url)
        hosts = [
            (h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1]))
            for h in parts.netloc.split("@")[-1].split(",")
        ]
        service, _, db = parts.path.strip("/").partition("/")
        password = unquote(parts.password) if parts.password else None
        return SentinelUrl(hosts, service, int(db or 0), password)


def connect(url: str) -> tuple[Redis | RedisCluster, Sentinel | None]:
    """A client for `url` (and the Sentinel behind it, to close with it);
    `redis+sentinel://h1:p1,h2:p2/service[/db]` asks Sentinel for the master."""
    if url.startswith("redis+sentinel://"):
        found = SentinelUrl.parse(url)
        sentinel = Sentinel(found.sentinels, password=found.password, **_OPTIONS)  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(
            found.service, db=found.db, password=found.password, **_OPTIONS
        )
        return master, sentinel
    return Redis.from_url(url, **_OPTIONS), None


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client, self._sentinel = connect(url)
        self._shas: dict[str, str] = {}  # scripts loaded through redis-py (TLS, Cluster)
        self._checked = False
        self._preparing = asyncio.Lock()
        self._pipe: Pipe | None = None  # the group commit's own connection (standalone, Sentinel)
        self._watch: SentinelWatch | None = None
        self._replicas: tuple[Address | None, frozenset[Address]] | None = None
        if self._sentinel is not None:
            found = SentinelUrl.parse(url)
            # Sentinels are asked without the password, as redis-py's `Sentinel` does
            # (its `sentinel_kwargs` take only the `socket_*` options).
            self._watch = SentinelWatch(found.sentinels, found.service, None, CONNECT_S, TIMEOUT_S)
            self._pipe = Pipe({"db": found.db, "password": found.password}, CONNECT_S,
                              TIMEOUT_S, locate=self._watch.locate, role=True)  # fmt: skip
            self._watch.on_switch.append(self._master_changed)
        clock = self._clock if self._watch is not None else None
        self._batch = Batcher(self._write_batch, timeout_s=TIMEOUT_S, clock=clock)

    def _clock(self) -> float:
        """The group commit's clock under Sentinel: time held during a failover is left out."""
        assert self._watch is not None
        return asyncio.get_running_loop().time() - self._watch.held_s()

    async def _prepare(self) -> None:
        """On first use: switch to the cluster client if this is a Cluster, or start
        following the master under Sentinel; warn on risky settings."""
        if self._checked:
            return
        async with self._preparing:
            if self._checked:
                return
            client = self._client
            if self._watch is not None:
                await self._watch.start()
            elif isinstance(client, Redis):
                info = await client.info("cluster")
                if info.get("cluster_enabled"):
                    await client.aclose()
                    self._client = RedisCluster.from_url(self.url, **_OPTIONS)
                else:
                    self._pipe = Pipe.for_client(client, CONNECT_S, TIMEOUT_S)
            self._checked = True
        await self._warn_settings()

    async def _warn_settings(self) -> None:
        try:
            config = await self._client.config_get("appendonly")
            config.update(await self._client.config_get("maxmemory-policy"))
        except redis_errors.ResponseError:
            return  # CONFIG is disabled on some managed services
        if config.get("appendonly") != "yes":
            logs.event(
                "redis_not_durable",
                logging.WARNING,
                detail="appendonly is off: a Redis restart loses queued deliveries",
            )
        policy = str(config.get("maxmemory-policy", "noeviction"))
        if policy != "noeviction" and not policy.startswith("volatile"):
            logs.event(
                "redis_evicts",
                logging.WARNING,
                detail=f"maxmemory-policy {policy} may evict queued deliveries",
            )

    def _master_changed(self) -> None:
        """Sentinel named a new master: nothing more goes to the old one (the group
        commit's connection is reset, redis-py's pooled ones are dropped)."""
        if self._pipe is not None:
            self._pipe.close(reset=True)
        if isinstance(self._client, Redis):
            pool = self._client.connection_pool
            tasks.spawn("redis-sentinel-pool-reset", pool.disconnect())

    async def _sha(self, name: str) -> str:
        """The script's SHA1; through redis-py (TLS, Cluster), the script is loaded first when
        it is not known yet (at first use, and after `_shas` was cleared because Redis forgot
        its scripts). The group commit's own connection loads scripts on NOSCRIPT (`_load`)."""
        if self._pipe is not None:
            return SHAS[name]
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = await self._client.script_load(SCRIPTS[name])
        return sha

    async def _load(self, names: set[str], deadline: float) -> None:
        """Scripts Redis forgot (after a restart or a failover), loaded again."""
        if self._pipe is None:
            self._shas.clear()  # `_sha` loads them again through redis-py
            return
        commands = [resp.pack("SCRIPT", "LOAD", SCRIPTS[name]) for name in sorted(names)]
        for reply in await self._pipe.exchange(commands, deadline):
            if isinstance(reply, Exception):
                raise reply

    async def _write_batch(self, writes: list[Write]) -> list[Any]:
        """Every write's script call in one batch (`_send`), answered by the batch's
        deadline; a script Redis forgot (after a restart) is loaded again and the writes it
        refused are sent once more."""
        deadline = self._batch.deadline
        try:
            await self._prepare()
            if self._watch is not None:
                return await self._write_to_master(writes, deadline)
            replies = await self._send(writes, deadline)
            forgotten = [
                i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)
            ]
            if forgotten:
                await self._load({writes[i][0] for i in forgotten}, deadline)
                again = await self._send([writes[i] for i in forgotten], deadline)
                for i, reply in zip(forgotten, again, strict=True):
                    replies[i] = reply
            return [_unavailable(reply) for reply in replies]
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def _send(self, writes: list[Write], deadline: float) -> list[Any]:
        """One write to Redis for the whole batch: on the pipe (standalone Redis), else on a
        connection borrowed from redis-py (TLS), or redis-py's cluster pipeline."""
        calls = [
            ("EVALSHA", await self._sha(name), len(keys), *keys, *args)
            for name, keys, args in writes
        ]
        if isinstance(self._client, Redis):
            packed = [resp.pack(*call) for call in calls]
            if self._pipe is not None:
                return await self._pipe.exchange(packed, deadline)
            async with asyncio.timeout_at(deadline):
                return await resp.exchange(self._client, packed)
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*call)
        async with asyncio.timeout_at(deadline):
            return list(await pipe.execute(raise_on_error=False))

    async def _write_to_master(self, writes: list[Write], deadline: float) -> list[Any]:
        """The batch on the Sentinel master, `ROLE` after it; see the module's docstring.
        Time held while writes are stopped does not count against `deadline` (the store's
        clock leaves it out), but a batch is held at most `HOLD_S`."""
        watch, pipe = self._watch, self._pipe
        assert watch is not None
        assert pipe is not None
        loop = asyncio.get_running_loop()
        held = 0.0
        results: list[Any] = [None] * len(writes)
        todo = list(range(len(writes)))
        sends = 0
        while todo := [i for i in todo if not self._batch.given_up(i)]:  # nobody waits: not sent
            if sends == MAX_TRIES:
                _fail(results, todo, f"not written after {MAX_TRIES} tries")
                break
            if not watch.open:
                waiting = loop.time()
                opened = await watch.wait_open(waiting + HOLD_S - held)
                held += loop.time() - waiting
                deadline += loop.time() - waiting
                if not opened:
                    _fail(results, todo, "held while Sentinel fails the master over; not sent")
                    return results
                continue
            epoch = watch.epoch
            packed = [
                resp.pack("EVALSHA", SHAS[writes[i][0]], len(writes[i][1]), *writes[i][1], *writes[i][2])
                for i in todo
            ]  # fmt: skip
            sends += 1
            try:
                replies = await pipe.exchange([*packed, _ROLE] if pipe.role else packed, deadline)
            except NotSent as exc:
                if isinstance(exc, NotMaster):
                    watch.stop(str(exc))
                if watch.open:
                    _fail(results, todo, f"not sent: {exc}")
                    return results
                continue  # held until the sentinels name the master, then sent again
            except _ERRORS as exc:  # sent, unanswered: outcome unknown
                _fail(results, todo, str(exc))
                return results
            role = replies.pop() if len(replies) > len(todo) else None
            trusted = watch.epoch == epoch and await self._still_master(pipe.peer, role)
            again: list[int] = []
            forgotten: set[str] = set()
            refused = False
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, redis_errors.ReadOnlyError):
                    again.append(i)  # refused by a replica: nothing happened, sent again
                    refused = True
                elif isinstance(reply, redis_errors.NoScriptError):
                    again.append(i)  # not run: sent again once the script is loaded
                    forgotten.add(writes[i][0])
                elif trusted:
                    results[i] = _unavailable(reply)
                else:
                    results[i] = StoreUnavailable(
                        "redis: the master changed while this write was in flight; it may or"
                        " may not have been applied"
                    )
            if refused:
                watch.stop(f"READONLY from redis at {pipe.peer}")
                pipe.close(reset=True)
            elif forgotten:
                try:
                    await self._load(forgotten, deadline)
                except _ERRORS as exc:
                    _fail(results, again, f"cannot load the queue's scripts: {exc}")
                    return results
            todo = again
        return results

    async def _still_master(self, node: Address | None, role: Any) -> bool:
        """After a batch: the node still says it is the master, and no replica it had after
        the previous batch is gone (else every sentinel must confirm it: a replica that
        left may have been promoted)."""
        watch = self._watch
        assert watch is not None
        if role is None:  # ROLE is not allowed to this user (`Pipe.role` off): no check
            return True
        if isinstance(role, Exception) or not role or role[0] != b"master":
            watch.stop(f"redis at {node} no longer says it is the master")
            return False
        replicas = frozenset((str(r[0].decode()), int(r[1])) for r in role[2])
        previous, self._replicas = self._replicas, (node, replicas)
        if previous is None or previous[0] != node or previous[1] <= replicas:
            return True
        if await watch.confirm(node) if node is not None else False:
            return True
        watch.stop(f"a replica of redis at {node} left and the sentinels did not confirm it")
        return False

    async def _call(self, command: str, *args: Any) -> Any:
        try:
            await self._prepare()
            return await getattr(self._client, command)(*args)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def enqueue(
        self, delivery: Delivery, dedupe_key: str | None, due_at: float
    ) -> tuple[str, bool]:
        idem = f"{P}:idem:{delivery.route}:{dedupe_key}" if dedupe_key is not None else Q
        keys = [Q, _d(delivery.id), DEPTH, idem]
        args = [delivery.id, delivery.route, delivery.meta(), delivery.body, due_at,
                "1" if dedupe_key is not None else "0", int(DEDUPE_TTL_S * 1000)]  # fmt: skip
        found, duplicate = await self._batch.call(("enqueue", keys, args))
        return found.decode(), bool(duplicate)

    async def lease(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        args = [now, limit, now + lease_s, uuid.uuid4().hex, P]
        rows = await self._batch.call(("lease", [Q], args))
        return [Delivery.load(meta, body, token.decode()) for token, meta, body in rows]

    async def renew(self, delivery: Delivery, lease_s: float) -> bool:
        args = [delivery.id, delivery.lease, time.time() + lease_s]
        return bool(await self._batch.call(("renew", [Q, _d(delivery.id)], args)))

    async def complete(self, delivery: Delivery) -> bool:
        keys = [Q, _d(delivery.id), DEPTH]
        return bool(await self._batch.call(("complete", keys, [delivery.id, delivery.lease])))

    async def reschedule(self, delivery: Delivery, due_at: float) -> bool:
        args = [delivery.id, delivery.lease, delivery.meta(), due_at]
        return bool(await self._batch.call(("reschedule", [Q, _d(delivery.id)], args)))

    async def bury(self, delivery: Delivery) -> bool:
        keys = [Q, _d(delivery.id), DEPTH, DEAD, _dead(delivery.route)]
        args = [delivery.id, delivery.lease, delivery.meta(), delivery.failed_at or 0.0]
        return bool(await self._batch.call(("bury", keys, args)))

    async def release(self, deliveries: list[Delivery], now: float) -> None:
        await asyncio.gather(
            *(
                self._batch.call(("release", [Q, _d(d.id)], [d.id, d.lease, now]))
                for d in deliveries
            )
        )

    async def dead_letters(self, route: str | None, limit: int) -> list[Delivery]:
        ids = await self._call("zrevrange", _dead(route) if route else DEAD, 0, limit - 1)
        found = [await self.dead_letter(i.decode()) for i in ids]
        return [d for d in found if d is not None]

    async def dead_letter(self, delivery_id: str) -> Delivery | None:
        meta, body, dead = await self._call("hmget", _d(delivery_id), ["meta", "body", "dead"])
        return Delivery.load(meta, body) if dead == b"1" else None

    async def replay(self, delivery_id: str, now: float) -> bool:
        dead = await self.dead_letter(delivery_id)
        if dead is None:
            return False
        fresh = dead.after(attempts=0, reason=None, failed_at=None)
        keys = [Q, _d(dead.id), DEPTH, DEAD, _dead(dead.route)]
        args = [dead.id, fresh.meta(), now, dead.route]
        return bool(await self._batch.call(("replay", keys, args)))

    async def replay_route(self, route: str, now: float) -> int:
        ids = await self._call("zrange", _dead(route), 0, -1)
        return sum([await self.replay(i.decode(), now) for i in ids])

    async def delete(self, delivery_id: str) -> bool:
        dead = await self.dead_letter(delivery_id)
        if dead is None:
            return False
        keys = [_d(dead.id), DEAD, _dead(dead.route)]
        return bool(await self._batch.call(("delete", keys, [dead.id])))

    async def sizes(self) -> dict[str, tuple[int, int]]:
        depths = await self._call("hgetall", DEPTH)
        result = {}
        for route, depth in depths.items():
            name = route.decode()
            result[name] = (int(depth), int(await self._call("zcard", _dead(name))))
        return result

    async def ping(self) -> None:
        await self._call("ping")

    async def close(self) -> None:
        await self._batch.drain()
        if self._pipe is not None:
            self._pipe.close()
        if self._watch is not None:
            await self._watch.close()
        await self._client.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()


def _unavailable(reply: Any) -> Any:
    """An error reply as `StoreUnavailable`; any other reply as it is."""
    return StoreUnavailable(f"redis: {reply}") if isinstance(reply, _ERRORS) else reply


def _fail(results: list[Any], indexes: list[int], why: str) -> None:
    for i in indexes:
        results[i] = StoreUnavailable(f"redis: {why}")
