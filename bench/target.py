"""A minimal webhook receiver for benchmarks: answers every request with a small JSON body."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

BODY = b'{"success":true,"winner":"user-42"}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
