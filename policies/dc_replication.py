"""How many replicas of the keyspace each Cassandra data center keeps, as pure functions.

``TL_CASSANDRA_REPLICATION`` lists them, ``dc:factor`` separated by commas (``"dc1:1,dc2:1"``:
one cluster, two data centers, one replica in each; the regions topology). Empty: the keyspace
is replicated as ``TL_CASSANDRA_REPLICATION_FACTOR`` and ``TL_CASSANDRA_LOCAL_DC`` say
(``ops/schema.keyspace_replication``).
"""
from __future__ import annotations

import re

_DC_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def parse_dc_factors(raw: str) -> dict[str, int]:
    """``"dc1:1, dc2:3"`` -> ``{"dc1": 1, "dc2": 3}`` (in the order given); ``""`` -> ``{}``.
    Raises ValueError on a missing or non-positive factor, a bad DC name or a DC named twice."""
    factors: dict[str, int] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        dc, sep, factor = (s.strip() for s in part.partition(":"))
        if not sep or not _DC_NAME.match(dc):
            raise ValueError(f"{part!r} is not dc:factor (a data center name, a colon, a replica count)")
        if not factor.isdigit() or int(factor) < 1:
            raise ValueError(f"{part!r}: the replica count must be a whole number >= 1")
        if dc in factors:
            raise ValueError(f"data center {dc!r} is named twice")
        factors[dc] = int(factor)
    return factors


def format_dc_factors(factors: dict[str, int]) -> str:
    """The inverse of :func:`parse_dc_factors`: ``{"dc1": 1, "dc2": 1}`` -> ``"dc1:1,dc2:1"``."""
    return ",".join(f"{dc}:{factor}" for dc, factor in factors.items())


def network_topology(factors: dict[str, int]) -> str:
    """The CQL replication map of ``NetworkTopologyStrategy`` with ``factors`` per DC."""
    if not factors:
        raise ValueError("NetworkTopologyStrategy needs at least one data center")
    dcs = "".join(f", '{dc}': {factor}" for dc, factor in factors.items())
    return f"{{'class': 'NetworkTopologyStrategy'{dcs}}}"
