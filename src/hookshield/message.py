"""The data plane's two messages: a platform `Request` as read, and the `Answer` written back."""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict


@dataclass(slots=True)
class Request:
    method: str
    raw_path: str  # path and query in origin form (a fragment is cut off, never forwarded)
    headers: CIMultiDict[str]
    body: bytes
    started: float  # loop time when its headers were read
    too_large: bool = False  # the body exceeds the limit and was not read

    @property
    def path(self) -> str:
        return self.raw_path.partition("?")[0]


@dataclass(slots=True)
class Answer:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    passed: bytes = b""  # header lines passed through as received (a target's), before `headers`
    outcome: str = ""  # how it was answered (SPEC §4): sent as `X-Hookshield-Outcome`
    # `Content-Length` to send in place of len(body): a HEAD answer keeps the target's
    # (SPEC §9); -1 sends none (the target sent none). None: len(body).
    length: int | None = None
