"""Configuration: YAML parsed once into frozen models (`load_config`), errors with YAML paths."""

from hookshield.config.models import Config, RouteConfig, Secret
from hookshield.config.parse import ENV_OVERRIDES, ConfigError, load_config, parse_config

__all__ = [
    "ENV_OVERRIDES",
    "Config",
    "ConfigError",
    "RouteConfig",
    "Secret",
    "load_config",
    "parse_config",
]
