"""Fixtures shared by the agent unit tests (``faust_test_app``, ``journal``, ``sent``, ``sinks``).

They live in :mod:`tests.unit.agent_doubles`; importing them here makes them available to
every test module of this folder without a per-module import of each fixture.
"""
from tests.unit.agent_doubles import faust_test_app, journal, sent, sinks  # noqa: F401  (fixtures)
