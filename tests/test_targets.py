"""Dynamic targets: allow_hosts, and the connect-time address check (SSRF) end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hookshield.netguard import is_allowed, legacy_ipv4
from hookshield.targets import join_url

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class CountingListener:
    """A raw TCP server on 127.0.0.1 that counts every connection opened to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RESPONSE)
        await writer.drain()
        writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[CountingListener]:
    counting = CountingListener()
    server = await asyncio.start_server(counting._serve, "127.0.0.1", 0)
    counting.port = server.sockets[0].getsockname()[1]
    yield counting
    server.close()
    await server.wait_closed()


def dynamic(allow_hosts: list[str], allow_networks: list[str] | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"from_header": "X-Hookshield-Target", "allow_hosts": allow_hosts}
    if allow_networks:
        target["allow_networks"] = allow_networks
    return {"routes": [{"name": "dyn", "match": {"path_prefix": "/dyn"}, "target": target}]}


def special_targets(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/hook",
        f"http://localhost:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        f"http://2130706433:{port}/hook",
    ]


async def test_special_addresses_refused_without_connecting(proxy: Any, listener: Any) -> None:
    """Loopback in every spelling and the metadata address: 403, no connection opened."""
    client = await proxy(dynamic(["*"]))
    for url in [*special_targets(listener.port), "http://169.254.169.254/latest/meta-data"]:
        resp = await client.post("/dyn", data=b"{}", headers={"X-Hookshield-Target": url})
        assert resp.status == 403, url
        assert (await resp.json())["code"] == "TARGET_FORBIDDEN", url
    assert listener.connections == 0


async def test_allow_networks_lets_the_same_targets_through(proxy: Any, listener: Any) -> None:
    """With allow_networks: [127.0.0.0/8] the same loopback targets are served."""
    client = await proxy(dynamic(["*"], ["127.0.0.0/8"]))
    for url in special_targets(listener.port):
        resp = await client.post("/dyn", data=b"{}", headers={"X-Hookshield-Target": url})
        assert resp.status == 200, url
    assert listener.connections == 4


async def test_host_outside_allow_hosts_is_forbidden(proxy: Any, listener: Any) -> None:
    """A host that matches no allow_hosts glob is refused before any DNS or connection."""
    client = await proxy(dynamic(["*.apps.example.com"], ["127.0.0.0/8"]))
    resp = await client.post(
        "/dyn", headers={"X-Hookshield-Target": f"http://127.0.0.1:{listener.port}/"}
    )
    assert (resp.status, (await resp.json())["code"]) == (403, "TARGET_FORBIDDEN")
    assert listener.connections == 0


async def test_missing_or_bad_target_header_is_bad_request(proxy: Any) -> None:
    """No target header, or one that is not an absolute http(s) URL, gives 400."""
    client = await proxy(dynamic(["*"]))
    for headers in ({}, {"X-Hookshield-Target": "ftp://x/y"}, {"X-Hookshield-Target": "/rel"}):
        resp = await client.post("/dyn", headers=headers)
        assert (resp.status, (await resp.json())["code"]) == (400, "BAD_REQUEST"), headers


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
        "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::7f00:1",
        "2002:7f00:1::", "2002:5db8:d822::", "2001:db8::1", "::127.0.0.1",
    ],
)  # fmt: skip
def test_special_purpose_addresses_denied(address: str) -> None:
    """Private, loopback, link-local, CGNAT, multicast, reserved and their IPv6 forms."""
    import ipaddress

    assert not is_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111"])
def test_public_addresses_allowed(address: str) -> None:
    """Ordinary public addresses pass."""
    import ipaddress

    assert is_allowed(ipaddress.ip_address(address))


def test_allow_networks_applies_to_embedded_ipv4() -> None:
    """allow_networks 127.0.0.0/8 admits ::ffff:127.0.0.1 as well as 127.0.0.1."""
    import ipaddress

    allow = (ipaddress.ip_network("127.0.0.0/8"),)
    assert is_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), allow)
    assert not is_allowed(ipaddress.ip_address("10.0.0.1"), allow)


def test_legacy_ipv4_forms_are_canonicalised() -> None:
    """Decimal, hex and short dotted forms are read as the IPv4 address they denote."""
    assert legacy_ipv4("2130706433") == "127.0.0.1"
    assert legacy_ipv4("0x7f.1") == "127.0.0.1"
    assert legacy_ipv4("127.1") == "127.0.0.1"
    assert legacy_ipv4("example.com") is None


def test_join_url_appends_remainder_and_merges_queries() -> None:
    """Path remainder without a doubled slash; base and request queries both kept."""
    assert join_url("http://t/api/", "", "/x", "a=1") == "http://t/api/x?a=1"
    assert join_url("http://t/api", "k=v", "", "a=1") == "http://t/api?k=v&a=1"
    assert join_url("http://t/api/", "", "", "") == "http://t/api/"
