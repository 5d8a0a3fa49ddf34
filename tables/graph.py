"""The tables of both stages.

Fanout stage (partitioned like ``tweets`` and ``follows``: by author/followee):
  * ``follower_edges``: ``b"<followee>:<follower>" -> b"<at>"``
  * ``authors``: ``b"<author>" -> {"followers": n, "celebrity": bool, "since": tweet id}``
  * ``early_deletes``: ``b"<author>:<tweet>" -> b"<deleted_at>"``, a ``tweet_deleted`` that
    came before any post of its id was stored; applied when that author's post of the id
    arrives (same key, so same partition, in log order), never to another author's
    (``policies/first_wins.py``). Rows stay small and few: one per early delete.

Delivery stage (partitioned like ``user-activity``: by recipient):
  * ``following_edges``: ``b"<follower>:<followee>" -> b"<at>"``
  * ``recipients``: ``b"<user>" -> {"active_at": ms|None, "stale": bool, "floor": id}``
"""
from __future__ import annotations

from faust_app import app

# Serializers come from key_type/value_type, never from a ``schema=``: a Table
# derives its own key/value serializers from the types (``bytes`` -> "raw",
# anything else -> "json", faust/tables/base.py ``_serializer_from_type``) and
# passes them to its changelog topic, where they override the schema's. With a
# raw ``schema`` and no types, the changelogs were decoded as JSON, so an edge
# key such as b"12:34" raised KeyDecodeError in table recovery and the worker
# that took over a partition never finished recovering (faust-streaming #310).
_RAW = dict(key_type=bytes, value_type=bytes)  # "raw" keys and values
_JSON = dict(key_type=bytes)  # "raw" keys, "json" values (the default)

follower_edges = app.Table("follower-edges", **_RAW)
authors = app.Table("authors", **_JSON)
early_deletes = app.Table("early-deletes", **_RAW)
following_edges = app.Table("following-edges", **_RAW)
recipients = app.Table("recipients", **_JSON)
