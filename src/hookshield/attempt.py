"""One attempt to a target under its breaker: sent, classified, recorded.

Shared by the sync proxy and async delivery. The caller has taken a breaker ticket; this
sends, gives the ticket back with the verdict of `outcomes`, and records the attempt in
the metrics and the recent-window statistics. A cancelled attempt gives no verdict, nor
does one hookshield could not make for want of its own resources (counted apart).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from hookshield import outcomes
from hookshield.breaker import Breaker, Ticket
from hookshield.errors import LocalResourceError, ProxyError
from hookshield.runtime import RoutePlan, State
from hookshield.upstream import UpstreamResponse


async def attempt(
    state: State,
    plan: RoutePlan,
    origin: str,
    breaker: Breaker,
    ticket: Ticket,
    sending: Callable[[], Awaitable[UpstreamResponse]],
) -> UpstreamResponse:
    """The target's answer, or the `Timeout`/`UpstreamUnreachable`/... raised by `sending()`
    (called here, so that whatever it raises gives the ticket back)."""
    started = time.perf_counter()
    try:
        answer = await sending()
    except LocalResourceError as exc:
        breaker.release(ticket)  # hookshield's failure, not the target's
        state.local_error(exc)
        raise
    except ProxyError as exc:
        kind = outcomes.of_error(exc)
        if kind is None:
            breaker.release(ticket)
        else:
            breaker.record(ticket, outcomes.trips_breaker(kind))
            state.record_attempt(
                plan, origin, outcomes.metric_result(kind), time.perf_counter() - started
            )
        raise
    except BaseException:
        breaker.release(ticket)  # cancelled: no verdict
        raise
    kind = outcomes.of_status(answer.status)
    breaker.record(ticket, outcomes.trips_breaker(kind, plan.config.breaker.trip_on_429))
    state.record_attempt(plan, origin, outcomes.metric_result(kind), time.perf_counter() - started)
    return answer
