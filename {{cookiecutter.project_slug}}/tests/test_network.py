"""Client addresses: the socket peer, or what a trusted proxy reports, never a spoofed hop."""

from __future__ import annotations

import ipaddress

import pytest

from {{ cookiecutter.package_name }}.network import IPNetwork, client_address

PROXIES: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("fd00::/8"),
)


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "expected"),
    [
        # No trusted proxies configured: the header is ignored, whatever it says.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        # An untrusted peer cannot choose its identity by sending the header.
        ("203.0.113.9", "10.0.0.1, 198.51.100.1", "203.0.113.9"),
    ],
)
def test_without_a_trusted_peer_the_header_is_ignored(
    peer: str, forwarded_for: str, expected: str
) -> None:
    assert client_address(peer, forwarded_for, ()) == expected
    assert client_address(peer, forwarded_for, PROXIES) == expected


@pytest.mark.parametrize(
    ("forwarded_for", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        # The client wrote the left part itself; the right-most untrusted hop is the client.
        ("1.2.3.4, 198.51.100.7", "198.51.100.7"),
        ("1.2.3.4, 198.51.100.7, 10.1.1.1", "198.51.100.7"),
        ("spoofed, 198.51.100.7", "198.51.100.7"),
        # Every hop is one of ours: the left-most is the closest thing to a client.
        ("10.9.9.9, 10.1.1.1", "10.9.9.9"),
        # A malformed right end: believe nothing beyond the proxy itself.
        ("198.51.100.7, not-an-ip", "10.0.0.2"),
        ("", "10.0.0.2"),
        ("2001:db8::5, fd00::1", "2001:db8::5"),
    ],
)
def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client(
    forwarded_for: str, expected: str
) -> None:
    assert client_address("10.0.0.2", forwarded_for, PROXIES) == expected


def test_a_missing_or_odd_peer_is_one_shared_unknown_client() -> None:
    assert client_address(None, "198.51.100.7", PROXIES) == "unknown"
    assert client_address("testclient", None, PROXIES) == "unknown"
