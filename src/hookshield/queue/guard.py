"""Every queue store call ends in time, and any failure of it is `StoreUnavailable`.

`Guarded` wraps a `DeliveryStore` and runs each of its calls under one `asyncio.timeout`:
a store that hangs (a paused Redis, a stalled disk) or fails in a way the store itself
does not turn into `StoreUnavailable` (an `OSError` opening a file, a row that cannot be
loaded, a bug) gives its caller `StoreUnavailable`, with a message naming the call. A
cancellation from outside is passed on as it is.

A call that timed out raises `StoreTimeout`: the store may still apply it (the write was
sent, its answer did not come in time), so a timed-out enqueue may still be delivered; a
platform retry with the same `Idempotency-Key` / `X-Request-ID` is deduplicated.

`enqueue_within` is the data plane's enqueue: one deadline, the route's remaining time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from hookshield.queue.base import Delivery, DeliveryStore, StoreUnavailable

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 5.0  # any store call but the data plane's enqueue and close
# The data plane's enqueue gets at least this long: a call spooled by `fallback.queue` after
# the route's time ran out (a target that timed out) can still be stored, a few ms late.
MIN_ENQUEUE_S = 0.05
CLOSE_TIMEOUT_S = 10.0  # close drains the writes in flight (Redis: up to 5 s) first
BULK_TIMEOUT_S = 60.0  # replaying a whole route's dead letters (Redis: one script each)


class StoreTimeout(StoreUnavailable):
    """The store did not answer in time; the call may still have been applied."""


class Guarded:
    """A `DeliveryStore` whose every call answers within `timeout_s` or raises
    `StoreUnavailable` (`StoreTimeout` when the time ran out)."""

    def __init__(self, store: DeliveryStore, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.store = store
        self.timeout_s = timeout_s

    async def _guard(self, name: str, call: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """`call`'s result within `timeout_s`; any exception but a cancellation from outside
        becomes `StoreUnavailable`."""
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                return await call
        except StoreUnavailable:
            raise
        except Exception as exc:  # TimeoutError included: the deadline's, or the store's own
            if deadline.expired():
                message = f"the queue store did not answer {name} within {timeout_s:.3g} s"
                raise StoreTimeout(message) from exc
            raise StoreUnavailable(f"the queue store's {name} failed: {exc!r}") from exc

    async def enqueue(
        self,
        delivery: Delivery,
        dedupe_key: str | None,
        due_at: float,
        timeout_s: float | None = None,
    ) -> tuple[str, bool]:
        """As `DeliveryStore.enqueue`, within `timeout_s` (default: the store's own); with no
        time left, `StoreTimeout` at once and nothing is sent to the store."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        if limit <= 0:
            raise StoreTimeout("no time was left to store the call")
        return await self._guard("enqueue", self.store.enqueue(delivery, dedupe_key, due_at), limit)

    async def lease(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        return await self._guard("lease", self.store.lease(now, limit, lease_s), self.timeout_s)

    async def renew(self, delivery: Delivery, lease_s: float) -> bool:
        return await self._guard("renew", self.store.renew(delivery, lease_s), self.timeout_s)

    async def complete(self, delivery: Delivery) -> bool:
        return await self._guard("complete", self.store.complete(delivery), self.timeout_s)

    async def reschedule(self, delivery: Delivery, due_at: float) -> bool:
        call = self.store.reschedule(delivery, due_at)
        return await self._guard("reschedule", call, self.timeout_s)

    async def bury(self, delivery: Delivery) -> bool:
        return await self._guard("bury", self.store.bury(delivery), self.timeout_s)

    async def release(self, deliveries: list[Delivery], now: float) -> None:
        await self._guard("release", self.store.release(deliveries, now), self.timeout_s)

    async def dead_letters(self, route: str | None, limit: int) -> list[Delivery]:
        call = self.store.dead_letters(route, limit)
        return await self._guard("dead_letters", call, self.timeout_s)

    async def dead_letter(self, delivery_id: str) -> Delivery | None:
        call = self.store.dead_letter(delivery_id)
        return await self._guard("dead_letter", call, self.timeout_s)

    async def replay(self, delivery_id: str, now: float) -> bool:
        return await self._guard("replay", self.store.replay(delivery_id, now), self.timeout_s)

    async def replay_route(self, route: str, now: float) -> int:
        call = self.store.replay_route(route, now)
        return await self._guard("replay_route", call, max(self.timeout_s, BULK_TIMEOUT_S))

    async def delete(self, delivery_id: str) -> bool:
        return await self._guard("delete", self.store.delete(delivery_id), self.timeout_s)

    async def sizes(self) -> dict[str, tuple[int, int]]:
        return await self._guard("sizes", self.store.sizes(), self.timeout_s)

    async def ping(self) -> None:
        await self._guard("ping", self.store.ping(), self.timeout_s)

    async def close(self) -> None:
        await self._guard("close", self.store.close(), max(self.timeout_s, CLOSE_TIMEOUT_S))


async def enqueue_within(
    store: DeliveryStore,
    delivery: Delivery,
    dedupe_key: str | None,
    due_at: float,
    timeout_s: float,
) -> tuple[str, bool]:
    """`store.enqueue(...)` answered within `timeout_s` (at least `MIN_ENQUEUE_S`; one
    timer), else `StoreUnavailable`."""
    guarded = store if isinstance(store, Guarded) else Guarded(store)
    return await guarded.enqueue(delivery, dedupe_key, due_at, max(timeout_s, MIN_ENQUEUE_S))
