"""Request path + method -> route, by longest `path_prefix` (SPEC §2).

A prefix matches on a segment boundary: `/quiz` matches `/quiz`, `/quiz/x` and `/quiz?x`,
not `/quizzes`. The remainder after the prefix is what gets appended to the target URL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from hookshield.errors import MethodNotAllowed, NoRoute


class Routable(Protocol):
    @property
    def path_prefix(self) -> str: ...
    @property
    def methods(self) -> frozenset[str] | None: ...


R = TypeVar("R", bound=Routable)


class Router(Generic[R]):
    """Routes sorted longest prefix first; `match` returns the route and the path remainder."""

    def __init__(self, routes: Iterable[R]) -> None:
        self._routes = sorted(
            routes, key=lambda r: (len(r.path_prefix), r.path_prefix), reverse=True
        )

    def match(self, path: str, method: str) -> tuple[R, str]:
        found_prefix: str | None = None
        allowed: set[str] = set()
        for route in self._routes:
            prefix = route.path_prefix
            if found_prefix is not None and prefix != found_prefix:
                break
            remainder = _remainder(path, prefix)
            if remainder is None:
                continue
            found_prefix = prefix
            if route.methods is None or method in route.methods:
                return route, remainder
            allowed |= route.methods
        if found_prefix is None:
            raise NoRoute(f"no route matches {path}")
        raise MethodNotAllowed(f"{method} is not allowed on {found_prefix}", allow=sorted(allowed))


def _remainder(path: str, prefix: str) -> str | None:
    if prefix == "/":
        return path
    if path == prefix:
        return ""
    if path.startswith(prefix) and path[len(prefix)] == "/":
        return path[len(prefix) :]
    return None
