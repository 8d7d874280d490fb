"""The durable delivery queue: one interface (`DeliveryStore`), two stores (SQLite, Redis)."""

from hookshield.config.models import QueueConfig
from hookshield.queue.base import Delivery, DeliveryStore, StoreUnavailable


def open_store(config: QueueConfig) -> DeliveryStore:
    """Redis when `queue.redis_url` is set, else the embedded SQLite file."""
    if config.redis_url:
        from hookshield.queue.redis import RedisStore

        return RedisStore(config.redis_url)
    from hookshield.queue.sqlite import SqliteStore

    return SqliteStore(config.sqlite_path)


__all__ = ["Delivery", "DeliveryStore", "StoreUnavailable", "open_store"]
