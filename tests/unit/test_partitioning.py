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
