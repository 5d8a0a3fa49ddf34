"""Kafka's default partitioner (murmur2 of the key bytes), for planning deliveries.

Must agree bit-for-bit with the Java client and aiokafka's ``DefaultPartitioner``:
``partition = (murmur2(key) & 0x7fffffff) % num_partitions``. Keys are the decimal
id as UTF-8 bytes (``schemas.events.encode_key``).

``partition_for_id`` runs once per follower per tweet in the fanout, so its
results are memoized (bounded LRU: ids are few compared with calls, and the
hot ones, heavy readers and active users, repeat across tweets).
"""
from __future__ import annotations

import functools
import struct

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I").iter_unpack  # little-endian 32-bit blocks, as Kafka reads them
PARTITION_CACHE_SIZE = 1 << 17  # ~100 bytes an entry


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash as a signed 32-bit int (as the Java client returns it)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    full = length & ~3
    if full:
        for (k,) in _WORDS(data if full == length else data[:full]):
            k = (k * _M) & _MASK
            k ^= k >> 24
            k = (k * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null key."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


@functools.lru_cache(maxsize=PARTITION_CACHE_SIZE, typed=True)
def partition_for_id(entity_id: int, num_partitions: int) -> int:
    """The partition of a message keyed by ``entity_id`` (key = decimal id bytes); memoized."""
    return partition_for_key(str(entity_id).encode(), num_partitions)
