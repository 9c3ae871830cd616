"""Who is the client? The socket peer, unless a trusted proxy says otherwise.

`X-Forwarded-For` is a list that every proxy appends to, so only its right end is trustworthy:
anything to the left may have been written by the client itself. The client is therefore the
right-most address that is not one of our trusted proxies, and the header is read at all only
when the socket peer is a trusted proxy (`APP_TRUSTED_PROXIES`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN_CLIENT = "unknown"
MAX_FORWARDED_HOPS = 32  # ignore anything further left: no real chain of proxies is this long


def parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def parse_network(text: str) -> IPNetwork:
    """An address or a CIDR network (`APP_TRUSTED_PROXIES`); a ValueError says in one line which
    text is wrong and what is accepted. The text is shown: an address is no secret."""
    text = text.strip()
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    shown = repr(text) if len(text) <= 80 else repr(text[:80]) + "..."
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        problem = f"{shown} is not an IP address or CIDR network"
    else:
        problem = f"{shown} has host bits set (the network is {network})"
    raise ValueError(f"{problem}; use addresses or networks such as 10.0.0.0/8, 192.168.1.7")


def is_trusted(address: IPAddress, trusted: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in trusted)


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[IPNetwork, ...]
) -> str:
    """The client's address as text, for per-client limits; never taken from an untrusted hop."""
    peer_address = parse_address(peer) if peer else None
    if peer_address is None:
        return UNKNOWN_CLIENT
    if not forwarded_for or not is_trusted(peer_address, trusted):
        return str(peer_address)
    closest = peer_address
    for hop in reversed(forwarded_for.split(",")[-MAX_FORWARDED_HOPS:]):
        address = parse_address(hop)
        if address is None:
            break  # a malformed hop: believe nothing beyond the last proxy we trust
        closest = address
        if not is_trusted(address, trusted):
            break
    return str(closest)
