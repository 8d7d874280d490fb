r"""Request path + method -> route, by longest `path_prefix` (SPEC §2), and the path's safety
(SPEC §9).

A prefix matches on a segment boundary: `/quiz` matches `/quiz`, `/quiz/x` and `/quiz?x`,
not `/quizzes`. The remainder after the prefix is what gets appended to the target URL.
A path holding `.`, `%` or `\` is normalised (RFC 3986 §5.2.4: `%2E` decoded, dot-segments
removed) and must stay inside the prefix it matched; an encoded `/` or `\` is refused. Other
paths (nearly all) pass as sent at the cost of three character scans.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Generic, Protocol, TypeVar

from hookshield.errors import BadRequest, MethodNotAllowed, NoRoute


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
        """The route for `path` and `method`, and the path's remainder after its prefix: of
        the normalised path when `path` holds `.`, `%` or `\\` (`inside`)."""
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
                if "." in path or "%" in path or "\\" in path:
                    remainder = inside(path, prefix)
                return route, remainder
            allowed |= route.methods
        if found_prefix is None:
            raise NoRoute(f"no route matches {path}")
        raise MethodNotAllowed(f"{method} is not allowed on {found_prefix}", allow=sorted(allowed))


def inside(path: str, prefix: str) -> str:
    """The remainder after `prefix` of `path` normalised; 400 `BAD_REQUEST` when the
    normalised path leaves `prefix`, or `path` holds `%2F`, `%5C` or `\\`."""
    remainder = _remainder(normalise(path), prefix)
    if remainder is None:
        raise BadRequest(f"the path leaves {prefix} once its dot-segments are resolved")
    return remainder


def _remainder(path: str, prefix: str) -> str | None:
    if prefix == "/":
        return path
    if path == prefix:
        return ""
    if path.startswith(prefix) and path[len(prefix)] == "/":
        return path[len(prefix) :]
    return None


_ENCODED_DOT: Final = re.compile("%2[eE]")


def normalise(path: str) -> str:
    """`path` with `%2E`/`%2e` decoded and its dot-segments removed; 400 `BAD_REQUEST` for a
    `\\`, `%2F` or `%5C` (a separator that decoding, or a Windows target, would split on)."""
    if "\\" in path:
        raise BadRequest("the path must not hold a backslash")
    if "%" in path:
        lower = path.lower()
        if "%2f" in lower or "%5c" in lower:
            raise BadRequest("the path must not hold an encoded / or \\ (%2F, %5C)")
        path = _ENCODED_DOT.sub(".", path)
    return remove_dot_segments(path)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path: `.` segments dropped, `..` drops the segment
    before it (never above the root); a trailing dot-segment leaves a trailing `/`."""
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments[-1] in (".", ".."):
        kept.append("")
    return "/" + "/".join(kept)
