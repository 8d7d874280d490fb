"""Which IP addresses a dynamic target may connect to (SSRF protection).

The check runs in the connector's `socket_factory`, i.e. on the address the socket is
about to connect to, after DNS. A name that resolves (or re-resolves) to a private
address is refused there, as is any IP literal. Python's `ipaddress` flags miss the
IPv4-mapped, NAT64 and 6to4 forms, so this module keeps an explicit deny table: the
NAT64 and (deprecated) 6to4 ranges are denied whole, and an IPv4-mapped address is judged
by the IPv4 address inside it. `allow_networks` is matched against both forms.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

from hookshield.config.models import Network

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DENIED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48",
        "100::/64", "2001::/23", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10",
        "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address, if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _within(address: IPAddress, networks: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def is_allowed(address: IPAddress, allow: tuple[Network, ...] = ()) -> bool:
    """False when `address` (or the IPv4 inside it) is special-purpose and not in `allow`."""
    candidates = [address]
    inner = embedded_ipv4(address)
    if inner is not None:
        candidates.append(inner)
    if any(_within(candidate, allow) for candidate in candidates):
        return True
    return not any(_within(candidate, DENIED) for candidate in candidates)


def legacy_ipv4(host: str) -> str | None:
    """`2130706433`, `0x7f.1`, `127.1` -> `127.0.0.1`; None when `host` is no such form."""
    if not host or ":" in host or not host[0].isdigit():
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


SocketFactory = Callable[[Any], socket.socket]


class ForbiddenAddress(OSError):
    """Raised instead of opening a socket. An OSError with one fixed message, so that the
    connector tries the name's other addresses, and re-raises this very error when all
    of them are forbidden."""

    def __init__(self) -> None:
        super().__init__("the target resolves to an address that is not allowed")


def guarded_socket_factory(allow: tuple[Network, ...]) -> SocketFactory:
    """A connector `socket_factory` that refuses to open sockets to denied addresses."""

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = ipaddress.ip_address(sockaddr[0].split("%", 1)[0])
        if not is_allowed(address, allow):
            raise ForbiddenAddress()
        return socket.socket(family=family, type=type_, proto=proto)

    return factory
