"""Signatures checked by the schemes' official verifiers, on what the target really received."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any

import stripe
from standardwebhooks.webhooks import Webhook

from tests.conftest import Target

CURRENT = "whsec_" + base64.b64encode(b"current-key-0123456789abcdef").decode()
PREVIOUS = "whsec_" + base64.b64encode(b"previous-key-0123456789abcdef").decode()
BODY = b'{"event":"draw.completed","n":1,"unicode":"\xc3\xa9"}'


def signed_route(target_url: str, signing: dict[str, Any]) -> dict[str, Any]:
    return {
        "secrets": {
            "current": {"env": "CURRENT"},
            "previous": {"file": "previous.secret"},
            "plain": {"env": "PLAIN"},
        },
        "routes": [
            {"name": "s", "match": {"path_prefix": "/s"}, "target": target_url, "signing": signing}
        ],
    }


async def send_signed(proxy: Any, target: Any, tmp_path: Path, signing: dict[str, Any]) -> Target:
    (tmp_path / "previous.secret").write_text(PREVIOUS + "\n")
    app: Target = await target()
    env = {"CURRENT": CURRENT, "PLAIN": "plain-secret"}
    client = await proxy(signed_route(app.url, signing), env=env)
    resp = await client.post("/s", data=BODY, headers={"X-Request-ID": "msg_1"})
    assert resp.status == 200
    return app


async def test_standard_webhooks_verify_with_both_rotation_secrets(
    proxy: Any, target: Any, tmp_path: Path
) -> None:
    """The official standardwebhooks verifier accepts the request under either secret."""
    signing = {"scheme": "standard-webhooks", "secret": ["current", "previous"]}
    seen = (await send_signed(proxy, target, tmp_path, signing)).seen[0]
    headers = {k.lower(): v for k, v in seen.headers.items()}
    assert headers["webhook-id"] == "msg_1"
    for secret in (CURRENT, PREVIOUS):
        Webhook(secret).verify(seen.body, headers)  # raises when it does not verify
    assert seen.body == BODY


async def test_stripe_signature_verifies_with_stripe_library(
    proxy: Any, target: Any, tmp_path: Path
) -> None:
    """stripe.WebhookSignature.verify_header accepts the Stripe-Signature header."""
    signing = {"scheme": "stripe", "secret": "plain"}
    seen = (await send_signed(proxy, target, tmp_path, signing)).seen[0]
    header = seen.headers["Stripe-Signature"]
    assert stripe.WebhookSignature.verify_header(seen.body.decode(), header, "plain-secret", 300)


async def test_hmac_sha256_matches_hand_computed_hex(
    proxy: Any, target: Any, tmp_path: Path
) -> None:
    """`X-Signature: sha256=<hex HMAC-SHA256(secret, body)>` over the exact bytes sent."""
    signing = {"scheme": "hmac-sha256", "secret": "plain", "header": "X-Signature"}
    seen = (await send_signed(proxy, target, tmp_path, signing)).seen[0]
    expected = hmac.new(b"plain-secret", BODY, hashlib.sha256).hexdigest()
    assert seen.headers["X-Signature"] == f"sha256={expected}"


async def test_platform_supplied_signature_header_is_replaced(
    proxy: Any, target: Any, tmp_path: Path
) -> None:
    """A signature header sent by the platform never reaches the target next to ours."""
    (tmp_path / "previous.secret").write_text(PREVIOUS)
    app: Target = await target()
    signing = {"scheme": "hmac-sha256", "secret": "plain"}
    client = await proxy(signed_route(app.url, signing), env={"CURRENT": CURRENT, "PLAIN": "p"})
    await client.post("/s", data=b"x", headers={"X-Platform-Signature": "sha256=forged"})
    assert app.seen[0].headers.getall("X-Platform-Signature") != ["sha256=forged"]
    assert len(app.seen[0].headers.getall("X-Platform-Signature")) == 1
