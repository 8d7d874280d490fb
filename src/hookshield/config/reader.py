"""Typed reads from parsed YAML that remember where they are.

A `Section` wraps one YAML mapping at a known path (`routes[2].breaker`). Its getters
return a typed value or the default, and record every problem in a shared `Problems`
list as `path: message, got value` so that validation reports all mistakes at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def describe(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Problems:
    """Collects `path: message` lines; `origins` marks paths whose value came from env."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.origins: dict[str, str] = {}

    def add(self, path: str, message: str) -> None:
        origin = self.origins.get(path)
        suffix = f" (set by {origin})" if origin else ""
        self.items.append(f"{path or '<root>'}{suffix}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)


class Section:
    """One YAML mapping at `path`; unknown keys are reported on construction."""

    def __init__(
        self, raw: object, path: str, problems: Problems, known: Iterable[str] | None
    ) -> None:
        self.path, self.problems = path, problems
        self.raw: dict[str, Any] = {}
        if isinstance(raw, dict):
            self.raw = raw
        elif raw is not None:
            problems.add(path, f"must be a mapping, got {describe(raw)}")
        if known is not None:  # None: a free-form mapping (names chosen by the operator)
            self._report_unknown(tuple(known))

    def _report_unknown(self, known: tuple[str, ...]) -> None:
        for key in self.raw:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self.problems.add(join(self.path, str(key)), f"unknown key{hint}")

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def fail(self, key: str, message: str) -> None:
        value = self.raw.get(key)
        self.problems.add(self.at(key), f"{message}, got {describe(value)}")

    def section(self, key: str, known: Iterable[str] | None) -> Section:
        return Section(self.raw.get(key), self.at(key), self.problems, known)

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.raw.get(key)
        if value is None:
            return default
        if isinstance(value, str) and value:
            return value
        self.fail(key, "must be a non-empty string")
        return default

    def required_string(self, key: str) -> str:
        if key not in self.raw:
            self.problems.add(self.at(key), "is required")
            return ""
        return self.string(key) or ""

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if isinstance(value, bool):
            return value
        self.fail(key, "must be true or false")
        return default

    def integer(self, key: str, default: int, *, minimum: int = 1) -> int:
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "must be a whole number")
            return default
        if value < minimum:
            self.fail(key, f"must be >= {minimum}")
            return default
        return value

    def number(
        self, key: str, default: float, *, minimum: float = 0.0, above: bool = True
    ) -> float:
        """A number > minimum (or >= minimum when `above` is false)."""
        value = self.raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, "must be a number")
            return default
        if value < minimum or (above and value == minimum):
            self.fail(key, f"must be {'>' if above else '>='} {minimum:g}")
            return default
        return float(value)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of non-empty strings (a single string is accepted as a list of one)."""
        value = self.raw.get(key)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) and v for v in items):
            return tuple(items)
        self.fail(key, "must be a string or a list of strings")
        return ()

    def string_map(self, key: str) -> dict[str, str]:
        value = self.raw.get(key)
        if value is None:
            return {}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            bad = [k for k, v in value.items() if not isinstance(v, str | int | float)]
            for k in bad:
                self.problems.add(
                    join(self.at(key), k), f"must be a string, got {describe(value[k])}"
                )
            return {k: str(v) for k, v in value.items() if k not in bad}
        self.fail(key, "must be a mapping of names to strings")
        return {}

    def items(self, key: str) -> list[tuple[str, Any]]:
        """The `(path, raw item)` pairs of a list value."""
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(key, "must be a list")
            return []
        return [(join(self.at(key), i), item) for i, item in enumerate(value)]


def parse_duration(text: str) -> float | None:
    """`500ms`, `5s`, `1m`, `2h` as seconds; None when it is not a duration."""
    match = _DURATION.match(text)
    if match is None:
        return None
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
