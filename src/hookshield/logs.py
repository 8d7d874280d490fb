"""Structured JSON log lines on stdout, with one choke point for redaction.

Every record goes through `JsonFormatter`, which drops the values of secret-bearing
fields (`Authorization`, signature headers, anything named like a secret) wherever they
appear in the record's `fields`. Code logs facts as `fields`, never pre-rendered text
holding header values.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from hookshield.signing import SIGNATURE_HEADERS

REDACTED = "[redacted]"
_SENSITIVE = SIGNATURE_HEADERS | {"authorization", "proxy-authorization", "cookie", "set-cookie"}
_SENSITIVE_WORDS = ("secret", "token", "password")

logger = logging.getLogger("hookshield")


@functools.lru_cache(maxsize=1024)
def _is_sensitive(key: str) -> bool:
    lower = key.lower()
    return lower in _SENSITIVE or any(word in lower for word in _SENSITIVE_WORDS)


def redact(value: Any) -> Any:
    """A copy of `value` with the values of sensitive keys replaced, at any depth."""
    if isinstance(value, Mapping):
        return {
            k: REDACTED if _is_sensitive(str(k)) else v if type(v) in _PLAIN else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [v if type(v) in _PLAIN else redact(v) for v in value]
    return value


_PLAIN = frozenset({str, int, float, bool, type(None)})  # nothing inside to redact


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(redact(getattr(record, "fields", {})))
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def setup(level: str = "INFO") -> None:
    # Python's logging "Optimization" advice: no caller lookup, no thread or process fields.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event (skipped cheaply when its level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})
