"""The circuit breaker: a pure state machine over an injectable monotonic clock (SPEC §5).

CLOSED -> OPEN after `failure_threshold` consecutive failures, or when the failure rate
over the rolling `window_s` reaches `failure_rate` with at least `min_requests` calls.
OPEN answers at once for the recovery timeout, which doubles (with jitter) on each
consecutive re-open up to `max_recovery_timeout_s`. Then HALF_OPEN admits at most
`half_open_max_calls` concurrent probes; `success_threshold` successes close it, any
failure re-opens it.

A caller asks `acquire()` for a `Ticket` before calling the target and hands it back with
`record(ticket, failed)`, or `release(ticket)` when the call ended with no verdict (it was
cancelled). A result from a ticket issued before the last transition changes nothing:
only calls admitted in the current state can move it.
"""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hookshield.config.models import BreakerConfig

Clock = Callable[[], float]


class CircuitState(enum.IntEnum):
    """Values are those of the `hookshield_circuit_state` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class Ticket:
    epoch: int
    probe: bool


Listener = Callable[[CircuitState, CircuitState], None]


class Breaker:
    def __init__(
        self,
        config: BreakerConfig,
        clock: Clock = time.monotonic,
        jitter: Callable[[], float] = random.random,
        on_transition: Listener | None = None,
    ) -> None:
        self.config, self._clock, self._jitter = config, clock, jitter
        self._on_transition = on_transition
        self._state = CircuitState.CLOSED
        self._epoch = 0
        self._consecutive_failures = 0
        self._window = _Window(config.window_s)
        self._reopens = 0
        self._open_until = 0.0
        self._probes = 0
        self._probe_successes = 0

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() >= self._open_until:
            self._move(CircuitState.HALF_OPEN)
        return self._state

    def retry_after_s(self) -> float:
        """Seconds until the next probe may go through (0 when calls are admitted)."""
        return (
            max(0.0, self._open_until - self._clock()) if self.state is CircuitState.OPEN else 0.0
        )

    def acquire(self) -> Ticket | None:
        """A ticket to call the target, or None when the call must be answered as open."""
        state = self.state
        if state is CircuitState.CLOSED:
            return Ticket(self._epoch, probe=False)
        if state is CircuitState.HALF_OPEN and self._probes < self.config.half_open_max_calls:
            self._probes += 1
            return Ticket(self._epoch, probe=True)
        return None

    def record(self, ticket: Ticket, failed: bool) -> None:
        if ticket.epoch != self._epoch:
            return
        if ticket.probe:
            self._probes -= 1
            self._probe_result(failed)
        elif failed:
            self._closed_failure()
        else:
            self._consecutive_failures = 0
            self._window.add(self._clock(), failed=False)

    def release(self, ticket: Ticket) -> None:
        if ticket.probe and ticket.epoch == self._epoch:
            self._probes -= 1

    def trip(self) -> None:
        """Open now (an active health check found the target unhealthy)."""
        if self.state is not CircuitState.OPEN:
            self._open()

    def reset(self) -> None:
        """Close now, forgetting all history (an operator's reset)."""
        self._reopens = 0
        self._move(CircuitState.CLOSED)

    def _probe_result(self, failed: bool) -> None:
        if failed:
            self._open()
            return
        self._probe_successes += 1
        if self._probe_successes >= self.config.success_threshold:
            self._reopens = 0
            self._move(CircuitState.CLOSED)

    def _closed_failure(self) -> None:
        self._consecutive_failures += 1
        now = self._clock()
        self._window.add(now, failed=True)
        if self._consecutive_failures >= self.config.failure_threshold or self._rate_exceeded(now):
            self._open()

    def _rate_exceeded(self, now: float) -> bool:
        rate = self.config.failure_rate
        if rate <= 0:
            return False
        calls, failures = self._window.totals(now)
        return calls >= self.config.min_requests and failures >= rate * calls

    def _open(self) -> None:
        if self._state is CircuitState.HALF_OPEN:
            self._reopens += 1
        self._open_until = self._clock() + self.recovery_timeout_s(self._reopens)
        self._move(CircuitState.OPEN)

    def recovery_timeout_s(self, reopens: int) -> float:
        """Base timeout doubled per consecutive re-open, jittered down by at most 20 %."""
        base = self.config.recovery_timeout_s
        if reopens == 0:
            return base
        grown = min(base * 2.0**reopens, max(base, self.config.max_recovery_timeout_s))
        return grown * (0.8 + 0.2 * self._jitter())

    def _move(self, new: CircuitState) -> None:
        old = self._state
        self._state = new
        self._epoch += 1
        self._consecutive_failures = self._probes = self._probe_successes = 0
        self._window.clear()
        if self._on_transition is not None and old is not new:
            self._on_transition(old, new)


class _Window:
    """Calls and failures per whole second over the last `span_s` seconds."""

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures]

    def add(self, now: float, failed: bool) -> None:
        second = int(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
            self._prune(now)
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed

    def totals(self, now: float) -> tuple[int, int]:
        self._prune(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def _prune(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.span_s:
            self._buckets.popleft()

    def clear(self) -> None:
        self._buckets.clear()


# (target origin, from, to); called with from == to when a breaker is created
TransitionListener = Callable[[str, CircuitState, CircuitState], None]


class Breakers:
    """One breaker per target origin of a route; dynamic targets keep at most `max_origins`
    (the least recently used closed breaker is forgotten first)."""

    def __init__(
        self,
        config: BreakerConfig,
        on_transition: TransitionListener | None = None,
        max_origins: int = 1000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config, self._listener, self.max_origins = config, on_transition, max_origins
        self._clock = clock
        self._by_origin: dict[str, Breaker] = {}

    def get(self, origin: str) -> Breaker:
        breaker = self._by_origin.pop(origin, None)
        if breaker is None:
            breaker = self._new(origin)
            self._evict()
        self._by_origin[origin] = breaker  # re-inserted last: most recently used
        return breaker

    def items(self) -> list[tuple[str, Breaker]]:
        return list(self._by_origin.items())

    def _new(self, origin: str) -> Breaker:
        listener = self._listener

        def notify(old: CircuitState, new: CircuitState) -> None:
            if listener is not None:
                listener(origin, old, new)

        notify(CircuitState.CLOSED, CircuitState.CLOSED)  # created: from == to
        return Breaker(self.config, clock=self._clock, on_transition=notify)

    def _evict(self) -> None:
        if len(self._by_origin) < self.max_origins:
            return
        for origin, breaker in self._by_origin.items():
            if breaker.state is CircuitState.CLOSED:
                del self._by_origin[origin]
                return
