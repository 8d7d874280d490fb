"""The durable delivery queue: one interface (`DeliveryStore`), two stores (SQLite, Redis).

`open_store` answers the store `Guarded`: every call ends within a deadline and fails only
as `StoreUnavailable`. `check_store` is the start-up check of what the config asks for
(`hookshield check-config` and `hookshield run`): a SQLite file that could not be created
or written is reported with its YAML path before anything is served.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from hookshield.config.models import QueueConfig
from hookshield.queue.base import Delivery, DeliveryStore, StoreUnavailable
from hookshield.queue.guard import Guarded, StoreTimeout

SQLITE_PATH = "queue.sqlite_path"
SQLITE_PATH_ENV = "HOOKSHIELD_SQLITE_PATH"


def open_store(config: QueueConfig) -> DeliveryStore:
    """Redis when `queue.redis_url` is set, else the embedded SQLite file; guarded."""
    if config.redis_url:
        from hookshield.queue.redis import RedisStore

        return Guarded(RedisStore(config.redis_url))
    from hookshield.queue.sqlite import SqliteStore

    return Guarded(SqliteStore(config.sqlite_path))


def check_store(config: QueueConfig, env: Mapping[str, str]) -> list[str]:
    """Problems with the store `config` names, as `path: message` lines (none: it can be
    used). Only the SQLite file is checked (Redis is reached at run time, and retried)."""
    if config.redis_url:
        return []
    problem = sqlite_path_problem(config.sqlite_path)
    if problem is None:
        return []
    origin = f" (set by {SQLITE_PATH_ENV})" if SQLITE_PATH_ENV in env else ""
    return [f"{SQLITE_PATH}{origin}: {problem}"]


def sqlite_path_problem(path: Path) -> str | None:
    """Why the queue file `path` could not be created or written, or None. Nothing is
    created: a missing directory is made at first use, so its nearest existing ancestor
    is checked."""
    if os.path.isdir(path):
        return f"{path} is a directory"
    existing = path.parent
    while not os.path.exists(existing):  # (os.path: False, not an error, where denied)
        existing = existing.parent
    if not os.path.isdir(existing):
        return f"cannot create {path}: {existing} is not a directory"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"cannot create or write {path}: {existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create or write {path}: {existing} is not writable"
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return f"cannot write {path}: permission denied"
    return None


__all__ = [
    "Delivery",
    "DeliveryStore",
    "Guarded",
    "StoreTimeout",
    "StoreUnavailable",
    "check_store",
    "open_store",
]
