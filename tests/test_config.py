"""Config parsing: frozen models, inheritance, env overrides, and every error with its path."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from hookshield.config import ConfigError, load_config, parse_config
from hookshield.config.models import DynamicTarget, StaticTarget

ROOT = Path(__file__).resolve().parent.parent


def parse(data: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> Any:
    return parse_config(yaml.safe_dump(data), base_dir=tmp_path, env=env or {})


def problems(data: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(data, tmp_path, env)
    return caught.value.problems


def a_route(**extra: Any) -> dict[str, Any]:
    return {"name": "r", "match": {"path_prefix": "/r"}, "target": "http://t.example/x", **extra}


def test_example_config_is_valid() -> None:
    """config/example.yaml (the SPEC §2 example) loads with its three routes."""
    config = load_config(ROOT / "config" / "example.yaml")
    assert [r.name for r in config.routes] == ["winner-selection", "quiz-validation", "analytics"]
    analytics = config.routes[2]
    assert isinstance(analytics.target, DynamicTarget)
    assert analytics.retry.schedule_s == (60, 300, 900, 1800, 3600, 7200)
    assert analytics.retry.max_attempts == 6


def test_models_are_frozen(tmp_path: Path) -> None:
    """A loaded config cannot be changed in place."""
    config = parse({"routes": [a_route()]}, tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes[0].timeout_ms = 1


def test_routes_inherit_defaults_field_by_field(tmp_path: Path) -> None:
    """A route overriding one breaker field keeps the others from defaults."""
    data = {
        "defaults": {
            "timeout_ms": 1234,
            "breaker": {"failure_threshold": 9, "success_threshold": 7},
        },
        "routes": [
            a_route(breaker={"failure_threshold": 2}),
            a_route(name="s", match={"path_prefix": "/s"}),
        ],
    }
    first, second = parse(data, tmp_path).routes
    assert (first.timeout_ms, first.breaker.failure_threshold, first.breaker.success_threshold) == (
        1234,
        2,
        7,
    )
    assert second.breaker.failure_threshold == 9


def test_every_mistake_is_reported_with_its_path(tmp_path: Path) -> None:
    """Several mistakes in one file are all reported, each naming its YAML path and value."""
    data = {
        "listen": {"port": 99999},
        "routes": [
            a_route(),
            a_route(name="r", timeout_ms=-5, match={"path_prefix": "nope"}),
            a_route(
                name="t",
                target="ftp://x",
                mode="later",
                signing={"scheme": "hmac-sha256", "secret": "ghost"},
            ),
            {"name": "u", "match": {"path_prefix": "/u"}, "target": "http://u", "timout_ms": 5},
        ],
    }
    found = problems(data, tmp_path)
    expected = [
        "listen.port: must be <= 65535, got 99999",
        "routes[1].timeout_ms: must be > 0, got -5",
        "routes[1].match.path_prefix: must start with '/', got 'nope'",
        "routes[1].name: duplicate route name 'r' (also routes[0])",
        "routes[2].mode: must be 'sync' or 'async', got 'later'",
        "routes[2].target: must be an absolute http:// or https:// URL, got 'ftp://x'",
        "routes[2].signing.secret: unknown secret 'ghost' (defined: none)",
        "routes[3].timout_ms: unknown key (did you mean 'timeout_ms'?)",
    ]
    for line in expected:
        assert line in found, f"{line!r} not in {found}"


def test_duplicate_prefix_is_an_error_unless_methods_split_it(tmp_path: Path) -> None:
    """Two routes on one prefix are allowed only with disjoint methods."""
    clash = problems({"routes": [a_route(), a_route(name="s")]}, tmp_path)
    assert "routes[1].match.path_prefix: duplicate path_prefix '/r' (also routes[0])" in clash
    split = [
        a_route(match={"path_prefix": "/r", "methods": ["POST"]}),
        a_route(name="s", match={"path_prefix": "/r", "methods": ["get"]}),
    ]
    assert len(parse({"routes": split}, tmp_path).routes) == 2


def test_env_overrides_deployment_values_and_names_the_variable(tmp_path: Path) -> None:
    """HOOKSHIELD_* env vars override listen/admin/queue; a bad one names the variable."""
    env = {"HOOKSHIELD_LISTEN_PORT": "18080", "HOOKSHIELD_REDIS_URL": "redis://r:6379/0"}
    config = parse({"routes": [a_route()]}, tmp_path, env)
    assert (config.listen.port, config.queue.redis_url) == (18080, "redis://r:6379/0")
    bad = problems({"routes": [a_route()]}, tmp_path, {"HOOKSHIELD_ADMIN_PORT": "many"})
    assert bad == ["admin.port (set by HOOKSHIELD_ADMIN_PORT): must be a whole number, got 'many'"]


def test_secrets_from_env_and_file_never_in_repr(tmp_path: Path) -> None:
    """Secrets resolve from env or a file relative to the config; repr shows no value."""
    (tmp_path / "s.txt").write_text("file-canary-value\n")
    data = {
        "secrets": {"a": {"env": "A_SECRET"}, "b": {"file": "s.txt"}},
        "routes": [a_route(signing={"scheme": "stripe", "secret": ["a", "b"]})],
    }
    config = parse(data, tmp_path, {"A_SECRET": "env-canary-value"})
    secrets = config.routes[0].signing.secrets
    assert [s.value for s in secrets] == [b"env-canary-value", b"file-canary-value"]
    assert "canary" not in repr(config)


def test_secret_problems_name_the_source_not_the_value(tmp_path: Path) -> None:
    """A missing env var or file is an error naming it; a non-whsec secret is refused."""
    data = {
        "secrets": {"a": {"env": "UNSET"}, "b": {"file": "missing"}, "c": {"env": "C"}, "d": {}},
        "routes": [a_route(signing={"scheme": "standard-webhooks", "secret": "c"})],
    }
    found = problems(data, tmp_path, {"C": "plain-canary"})
    assert "secrets.a.env: environment variable UNSET is not set or empty" in found
    assert any(p.startswith("secrets.b.file: cannot read") for p in found)
    assert "secrets.d: needs exactly one of 'env' or 'file'" in found
    assert (
        "routes[0].signing.secret: secret 'c' must be in whsec_<base64> form for standard-webhooks"
        in found
    )
    assert not any("plain-canary" in p for p in found)


def test_bad_retry_schedule_and_fallback(tmp_path: Path) -> None:
    """Schedule entries must be durations; a fallback needs a part; statuses are HTTP statuses."""
    data = {
        "routes": [
            a_route(retry={"schedule": ["1m", "soon"]}, fallback={}),
            a_route(name="s", match={"path_prefix": "/s"}, fallback={"response": {"status": 900}}),
        ]
    }
    found = problems(data, tmp_path)
    assert (
        "routes[0].retry.schedule[1]: must be a duration like 500ms, 5s, 1m, 2h, got 'soon'"
        in found
    )
    assert "routes[0].fallback: needs at least one of 'cached', 'response', 'queue'" in found
    assert "routes[1].fallback.response.status: must be an HTTP status (100-599), got 900" in found


def test_dynamic_target_and_networks(tmp_path: Path) -> None:
    """A dynamic target compiles its host globs; bad CIDRs and missing allow_hosts are errors."""
    target = {
        "from_header": "X-T",
        "allow_hosts": ["*.apps.example.com"],
        "allow_networks": ["10.0.0.0/8"],
    }
    route = parse({"routes": [a_route(target=target)]}, tmp_path).routes[0]
    assert route.target.host_pattern.fullmatch("a.apps.example.com")
    assert not route.target.host_pattern.fullmatch("apps.example.com.evil.io")
    found = problems(
        {"routes": [a_route(target={"from_header": "X-T", "allow_networks": ["x/99"]})]}, tmp_path
    )
    assert "routes[0].target.allow_hosts: is required (host globs like *.apps.example.com)" in found
    assert "routes[0].target.allow_networks: not a CIDR network, got 'x/99'" in found


def test_static_target_and_body_limit_defaults(tmp_path: Path) -> None:
    """Defaults: 1 MiB body limit, sync mode, 10 s timeout, SPEC breaker numbers."""
    config = parse({"routes": [a_route()]}, tmp_path)
    route = config.routes[0]
    assert config.max_body_bytes == 1024 * 1024
    assert isinstance(route.target, StaticTarget)
    assert (route.mode, route.timeout_ms, route.breaker.failure_threshold) == ("sync", 10000, 5)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    """Broken YAML is one clear error with its line."""
    with pytest.raises(ConfigError) as caught:
        parse_config("routes: [\n  - {name: x\n", base_dir=tmp_path, env={})
    assert caught.value.problems[0].startswith("<file>: not valid YAML at line")
