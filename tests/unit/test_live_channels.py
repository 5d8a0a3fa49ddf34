"""``LiveChannels.listening_users``: who of a chunk's users has an open stream, asking Redis only
about the users the push script has not counted (``RedisTimelines.push_many``'s ``listeners``)."""
from __future__ import annotations

from typing import Any

from sinks.redis_live import LiveChannels
from tests.unit.agent_doubles import FakeRedis


def live_with_questions() -> tuple[LiveChannels, list[tuple[str, ...]]]:
    redis = FakeRedis()
    redis.listening = {"p:live:u:2", "p:live:u:3", "p:live:u:7"}
    asked: list[tuple[str, ...]] = []
    answer = redis.pubsub_numsub

    async def numsub(*channels: str) -> Any:
        asked.append(channels)
        return await answer(*channels)

    redis.pubsub_numsub = numsub  # type: ignore[method-assign]
    return LiveChannels(redis, prefix="p:"), asked  # type: ignore[arg-type]


async def test_only_the_users_the_push_did_not_count_are_asked() -> None:
    live, asked = live_with_questions()
    # 1 and 2 were pushed, and the script heard 2; 3 and 7 (say, an unfollow and a rebuild) were not.
    assert await live.listening_users([1, 2, 3, 7], known=([1, 2], {2})) == {2, 3, 7}
    assert asked == [("p:live:u:3", "p:live:u:7")]


async def test_nothing_is_asked_when_the_push_counted_every_user() -> None:
    live, asked = live_with_questions()
    assert await live.listening_users([1, 2], known=([1, 2], {2})) == {2}
    assert asked == []


async def test_without_a_count_every_user_is_asked() -> None:
    live, asked = live_with_questions()
    assert await live.listening_users([1, 2, 3]) == {2, 3}
    assert asked == [("p:live:u:1", "p:live:u:2", "p:live:u:3")]
