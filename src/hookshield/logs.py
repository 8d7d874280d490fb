"""Structured JSON log lines on stdout, with one choke point for redaction.

Every line is made by `render` (for log records through `JsonFormatter`, for the data
plane's per-request lines through `RequestLog`), which drops the values of secret-bearing
fields (`Authorization`, signature headers, anything named like a secret) wherever they
appear in the record's `fields`. Code logs facts as `fields`, never pre-rendered text
holding header values.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import time
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, TextIO

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
    if isinstance(value, dict | Mapping):  # a dict is checked first: no ABC lookup
        return {
            k: REDACTED if _is_sensitive(str(k)) else v if type(v) in _PLAIN else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [v if type(v) in _PLAIN else redact(v) for v in value]
    return value


_PLAIN = frozenset({str, int, float, bool, type(None)})  # nothing inside to redact


_seconds: list[Any] = [None, ""]  # the last whole second rendered, and its text


def _timestamp(created: float) -> str:
    second = int(created)
    if _seconds[0] != second:
        _seconds[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_seconds[1]}.{int((created - second) * 1000):03d}Z"


def render(created: float, level: str, event: str, fields: Mapping[str, Any]) -> str:
    """One JSON log line; the only place fields become text, so the only place to redact."""
    entry: dict[str, Any] = {"ts": _timestamp(created), "level": level, "event": event}
    entry.update(redact(fields))
    return _ENCODER.encode(entry)


_ENCODER = json.JSONEncoder(default=str)  # built once: json.dumps(default=...) builds one per call


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        if record.exc_info and record.exc_info[0] is not None:
            fields = {**fields, "exception": record.exc_info[0].__name__}
        return render(record.created, record.levelname.lower(), record.getMessage(), fields)


def request_line(
    created: float, route: str, target: str, method: str, path: str, status: int,
    outcome: str, duration_ms: float, request_id: str,
) -> str:  # fmt: skip
    """The data plane's per-request line: the same text as `render` would make of these
    fields, built directly (its keys are fixed and none is sensitive, so there is nothing to
    redact), at a quarter of the cost: it is paid on every request."""
    return (
        f'{{"ts": "{_timestamp(created)}", "level": "info", "event": "request", '
        f'"route": {_q(route)}, "target": {_q(target)}, "method": {_q(method)}, '
        f'"path": {_q(path)}, "status": {status:d}, "outcome": {_q(outcome)}, '
        f'"duration_ms": {float(duration_ms)!r}, "request_id": {_q(request_id)}}}'
    )


def delivered_line(
    created: float, route: str, delivery_id: str, attempt: int, request_id: str
) -> str:
    """The deliverer's line for each delivered call, built directly like `request_line`."""
    return (
        f'{{"ts": "{_timestamp(created)}", "level": "info", "event": "delivered", '
        f'"route": {_q(route)}, "delivery_id": {_q(delivery_id)}, "attempt": {attempt:d}, '
        f'"request_id": {_q(request_id)}}}'
    )


_q = encode_basestring_ascii  # a JSON string literal, as json.dumps writes it


class RequestLog:
    """The per-call lines (a request served, a delivery made), batched: the lines of one
    event-loop iteration leave in one write at its end, instead of one write (and flush)
    per call."""

    def __init__(self) -> None:
        self.stream: TextIO | None = None  # set by `setup`; None: request lines are off
        self._lines: list[str] = []

    def add(
        self, route: str, target: str, method: str, path: str, status: int,
        outcome: str, duration_ms: float, request_id: str,
    ) -> None:  # fmt: skip
        if self.stream is None or not logger.isEnabledFor(logging.INFO):
            return
        self._add(request_line(time.time(), route, target, method, path, status,
                               outcome, duration_ms, request_id))  # fmt: skip

    def delivered(self, route: str, delivery_id: str, attempt: int, request_id: str) -> None:
        if self.stream is None or not logger.isEnabledFor(logging.INFO):
            return
        self._add(delivered_line(time.time(), route, delivery_id, attempt, request_id))

    def _add(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write at once
                self.flush()

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines and self.stream is not None:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


requests = RequestLog()


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
    requests.stream = sys.stdout


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event (skipped cheaply when its level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})
