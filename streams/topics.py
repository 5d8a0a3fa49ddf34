"""Topic declarations and the partitioning rule.

Source topics carry raw bytes: events are decoded by ``schemas.decode`` inside
the agents, so that a message that breaks the contract goes to the dead-letter
topic with a reason instead of failing inside Faust's deserializer.

Co-partitioning: ``tweets`` (keyed by author) and ``follows`` (keyed by
followee) are consumed together by the fanout stage, so an author's tweets and
follower edges meet in one partition. ``user-activity`` and
``timeline-deliveries`` (both keyed by recipient) are consumed together by the
delivery stage. All four have the same partition count and the key of every
message is the decimal id, hashed with Kafka's murmur2 (the Java client's and
aiokafka's default partitioner).
"""
from __future__ import annotations

from faust_app import app, settings
from schemas import events_on

_RAW = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

tweets_topic = app.topic(settings.topic_tweets, partitions=settings.topic_partitions, **_RAW)
follows_topic = app.topic(settings.topic_follows, partitions=settings.topic_partitions, **_RAW)
activity_topic = app.topic(settings.topic_activity, partitions=settings.topic_partitions, **_RAW)
deliveries_topic = app.topic(
    settings.topic_deliveries, partitions=settings.topic_partitions, internal=True, **_RAW
)
dead_letters_topic = app.topic(settings.topic_dead_letters, partitions=1, **_RAW)

# What each stage consumes.
author_events = app.topic(settings.topic_tweets, settings.topic_follows, **_RAW)
recipient_events = app.topic(settings.topic_activity, settings.topic_deliveries, **_RAW)
projection_events = app.topic(settings.topic_tweets, settings.topic_follows, **_RAW)

# The event types each source topic carries (docs/events.md); anything else on it is a
# contract violation.
EVENTS_ON: dict[str, dict[str, type]] = events_on(settings)
