"""Who is the client? The address a per-address limit is keyed by, as pure functions.

Without trusted proxies (``TL_TRUSTED_PROXIES`` empty, the default) the client is the TCP
peer and ``X-Forwarded-For`` is ignored: anyone can write that header. Behind a reverse
proxy every client then shares the proxy's address (and its per-address limits); list the
proxies' addresses or networks in ``TL_TRUSTED_PROXIES`` to key by the real client instead.

With trusted proxies, the header is believed only when the peer is one of them, and only
as far as the chain of trusted proxies goes: the hops of ``X-Forwarded-For`` (all header
lines, in order) are read from the right, trusted proxies are skipped, and the first hop
that is not a trusted proxy is the client (a client can prepend anything it likes, but it
cannot change what the trusted proxies appended). A hop that is not an IP address ends
the walk at the last trusted hop seen. If every hop is trusted, the leftmost one is the
client.

The key of an address (:func:`address_key`): an IPv4 address as is; an IPv6 address by
its /64 network, because one subscriber usually gets a whole /64 and could otherwise
rotate through 2**64 addresses; an IPv4-mapped IPv6 address as the IPv4 address. Anything
else (a Unix socket, a test client name) is kept, cut to 64 printable characters.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"
_MAX_KEY = 64


@lru_cache(maxsize=16)
def parse_networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """``TL_TRUSTED_PROXIES`` entries (addresses or CIDR networks); ValueError names a bad one."""
    out: list[Network] = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {entry!r}") from None
    return tuple(out)


def _ip(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1:text.index("]")]
    elif text.count(":") == 1 and "." in text:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: Address, networks: Sequence[Network]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client's address as text: the peer, or (behind trusted proxies) the first untrusted
    hop of ``X-Forwarded-For`` from the right. ``UNKNOWN`` without a peer."""
    if not peer:
        return UNKNOWN
    peer_ip = _ip(peer)
    if peer_ip is None or not trusted or not _trusted(peer_ip, trusted):
        return str(peer_ip) if peer_ip is not None else peer
    hops = [hop for line in forwarded_for for hop in line.split(",") if hop.strip()]
    client = peer_ip
    for hop in reversed(hops):
        addr = _ip(hop)
        if addr is None:
            break
        client = addr
        if not _trusted(addr, trusted):
            break
    return str(client)


def address_key(address: str) -> str:
    """The bucket key of an address: IPv4 as is, IPv6 by its /64, anything else cut short."""
    addr = _ip(address)
    if addr is None:
        cleaned = "".join(c if "!" <= c <= "~" else "_" for c in address[:_MAX_KEY])
        return cleaned or UNKNOWN
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)
