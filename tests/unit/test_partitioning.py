import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.partitioning import murmur2, partition_for_id, partition_for_key


@pytest.mark.parametrize(
    "data,expected",
    [  # Apache Kafka UtilsTest.testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(data, expected):
    assert murmur2(data) == expected


def test_partition_uses_positive_hash():
    # (-790332482 & 0x7fffffff) % 50 == 16
    assert partition_for_key(b"foobar", 50) == 16


def test_partition_for_id_uses_decimal_key_bytes():
    assert partition_for_id(21, 64) == partition_for_key(b"21", 64) == (-973932308 & 0x7FFFFFFF) % 64


def test_bad_partition_count():
    with pytest.raises(ValueError):
        partition_for_key(b"x", 0)


@given(st.binary(max_size=64), st.integers(1, 1024))
def test_range(data, n):
    assert -(2**31) <= murmur2(data) < 2**31
    assert 0 <= partition_for_key(data, n) < n


def _murmur2_reference(data: bytes) -> int:
    """The straightforward byte-by-byte loop (the Java client's), to check the faster one."""
    m, h = 0x5BD1E995, (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    full = len(data) & ~3
    for i in range(0, full, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = len(data) & 3
    if rest == 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@given(st.binary(max_size=80))
def test_murmur2_equals_the_reference_loop(data):
    assert murmur2(data) == _murmur2_reference(data)


@given(st.integers(0, 2**63 - 1), st.integers(1, 1024))
def test_cached_partition_for_id_equals_uncached(entity_id, n):
    expected = partition_for_key(str(entity_id).encode(), n)
    assert partition_for_id(entity_id, n) == expected
    assert partition_for_id(entity_id, n) == expected  # second call: from the cache


def test_partition_cache_is_typed_and_bounded():
    # True == 1 and hash alike, but their keys are b"True" and b"1"
    assert partition_for_id(1, 1000) == partition_for_key(b"1", 1000)
    assert partition_for_id(True, 1000) == partition_for_key(b"True", 1000)
    assert partition_for_id.cache_info().maxsize is not None
    with pytest.raises(ValueError):
        partition_for_id(5, 0)
