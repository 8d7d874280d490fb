"""hookshield: a sidecar reverse proxy for a platform's outbound webhooks."""

__version__ = "0.1.0"
