"""Fallback answers: cached last success per request key, else the static response."""

from __future__ import annotations

from multidict import CIMultiDict

from hookshield.config.models import FallbackConfig, StaticResponse
from hookshield.fallback import Fallback, ResponseCache, cache_key
from tests.test_breaker import Clock

STATIC = StaticResponse(200, (("Content-Type", "application/json"),), b'{"valid":false}')


def test_cache_expires_after_ttl_and_evicts_least_recent() -> None:
    """Entries live ttl_s; past max_entries the least recently used goes first."""
    clock = Clock()
    cache = ResponseCache(ttl_s=10, max_entries=2, clock=clock)
    cache.put(b"a", 200, CIMultiDict(), b"A")
    cache.put(b"b", 200, CIMultiDict(), b"B")
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", 200, CIMultiDict(), b"C")
    assert cache.get(b"b") is None
    clock.now += 10
    assert cache.get(b"a") is None


def test_answer_prefers_cache_then_static() -> None:
    """Same key: the cached body; another key: the static response; both marked fallback."""
    fallback = Fallback(FallbackConfig(cached_ttl_s=60, response=STATIC))
    key = cache_key("POST", "/quiz?q=1", b"{}")
    fallback.remember(key, 200, CIMultiDict({"X-App": "1"}), b'{"valid":true}')
    fallback.remember(key, 500, CIMultiDict(), b"boom")  # only successes are kept
    cached = fallback.answer("timeout", key)
    other = fallback.answer("timeout", cache_key("POST", "/quiz?q=2", b"{}"))
    assert cached is not None
    assert other is not None
    assert cached.body == b'{"valid":true}'
    assert (cached.outcome, other.outcome) == ("fallback:timeout", "fallback:timeout")
    assert other.body == b'{"valid":false}'


def test_cache_key_covers_method_path_query_and_body() -> None:
    """Any difference in method, path+query or body makes another key."""
    keys = {
        cache_key("POST", "/a?x=1", b"1"),
        cache_key("PUT", "/a?x=1", b"1"),
        cache_key("POST", "/a?x=2", b"1"),
        cache_key("POST", "/a?x=1", b"2"),
    }
    assert len(keys) == 4
