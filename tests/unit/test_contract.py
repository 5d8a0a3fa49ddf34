"""The event contract refuses, at decode, every value a store could not hold (issue: poison-proof stream)."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from schemas import ContractError, Limits, TweetPosted, decode
from schemas.events import MAX_TIME_MS, TWEET_EVENTS
from settings import Settings

OK = {"type": "tweet_posted", "tweet_id": 5, "author_id": 2, "text": "hi", "created_at": 1_700_000_000_000}


def raw(**changes) -> bytes:
    body = {**OK, **changes}
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def refused(value: bytes | str | None, limits: Limits | None = None) -> str:
    with pytest.raises(ContractError) as info:
        decode(value, TWEET_EVENTS, limits)
    return info.value.reason


def test_a_valid_event_and_extra_fields_decode():
    assert decode(raw(), TWEET_EVENTS) == TweetPosted(5, 2, "hi", 1_700_000_000_000)
    assert decode(raw(v=1, meta={"trace": [1, {"a": None}]}), TWEET_EVENTS).tweet_id == 5


@pytest.mark.parametrize("text, rule", [
    ("a\u0000b", "control_character"), ("tab\there", "control_character"), ("\u007f", "control_character"),
    ("\u0085", "control_character"), ("", "empty"), (" \n ", "whitespace_only"), ("x" * 281, "too_long"),
])
def test_text_follows_the_post_service_rule(text, rule):
    assert f"rule {rule}" in refused(raw(text=text))


def test_newline_and_format_characters_are_text():
    assert decode(raw(text="line\nnext \u200d\U0001F600"), TWEET_EVENTS).text == "line\nnext \u200d\U0001F600"


def test_a_lone_surrogate_is_refused():
    assert "not valid UTF-8 JSON" in refused(raw().replace(b'"hi"', b'"\\ud800"'))


def test_text_limit_is_the_setting():
    limits = Limits.from_settings(Settings(tweet_max_chars=3))
    assert "rule too_long" in refused(raw(text="abcd"), limits)
    assert decode(raw(text="abc"), TWEET_EVENTS, limits).text == "abc"


@pytest.mark.parametrize("field", ["tweet_id", "author_id"])
@pytest.mark.parametrize("value", [0, -1, 2**63, "5", 5.0, True, None, [5], {"id": 5}])
def test_ids_are_integers_in_1_to_2_63_minus_1(field, value):
    assert repr(field) in refused(raw(**{field: value}))


def test_numbers_beyond_uint64_and_exponents_are_not_integers():
    assert "got number" in refused(raw().replace(b'"tweet_id":5', b'"tweet_id":18446744073709551617'))
    assert "got number" in refused(raw().replace(b'"tweet_id":5', b'"tweet_id":5e0'))


@pytest.mark.parametrize("value", [-1, MAX_TIME_MS + 1, 2**63 - 1, 1.5, "1"])
def test_times_are_between_1970_and_year_9999(value):
    assert "'created_at'" in refused(raw(created_at=value))


def test_the_last_millisecond_of_year_9999_is_a_time():
    assert decode(raw(created_at=MAX_TIME_MS), TWEET_EVENTS).created_at == MAX_TIME_MS


def test_missing_field_unknown_type_wrong_topic_and_not_an_object():
    assert "missing field 'text'" in refused(raw(text=...))
    assert "is not one of" in refused(raw(type="tweet_edited"))
    assert "is not one of" in refused(orjson.dumps({"type": "followed", "follower_id": 1, "followee_id": 2, "at": 1}))
    assert "must be a JSON object, got array" in refused(b"[1]")
    assert "no string field 'type'" in refused(raw(type=7))
    assert "tombstone" in refused(None)
    assert "not valid UTF-8 JSON" in refused(b"")
    assert "not valid UTF-8 JSON" in refused(b'{"type":"tweet_posted","text":"\xff"}')


def test_duplicate_members_are_ambiguous():
    assert "appears more than once" in refused(raw().replace(b'"tweet_id":5', b'"tweet_id":5,"tweet_id":6'))
    assert "appears more than once" in refused(raw().replace(b'"type":"tweet_posted"',
                                                             b'"type":"tweet_deleted","type":"tweet_posted"'))
    # A text that quotes a field name is not a duplicate.
    assert decode(raw(text='say "text" and "tweet_id"'), TWEET_EVENTS).text == 'say "text" and "tweet_id"'


def test_nesting_deeper_than_the_limit_is_refused():
    assert "nests deeper than 8" in refused(raw(meta=[[[[[[[[[1]]]]]]]]]))
    deep = raw()[:-1] + b',"m":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refused(deep, Limits(max_event_bytes=512 * 1024))


def test_oversized_values_are_refused_before_parsing():
    big = raw(text="x") + b" " * (64 * 1024)
    assert "the limit is 65536" in refused(big)


@hsettings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_decode_or_raise_contract_error(data):
    try:
        event = decode(data, TWEET_EVENTS)
    except ContractError as exc:
        assert exc.reason
    else:
        assert isinstance(event, TweetPosted)


def test_the_registry_names_each_events_topic_and_key():
    from schemas import REGISTRY, events_on, key_of, source_topics, topic_of

    s = Settings().isolated("t", "x", "/tmp")
    assert source_topics(s) == [s.topic_tweets, s.topic_follows, s.topic_activity]
    assert topic_of("followed", s) == s.topic_follows and topic_of(TweetPosted, s) == s.topic_tweets
    assert set(events_on(s)[s.topic_tweets]) == {"tweet_posted", "tweet_deleted"}
    assert key_of({"type": "followed", "follower_id": 1, "followee_id": 2, "at": 0}) == 2
    for cls in REGISTRY:
        import dataclasses
        sample = cls(**{f.name: 7 if f.name != "text" else "x" for f in dataclasses.fields(cls)})
        assert sample.key == getattr(sample, cls.KEY) and topic_of(sample, s) == getattr(s, cls.TOPIC)
