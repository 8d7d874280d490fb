"""The `hookshield` command (SPEC §1): run, check-config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hookshield import __version__, logs
from hookshield.config import Config, ConfigError, load_config

EXIT_INVALID = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hookshield", description="Sidecar reverse proxy for outbound webhooks."
    )
    parser.add_argument("--version", action="version", version=f"hookshield {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="serve the data plane and the admin plane")
    run.add_argument("--config", required=True, metavar="PATH", help="the YAML config file")
    run.add_argument(
        "--grace", type=float, default=30.0, metavar="SECONDS",
        help="how long SIGTERM waits for in-flight calls (default 30)",
    )  # fmt: skip
    check = verbs.add_parser("check-config", help="validate a config file; exit 2 when invalid")
    check.add_argument("path", metavar="PATH")
    return parser


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"hookshield: invalid config {path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    print(f"{path}: valid, {len(config.routes)} route(s)")
    return 0


def _run(path: str, grace_s: float) -> int:
    config = _load(path)
    if config is None:
        return EXIT_INVALID
    import uvloop

    from hookshield.server import serve

    logs.setup(config.log_level)
    return uvloop.run(serve(config, grace_s))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verb == "check-config":
        return _check(args.path)
    return _run(args.config, args.grace)
