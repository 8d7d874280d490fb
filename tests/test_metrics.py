"""Metrics (`metrics`): hot-path tallies fold into exactly what Prometheus' own calls give."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from hookshield.metrics import BUCKETS, Metrics

SECONDS = st.one_of(st.sampled_from([0.0, *BUCKETS]), st.floats(0, 60, allow_nan=False))


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), SECONDS), max_size=40))
def test_folded_tallies_equal_direct_prometheus_updates(calls: list[tuple[str, float]]) -> None:
    """Requests, attempts and durations tallied then folded == the same via observe()/inc()."""
    tallied, direct = Metrics(), Metrics()
    for route, seconds in calls:
        tallied.request(route, "success")
        tallied.attempt(route, "http://t", "success", seconds)
        direct.requests.labels(route, "success").inc()
        direct.upstream.labels(route, "http://t", "success").inc()
        direct.duration.labels(route, "http://t").observe(seconds)
    assert _values(tallied.exposition()) == _values(generate_latest(direct.registry))


def _values(exposition: bytes) -> list[str]:
    """The samples, without the `_created` timestamps (which differ by construction)."""
    lines = exposition.decode().splitlines()
    return [line for line in lines if not line.split("{")[0].split(" ")[0].endswith("_created")]


def test_fold_adds_to_what_was_folded_before() -> None:
    """Two folds accumulate; a scrape without new calls changes nothing."""
    metrics = Metrics()
    metrics.request("a", "success")
    metrics.fold()
    metrics.request("a", "success")
    metrics.delivery("a", "retry")
    text = metrics.exposition().decode()
    assert 'hookshield_requests_total{outcome="success",route="a"} 2.0' in text
    assert 'hookshield_delivery_attempts_total{result="retry",route="a"} 1.0' in text
    assert metrics.exposition().decode() == text


def test_disabled_metrics_tally_nothing() -> None:
    """metrics.enabled false: nothing is counted."""
    metrics = Metrics(enabled=False)
    metrics.request("a", "success")
    assert "hookshield_requests_total{" not in metrics.exposition().decode()
