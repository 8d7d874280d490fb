"""The embedded queue store: one SQLite file in WAL mode, durable across restarts.

All SQLite work runs on one dedicated thread (never on the event loop), each change in one
`BEGIN IMMEDIATE` transaction, with `synchronous=FULL` so an acknowledged enqueue survives
a crash of the process or the machine. Writes are group-committed: those that arrive while
a commit is under way share the next transaction (one fsync), each in its own savepoint,
and each caller is answered only after that transaction committed. Due and leased
deliveries share one table; `due_at` is the due time of a due delivery and the lease
deadline of a leased one.

Every failure is `StoreUnavailable`, never a hang: a file that cannot be opened (its
directory cannot be created, a read-only mount) fails the call, and the next call tries to
open it again; a group commit that fails for any reason fails the writes of that batch
only. A row that cannot be loaded (`corrupt`) is dead-lettered with reason `corrupt` when a
lease meets it (its stored meta kept in the `corrupt` table) and never blocks other work.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from hookshield.queue import corrupt, sqlite_path_problem
from hookshield.queue.base import DEDUPE_TTL_S, Delivery, StoreUnavailable

T = TypeVar("T")
_Pending = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]
_Results = list[tuple[Any, Exception | None]]
_Commit = tuple[list[_Pending], _Results, Exception | None]

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    meta TEXT NOT NULL,
    body BLOB NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    lease TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (dead, due_at);
CREATE TABLE IF NOT EXISTS dedupe (
    route TEXT NOT NULL,
    key TEXT NOT NULL,
    id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (route, key)
);
CREATE INDEX IF NOT EXISTS dedupe_expiry ON dedupe (expires_at);
CREATE TABLE IF NOT EXISTS corrupt (id TEXT PRIMARY KEY, meta, error TEXT, found_at REAL);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""
_PURGE_DEDUPE = (
    "DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe WHERE expires_at<? LIMIT 500)"
)


def _why(exc: OSError | sqlite3.Error) -> str:
    """`Read-only file system: /data/q` rather than `[Errno 30] ...`."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hookshield-sqlite")
        self._db: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._pending_lock = threading.Lock()

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, StoreUnavailable):
            return exc
        return StoreUnavailable(f"sqlite {self.path}: {exc}")

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, work)
        except Exception as exc:  # sqlite3.Error, OSError, a closed store, a bad row
            raise self._failed(exc) from exc

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self._db = self._open()
        return work(self._db)

    def _open(self) -> sqlite3.Connection:
        """The connection, the file and its directory made if need be; `StoreUnavailable`
        when that fails (the next call tries again)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            why = sqlite_path_problem(self.path) or f"{self.path}: {_why(exc)}"
            raise StoreUnavailable(f"the queue store cannot open its file: {why}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            why = f"{self.path}: {_why(exc)}"
            raise StoreUnavailable(f"the queue store cannot open its file: {why}") from exc
        return db

    @staticmethod
    @contextmanager
    def _tx(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One transaction; rolled back on any failure, a failed COMMIT included (SQLite may
        have rolled it back itself: then there is nothing left to roll back)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in the next group commit; answered once that transaction committed.

        The first caller of a batch starts its commit on the SQLite thread; the batch is
        answered by a callback when it returns (no task: cancelling a caller, as a deadline
        does, cannot leave the others of the batch unanswered)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        with self._pending_lock:
            self._pending.append((work, answer))
            leader = len(self._pending) == 1
        if leader:
            try:
                commit = loop.run_in_executor(self._thread, self._commit_batch)
            except RuntimeError as exc:  # the store is closed: its thread takes no more work
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._answer(batch, [], exc)
            else:
                commit.add_done_callback(self._committed)
        return cast(T, await answer)

    def _committed(self, commit: asyncio.Future[_Commit]) -> None:
        if not commit.cancelled():
            self._answer(*commit.result())  # `_commit_batch` returns its failure, never raises

    def _answer(self, batch: list[_Pending], results: _Results, failure: Exception | None) -> None:
        """Each caller of `batch` its own result, or `StoreUnavailable`; all of them fail when
        the transaction did (a caller that gave up, cancelled, is skipped)."""
        if failure is None and len(results) != len(batch):
            failure = RuntimeError("the group commit lost track of its writes")
        for index, (_, answer) in enumerate(batch):
            if answer.done():
                continue
            value, error = results[index] if failure is None else (None, failure)
            if error is not None:
                answer.set_exception(self._failed(error))
            else:
                answer.set_result(value)

    def _commit_batch(self) -> _Commit:
        """On the SQLite thread: every pending write in one transaction, each in a savepoint
        so that one failing write does not undo the others."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
        try:
            return batch, self._call(lambda db: self._apply(db, batch)), None
        except Exception as exc:  # any failure fails this batch's writes, and only them
            return batch, [], exc

    def _apply(self, db: sqlite3.Connection, batch: list[_Pending]) -> _Results:
        """A write whose caller gave up before its transaction began (cancelled: a deadline)
        is left out: a timed-out enqueue is then not stored, a timed-out lease holds nothing."""
        results: _Results = []
        with self._tx(db):
            for work, answer in batch:
                if answer.done():  # read from this thread: at worst the write is applied
                    results.append((None, None))
                    continue
                db.execute("SAVEPOINT write")
                try:
                    results.append((work(db), None))
                except Exception as exc:
                    if not db.in_transaction:  # SQLite rolled it all back (a full disk, say)
                        raise
                    db.execute("ROLLBACK TO write")
                    results.append((None, exc))
                db.execute("RELEASE write")
        return results

    async def enqueue(
        self, delivery: Delivery, dedupe_key: str | None, due_at: float
    ) -> tuple[str, bool]:
        return await self._write(lambda db: self._insert(db, delivery, dedupe_key, due_at))

    @staticmethod
    def _insert(
        db: sqlite3.Connection, delivery: Delivery, dedupe_key: str | None, due_at: float
    ) -> tuple[str, bool]:
        if dedupe_key is not None:
            row = db.execute(
                "SELECT id FROM dedupe WHERE route=? AND key=? AND expires_at>?",
                (delivery.route, dedupe_key, delivery.created_at),
            ).fetchone()
            if row:
                return str(row[0]), True
            expires = delivery.created_at + DEDUPE_TTL_S
            db.execute(
                "INSERT OR REPLACE INTO dedupe VALUES (?,?,?,?)",
                (delivery.route, dedupe_key, delivery.id, expires),
            )
        db.execute(
            "INSERT INTO deliveries (id, route, meta, body, due_at) VALUES (?,?,?,?,?)",
            (delivery.id, delivery.route, delivery.meta(), delivery.body, due_at),
        )
        return delivery.id, False

    async def lease(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            db.execute(_PURGE_DEDUPE, (now,))
            rows = db.execute(
                "SELECT id, route, meta, body FROM deliveries WHERE dead=0 AND due_at<=? ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            leased = []
            for delivery_id, route, meta, body in rows:
                token = uuid.uuid4().hex
                try:
                    delivery = corrupt.load(meta, body, token)
                except corrupt.Unloadable as exc:
                    self._move_aside(db, (delivery_id, route, meta, body), str(exc), now)
                    continue
                db.execute(
                    "UPDATE deliveries SET due_at=?, lease=? WHERE id=?",
                    (now + lease_s, token, delivery_id),
                )
                leased.append(delivery)
            return leased

        return await self._write(work)

    @staticmethod
    def _move_aside(
        db: sqlite3.Connection, row: tuple[Any, ...], error: str, now: float
    ) -> Delivery:
        """An unloadable row to the dead-letter queue (reason `corrupt`, the fields that still
        read right), its stored meta kept in the `corrupt` table; logged."""
        delivery_id, route, meta, body = row
        dead = corrupt.salvage(delivery_id, route, meta, body, error, now)
        db.execute(
            "INSERT OR REPLACE INTO corrupt VALUES (?,?,?,?)", (delivery_id, meta, error, now)
        )
        db.execute(
            "UPDATE deliveries SET dead=1, meta=?, body=?, due_at=?, lease='' WHERE id=?",
            (dead.meta(), dead.body, now, delivery_id),
        )
        corrupt.report(delivery_id, route, error)
        return dead

    def _held(
        self, delivery: Delivery, sql: str, params: tuple[Any, ...]
    ) -> Callable[[sqlite3.Connection], bool]:
        """A change that applies only while `delivery`'s lease is still the current one."""

        def work(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                f"{sql} WHERE id=? AND lease=? AND dead=0", (*params, delivery.id, delivery.lease)
            )
            return cursor.rowcount == 1

        return work

    async def complete(self, delivery: Delivery) -> bool:
        return await self._write(self._held(delivery, "DELETE FROM deliveries", ()))

    async def reschedule(self, delivery: Delivery, due_at: float) -> bool:
        sql = "UPDATE deliveries SET meta=?, due_at=?, lease=''"
        return await self._write(self._held(delivery, sql, (delivery.meta(), due_at)))

    async def bury(self, delivery: Delivery) -> bool:
        sql = "UPDATE deliveries SET meta=?, dead=1, due_at=?, lease=''"
        params = (delivery.meta(), delivery.failed_at or 0.0)
        return await self._write(self._held(delivery, sql, params))

    async def release(self, deliveries: list[Delivery], now: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE deliveries SET due_at=?, lease='' WHERE id=? AND lease=? AND dead=0",
                [(now, d.id, d.lease) for d in deliveries],
            )

        await self._write(work)

    async def dead_letters(self, route: str | None, limit: int) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            where, params = ("AND route=?", (route,)) if route else ("", ())
            rows = db.execute(
                f"SELECT id, route, meta, body, due_at FROM deliveries WHERE dead=1 {where} ORDER BY due_at DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [corrupt.load_dead(*row) for row in rows]

        return await self._run(work)

    async def dead_letter(self, delivery_id: str) -> Delivery | None:
        def work(db: sqlite3.Connection) -> Delivery | None:
            row = db.execute(
                "SELECT id, route, meta, body, due_at FROM deliveries WHERE dead=1 AND id=?",
                (delivery_id,),
            ).fetchone()
            return corrupt.load_dead(*row) if row else None

        return await self._run(work)

    async def _revive(self, column: str, key: str, now: float) -> int:
        """Dead deliveries whose `column` is `key` due again now: attempts reset, same id."""

        def work(db: sqlite3.Connection) -> int:
            with self._tx(db):
                rows = db.execute(
                    f"SELECT id, route, meta, body FROM deliveries WHERE dead=1 AND {column}=?",
                    (key,),
                ).fetchall()
                for delivery_id, route, meta, body in rows:
                    try:
                        dead = corrupt.load(meta, body)
                    except corrupt.Unloadable as exc:
                        dead = self._move_aside(db, (delivery_id, route, meta, body), str(exc), now)
                    fresh = dead.after(attempts=0, reason=None, failed_at=None)
                    db.execute(
                        "UPDATE deliveries SET dead=0, meta=?, due_at=? WHERE id=?",
                        (fresh.meta(), now, delivery_id),
                    )
                return len(rows)

        return await self._run(work)

    async def replay(self, delivery_id: str, now: float) -> bool:
        return await self._revive("id", delivery_id, now) == 1

    async def replay_route(self, route: str, now: float) -> int:
        return await self._revive("route", route, now)

    async def delete(self, delivery_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            with self._tx(db):
                db.execute("DELETE FROM corrupt WHERE id=?", (delivery_id,))
                return (
                    db.execute(
                        "DELETE FROM deliveries WHERE dead=1 AND id=?", (delivery_id,)
                    ).rowcount
                    == 1
                )

        return await self._run(work)

    async def sizes(self) -> dict[str, tuple[int, int]]:
        def work(db: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            rows = db.execute(
                "SELECT route, SUM(dead=0), SUM(dead=1) FROM deliveries GROUP BY route"
            ).fetchall()
            return {route: (int(depth), int(dead)) for route, depth, dead in rows}

        return await self._run(work)

    async def ping(self) -> None:
        """A write commits: the file opens, and a one-row write (in the group commit) is
        durably stored, so a read-only file or a full disk is not ready."""
        await self._write(
            lambda db: db.execute("INSERT OR REPLACE INTO probe VALUES (1, julianday('now'))")
        )

    async def close(self) -> None:
        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, work)
        self._thread.shutdown(wait=True)

    async def renew(self, delivery: Delivery, lease_s: float) -> bool:
        """The holder's lease runs on until now + `lease_s` (in the group commit: one
        transaction renews every in-flight delivery of a renewal pass)."""
        if not delivery.lease:
            return False
        deadline = time.time() + lease_s
        return await self._write(
            self._held(delivery, "UPDATE deliveries SET due_at=?", (deadline,))
        )
