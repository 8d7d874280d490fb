"""Background delivery of queued calls: lease, send, then complete, retry or dead-letter.

Each attempt is sent with the route's current timeout, headers and a fresh signature, the
same `X-Request-ID` every time, `X-Retry-Attempt` (1-based) and `X-Max-Attempts`. Its
result is classified by `outcomes`: success completes it; a retryable failure reschedules
it by the route's `retry` (honouring `Retry-After`); anything else, or the last attempt,
sends it to the dead-letter queue. An open breaker defers the delivery without using up an
attempt, as does a target already at its per-target concurrency cap.

Deliveries give way to the data plane (`pressure`): while the process is short of CPU and
calls arrive, the number of deliveries at once is halved every 50 ms down to one; once it
has not been for 150 ms, it grows back by one eighth of `workers` every 50 ms. A burst of
calls is accepted at full speed, and the backlog it leaves is delivered after.

Leases are short (`queue.lease_s`, default 10 s) and renewed while their attempts run:
one pass every `lease_s / 3` renews the lease of every delivery in flight (one group commit,
whatever their number), so an attempt may last longer than a lease, and a replica that dies
leaves its deliveries due again at most `lease_s` after its last renewal. A renewal that
fails is tried again at the next pass (two may fail before a lease lapses). At-least-once:
a lease that lapsed while its attempt ran (renewals failing) may be taken by another worker
and the delivery sent twice, but only one result counts: the store writes a result only
for the lease holder, and a result the store refused (`lease_lost`) is neither logged as
delivered nor counted.

An idle deliverer costs little: the pressure samples stop while no delivery runs and no
call arrives, and an empty queue is looked at ever less often (50 ms, doubled per empty
look up to 1 s). A local enqueue or replay wakes it at once, and a retry it scheduled
itself is leased when due; a call queued by another worker or replica waits for the next
look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial

from hookshield import logs, outcomes, tasks
from hookshield.attempt import attempt
from hookshield.errors import LocalResourceError, ProxyError
from hookshield.limits import OriginSlots
from hookshield.pressure import Pressure
from hookshield.queue.base import Delivery, DeliveryStore, StoreUnavailable
from hookshield.retry import backoff_s, retry_after_s
from hookshield.runtime import RoutePlan, State
from hookshield.upstream import UpstreamResponse, send

LEASE_S = 10.0  # `queue.lease_s`: how long a lease lasts between two renewals
RENEWALS_PER_LEASE = 3  # renewal passes per lease_s: two may fail before a lease lapses
CAP_WAIT_S = 0.05  # a delivery whose target is at its cap waits this long for a free slot,
CAP_DEFER_S = 0.2  # then goes back to the store and is tried again this much later
LOCAL_DEFER_S = 1.0  # a delivery hookshield could not send for want of descriptors or buffers
CALM_SAMPLES = 3  # pressure samples in a row without pressure before deliveries grow again
STOP_LOOP_S = 5.0  # the lease loop's own exit: one store call, bounded by its socket timeout
IDLE_POLL_MAX_S = 1.0  # the longest pause between two looks at an empty queue


class Deliverer:
    """Runs `workers` deliveries at once, at most `per_target` to one target origin."""

    def __init__(
        self,
        store: DeliveryStore,
        state: State,
        workers: int,
        lease_s: float = LEASE_S,
        per_target: int | None = None,
        poll_s: float = 0.05,
    ) -> None:
        self.store, self.state, self.workers, self.lease_s = store, state, workers, lease_s
        self.per_target = per_target or max(1, workers // 2)
        self.refill = max(1, workers // 4)  # while busy, lease again once this many are free
        self.poll_s = poll_s
        self._pause_s = poll_s  # before the next look at a queue found empty
        self._due_at = float("inf")  # the earliest retry or deferral this deliverer scheduled
        self._calls_seen = 0  # the data plane's call count at the last look
        self._active: dict[asyncio.Task[None], Delivery] = {}
        self.slots = OriginSlots(self.per_target, CAP_WAIT_S)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.limit = workers  # deliveries at once now: `workers`, fewer under pressure
        self._calm = 0  # samples in a row without pressure
        self.pressure = Pressure(state.data_calls, self._adjust)

    def start(self) -> None:
        self._loop_task = tasks.service("delivery-loop", self._run)
        self._renewer = tasks.service("delivery-lease-renewals", self._renew_leases)

    def wake(self) -> None:
        """Look for due deliveries now (called after a local enqueue)."""
        self._pause_s = self.poll_s
        self._wake.set()

    async def stop(self, grace_s: float) -> None:
        """Stop leasing, let attempts in flight finish within `grace_s`, release the rest.

        The lease loop is stopped by a flag and a wake-up, not by cancelling it: on Python
        3.11 a cancellation that races a finishing wait can be lost, and the loop would run on.
        """
        self._stopping = True
        self._wake.set()
        self.pressure.stop()
        if self._loop_task is not None:
            done, _ = await asyncio.wait({self._loop_task}, timeout=STOP_LOOP_S)
            if not done:
                self._loop_task.cancel()
        if self._active:
            await asyncio.wait(list(self._active), timeout=grace_s)
        unfinished = dict(self._active)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        if unfinished:
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(list(unfinished.values()), time.time())

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._watch_pressure()
            leased = await self._lease()
            for delivery in leased:
                task = tasks.spawn("delivery", self._deliver(delivery))
                self._active[task] = delivery
                task.add_done_callback(self._done)
            if leased:
                self._pause_s = self.poll_s
            elif not self._stopping:
                await self._pause()

    async def _pause(self) -> None:
        """Until woken, a retry of ours is due, or the next look at the queue. (A retry already
        due waits for a free slot: a finishing delivery wakes the loop.)"""
        until_due = self._due_at - time.time()
        pause = min(self._pause_s, until_due) if until_due > 0 else self._pause_s
        self._pause_s = min(self._pause_s * 2, IDLE_POLL_MAX_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pause):
                await self._wake.wait()

    def _watch_pressure(self) -> None:
        """Sample the pressure while deliveries run or calls arrive (so that deliveries
        start at the right number after a quiet spell), not while all is idle."""
        calls = self.state.data_calls()
        if not self.pressure.running and (self._active or calls != self._calls_seen):
            self.pressure.start()
        self._calls_seen = calls

    def _adjust(self, busy: bool) -> None:
        """Fewer deliveries at once under pressure (halved, down to 1); more again once
        `CALM_SAMPLES` samples in a row were calm (one calm sample amid pressure is noise)."""
        self._calm = 0 if busy else self._calm + 1
        if busy:
            self.limit = max(1, self.limit // 2)
        elif self._calm >= CALM_SAMPLES and self.limit < self.workers:
            self.limit = min(self.workers, self.limit + max(1, self.workers // 8))
            self._wake.set()
        elif not self._active and self.limit >= self.workers and self.pressure.quiet:
            self.pressure.stop()  # all idle: `_watch_pressure` starts it again

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.pop(task, None)
        self._wake.set()  # a worker is free

    async def _lease(self) -> list[Delivery]:
        runtime = self.state.runtime
        free = self.limit - len(self._active)
        if runtime is None or free <= 0 or (self._active and free < self.refill):
            return []  # a busy queue is leased in batches, not one delivery per lease
        if self._due_at <= time.time():
            self._due_at = float("inf")  # due now: this lease takes it (or another process did)
        try:
            return await self.store.lease(time.time(), free, self.lease_s)
        except StoreUnavailable as exc:
            logs.event("queue_unavailable", logging.WARNING, error=str(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()  # a stop wakes it early
            return []

    async def _renew_leases(self) -> None:
        """Every `lease_s / RENEWALS_PER_LEASE`: one renewal of every lease in flight (the
        store's group commit sends them together). A lease found lost is logged; its
        attempt runs on, and its result will be refused by the store."""
        loop = asyncio.get_running_loop()
        next_pass = loop.time()
        while True:  # a pass that took longer than the pace is followed by the next at once
            next_pass = max(next_pass + self.lease_s / RENEWALS_PER_LEASE, loop.time())
            await asyncio.sleep(next_pass - loop.time())
            in_flight = [(task, d) for task, d in self._active.items() if not task.done()]
            if not in_flight:
                continue
            answers = await asyncio.gather(
                *(self.store.renew(delivery, self.lease_s) for _, delivery in in_flight),
                return_exceptions=True,
            )
            failed = [answer for answer in answers if isinstance(answer, BaseException)]
            if failed:
                logs.event("lease_renewal_failed", logging.WARNING, deliveries=len(failed),
                           error=str(failed[0]))  # fmt: skip
            for (task, delivery), answer in zip(in_flight, answers, strict=True):
                if answer is False and not task.done():
                    _lease_lost(delivery, "renew")

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            await self._attempt(delivery)
        except StoreUnavailable as exc:  # the lease expires and the delivery is tried again
            logs.event(
                "queue_unavailable", logging.WARNING, error=str(exc), delivery_id=delivery.id
            )

    async def _attempt(self, delivery: Delivery) -> None:
        runtime = self.state.runtime
        plan = runtime.plan(delivery.route) if runtime else None
        if plan is None or not plan.queues:
            await self._bury(delivery, "route_removed")
            return
        if not await self.slots.take(delivery.origin):
            await self._defer(delivery, CAP_DEFER_S)
            return
        try:
            await self._send(plan, delivery)
        finally:
            self.slots.give(delivery.origin)

    async def _defer(self, delivery: Delivery, pause_s: float) -> None:
        """Later again, without using up an attempt."""
        if await self._reschedule(delivery, time.time() + pause_s):
            self.state.metrics.delivery(delivery.route, "deferred")

    async def _reschedule(self, delivery: Delivery, due_at: float) -> bool:
        if not await self.store.reschedule(delivery, due_at):
            _lease_lost(delivery, "reschedule")
            return False
        self._due_at = min(self._due_at, due_at)
        return True

    async def _send(self, plan: RoutePlan, delivery: Delivery) -> None:
        breaker = plan.breakers.get(delivery.origin)
        ticket = breaker.acquire()
        if ticket is None:
            await self._defer(delivery, max(breaker.retry_after_s(), 0.1))
            return
        number = delivery.attempts + 1
        headers = _headers(plan, delivery, number)
        sending = partial(
            send, plan.client, delivery.method, delivery.url, delivery.origin, headers,
            delivery.body, plan.timeout_s,
        )  # fmt: skip
        try:
            answer = await attempt(self.state, plan, delivery.origin, breaker, ticket, sending)
        except LocalResourceError:  # hookshield's own shortage: later again, no attempt used
            await self._defer(delivery, LOCAL_DEFER_S)
            return
        except ProxyError as exc:
            failed = delivery.after(attempts=number, last_status=None, last_error=exc.message)
            await self._settle(plan, failed, outcomes.of_error(exc), None)
            return
        kind = outcomes.of_status(answer.status)
        error = None if kind is outcomes.Kind.SUCCESS else _describe(answer)
        done = delivery.after(attempts=number, last_status=answer.status, last_error=error)
        await self._settle(
            plan, done, kind, retry_after_s(answer.headers.get("Retry-After"), time.time())
        )

    async def _settle(
        self, plan: RoutePlan, delivery: Delivery, kind: outcomes.Kind | None, wait_s: float | None
    ) -> None:
        if kind is outcomes.Kind.SUCCESS:
            if not await self.store.complete(delivery):
                _lease_lost(delivery, "complete")  # another worker holds it: its result counts
                return
            self.state.metrics.delivery(delivery.route, "success")
            logs.requests.delivered(
                delivery.route, delivery.id, delivery.attempts, delivery.request_id
            )
        elif kind is None or not outcomes.retryable(kind):
            await self._bury(delivery, kind.value if kind else "forbidden")
        elif delivery.attempts >= plan.config.retry.max_attempts:
            await self._bury(delivery, "exhausted")
        else:
            pause = backoff_s(plan.config.retry, delivery.attempts, wait_s)
            if await self._reschedule(delivery, time.time() + pause):
                self.state.metrics.delivery(delivery.route, "retry")

    async def _bury(self, delivery: Delivery, reason: str) -> None:
        if not await self.store.bury(delivery.after(reason=reason, failed_at=time.time())):
            _lease_lost(delivery, "bury")
            return
        self.state.metrics.delivery(delivery.route, "dead_letter")
        logs.event("dead_lettered", logging.WARNING, route=delivery.route, delivery_id=delivery.id, reason=reason,
                   attempts=delivery.attempts, last_status=delivery.last_status, request_id=delivery.request_id)  # fmt: skip


def _lease_lost(delivery: Delivery, step: str) -> None:
    """The store refused `step` for `delivery`: its lease lapsed and another worker took it
    (which will deliver it and write the result), or it is gone (deleted, replayed)."""
    logs.event("lease_lost", logging.WARNING, route=delivery.route, delivery_id=delivery.id,
               request_id=delivery.request_id, step=step)  # fmt: skip


_ATTEMPT_HEADERS = frozenset({"x-retry-attempt", "x-max-attempts"})


def _headers(plan: RoutePlan, delivery: Delivery, attempt: int) -> list[tuple[str, str]]:
    """The stored headers, with those this attempt sets replaced: the route's own (request
    id, timeout, signature: `HeaderPolicy.replaced`, as on the sync path) and the attempt
    numbers. (Stored under an older config, a delivery may still hold some of them.)"""
    signer, replaced = plan.signer, plan.headers.replaced
    headers = [
        (k, v)
        for k, v in delivery.headers
        if (name := k.lower()) not in replaced and name not in _ATTEMPT_HEADERS
    ]
    headers += (
        ("X-Request-ID", delivery.request_id),
        ("X-Timeout-Ms", str(int(plan.timeout_s * 1000))),
        ("X-Retry-Attempt", str(attempt)),
        ("X-Max-Attempts", str(plan.config.retry.max_attempts)),
    )
    if signer is not None:
        headers += signer.sign(delivery.body, delivery.request_id, int(time.time()))
    return headers


def _describe(answer: UpstreamResponse) -> str:
    return f"HTTP {answer.status}: {answer.body[:200].decode('utf-8', 'replace')}"
