"""The shared queue store on Redis: standalone, Sentinel (`redis+sentinel://`) or Cluster.

Every state change is one Lua script. All keys share the hash tag `{hookshield}`, so every
script touches one slot and runs unchanged on a Redis Cluster (the queue then lives on one
shard). Keys:

- `{hookshield}:q`: ZSET of due and leased ids, scored by due time or lease deadline
- `{hookshield}:d:<id>`: HASH `meta`, `body`, `route`, `lease` (token), `dead` ("0"/"1")
- `{hookshield}:dead` and `{hookshield}:dead:<route>`: ZSETs of dead ids by failure time
- `{hookshield}:depth`: HASH route -> due + leased count
- `{hookshield}:idem:<route>:<key>`: the first delivery id for a dedupe key, expiring in 24 h
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
from hookshield.queue.base import DEDUPE_TTL_S, Delivery, StoreUnavailable
from hookshield.queue.scripts import SCRIPTS

P = "{hookshield}"
Q, DEPTH, DEAD = f"{P}:q", f"{P}:depth", f"{P}:dead"
_ERRORS = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ClusterError,
    OSError,
)
_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 1.0,
    "socket_timeout": 2.0,
    "retry": Retry(NoBackoff(), 1),
}


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

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            await self._prepare()
            sha = self._shas.get(name)
            if sha is not None:
                try:
                    return await self._client.evalsha(sha, len(keys), *keys, *args)
                except redis_errors.NoScriptError:
                    pass
            self._shas[name] = await self._client.script_load(SCRIPTS[name])
            return await self._client.evalsha(self._shas[name], len(keys), *keys, *args)
        except _ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

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
        found, duplicate = await self._script("enqueue", keys, args)
        return found.decode(), bool(duplicate)

    async def lease(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        rows = await self._script("lease", [Q], [now, limit, now + lease_s, uuid.uuid4().hex, P])
        return [Delivery.load(meta, body, token.decode()) for token, meta, body in rows]

    async def complete(self, delivery: Delivery) -> bool:
        return bool(
            await self._script(
                "complete", [Q, _d(delivery.id), DEPTH], [delivery.id, delivery.lease]
            )
        )

    async def reschedule(self, delivery: Delivery, due_at: float) -> bool:
        args = [delivery.id, delivery.lease, delivery.meta(), due_at]
        return bool(await self._script("reschedule", [Q, _d(delivery.id)], args))

    async def bury(self, delivery: Delivery) -> bool:
        keys = [Q, _d(delivery.id), DEPTH, DEAD, _dead(delivery.route)]
        args = [delivery.id, delivery.lease, delivery.meta(), delivery.failed_at or 0.0]
        return bool(await self._script("bury", keys, args))

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
        await self._client.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()
