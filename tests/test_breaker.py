"""The breaker state machine on a driven clock, and a Hypothesis model check of its rules."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hookshield.breaker import Breaker, Breakers, CircuitState, Ticket
from hookshield.config.models import BreakerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CONFIG = BreakerConfig(
    failure_threshold=3, recovery_timeout_s=10, success_threshold=2, half_open_max_calls=2,
    max_recovery_timeout_s=50,
)  # fmt: skip


def make(config: BreakerConfig = CONFIG) -> tuple[Breaker, Clock, list[tuple[str, str]]]:
    clock = Clock()
    moves: list[tuple[str, str]] = []
    breaker = Breaker(
        config, clock, jitter=lambda: 1.0, on_transition=lambda a, b: moves.append((a.name, b.name))
    )
    return breaker, clock, moves


def state(breaker: Breaker) -> CircuitState:
    """The breaker's state, read afresh (a helper so type narrowing does not carry over)."""
    return breaker.state


def fail(breaker: Breaker, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.acquire()
        assert ticket is not None
        breaker.record(ticket, failed=True)


def test_opens_after_consecutive_failures_only() -> None:
    """A success in between resets the count; threshold consecutive failures open it."""
    breaker, _, moves = make()
    fail(breaker, 2)
    ok = breaker.acquire()
    assert ok is not None
    breaker.record(ok, failed=False)
    fail(breaker, 2)
    assert state(breaker) is CircuitState.CLOSED
    fail(breaker)
    assert state(breaker) is CircuitState.OPEN
    assert breaker.acquire() is None
    assert breaker.retry_after_s() == 10
    assert moves == [("CLOSED", "OPEN")]


def test_half_open_caps_probes_and_closes_after_successes() -> None:
    """After recovery: at most half_open_max_calls probes; success_threshold successes close."""
    breaker, clock, _ = make()
    fail(breaker, 3)
    clock.now += 10
    first, second = breaker.acquire(), breaker.acquire()
    assert first is not None
    assert second is not None
    assert breaker.acquire() is None  # the cap
    breaker.record(first, failed=False)
    assert state(breaker) is CircuitState.HALF_OPEN
    breaker.record(second, failed=False)
    assert state(breaker) is CircuitState.CLOSED


def test_failed_probe_reopens_with_doubling_capped_timeout() -> None:
    """Each consecutive re-open doubles the recovery timeout, up to the maximum."""
    breaker, clock, _ = make()
    fail(breaker, 3)
    waits = []
    for _ in range(4):
        waits.append(breaker.retry_after_s())
        clock.now += breaker.retry_after_s()
        fail(breaker)  # the probe fails
    assert waits == [10, 20, 40, 50]


def test_stale_ticket_changes_nothing() -> None:
    """A call admitted before the breaker opened cannot close or reopen it afterwards."""
    breaker, clock, _ = make()
    early = breaker.acquire()
    assert early is not None
    fail(breaker, 3)
    clock.now += 10
    assert state(breaker) is CircuitState.HALF_OPEN
    breaker.record(early, failed=True)
    assert state(breaker) is CircuitState.HALF_OPEN


def test_rate_mode_opens_on_failure_share() -> None:
    """failure_rate 0.5 over the window with min_requests 10 opens without a consecutive run."""
    config = BreakerConfig(failure_threshold=100, failure_rate=0.5, window_s=10, min_requests=10)
    breaker, clock, _ = make(config)
    for i in range(9):
        ticket = breaker.acquire()
        assert ticket is not None
        breaker.record(ticket, failed=i % 2 == 0)  # 5 failures of 9: below min_requests
        clock.now += 0.5
    assert state(breaker) is CircuitState.CLOSED
    fail(breaker)  # 6 of 10
    assert state(breaker) is CircuitState.OPEN


def test_rate_window_forgets_old_calls() -> None:
    """Failures older than window_s do not count toward the rate."""
    config = BreakerConfig(failure_threshold=100, failure_rate=0.5, window_s=5, min_requests=4)
    breaker, clock, _ = make(config)
    fail(breaker, 3)
    clock.now += 6
    for _ in range(3):
        ticket = breaker.acquire()
        assert ticket is not None
        breaker.record(ticket, failed=False)
    fail(breaker)  # 1 of 4 in the window
    assert state(breaker) is CircuitState.CLOSED


def test_trip_and_reset() -> None:
    """trip() opens at once (health checks); reset() closes and forgets re-opens."""
    breaker, _, _ = make()
    breaker.trip()
    assert state(breaker) is CircuitState.OPEN
    breaker.reset()
    assert state(breaker) is CircuitState.CLOSED
    assert breaker.acquire() is not None


def test_breakers_are_per_origin_and_bounded() -> None:
    """Each origin has its own breaker; past max_origins a closed one is forgotten."""
    breakers = Breakers(CONFIG, max_origins=2)
    a = breakers.get("http://a")
    fail(a, 3)
    assert breakers.get("http://b").state is CircuitState.CLOSED
    breakers.get("http://c")
    assert breakers.get("http://a") is a  # open breakers are kept
    assert len(breakers.items()) <= 3


@dataclass
class Held:
    ticket: Ticket
    probe: bool


class BreakerModel(RuleBasedStateMachine):
    """Random calls, results, cancellations and time steps against a reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.breaker = Breaker(CONFIG, self.clock, jitter=lambda: 1.0)
        self.held: list[tuple[Ticket, int]] = []  # ticket and the model epoch it was issued in
        self.state = "CLOSED"
        self.epoch = 0
        self.failures = self.probes = self.successes = self.reopens = 0
        self.open_until = 0.0

    def _move(self, state: str) -> None:
        self.state, self.epoch = state, self.epoch + 1
        self.failures = self.probes = self.successes = 0

    def _open(self) -> None:
        if self.state == "HALF_OPEN":
            self.reopens += 1
        timeout = 10.0 if self.reopens == 0 else min(10.0 * 2**self.reopens, 50.0)
        self.open_until = self.clock.now + timeout
        self._move("OPEN")

    def _tick_model(self) -> None:
        if self.state == "OPEN" and self.clock.now >= self.open_until:
            self._move("HALF_OPEN")

    @rule()
    def acquire(self) -> None:
        self._tick_model()
        ticket = self.breaker.acquire()
        admitted = self.state == "CLOSED" or (self.state == "HALF_OPEN" and self.probes < 2)
        assert (ticket is not None) == admitted, (self.state, self.probes)
        if ticket is not None:
            self.probes += self.state == "HALF_OPEN"
            self.held.append((ticket, self.epoch))

    @precondition(lambda self: self.held)
    @rule(index=st.integers(0, 100), failed=st.booleans(), cancel=st.booleans())
    def finish(self, index: int, failed: bool, cancel: bool) -> None:
        ticket, epoch = self.held.pop(index % len(self.held))
        self._tick_model()
        if cancel:
            self.breaker.release(ticket)
            self.probes -= epoch == self.epoch and self.state == "HALF_OPEN"
            return
        self.breaker.record(ticket, failed)
        if epoch != self.epoch:
            return
        if self.state == "HALF_OPEN":
            self.probes -= 1
            if failed:
                self._open()
            else:
                self.successes += 1
                if self.successes >= 2:
                    self.reopens = 0
                    self._move("CLOSED")
        elif failed:
            self.failures += 1
            if self.failures >= 3:
                self._open()
        else:
            self.failures = 0

    @rule(seconds=st.sampled_from([0.5, 3.0, 10.0, 25.0]))
    def wait(self, seconds: float) -> None:
        self.clock.now += seconds

    @invariant()
    def same_state(self) -> None:
        self._tick_model()
        assert self.breaker.state.name == self.state
        if self.state == "OPEN":
            assert self.breaker.retry_after_s() == self.open_until - self.clock.now > 0


BreakerModel.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestBreakerModel = BreakerModel.TestCase
