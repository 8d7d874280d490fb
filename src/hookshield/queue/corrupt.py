"""Stored deliveries that cannot be loaded: found, moved aside, never in the way.

A stored row a store cannot turn back into a `Delivery` (invalid JSON, a field a newer
build wrote, a value of the wrong type) must not stop the work around it. `load` raises
`Unloadable` for such a row; `salvage` makes the copy that goes to the dead-letter queue
with reason `corrupt` (the fields that still read right, the error in `last_error`), and
`report` logs it as `corrupt_delivery` with its id.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeGuard

from hookshield import logs
from hookshield.queue.base import Delivery

REASON = "corrupt"
_TEXT = ("id", "route", "url", "origin", "method", "request_id")


class Unloadable(ValueError):
    """A stored row that is not a `Delivery` this build can use."""


def load(meta: Any, body: Any, lease: str = "") -> Delivery:
    """The stored delivery, or `Unloadable` saying what is wrong with it."""
    try:
        delivery = Delivery.load(meta, body, lease)
    except Exception as exc:  # JSON, a missing or unknown field, a value of the wrong shape
        raise Unloadable(f"{type(exc).__name__}: {exc}") from exc
    problem = _wrong_type(delivery)
    if problem is not None:
        raise Unloadable(problem)
    return delivery


def _wrong_type(d: Delivery) -> str | None:
    """What field of `d` holds a value of the wrong type, if one does."""
    for name in _TEXT:
        if type(getattr(d, name)) is not str:
            return f"{name} is not text"
    if type(d.body) is not bytes:
        return "body is not bytes"
    if not _number(d.created_at) or type(d.attempts) is not int:
        return "created_at or attempts is not a number"
    if not (d.last_status is None or type(d.last_status) is int):
        return "last_status is not a whole number"
    if not all(len(pair) == 2 and all(type(p) is str for p in pair) for pair in d.headers):
        return "headers are not (name, value) text pairs"
    if not all(v is None or type(v) is str for v in (d.last_error, d.reason)):
        return "last_error or reason is not text"
    if not (d.failed_at is None or _number(d.failed_at)):
        return "failed_at is not a number"
    return None


def _number(value: object) -> TypeGuard[float]:
    return type(value) is float or type(value) is int  # not a bool


def salvage(delivery_id: Any, route: Any, meta: Any, body: Any, error: str, now: float) -> Delivery:
    """A dead copy of an unloadable row (reason `corrupt`) holding what still reads right."""
    data = _mapping(meta)

    def text(name: str, default: str = "") -> str:
        value = data.get(name)
        return value if type(value) is str else default

    status, attempts = data.get("last_status"), data.get("attempts")
    created = data.get("created_at")
    return Delivery(
        id=str(delivery_id), route=str(route), url=text("url"), origin=text("origin"),
        method=text("method", "POST"), headers=_pairs(data.get("headers")),
        body=body if type(body) is bytes else str(body or "").encode(),
        request_id=text("request_id"), created_at=float(created) if _number(created) else now,
        attempts=attempts if type(attempts) is int else 0,
        last_status=status if type(status) is int else None,
        last_error=f"cannot load the stored delivery: {error}"[:500],
        reason=REASON, failed_at=now,
    )  # fmt: skip


def _mapping(meta: Any) -> dict[str, Any]:
    try:
        data = json.loads(meta)
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        (p[0], p[1])
        for p in value
        if isinstance(p, list) and len(p) == 2 and all(type(x) is str for x in p)
    )


def load_dead(delivery_id: Any, route: Any, meta: Any, body: Any, failed_at: float) -> Delivery:
    """A dead-lettered row as a `Delivery`; an unloadable one salvaged (reason `corrupt`) and
    logged, the stored row left as it is."""
    try:
        return load(meta, body)
    except Unloadable as exc:
        report(delivery_id, route, str(exc))
        return salvage(delivery_id, route, meta, body, str(exc), failed_at)


def report(delivery_id: Any, route: Any, error: str) -> None:
    """Log an unloadable delivery moved to the dead-letter queue."""
    logs.event("corrupt_delivery", logging.ERROR, delivery_id=str(delivery_id),
               route=str(route), reason=REASON, error=error)  # fmt: skip
