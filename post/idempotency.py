"""``Idempotency-Key`` for ``POST /v1/tweets``: a retried request returns the same tweet.

One PostgreSQL row per (user, sha256 of the client's key) in ``idempotency_keys``
(``ops/schema.sql``), so any 1..200-character key is safe and a retry is answered the same
after Redis lost everything - Redis plays no part here. The row is:

* a **lock** (``locked_until``, ``lock_token``), held by one request at a time for at
  most 30 s (a request that dies releases it by time). A concurrent retry that finds it
  taken gets 409 (retry shortly) and never produces, so concurrent retries cannot
  double-post.
* a 24 h **record** ``{fingerprint, tweet_id, created_at, text, done}``. Written
  (``done`` false) *before* the event is produced, so the tweet id is fixed before
  anything can reach the log; ``done`` once Kafka acknowledged.

One statement takes the lock and, if the key has no live record, stores the request's
own pending record (its tweet id is drawn beforehand; an unused one costs nothing):
``INSERT ... ON CONFLICT DO UPDATE ... WHERE locked_until <= now() RETURNING`` the
record now in the row. If that record is not the request's own, it is an earlier
attempt's: a retry that finds it ``done`` replays the stored response (201, same tweet
id); one that finds ``done`` false - the previous attempt timed out after handing the
event to Kafka, so it may or may not be in the log - produces the *same* event again
(same tweet id and time); consumers keep the first ``tweet_posted`` of an id. When an
attempt fails before the event was handed to Kafka (rate limit, Kafka down) the row is
deleted: nothing of that attempt remains. The same key with a different text is refused
(422).

Commits: the lock statement commits synchronously (it is what a retry relies on); the
statements after it (done + unlock, unlock, delete, sweep) commit asynchronously
(``synchronous_commit`` off for that statement only), saving a WAL flush wait, because
losing one to a PostgreSQL crash only leaves the row as it was after the lock statement:
a pending record, locked for at most 30 s, which a retry then handles as above.

Expiry is by time: a row past ``expires_at`` counts as absent (the lock statement replaces
it), and every Post service deletes expired rows in bounded batches once a minute
(:meth:`IdempotencyStore.sweep`). A fresh POST with a key costs two single-statement round
trips to PostgreSQL, a replay two.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Callable

from api.common import cancel_task

log = logging.getLogger(__name__)

RECORD_TTL_S = 24 * 3600
LOCK_TTL_S = 30
MAX_KEY_CHARS = 200
SWEEP_EVERY_S = 60.0
SWEEP_BATCH = 1000
SWEEP_MAX_BATCHES = 10

PgConn = Callable[[], AbstractAsyncContextManager[Any]]

# A one-row relation whose evaluation turns off the synchronous commit of the statement's
# own (autocommit) transaction: the setting in effect at commit time applies.
_ASYNC_COMMIT = "(SELECT set_config('synchronous_commit', 'off', true)) AS async_commit"

# The row keeps a live record of an earlier attempt; anything else (none yet, expired and
# not swept, or a bare lock an attempt left behind) is replaced by this request's own.
_KEEP = "(k.expires_at > now() AND k.fingerprint IS NOT NULL)"

LOCK_SQL = f"""
INSERT INTO idempotency_keys AS k
       (user_id, key_hash, fingerprint, tweet_id, created_at, text, done, expires_at, locked_until, lock_token)
VALUES (%(user)s, %(key)s, %(fp)s, %(tweet_id)s, %(created_at)s, %(text)s, false,
        now() + %(ttl)s * interval '1 second', now() + %(lock_ttl)s * interval '1 second', %(token)s)
ON CONFLICT (user_id, key_hash) DO UPDATE
   SET locked_until = EXCLUDED.locked_until,
       lock_token = EXCLUDED.lock_token,
       fingerprint = CASE WHEN {_KEEP} THEN k.fingerprint ELSE EXCLUDED.fingerprint END,
       tweet_id = CASE WHEN {_KEEP} THEN k.tweet_id ELSE EXCLUDED.tweet_id END,
       created_at = CASE WHEN {_KEEP} THEN k.created_at ELSE EXCLUDED.created_at END,
       text = CASE WHEN {_KEEP} THEN k.text ELSE EXCLUDED.text END,
       done = CASE WHEN {_KEEP} THEN k.done ELSE false END,
       expires_at = CASE WHEN {_KEEP} THEN k.expires_at ELSE EXCLUDED.expires_at END
 WHERE k.locked_until IS NULL OR k.locked_until <= now()
RETURNING fingerprint, tweet_id, created_at, text, done
"""

_MINE = "user_id = %(user)s AND key_hash = %(key)s AND lock_token = %(token)s"

FINISH_SQL = f"""
UPDATE idempotency_keys
   SET done = true, expires_at = now() + %(ttl)s * interval '1 second', locked_until = NULL, lock_token = NULL
  FROM {_ASYNC_COMMIT}
 WHERE {_MINE}
"""

UNLOCK_SQL = f"UPDATE idempotency_keys SET locked_until = NULL, lock_token = NULL FROM {_ASYNC_COMMIT} WHERE {_MINE}"

FORGET_SQL = f"DELETE FROM idempotency_keys USING {_ASYNC_COMMIT} WHERE {_MINE}"

SWEEP_SQL = f"""
DELETE FROM idempotency_keys AS k
 USING (SELECT user_id, key_hash FROM idempotency_keys
         WHERE expires_at < now() AND (locked_until IS NULL OR locked_until < now())
         ORDER BY expires_at
         LIMIT %s
         FOR UPDATE SKIP LOCKED) AS old,
       {_ASYNC_COMMIT}
 WHERE k.user_id = old.user_id AND k.key_hash = old.key_hash
"""


def fingerprint(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class Record:
    fp: bytes
    tweet_id: int
    created_at: int
    text: str
    done: bool


class IdempotencySlot:
    """One request's hold on one (user, key). After :meth:`lock`, ``record`` is the record
    in the row (None if there is none) and ``fresh`` says whether it is this request's own
    pending record (True) or an earlier attempt's (False)."""

    def __init__(self, pg_conn: PgConn, user_id: int, key: str) -> None:
        self._pg_conn = pg_conn
        self.user_id = user_id
        self.key_hash = key_hash(key)
        self._token: bytes | None = None
        self.record: Record | None = None
        self.fresh = False

    def _mine(self) -> dict[str, Any]:
        return {"user": self.user_id, "key": self.key_hash, "token": self._token}

    async def _run(self, sql: str, params: Any) -> tuple[Any, int]:
        """(first row or None, rowcount) of one statement."""
        async with self._pg_conn() as conn:
            cur = await conn.execute(sql, params)
            return (await cur.fetchone() if cur.description is not None else None), cur.rowcount

    @property
    def locked(self) -> bool:
        return self._token is not None

    async def lock(self, candidate: Record | None) -> bool:
        """Take the key for this request; False if another request holds it. Unless the
        row keeps an earlier attempt's live record, ``candidate`` (pending) is stored as
        this request's - or, without a candidate, nothing but the lock."""
        token = secrets.token_bytes(16)
        c = candidate
        own = ({"fp": None, "tweet_id": None, "created_at": None, "text": None} if c is None else
               {"fp": c.fp, "tweet_id": c.tweet_id, "created_at": c.created_at, "text": c.text})
        row, _ = await self._run(LOCK_SQL, {"user": self.user_id, "key": self.key_hash, "token": token,
                                            "ttl": RECORD_TTL_S, "lock_ttl": LOCK_TTL_S, **own})
        if row is None:
            return False
        self._token = token
        fp, tweet_id, created_at, text, done = row
        if fp is not None and tweet_id is not None:
            self.record = Record(bytes(fp), int(tweet_id), int(created_at), str(text), bool(done))
            self.fresh = c is not None and self.record.tweet_id == c.tweet_id
        return True

    async def finish(self) -> bool:
        """Mark the record done and release the lock; False if the lock was no longer ours
        (held past 30 s and taken by a retry, which then finishes the same record)."""
        _, count = await self._run(FINISH_SQL, {**self._mine(), "ttl": RECORD_TTL_S})
        self._token = None
        return count == 1

    async def forget(self) -> None:
        """Delete the row: nothing of this attempt remains (only while locked)."""
        if self._token is not None:
            await self._run(FORGET_SQL, self._mine())
            self._token = None

    async def release(self) -> None:
        """Give the key back: a row without a record is deleted, one with a record unlocked."""
        if self._token is None:
            return
        await self._run(UNLOCK_SQL if self.record is not None else FORGET_SQL, self._mine())
        self._token = None


class IdempotencyStore:
    """Slots on the service's PostgreSQL pool, and the periodic sweep of expired rows."""

    def __init__(self, pg_conn: PgConn, *, sweep_every_s: float = SWEEP_EVERY_S,
                 batch: int = SWEEP_BATCH, max_batches: int = SWEEP_MAX_BATCHES) -> None:
        self._pg_conn = pg_conn
        self._sweep_every_s = sweep_every_s
        self.batch = batch
        self.max_batches = max_batches
        self._task: asyncio.Task[None] | None = None

    def slot(self, user_id: int, key: str) -> IdempotencySlot:
        return IdempotencySlot(self._pg_conn, user_id, key)

    async def sweep(self) -> int:
        """Delete expired, unlocked rows: at most ``batch`` per statement and
        ``max_batches`` statements (the rest waits for the next sweep). Returns the count."""
        deleted = 0
        for _ in range(self.max_batches):
            async with self._pg_conn() as conn:
                cur = await conn.execute(SWEEP_SQL, (self.batch,))
            deleted += max(cur.rowcount, 0)
            if cur.rowcount < self.batch:
                break
        return deleted

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every_s)
            try:
                n = await self.sweep()
                if n:
                    log.info("deleted %d expired Idempotency-Key records", n)
            except Exception as exc:  # noqa: BLE001 - PostgreSQL down: next time
                log.warning("sweeping expired Idempotency-Key records failed: %s", exc)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="idempotency-sweep")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None
