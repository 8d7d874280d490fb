"""Request signatures over the exact body bytes sent (SPEC §3).

A `Signer` is built once per route at load time (keys decoded, header names fixed) and
returns the signature headers for one send. Several secrets (rotation) give one
signature each, in the scheme's own list syntax.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Sequence
from typing import Protocol

from hookshield.config.models import Secret, SigningConfig


class Signer(Protocol):
    names: tuple[str, ...]  # the headers `sign` sets

    def sign(self, body: bytes, request_id: str, timestamp: int) -> list[tuple[str, str]]: ...


def _hmac_hex(key: bytes, message: bytes) -> str:
    return hmac.digest(key, message, "sha256").hex()  # OpenSSL's one-shot HMAC


class HmacSha256Signer:
    """`<header>: sha256=<hex>`; with several secrets, the values joined by `,`."""

    def __init__(self, secrets: Sequence[Secret], header: str) -> None:
        self.keys = [s.value for s in secrets]
        self.header = header
        self.names: tuple[str, ...] = (header,)

    def sign(self, body: bytes, request_id: str, timestamp: int) -> list[tuple[str, str]]:
        value = ",".join(f"sha256={_hmac_hex(key, body)}" for key in self.keys)
        return [(self.header, value)]


class StandardWebhooksSigner:
    """`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64> [v1,<b64> ...]`."""

    def __init__(self, secrets: Sequence[Secret]) -> None:
        self.keys = [base64.b64decode(s.value.removeprefix(b"whsec_")) for s in secrets]
        self.names: tuple[str, ...] = ("webhook-id", "webhook-timestamp", "webhook-signature")

    def sign(self, body: bytes, request_id: str, timestamp: int) -> list[tuple[str, str]]:
        message = f"{request_id}.{timestamp}.".encode() + body
        signatures = " ".join(
            "v1," + base64.b64encode(hmac.digest(key, message, "sha256")).decode()
            for key in self.keys
        )
        return [
            ("webhook-id", request_id),
            ("webhook-timestamp", str(timestamp)),
            ("webhook-signature", signatures),
        ]


class StripeSigner:
    """`Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex> ...]` over `<ts>.<body>`."""

    def __init__(self, secrets: Sequence[Secret], header: str) -> None:
        self.keys = [s.value for s in secrets]
        self.header = header
        self.names: tuple[str, ...] = (header,)

    def sign(self, body: bytes, request_id: str, timestamp: int) -> list[tuple[str, str]]:
        message = f"{timestamp}.".encode() + body
        parts = [f"t={timestamp}", *(f"v1={_hmac_hex(key, message)}" for key in self.keys)]
        return [(self.header, ",".join(parts))]


def build_signer(config: SigningConfig) -> Signer:
    if config.scheme == "standard-webhooks":
        return StandardWebhooksSigner(config.secrets)
    if config.scheme == "stripe":
        return StripeSigner(config.secrets, config.header)
    return HmacSha256Signer(config.secrets, config.header)


# Header names that carry signatures; logs redact them (see `logs`).
SIGNATURE_HEADERS = frozenset({"x-platform-signature", "webhook-signature", "stripe-signature"})
