"""The delivery queue's one interface, and what it stores (SPEC §4, §5).

A `Delivery` is one platform call to be sent to a target, perhaps many times. The store
keeps every delivery in one of three places: due (waiting for its time), leased (a worker
is sending it until the lease deadline; an expired lease makes it due again, so a crashed
replica's work is taken over), or dead (the dead-letter queue). Every change is one atomic
step in the store. Leases are short and renewed while their attempt runs (`renew`), so a
crashed replica's deliveries are due again a lease after its last renewal. Results (and
renewals) are written only by the lease holder: a stale worker whose lease expired and was
taken by another changes nothing.

Times are wall-clock seconds (`time.time()`), shared by every replica.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

DEDUPE_TTL_S = 24 * 3600.0


class StoreUnavailable(Exception):
    """The queue store cannot be reached or did not answer; nothing was acknowledged."""


@dataclass(frozen=True)
class Delivery:
    id: str
    route: str
    url: str
    origin: str
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    request_id: str
    created_at: float
    attempts: int = 0  # attempts made so far
    last_status: int | None = None
    last_error: str | None = None
    reason: str | None = None  # why it is dead
    failed_at: float | None = None
    lease: str = field(default="", compare=False)  # token of the lease this copy holds

    def meta(self) -> str:
        """Everything but the body and the lease, as JSON (the store's own format)."""
        data = {name: getattr(self, name) for name in _META_FIELDS}  # asdict() deep-copies: slow
        return _META_ENCODER.encode(data)

    @staticmethod
    def load(meta: str | bytes, body: bytes, lease: str = "") -> Delivery:
        data: dict[str, Any] = json.loads(meta)
        data["headers"] = tuple(tuple(pair) for pair in data["headers"])
        return Delivery(**data, body=body, lease=lease)

    def after(self, **changes: Any) -> Delivery:
        """A copy with `changes` (`dataclasses.replace` without its per-field checks: this
        runs for every delivery)."""
        if not changes.keys() <= _CHANGEABLE:
            raise TypeError(f"not a Delivery field: {sorted(changes.keys() - _CHANGEABLE)}")
        copy = object.__new__(Delivery)
        copy.__dict__.update(self.__dict__, **changes)
        return copy


_META_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build one per call
_CHANGEABLE = frozenset(f.name for f in fields(Delivery))
_META_FIELDS = tuple(f.name for f in fields(Delivery) if f.name not in ("body", "lease"))


class DeliveryStore(Protocol):
    async def enqueue(
        self, delivery: Delivery, dedupe_key: str | None, due_at: float
    ) -> tuple[str, bool]:
        """Store a new delivery, due at `due_at`; answers (id, duplicate). With a dedupe key
        seen on the same route within 24 h: (the first delivery's id, True), nothing stored."""
        ...

    async def lease(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        """Up to `limit` due deliveries (expired leases included), leased until now + lease_s."""
        ...

    async def renew(self, delivery: Delivery, lease_s: float) -> bool:
        """`delivery`'s lease runs on until now + lease_s (a heartbeat while its attempt
        runs). Only the holder renews: False when the lease was lost (it expired and was
        taken by another worker, or the delivery is gone); a lease that expired but was not
        taken yet is still the holder's and is renewed."""
        ...

    async def complete(self, delivery: Delivery) -> bool:
        """Delivered: remove it. False when the lease was lost."""
        ...

    async def reschedule(self, delivery: Delivery, due_at: float) -> bool:
        """Due again at `due_at`, with `delivery`'s attempts and last result."""
        ...

    async def bury(self, delivery: Delivery) -> bool:
        """To the dead-letter queue, with `delivery`'s reason, attempts and last result."""
        ...

    async def release(self, deliveries: list[Delivery], now: float) -> None:
        """Give leases back (a stopping worker): due now, attempts unchanged."""
        ...

    async def dead_letters(self, route: str | None, limit: int) -> list[Delivery]:
        """The newest dead deliveries first."""
        ...

    async def dead_letter(self, delivery_id: str) -> Delivery | None: ...

    async def replay(self, delivery_id: str, now: float) -> bool:
        """A dead delivery due again now, attempts reset, same id and request id."""
        ...

    async def replay_route(self, route: str, now: float) -> int: ...

    async def delete(self, delivery_id: str) -> bool: ...

    async def sizes(self) -> dict[str, tuple[int, int]]:
        """Per route: (queue depth = due + leased, dead-letter size)."""
        ...

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the store answers."""
        ...

    async def close(self) -> None: ...
