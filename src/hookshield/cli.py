"""The `hookshield` command (SPEC §1): run, check-config, dlq."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

from hookshield import __version__, logs
from hookshield.config import Config, ConfigError, load_config
from hookshield.queue import check_store

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
    run.add_argument(
        "--workers", type=_positive, default=os.environ.get("HOOKSHIELD_WORKERS", "1"), metavar="N",
        help="processes sharing the data plane's port (default $HOOKSHIELD_WORKERS or 1)",
    )  # fmt: skip
    run.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    check = verbs.add_parser("check-config", help="validate a config file; exit 2 when invalid")
    check.add_argument("path", metavar="PATH")
    _dlq_parser(verbs.add_parser("dlq", help="inspect, replay and delete dead-lettered deliveries"))
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def _dlq_parser(dlq: argparse.ArgumentParser) -> None:
    dlq.add_argument(
        "--admin", default=os.environ.get("HOOKSHIELD_ADMIN_URL", "http://127.0.0.1:9090"),
        help="the admin plane's URL (default $HOOKSHIELD_ADMIN_URL or http://127.0.0.1:9090)",
    )  # fmt: skip
    dlq.add_argument(
        "--token-env", default="HOOKSHIELD_ADMIN_TOKEN", metavar="VAR",
        help="the env var holding the admin token (default HOOKSHIELD_ADMIN_TOKEN)",
    )  # fmt: skip
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="newest dead letters first")
    listing.add_argument("--route")
    listing.add_argument("--limit", type=int, default=100)
    actions.add_parser("show", help="one dead letter with its stored request").add_argument("id")
    replay = actions.add_parser("replay", help="deliver again: one id, or every one of --route")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?")
    target.add_argument("--route")
    actions.add_parser("delete", help="drop one dead letter").add_argument("id")


def _dlq_request(args: argparse.Namespace) -> tuple[str, str]:
    quote = urllib.parse.quote
    if args.action == "list":
        query = urllib.parse.urlencode(
            {k: v for k, v in (("route", args.route), ("limit", args.limit)) if v}
        )
        return "GET", f"/admin/dlq?{query}"
    if args.action == "show":
        return "GET", f"/admin/dlq/{quote(args.id)}"
    if args.action == "delete":
        return "DELETE", f"/admin/dlq/{quote(args.id)}"
    if args.route:
        return "POST", f"/admin/dlq/replay?route={quote(args.route)}"
    return "POST", f"/admin/dlq/{quote(args.id)}/replay"


def _dlq(args: argparse.Namespace) -> int:
    method, path = _dlq_request(args)
    request = urllib.request.Request(args.admin.rstrip("/") + path, method=method)
    token = os.environ.get(args.token_env)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(json.dumps(json.load(response), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode(errors="replace"), file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(
            f"hookshield: cannot reach the admin API at {args.admin}: {exc.reason}", file=sys.stderr
        )
        return 1


def _load(path: str) -> Config | None:
    """The valid config at `path`, its store usable (`check_store`); else None, every
    problem printed with its YAML path."""
    try:
        config = load_config(path)
        problems = check_store(config.queue, os.environ)
        if problems:
            raise ConfigError(problems)
        return config
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


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_INVALID
    logs.setup(config.log_level)
    if args.workers > 1 and args.worker_index is None:
        from hookshield.supervisor import supervise

        return supervise(args.config, args.grace, args.workers)
    import uvloop

    from hookshield.server import Role, serve

    if args.worker_index is not None:
        from hookshield.supervisor import die_with_supervisor

        die_with_supervisor()

    role = Role(args.worker_index or 0, args.workers)
    return uvloop.run(serve(config, args.grace, role))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verb == "check-config":
        return _check(args.path)
    if args.verb == "dlq":
        return _dlq(args)
    return _run(args)
