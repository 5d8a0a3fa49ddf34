"""Worker layouts: which process runs which stage, and which consumer group it is."""
from __future__ import annotations

import pytest

from policies.kafka_access import worker_bindings
from policies.worker_layout import LAYOUTS, STAGES, check, group_id, groups, runs, worker_role
from settings import Settings


def test_every_stage_runs_in_exactly_one_role_of_each_layout():
    for layout, roles in LAYOUTS.items():
        for stage in ("fanout", "projection", "deliver"):
            assert sum(runs(role, stage) for role in roles) == 1, (layout, stage)
    assert STAGES["fanout"] == ("fanout", "projection")  # the projection reads stage 1's topics


def test_a_worker_of_the_split_layout_must_name_its_role():
    assert worker_role("one", "") == "all"
    assert worker_role("split", "deliver") == "deliver"
    with pytest.raises(ValueError, match="TL_WORKER_ROLE"):
        worker_role("split", "")


def test_check_refuses_unknown_layouts_and_roles_of_another_layout():
    assert check("one", "") is None
    assert check("split", "fanout") is None
    assert check("split", "") is None  # a tool (lag, rebuild) of a split deployment
    assert "TL_WORKER_LAYOUT" in check("two", "")
    assert "not a role" in check("one", "deliver")
    assert "not a role" in check("split", "all")


def test_each_role_is_a_group_of_its_own_and_the_one_layout_keeps_the_app_id():
    assert group_id("home", "all") == "home"
    assert group_id("home", "fanout") == "home-fanout"
    s1, s2 = ("tweets", "follows"), ("activity", "deliveries")
    assert groups("home", "one", s1, s2) == {"home": (*s1, *s2)}
    assert groups("home", "split", s1, s2) == {"home-fanout": s1, "home-deliver": s2}


def test_settings_validate_the_layout_and_give_each_process_its_group():
    with pytest.raises(ValueError, match="TL_WORKER_LAYOUT"):
        Settings(worker_layout="three")
    with pytest.raises(ValueError, match="not a role"):
        Settings(worker_role="deliver")  # the "one" layout has no such role
    s = Settings(app_id="tl", worker_layout="split", worker_role="deliver")
    assert s.worker_group == "tl-deliver"
    assert s.worker_groups() == {"tl-fanout": (s.topic_tweets, s.topic_follows),
                                 "tl-deliver": (s.topic_activity, s.topic_deliveries)}
    with pytest.raises(ValueError, match="TL_WORKER_ROLE"):
        _ = Settings(app_id="tl", worker_layout="split").worker_group
    assert Settings(app_id="tl").worker_group == "tl"


def test_a_split_worker_may_use_both_groups():
    s = Settings(app_id="tl", worker_layout="split")
    groups_allowed = {b.name for b in worker_bindings("worker", s) if b.resource_type == "group"}
    assert groups_allowed == {"tl-fanout", "tl-deliver"}
