"""A route's configured answer when its target fails (SPEC §2 `fallback`, §4).

Preference: the cached last success for the same request (method, path, query, body)
within `ttl_s`, else the static `response`. (`queue: true` is handled by the async
delivery path.) Every fallback answer carries `X-Hookshield-Outcome: fallback:<reason>`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from multidict import CIMultiDict

from hookshield.breaker import Clock
from hookshield.config.models import FallbackConfig
from hookshield.message import Answer


@dataclass(frozen=True, slots=True)
class Stored:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    expires: float


def cache_key(method: str, path_qs: str, body: bytes) -> bytes:
    digest = hashlib.sha256(method.encode() + b" " + path_qs.encode() + b"\n")
    digest.update(body)
    return digest.digest()


class ResponseCache:
    """A bounded LRU of successful answers, each kept for `ttl_s`."""

    def __init__(
        self, ttl_s: float, max_entries: int = 1024, clock: Clock = time.monotonic
    ) -> None:
        self.ttl_s, self.max_entries, self._clock = ttl_s, max_entries, clock
        self._items: OrderedDict[bytes, Stored] = OrderedDict()

    def put(self, key: bytes, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        self._items[key] = Stored(status, headers, body, self._clock() + self.ttl_s)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, key: bytes) -> Stored | None:
        stored = self._items.get(key)
        if stored is None:
            return None
        if stored.expires <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return stored


class Fallback:
    """Built once per route; `answer` gives the fallback response, or None if there is none."""

    def __init__(self, config: FallbackConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.cache = (
            ResponseCache(config.cached_ttl_s, clock=clock) if config.cached_ttl_s else None
        )

    def remember(self, key: bytes, status: int, headers: CIMultiDict[str], body: bytes) -> None:
        if self.cache is not None and 200 <= status < 300:
            self.cache.put(key, status, headers, body)

    def answer(self, reason: str, key: bytes) -> Answer | None:
        stored = self.cache.get(key) if self.cache is not None else None
        if stored is not None:
            answer = Answer(stored.status, stored.headers.copy(), stored.body)
        elif self.config.response is not None:
            static = self.config.response
            answer = Answer(static.status, CIMultiDict(static.headers), static.body)
        else:
            return None
        answer.outcome = f"fallback:{reason}"
        return answer
