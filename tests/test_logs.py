"""Log lines: the request line's fast path matches the general renderer; batching; redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from hookshield import logs

text = st.text(max_size=40)


FIELDS = st.tuples(text, text, text, text, st.integers(100, 599), text, st.floats(0, 1e6), text)


@given(created=st.floats(min_value=0, max_value=4e9), fields=FIELDS)
def test_request_line_is_exactly_what_render_makes(created: float, fields: tuple[Any, ...]) -> None:
    """For any field values (quotes, control characters, non-ASCII), the same JSON text."""
    names = ("route", "target", "method", "path", "status", "outcome", "duration_ms", "request_id")
    expected = logs.render(created, "info", "request", dict(zip(names, fields, strict=True)))
    line = logs.request_line(created, *fields)
    assert line == expected
    assert json.loads(line)["path"] == fields[3]


@given(
    created=st.floats(min_value=0, max_value=4e9),
    fields=st.tuples(text, text, st.integers(1, 1000), text),
)
def test_delivered_line_is_exactly_what_render_makes(
    created: float, fields: tuple[Any, ...]
) -> None:
    """The deliverer's fast line, for any field values, is the general renderer's text."""
    names = ("route", "delivery_id", "attempt", "request_id")
    expected = logs.render(created, "info", "delivered", dict(zip(names, fields, strict=True)))
    assert logs.delivered_line(created, *fields) == expected


def test_render_redacts_sensitive_keys_at_any_depth() -> None:
    """A secret-looking key is redacted wherever it is; other values stay."""
    line = json.loads(
        logs.render(0.0, "info", "e", {"a": {"Authorization": "x"}, "token": "y", "n": 1})
    )
    assert (line["a"]["Authorization"], line["token"], line["n"]) == (
        logs.REDACTED,
        logs.REDACTED,
        1,
    )


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_request_lines_of_one_loop_iteration_leave_in_one_write() -> None:
    """Lines added together are written once, at the end of the loop iteration, in order."""
    stream = CountingStream()
    log = logs.RequestLog()
    log.stream = stream
    logging.getLogger("hookshield").setLevel(logging.INFO)
    for n in range(5):
        log.add("r", "t", "POST", f"/p{n}", 200, "upstream", 1.0, f"id-{n}")
    assert stream.writes == 0
    await asyncio.sleep(0)
    assert stream.writes == 1
    paths = [json.loads(line)["path"] for line in stream.getvalue().splitlines()]
    assert paths == [f"/p{n}" for n in range(5)]
