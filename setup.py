"""Builds hookshield. With `HOOKSHIELD_COMPILE=1` (and mypy installed: its mypyc compiler,
a C compiler and the Python headers) the modules every call goes through are compiled to C
extensions; the container image is built so. They behave as the Python sources do (the test
suite runs against both builds) and serve about a tenth more calls per CPU-second
(docs/benchmarks.md). Without it hookshield is pure Python. Not for an editable install:
the extensions would land beside the sources and shadow them (`scripts/build-native` builds
a compiled copy elsewhere).
"""

import os

from setuptools import setup

# The data plane's path: the listener, routing, the route's policy, the upstream client,
# the log line and the metrics tallies of every call. Not compiled: startup, config
# parsing, the admin plane, the queue and anything mypyc does not support (async generators,
# subclasses of OSError, class bodies with tuple assignments).
COMPILED = (
    "attempt", "breaker", "fallback", "headers", "httpclient", "httpreader", "httprules",
    "httpserver", "limits", "logs", "message", "metrics", "outcomes", "proxy", "routing",
    "runtime", "signing", "stats", "targets", "upstream",
)  # fmt: skip


def extensions() -> list[object]:
    if os.environ.get("HOOKSHIELD_COMPILE") != "1":
        return []
    from mypyc.build import mypycify

    return list(mypycify([f"src/hookshield/{name}.py" for name in COMPILED], opt_level="3"))


setup(ext_modules=extensions())
