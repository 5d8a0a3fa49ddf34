"""Hybrid fanout: who is a celebrity (pulled at read time instead of pushed).

Hysteresis keeps an account hovering around the threshold from flapping between
push and pull: it becomes a celebrity at ``followers >= threshold`` and stops
being one only when ``followers < threshold - hysteresis``. Between the two
bounds the current status is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

DEFAULT_THRESHOLD = 10_000
DEFAULT_HYSTERESIS = 1_000

CelebrityTransition = Optional[Literal["promoted", "demoted"]]


def check_constants(threshold: int, hysteresis: int) -> None:
    """Raise ValueError unless ``0 <= hysteresis < threshold``."""
    if not 0 <= hysteresis < threshold:
        raise ValueError(
            f"celebrity constants need 0 <= hysteresis < threshold, got "
            f"hysteresis={hysteresis}, threshold={threshold}"
        )


def is_celebrity_next(
    currently: bool,
    followers: int,
    threshold: int = DEFAULT_THRESHOLD,
    hysteresis: int = DEFAULT_HYSTERESIS,
) -> bool:
    """The celebrity status after the follower count became ``followers``."""
    check_constants(threshold, hysteresis)
    if followers >= threshold:
        return True
    if followers < threshold - hysteresis:
        return False
    return bool(currently)


def celebrity_transition(
    before: bool,
    followers_after: int,
    threshold: int = DEFAULT_THRESHOLD,
    hysteresis: int = DEFAULT_HYSTERESIS,
) -> CelebrityTransition:
    """``"promoted"``, ``"demoted"`` or ``None`` (no change) for a new follower count."""
    after = is_celebrity_next(before, followers_after, threshold, hysteresis)
    if after == bool(before):
        return None
    return "promoted" if after else "demoted"


@dataclass(frozen=True, slots=True)
class CelebrityRule:
    """The two constants, validated once (e.g. from Settings)."""

    threshold: int = DEFAULT_THRESHOLD
    hysteresis: int = DEFAULT_HYSTERESIS

    def __post_init__(self) -> None:
        check_constants(self.threshold, self.hysteresis)

    def next(self, currently: bool, followers: int) -> bool:
        return is_celebrity_next(currently, followers, self.threshold, self.hysteresis)

    def transition(self, before: bool, followers_after: int) -> CelebrityTransition:
        return celebrity_transition(before, followers_after, self.threshold, self.hysteresis)
