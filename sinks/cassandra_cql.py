"""The project's CQL statements (prepared once per session by ``sinks/cassandra.py``).

``QUERIES``: name -> statement (``{ks}`` is the keyspace). ``ROW_KEYS``: the row each
write touches, which ``sinks/cassandra_batches.plan_batches`` needs to batch it.
"""
from __future__ import annotations

QUERIES = {
    # A winner's body (the fanout stage writes it after claiming the id in PostgreSQL,
    # policies/first_wins.py); deleted_at is left alone, so a delete mark stays.
    "insert_tweet": "INSERT INTO {ks}.tweets (tweet_id, author_id, text, created_at) VALUES (?, ?, ?, ?)",
    "mark_deleted": "UPDATE {ks}.tweets SET deleted_at = ? WHERE tweet_id = ?",
    "get_tweet": "SELECT tweet_id, author_id, text, created_at, deleted_at FROM {ks}.tweets WHERE tweet_id = ?",
    "insert_author_tl": "INSERT INTO {ks}.author_timeline (author_id, tweet_id) VALUES (?, ?)",
    "delete_author_tl": "DELETE FROM {ks}.author_timeline WHERE author_id = ? AND tweet_id = ?",
    "author_tl_below": "SELECT tweet_id FROM {ks}.author_timeline WHERE author_id = ? AND tweet_id < ? LIMIT ?",
    "author_tl_above": "SELECT tweet_id FROM {ks}.author_timeline WHERE author_id = ? AND tweet_id > ? LIMIT ?",
    "insert_user_tl": "INSERT INTO {ks}.user_timeline (user_id, tweet_id, author_id) VALUES (?, ?, ?)",
    "delete_user_tl": "DELETE FROM {ks}.user_timeline WHERE user_id = ? AND tweet_id = ?",
    "clear_user_tl": "DELETE FROM {ks}.user_timeline WHERE user_id = ?",
    "user_tl_below": "SELECT tweet_id, author_id FROM {ks}.user_timeline WHERE user_id = ? AND tweet_id < ? AND tweet_id > ? LIMIT ?",
    "get_meta": "SELECT floor, stale FROM {ks}.timeline_meta WHERE user_id = ?",
    "set_meta": "INSERT INTO {ks}.timeline_meta (user_id, floor, stale, rebuilt_at) VALUES (?, ?, ?, ?)",
    "set_stale": "UPDATE {ks}.timeline_meta SET stale = ? WHERE user_id = ?",
    "set_floor": "UPDATE {ks}.timeline_meta SET floor = ? WHERE user_id = ?",
    "insert_following": "INSERT INTO {ks}.following (user_id, followee_id, since) VALUES (?, ?, ?)",
    "delete_following": "DELETE FROM {ks}.following WHERE user_id = ? AND followee_id = ?",
    "get_following": "SELECT followee_id FROM {ks}.following WHERE user_id = ?",
    "set_author_status": "INSERT INTO {ks}.author_status (author_id, followers, celebrity, celebrity_since) VALUES (?, ?, ?, ?)",
    "get_author_status": "SELECT followers, celebrity, celebrity_since FROM {ks}.author_status WHERE author_id = ?",
    "all_celebrities": "SELECT author_id, celebrity FROM {ks}.author_status",
    # The durable set of celebrities (sinks/redis_celebrities.py caches it): bucket 0.
    "insert_celebrity": "INSERT INTO {ks}.celebrities (bucket, author_id) VALUES (?, ?)",
    "delete_celebrity": "DELETE FROM {ks}.celebrities WHERE bucket = ? AND author_id = ?",
    "list_celebrities": "SELECT author_id FROM {ks}.celebrities WHERE bucket = ?",
    # Read path (query/reader.py): one query for many tweets / many authors.
    "get_tweets": "SELECT tweet_id, author_id, text, created_at, deleted_at FROM {ks}.tweets WHERE tweet_id IN ?",
    "authors_tl_below": (
        "SELECT author_id, tweet_id FROM {ks}.author_timeline"
        " WHERE author_id IN ? AND tweet_id < ? PER PARTITION LIMIT ?"
    ),
    "ping": "SELECT release_version FROM system.local",
    # A one-row write that proves the commit log synced (sinks/cassandra_sync.py).
    "commitlog_probe": "INSERT INTO {ks}.commitlog_probe (writer, at) VALUES (?, ?)",
    # The node's life: a new, larger generation at every start (sinks/cassandra_sync.py).
    "generation": "SELECT gossip_generation FROM system.local",
}
# The row each write touches: (table, indexes of its primary key values in
# the parameters, the partition key first: every table here has a one-column
# partition key). Only these statements are batched; any other statement
# (e.g. clear_user_tl, a partition delete) is sent alone, see plan_batches.
ROW_KEYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "insert_tweet": ("tweets", (0,)),
    "mark_deleted": ("tweets", (1,)),
    "insert_author_tl": ("author_timeline", (0, 1)),
    "delete_author_tl": ("author_timeline", (0, 1)),
    "insert_user_tl": ("user_timeline", (0, 1)),
    "delete_user_tl": ("user_timeline", (0, 1)),
    "set_meta": ("timeline_meta", (0,)),
    "set_stale": ("timeline_meta", (1,)),
    "set_floor": ("timeline_meta", (1,)),
    "insert_following": ("following", (0, 1)),
    "delete_following": ("following", (0, 1)),
    "set_author_status": ("author_status", (0,)),
    "insert_celebrity": ("celebrities", (0, 1)),
    "delete_celebrity": ("celebrities", (0, 1)),
}
