"""The SSRF guard's address rules, pure."""

from __future__ import annotations

import ipaddress

import pytest

from streams.vast.guard import AddressPolicy, RefusedAddress, is_public


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::8.8.8.8",  # local-use NAT64
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
        "::7f00:1",  # IPv4-compatible (deprecated) 127.0.0.1
    ],
)
def test_non_global_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # NAT64 of 8.8.8.8
        "2002:808:808::1",  # 6to4 of 8.8.8.8
    ],
)
def test_global_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


def test_allowed_networks_are_let_through() -> None:
    policy = AddressPolicy(["10.0.0.0/8"])
    assert policy.permits(ipaddress.ip_address("10.9.9.9"))
    assert not policy.permits(ipaddress.ip_address("192.168.0.1"))


@pytest.mark.parametrize("host", ["example.com", "xn--bcher-kva.de", "8.8.8.8", "2606:4700::1"])
def test_literal_check_passes_names_and_global_addresses(host: str) -> None:
    AddressPolicy().check_literal_host(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "127.1", "1.2.3.4.5", "::1"])
def test_literal_check_refuses_what_aiohttp_would_connect_to_directly(host: str) -> None:
    with pytest.raises(RefusedAddress):
        AddressPolicy().check_literal_host(host)
