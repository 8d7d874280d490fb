"""A minimal webhook receiver for benchmarks: answers every request with a small JSON body.

`python -m bench.target PORT [DELAY_S]`: with a delay, each answer comes that late."""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web

BODY = b'{"success":true,"winner":"user-42"}'


DELAY_S = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


async def answer(request: web.Request) -> web.Response:
    await request.read()
    if DELAY_S:
        await asyncio.sleep(DELAY_S)
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    uvloop.install()
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=8192
    )


if __name__ == "__main__":
    main()
