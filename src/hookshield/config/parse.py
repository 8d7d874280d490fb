"""YAML text -> `Config`, collecting every problem with its YAML path.

Relative paths in the file (`secrets.*.file`, `queue.sqlite_path`) are taken relative to
the config file's own directory. `HOOKSHIELD_*` environment variables override the
deployment-specific values listed in `ENV_OVERRIDES`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from hookshield.config.models import Address, AdminConfig, Config, Limits, QueueConfig, Secret
from hookshield.config.policies import POLICY_KEYS, Policies, parse_policies
from hookshield.config.reader import Problems, Section, describe, join
from hookshield.config.routes import check_unique, parse_route

TOP_KEYS = (
    "listen",
    "admin",
    "queue",
    "secrets",
    "defaults",
    "routes",
    "limits",
    "log",
    "reload",
    "metrics",
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LIMIT_KEYS = tuple(f.name for f in fields(Limits))

# env var -> (section, key); values are read as YAML scalars ("8080" -> 8080, "null" -> None).
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "HOOKSHIELD_LISTEN_HOST": ("listen", "host"),
    "HOOKSHIELD_LISTEN_PORT": ("listen", "port"),
    "HOOKSHIELD_ADMIN_HOST": ("admin", "host"),
    "HOOKSHIELD_ADMIN_PORT": ("admin", "port"),
    "HOOKSHIELD_REDIS_URL": ("queue", "redis_url"),
    "HOOKSHIELD_SQLITE_PATH": ("queue", "sqlite_path"),
    "HOOKSHIELD_QUEUE_WORKERS": ("queue", "workers"),
    "HOOKSHIELD_MAX_BODY_BYTES": ("limits", "max_body_bytes"),
    "HOOKSHIELD_LOG_LEVEL": ("log", "level"),
}


class ConfigError(Exception):
    """An invalid configuration; `problems` holds one `path: message` line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and freeze the config at `path`; raise `ConfigError` listing every problem."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {source}: {exc.strerror}"]) from exc
    return parse_config(text, base_dir=source.parent, env=env, source=source)


def parse_config(
    text: str,
    *,
    base_dir: Path,
    env: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> Config:
    problems = Problems()
    raw = _load_yaml(text)
    _apply_env(raw, os.environ if env is None else env, problems)
    config = _build(raw, base_dir, os.environ if env is None else env, problems, source)
    if problems:
        raise ConfigError(problems.items)
    return config


def _load_yaml(text: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError([f"<file>: not valid YAML at {where}: {exc}"]) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"<root>: must be a mapping, got {describe(raw)}"])
    return raw


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], problems: Problems) -> None:
    for name, (section, key) in ENV_OVERRIDES.items():
        if name not in env:
            continue
        target = raw.get(section)
        if not isinstance(target, dict):
            target = raw[section] = {}
        target[key] = yaml.safe_load(env[name]) if env[name] else None
        problems.origins[join(section, key)] = name


def _build(
    raw: dict[str, Any],
    base_dir: Path,
    env: Mapping[str, str],
    problems: Problems,
    source: Path | None,
) -> Config:
    root = Section(raw, "", problems, TOP_KEYS)
    secrets = _secrets(root.section("secrets", None), base_dir, env)
    defaults = parse_policies(root.section("defaults", POLICY_KEYS), Policies(), secrets)
    routes = tuple(
        parse_route(path, item, defaults, secrets, problems) for path, item in root.items("routes")
    )
    if not root.has("routes"):
        problems.add("routes", "is required (a list of routes)")
    check_unique(routes, problems)
    return Config(
        listen=_address(root.section("listen", ("host", "port")), 8080),
        admin=_admin(root.section("admin", ("host", "port", "token_env"))),
        queue=_queue(
            root.section("queue", ("redis_url", "sqlite_path", "workers", "lease_s")), base_dir
        ),
        limits=_limits(root.section("limits", LIMIT_KEYS)),
        log_level=_log_level(root.section("log", ("level",))),
        routes=routes,
        source=source,
        secret_files=_secret_files(root.section("secrets", None), base_dir),
        reload_poll_s=root.section("reload", ("poll_interval_s",)).number("poll_interval_s", 1.0),
        metrics_enabled=root.section("metrics", ("enabled",)).boolean("enabled", True),
    )


def _secret_files(section: Section, base_dir: Path) -> tuple[Path, ...]:
    entries = [v for v in section.raw.values() if isinstance(v, dict)]
    return tuple(base_dir / str(e["file"]) for e in entries if isinstance(e.get("file"), str))


def _address(section: Section, default_port: int) -> Address:
    host = section.string("host", "127.0.0.1") or "127.0.0.1"
    port = section.integer("port", default_port, minimum=0)
    if port > 65535:
        section.fail("port", "must be <= 65535")
    return Address(host, port)


def _admin(section: Section) -> AdminConfig:
    address = _address(section, 9090)
    return AdminConfig(address.host, address.port, section.string("token_env"))


def _queue(section: Section, base_dir: Path) -> QueueConfig:
    redis_url = section.string("redis_url")
    if redis_url and not redis_url.startswith(
        ("redis://", "rediss://", "redis+sentinel://", "unix://")
    ):
        section.fail(
            "redis_url", "must start with redis://, rediss://, redis+sentinel:// or unix://"
        )
    sqlite = section.string("sqlite_path", "hookshield-queue.db") or "hookshield-queue.db"
    workers, lease_s = section.integer("workers", 16), section.number("lease_s", 10.0)
    return QueueConfig(redis_url, base_dir / sqlite, workers, lease_s)


def _limits(section: Section) -> Limits:
    """Each key a whole number (`_bytes`, counts) or a number > 0 (`_ms`, `_s`)."""
    values: dict[str, Any] = {}
    for item in fields(Limits):
        default = item.default
        if isinstance(default, int):
            values[item.name] = section.integer(item.name, default)
        else:
            values[item.name] = section.number(item.name, float(default))  # type: ignore[arg-type]
    return Limits(**values)


def _log_level(section: Section) -> str:
    level = (section.string("level", "INFO") or "INFO").upper()
    if level not in LOG_LEVELS:
        section.fail("level", f"must be one of {', '.join(LOG_LEVELS)}")
        return "INFO"
    return level


def _secrets(section: Section, base_dir: Path, env: Mapping[str, str]) -> dict[str, Secret]:
    secrets: dict[str, Secret] = {}
    for name in section.raw:
        entry = section.section(str(name), ("env", "file"))
        value = _secret_value(entry, base_dir, env)
        if value is not None:
            secrets[str(name)] = Secret(str(name), value)
    return secrets


def _secret_value(entry: Section, base_dir: Path, env: Mapping[str, str]) -> bytes | None:
    var, file = entry.string("env"), entry.string("file")
    if (var is None) == (file is None):
        entry.problems.add(entry.path, "needs exactly one of 'env' or 'file'")
        return None
    if var is not None:
        if not env.get(var):
            entry.problems.add(entry.at("env"), f"environment variable {var} is not set or empty")
            return None
        return env[var].encode()
    path = base_dir / str(file)
    try:
        value = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        entry.problems.add(entry.at("file"), f"cannot read {path}: {exc.strerror}")
        return None
    if not value:
        entry.problems.add(entry.at("file"), f"{path} is empty")
        return None
    return value
