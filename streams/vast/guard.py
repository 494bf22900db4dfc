"""The opt-in SSRF guard: upstream URLs may only reach global unicast addresses.

The check runs on the addresses a connection will actually use: hostnames are checked inside
aiohttp's resolver, after DNS, so a name cannot resolve to one address when checked and another
when connected (DNS rebinding). Hosts aiohttp takes for IP literals skip its resolver, so the
transport checks those itself with `check_literal_host`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 6052 well-known NAT64
# prefix); IPv4-mapped (::ffff:0:0/96) and 6to4 (2002::/16) have their own accessors.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# NAT64 for local use (RFC 8215): the IPv4 address may sit anywhere, so none is extracted.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


class RefusedAddress(OSError):
    """Raised inside aiohttp's connector; an OSError so aiohttp handles it as a DNS failure."""


def is_public(address: IPAddress) -> bool:
    """Whether `address` is a global unicast address, judging an IPv4 address embedded in an
    IPv6 one (IPv4-mapped, NAT64, 6to4) by the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _LOCAL_NAT64:
            return False
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
        if embedded is not None:
            return is_public(embedded)
    return (
        address.is_global
        and not address.is_multicast
        # Python counts reserved ranges such as ::/8 (IPv4-compatible addresses) as global.
        and not address.is_reserved
    )


class AddressPolicy:
    """Global addresses only, plus `allowed` networks (an internal ad server, a test host)."""

    def __init__(self, allowed: Iterable[str | IPNetwork] = ()) -> None:
        self.allowed = tuple(ipaddress.ip_network(network) for network in allowed)

    def permits(self, address: IPAddress) -> bool:
        return is_public(address) or any(address in network for network in self.allowed)

    def check_literal_host(self, host: str) -> None:
        """Refuse a host that aiohttp would connect to without its resolver.

        aiohttp treats any host that is all digits and dots, or holds a colon, as an address;
        the OS then reads forms such as `2130706433` or `0177.1` as 127.0.0.1. Such a host must
        be a canonical address this policy permits.
        """
        if not (":" in host or host.replace(".", "").isdigit()):
            return
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise RefusedAddress(f"{host!r} is not a canonical IP address") from None
        if not self.permits(address):
            raise RefusedAddress(f"{address} is not a global address")


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, keeping only the addresses `policy` permits."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        permitted = [r for r in results if self._policy.permits(ipaddress.ip_address(r["host"]))]
        if not permitted:
            raise RefusedAddress(f"{host} resolves to no global address")
        return permitted

    async def close(self) -> None:
        await self._resolver.close()
