"""Which worker processes run which stages, and the consumer group each one is.

Layouts (``TL_WORKER_LAYOUT``):

* ``one``: every worker process runs both timeline stages and the PostgreSQL projection, as
  one Faust app whose id (and consumer group) is ``TL_APP_ID``.
* ``split``: a worker process runs one role (``TL_WORKER_ROLE``): ``fanout`` (stage 1 and
  the projection: ``tweets`` and ``follows``) or ``deliver`` (stage 2: ``user-activity`` and
  ``timeline-deliveries``). Each role is a Faust app of its own, with its own consumer group
  (``<app id>-fanout``, ``<app id>-deliver``), tables (the changelogs carry the group's name)
  and offsets, and each process its own GIL: on a machine where one process was bound by its
  interpreter, the two stages run in parallel instead of taking turns
  (``bench/results/worker-split-20261204/README.md``). Scaling out is per role: more
  processes of a role share that role's partitions.

A stage's guarantees do not depend on the layout: each process acks a batch only after its
writes, and the two stages already talk only through the ``timeline-deliveries`` topic.
Switching a deployment's layout starts groups with no offsets, which replay the log from the
start (idempotent, but a full replay); move the offsets first to avoid that
(``docs/operations.md``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

LAYOUTS: dict[str, tuple[str, ...]] = {"one": ("all",), "split": ("fanout", "deliver")}

#: The stages each role runs (agents/fanout.py, agents/projection.py, agents/deliver.py).
STAGES: dict[str, tuple[str, ...]] = {
    "all": ("fanout", "projection", "deliver"),
    "fanout": ("fanout", "projection"),
    "deliver": ("deliver",),
}


def check(layout: str, role: str) -> str | None:
    """What is wrong with this layout and process role, or None. ``role`` "" is a process that
    runs no stage (a tool) or, in the ``one`` layout, a worker (its only role)."""
    if layout not in LAYOUTS:
        return f"TL_WORKER_LAYOUT must be one of {', '.join(LAYOUTS)}, got {layout!r}"
    if role and role not in LAYOUTS[layout]:
        return (f"TL_WORKER_ROLE {role!r} is not a role of the {layout!r} layout "
                f"(its roles: {', '.join(LAYOUTS[layout])})")
    return None


def worker_role(layout: str, role: str) -> str:
    """The role a worker process runs; ValueError when the layout needs one to be named."""
    if role:
        return role
    roles = LAYOUTS[layout]
    if len(roles) > 1:
        raise ValueError(f"a worker in the {layout!r} layout needs TL_WORKER_ROLE, one of {', '.join(roles)}")
    return roles[0]


def group_id(app_id: str, role: str) -> str:
    """A role's Faust app id, which is its consumer group and its changelog topics' prefix."""
    return app_id if role == "all" else f"{app_id}-{role}"


def runs(role: str, stage: str) -> bool:
    return stage in STAGES[role]


def groups(app_id: str, layout: str, stage1_topics: Sequence[str],
           stage2_topics: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Consumer group -> the topics it consumes, for every role of ``layout``."""
    by_role: Mapping[str, tuple[str, ...]] = {
        "all": (*stage1_topics, *stage2_topics),
        "fanout": tuple(stage1_topics),
        "deliver": tuple(stage2_topics),
    }
    return {group_id(app_id, role): by_role[role] for role in LAYOUTS[layout]}
