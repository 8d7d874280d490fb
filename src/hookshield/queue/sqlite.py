"""The embedded queue store: one SQLite file in WAL mode, durable across restarts.

All SQLite work runs on one dedicated thread (never on the event loop), each change in one
`BEGIN IMMEDIATE` transaction, with `synchronous=FULL` so an acknowledged enqueue survives
a crash of the process or the machine. Writes are group-committed: those that arrive while
a commit is under way share the next transaction (one fsync), each in its own savepoint,
and each caller is answered only after that transaction committed. Due and leased deliveries share one table; `due_at`
is the due time of a due delivery and the lease deadline of a leased one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from hookshield.queue.base import DEDUPE_TTL_S, Delivery, StoreUnavailable

T = TypeVar("T")
_Pending = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]

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
"""
_PURGE_DEDUPE = (
    "DELETE FROM dedupe WHERE rowid IN (SELECT rowid FROM dedupe WHERE expires_at<? LIMIT 500)"
)


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hookshield-sqlite")
        self._db: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._pending_lock = threading.Lock()
        self._commits: set[asyncio.Future[None]] = set()

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, work)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self._db = self._open()
        return work(self._db)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        return db

    @staticmethod
    @contextmanager
    def _tx(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in the next group commit; answered once that transaction committed.

        The first caller of a batch starts its commit, shielded so that cancelling that
        caller cannot leave the others of the batch unanswered."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._pending_lock:
            self._pending.append((work, answer))
            leader = len(self._pending) == 1
        if leader:
            commit = asyncio.ensure_future(self._commit_pending())
            self._commits.add(commit)
            commit.add_done_callback(self._commits.discard)
        return cast(T, await answer)

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        batch, results, failure = await loop.run_in_executor(self._thread, self._commit_batch)
        for (_, answer), (value, error) in zip(batch, results, strict=False):
            if error is not None:
                answer.set_exception(StoreUnavailable(f"sqlite {self.path}: {error}"))
            else:
                answer.set_result(value)
        if failure is not None:
            for _, answer in batch:
                answer.set_exception(StoreUnavailable(f"sqlite {self.path}: {failure}"))

    def _commit_batch(
        self,
    ) -> tuple[list[_Pending], list[tuple[Any, Exception | None]], Exception | None]:
        """On the SQLite thread: every pending write in one transaction, each in a savepoint
        so that one failing write does not undo the others."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
        try:
            return batch, self._call(lambda db: self._apply(db, batch)), None
        except sqlite3.Error as exc:
            return batch, [], exc

    def _apply(
        self, db: sqlite3.Connection, batch: list[_Pending]
    ) -> list[tuple[Any, Exception | None]]:
        results: list[tuple[Any, Exception | None]] = []
        with self._tx(db):
            for work, _ in batch:
                db.execute("SAVEPOINT write")
                try:
                    results.append((work(db), None))
                except sqlite3.Error as exc:
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
                "SELECT id, meta, body FROM deliveries WHERE dead=0 AND due_at<=? ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            leased = []
            for delivery_id, meta, body in rows:
                token = uuid.uuid4().hex
                db.execute(
                    "UPDATE deliveries SET due_at=?, lease=? WHERE id=?",
                    (now + lease_s, token, delivery_id),
                )
                leased.append(Delivery.load(meta, body, token))
            return leased

        return await self._write(work)

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
                f"SELECT meta, body FROM deliveries WHERE dead=1 {where} ORDER BY due_at DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [Delivery.load(meta, body) for meta, body in rows]

        return await self._run(work)

    async def dead_letter(self, delivery_id: str) -> Delivery | None:
        def work(db: sqlite3.Connection) -> Delivery | None:
            row = db.execute(
                "SELECT meta, body FROM deliveries WHERE dead=1 AND id=?", (delivery_id,)
            ).fetchone()
            return Delivery.load(row[0], row[1]) if row else None

        return await self._run(work)

    async def _revive(self, column: str, key: str, now: float) -> int:
        """Dead deliveries whose `column` is `key` due again now: attempts reset, same id."""

        def work(db: sqlite3.Connection) -> int:
            with self._tx(db):
                rows = db.execute(
                    f"SELECT id, meta, body FROM deliveries WHERE dead=1 AND {column}=?", (key,)
                ).fetchall()
                for delivery_id, meta, body in rows:
                    fresh = Delivery.load(meta, body).after(attempts=0, reason=None, failed_at=None)
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
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, work)
        self._thread.shutdown(wait=True)
