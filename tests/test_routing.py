"""Routing by longest path_prefix on segment boundaries, with method filters."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hookshield.errors import MethodNotAllowed, NoRoute
from hookshield.routing import Router


@dataclass(frozen=True)
class R:
    path_prefix: str
    methods: frozenset[str] | None = None


ROUTER = Router(
    [
        R("/"),
        R("/quiz"),
        R("/quiz/admin"),
        R("/win", frozenset({"POST"})),
        R("/win", frozenset({"PUT"})),
    ]
)


@pytest.mark.parametrize(
    ("path", "prefix", "remainder"),
    [
        ("/quiz", "/quiz", ""),
        ("/quiz/a/b", "/quiz", "/a/b"),
        ("/quiz/admin/x", "/quiz/admin", "/x"),
        ("/quizzes", "/", "/quizzes"),
        ("/other", "/", "/other"),
    ],
)
def test_longest_prefix_on_segment_boundary(path: str, prefix: str, remainder: str) -> None:
    """The longest prefix that ends at a '/' boundary wins; the rest is the remainder."""
    route, rest = ROUTER.match(path, "GET")
    assert (route.path_prefix, rest) == (prefix, remainder)


def test_methods_split_one_prefix() -> None:
    """Two routes on one prefix are chosen by method; others get 405 naming the allowed ones."""
    assert ROUTER.match("/win", "PUT")[0].methods == frozenset({"PUT"})
    with pytest.raises(MethodNotAllowed) as caught:
        ROUTER.match("/win/x", "GET")
    assert caught.value.allow == ["POST", "PUT"]


def test_no_match_without_catch_all() -> None:
    """Without a '/' route, an unknown path is NO_ROUTE."""
    with pytest.raises(NoRoute):
        Router([R("/a")]).match("/b", "POST")
