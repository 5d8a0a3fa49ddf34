"""The fanout agent's kept follower groups (``tables/follower_plans.py``)."""
from __future__ import annotations

from tables.follower_plans import FollowerPlans


def groups(*recipients: int) -> list[tuple[int, tuple[int, ...]]]:
    return [(0, tuple(recipients))]


def test_groups_are_built_once_until_dropped() -> None:
    plans = FollowerPlans()
    built: list[int] = []

    def build(author: int, *recipients: int):
        return lambda: built.append(author) or groups(*recipients)

    assert plans.get(1, build(1, 10, 11)) == groups(10, 11)
    assert plans.get(1, build(1, 99)) == groups(10, 11)
    assert built == [1]
    plans.drop(1)
    plans.drop(2)  # never kept: nothing to drop
    assert plans.get(1, build(1, 12)) == groups(12)
    assert built == [1, 1]
    assert plans.held == 1


def test_past_its_limit_it_starts_again_empty() -> None:
    plans = FollowerPlans(limit=5)
    plans.get(1, lambda: groups(1, 2, 3))
    plans.get(2, lambda: groups(4, 5))
    assert plans.held == 5 and set(plans.plans) == {1, 2}
    plans.get(3, lambda: groups(6))
    assert plans.held == 1 and set(plans.plans) == {3}
    plans.clear()
    assert plans.held == 0 and plans.plans == {}
