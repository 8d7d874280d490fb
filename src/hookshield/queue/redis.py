"""The shared queue store on Redis: standalone, Sentinel (`redis+sentinel://`) or Cluster.

Every state change is one Lua script. All keys share the hash tag `{hookshield}`, so every
script touches one slot and runs unchanged on a Redis Cluster (the queue then lives on one
shard). Keys:

- `{hookshield}:q`: ZSET of due and leased ids, scored by due time or lease deadline
- `{hookshield}:d:<id>`: HASH `meta`, `body`, `route`, `lease` (token), `dead` ("0"/"1")
- `{hookshield}:dead` and `{hookshield}:dead:<route>`: ZSETs of dead ids by failure time
- `{hookshield}:depth`: HASH route -> due + leased count
- `{hookshield}:idem:<route>:<key>`: the first delivery id for a dedupe key, expiring in 24 h

Enqueues, leases and the outcomes of deliveries (complete, reschedule, bury) are
group-committed (`batch`): those made concurrently go to Redis as one pipeline of script
calls, and each caller gets its own script's reply.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from hookshield import logs
from hookshield.queue import resp
from hookshield.queue.base import DEDUPE_TTL_S, Delivery, StoreUnavailable
from hookshield.queue.batch import Batcher, Write
from hookshield.queue.pipe import Pipe
from hookshield.queue.scripts import SCRIPTS

P = "{hookshield}"
Q, DEPTH, DEAD = f"{P}:q", f"{P}:depth", f"{P}:dead"
# Any error Redis or the connection gives means the write is not acknowledged: a lost
# connection, a timeout, a Cluster error, or a refusal such as OOM or READONLY.
_ERRORS = (redis_errors.RedisError, OSError)
_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 2.0,
    "retry": Retry(NoBackoff(), 1),
}
_PIPE_TIMEOUTS = {"connect_s": 1.0, "timeout_s": 2.0}  # as socket_connect_timeout, socket_timeout


def _d(delivery_id: str) -> str:
    return f"{P}:d:{delivery_id}"


def _dead(route: str) -> str:
    return f"{DEAD}:{route}"


def connect(url: str) -> tuple[Redis | RedisCluster, Sentinel | None]:
    """A client for `url` (and the Sentinel behind it, to close with it);
    `redis+sentinel://h1:p1,h2:p2/service[/db]` asks Sentinel for the master."""
    if url.startswith("redis+sentinel://"):
        parts = urlsplit(url)
        hosts = [
            (h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1]))
            for h in parts.netloc.split("@")[-1].split(",")
        ]
        service, _, db = parts.path.strip("/").partition("/")
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, password=password, **_OPTIONS)  # type: ignore[no-untyped-call]
        master: Redis = sentinel.master_for(service, db=int(db or 0), password=password, **_OPTIONS)
        return master, sentinel
    return Redis.from_url(url, **_OPTIONS), None


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client, self._sentinel = connect(url)
        self._shas: dict[str, str] = {}
        self._checked = False
        self._batch = Batcher(self._write_batch)
        self._pipe: Pipe | None = None  # the group commit's own connection (standalone Redis)

    async def _prepare(self) -> None:
        """On first use: switch to the cluster client if this is a Cluster; warn on risky settings."""
        if self._checked:
            return
        client = self._client
        if isinstance(client, Redis) and not self.url.startswith("redis+sentinel://"):
            info = await client.info("cluster")
            if info.get("cluster_enabled"):
                await client.aclose()
                self._client = RedisCluster.from_url(self.url, **_OPTIONS)
            else:
                self._pipe = Pipe.for_client(client, **_PIPE_TIMEOUTS)
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

    async def _sha(self, name: str) -> str:
        """The script's SHA1, loading the script into Redis when it is not known yet (at first
        use, and after `_shas` was cleared because Redis forgot its scripts)."""
        sha = self._shas.get(name)
        if sha is None:
            sha = self._shas[name] = await self._client.script_load(SCRIPTS[name])
        return sha

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One script call, for the writes that are not group-committed."""
        try:
            await self._prepare()
            try:
                return await self._client.evalsha(await self._sha(name), len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                self._shas.clear()
                return await self._client.evalsha(await self._sha(name), len(keys), *keys, *args)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def _write_batch(self, writes: list[Write]) -> list[Any]:
        """Every write's script call in one batch (`_send`); a script Redis forgot (after a
        restart) is loaded again and the writes it refused are sent once more."""
        try:
            await self._prepare()
            replies = await self._send(writes)
            forgotten = [
                i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)
            ]
            if forgotten:
                self._shas.clear()
                for i, reply in zip(
                    forgotten, await self._send([writes[i] for i in forgotten]), strict=True
                ):
                    replies[i] = reply
            return [
                StoreUnavailable(f"redis: {r}") if isinstance(r, _ERRORS) else r for r in replies
            ]
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def _send(self, writes: list[Write]) -> list[Any]:
        """One write to Redis for the whole batch: on the pipe (standalone Redis), else on a
        connection borrowed from redis-py (TLS, Sentinel), or redis-py's cluster pipeline."""
        calls = [
            ("EVALSHA", await self._sha(name), len(keys), *keys, *args)
            for name, keys, args in writes
        ]
        if isinstance(self._client, Redis):
            packed = [resp.pack(*call) for call in calls]
            if self._pipe is not None:
                return await self._pipe.exchange(packed)
            return await resp.exchange(self._client, packed)
        pipe = self._client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*call)
        return list(await pipe.execute(raise_on_error=False))

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
        for delivery in deliveries:
            await self._script("release", [Q, _d(delivery.id)], [delivery.id, delivery.lease, now])

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
        return bool(await self._script("replay", keys, [dead.id, fresh.meta(), now, dead.route]))

    async def replay_route(self, route: str, now: float) -> int:
        ids = await self._call("zrange", _dead(route), 0, -1)
        return sum([await self.replay(i.decode(), now) for i in ids])

    async def delete(self, delivery_id: str) -> bool:
        dead = await self.dead_letter(delivery_id)
        if dead is None:
            return False
        keys = [_d(dead.id), DEAD, _dead(dead.route)]
        return bool(await self._script("delete", keys, [dead.id]))

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
        await self._client.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()
