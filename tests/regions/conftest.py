"""The regions topology's tests (issue 17): private servers on their own loopback addresses,
started by the tests themselves. Collected only with ``TL_REGION_TESTS=1`` (``tests/conftest.py``)."""
