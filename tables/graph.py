"""The tables of both stages.

Fanout stage (partitioned like ``tweets`` and ``follows``: by author/followee):
  * ``follower_edges``: ``b"<followee>:<follower>" -> b"<at>"``
  * ``authors``: ``b"<author>" -> {"followers": n, "celebrity": bool, "since": tweet id}``

Delivery stage (partitioned like ``user-activity``: by recipient):
  * ``following_edges``: ``b"<follower>:<followee>" -> b"<at>"``
  * ``recipients``: ``b"<user>" -> {"active_at": ms|None, "stale": bool, "floor": id}``
"""
from __future__ import annotations

import faust

from faust_app import app

_RAW = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
_JSON = faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json")

follower_edges = app.Table("follower-edges", schema=_RAW)
authors = app.Table("authors", schema=_JSON)
following_edges = app.Table("following-edges", schema=_RAW)
recipients = app.Table("recipients", schema=_JSON)
