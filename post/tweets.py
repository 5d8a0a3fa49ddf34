"""The tweet routes of the Post service: ``POST /v1/tweets`` (with ``Idempotency-Key``:
``post.idempotency``) and ``DELETE /v1/tweets/{tweet_id}`` (by its author only; the
author is found in Redis, ``tweet:owner:<id>``, else in the PostgreSQL ``tweets``
projection). What they answer: ``post.service``."""
from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timezone
from typing import Annotated

import psycopg
from fastapi import APIRouter, Request
from psycopg_pool import PoolTimeout
from starlette.responses import Response

from api.auth import authenticate
from api.body import parse_id, read_json
from api.common import json_response
from api.errors import Problem
from api.kafka import KafkaUnavailable
from api.openapi import header_param, id_path, operation
from policies.snowflake import snowflake_timestamp_ms, wall_clock_ms
from policies.text import TextRuleError, validate_tweet_text
from post.bodies import TweetIn, TweetOut, rule_problem
from post.idempotency import MAX_KEY_CHARS, Record, fingerprint
from post.resources import Resources, get_resources
from post.worker_id import NoWorkerId
from schemas.events import TweetDeleted, TweetPosted
from sinks.redis_client import REDIS_ERRORS

log = logging.getLogger(__name__)

OWNER_TTL_S = 90 * 24 * 3600

router = APIRouter()


def iso_utc(ms: int) -> str:
    # Integer arithmetic: ms / 1000 as a float can land a microsecond early and truncate.
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc).replace(microsecond=(ms % 1000) * 1000)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _idempotency_key(request: Request) -> str | None:
    values = request.headers.getlist("idempotency-key")
    if not values:
        return None
    if len(values) > 1:
        raise Problem(400, "send at most one Idempotency-Key header", slug="bad-idempotency-key")
    key = values[0]
    if not 1 <= len(key) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in key):
        raise Problem(
            400,
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters "
            f"(got {len(key)} characters)",
            slug="bad-idempotency-key",
        )
    return key


def _owner_key(tweet_id: int) -> str:
    return f"tweet:owner:{tweet_id}"


_IDEMPOTENCY_KEY = header_param(
    "Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
    "A unique string per tweet, the same on every retry of it: a retry answers the same tweet, posted once "
    "(Idempotent-Replayed: true)",
)


@router.post("/v1/tweets", status_code=201, **operation(
    ok=TweetOut, body=TweetIn, params=[_IDEMPOTENCY_KEY], bearer="required",
    problems=(400, 401, 409, 413, 415, 422, 429, 503)))
async def post_tweet(request: Request) -> Response:
    res = get_resources(request)
    user_id = await authenticate(request)
    idem_key = _idempotency_key(request)
    body = await read_json(request, TweetIn, res.settings.max_body_bytes)
    try:
        text = validate_tweet_text(body.text, res.settings.tweet_max_chars)
    except TextRuleError as exc:
        raise rule_problem("text", exc) from None

    if idem_key is None:
        await _rate_limit(res, user_id)
        tweet_id = res.ids.next_id()
        created = snowflake_timestamp_ms(tweet_id, res.settings.snowflake_epoch_ms)
        try:
            return await _publish_tweet(res, user_id, tweet_id, created, text)
        except KafkaUnavailable as exc:
            if exc.maybe_written:
                raise _outcome_unknown(exc, keyed=False) from None
            raise

    # The tweet id is drawn first, so that one statement takes the key and stores this
    # attempt's pending record; a replay leaves the id unused.
    fp = fingerprint(text)
    try:
        tweet_id = res.ids.next_id()
    except NoWorkerId as exc:
        candidate, no_id = None, exc  # a replay still works; a new tweet gets the 503
    else:
        created = snowflake_timestamp_ms(tweet_id, res.settings.snowflake_epoch_ms)
        candidate, no_id = Record(fp, tweet_id, created, text, done=False), None
    slot = res.idempotency.slot(user_id, idem_key)
    if not await slot.lock(candidate):
        raise Problem(409, "a request with this Idempotency-Key is still in progress; retry shortly",
                      slug="idempotency-in-progress", headers={"Retry-After": "1"})
    try:
        record = slot.record
        if record is None:
            assert no_id is not None
            raise no_id
        if not slot.fresh:
            if record.fp != fp:
                raise Problem(422, "this Idempotency-Key was already used for a different text; "
                              "use a new key for a new tweet", slug="idempotency-key-reused")
            if record.done:
                return _tweet_response(record.tweet_id, user_id, record.created_at, record.text,
                                       replayed=True)
            # The previous attempt's outcome is unknown: produce the same event again.
        else:
            try:
                await _rate_limit(res, user_id)
            except BaseException:
                with contextlib.suppress(psycopg.Error, PoolTimeout):
                    await slot.forget()  # not produced: nothing of this attempt remains
                raise
        try:
            response = await _publish_tweet(res, user_id, record.tweet_id, record.created_at, text)
        except KafkaUnavailable as exc:
            if not exc.maybe_written and slot.fresh:
                with contextlib.suppress(psycopg.Error, PoolTimeout):
                    await slot.forget()  # nothing reached the log: forget this attempt entirely
            if exc.maybe_written:
                raise _outcome_unknown(exc, keyed=True) from None
            raise
        try:
            if not await slot.finish():
                log.warning("Idempotency-Key lock for tweet %d expired before the record was marked done",
                            record.tweet_id)
        except (psycopg.Error, PoolTimeout) as exc:
            # The tweet is on the log; a retry finds the pending record (once the lock
            # expires) and re-sends the same event (same id), which consumers drop as a
            # duplicate.
            log.warning("could not mark Idempotency-Key record done for tweet %d: %s", record.tweet_id, exc)
        return response
    finally:
        try:
            await slot.release()
        except (psycopg.Error, PoolTimeout):
            pass  # the lock expires by itself within 30 s


def _outcome_unknown(exc: KafkaUnavailable, *, keyed: bool) -> Problem:
    """The 503 of a POST /v1/tweets whose event may or may not be on the log."""
    detail = ("the outcome is unknown: the tweet was handed to the event log but not acknowledged in time, "
              f"so it may or may not be posted ({exc.reason}). ")
    if keyed:
        detail += ("Retry with the same Idempotency-Key and the same text: you get the same tweet, "
                   "posted once.")
    else:
        detail += ("This request had no Idempotency-Key, so retrying it may post the tweet twice; send an "
                   "Idempotency-Key header (a unique string per tweet, the same on every retry of it) "
                   "so that a retry is safe.")
    return Problem(503, detail, slug="outcome-unknown", outcome="unknown", headers={"Retry-After": "1"})


async def _rate_limit(res: Resources, user_id: int) -> None:
    """429 once the user's tweet bucket is empty; fails open without Redis (api.limits)."""
    await res.limiter.check(user_id)


def _tweet_response(tweet_id: int, author_id: int, created: int, text: str, *, replayed: bool = False) -> Response:
    return json_response(
        {"tweet_id": str(tweet_id), "author_id": str(author_id), "text": text, "created_at": iso_utc(created)},
        201,
        headers={"Idempotent-Replayed": "true"} if replayed else None,
    )


async def _publish_tweet(res: Resources, user_id: int, tweet_id: int, created: int, text: str) -> Response:
    event = TweetPosted(tweet_id=tweet_id, author_id=user_id, text=text, created_at=created)
    await res.emit(event)
    # The tweet is in the log: the answer is 201 even if Redis does not take the owner.
    await _record_owner(res, tweet_id, {"a": user_id, "c": created},
                        failed="could not record the owner of tweet %d: %s")
    return _tweet_response(tweet_id, user_id, created, text)


async def _record_owner(res: Resources, tweet_id: int, fields: dict[str, int], *, failed: str) -> None:
    """Write ``tweet:owner:<id>`` (``OWNER_TTL_S``). Only a cache: if Redis does not take it,
    ``failed`` is logged and deletes fall back to the PostgreSQL projection for the owner."""
    try:
        async with res.redis.pipeline(transaction=False) as pipe:
            pipe.hset(_owner_key(tweet_id), mapping=fields)
            pipe.expire(_owner_key(tweet_id), OWNER_TTL_S)
            await pipe.execute()
    except REDIS_ERRORS as exc:
        log.warning(failed, tweet_id, exc)


async def _tweet_owner(res: Resources, tweet_id: int) -> tuple[int | None, bool]:
    """(author id or None if unknown, already deleted?)"""
    try:
        record = await res.redis.hgetall(_owner_key(tweet_id))
    except REDIS_ERRORS as exc:
        log.warning("tweet owner lookup in Redis failed, using PostgreSQL: %s", exc)
        record = {}
    if record and b"a" in record:
        return int(record[b"a"]), b"d" in record
    async with res.pg_conn() as conn:
        cur = await conn.execute("SELECT author_id, deleted_at FROM tweets WHERE tweet_id = %s", (tweet_id,))
        row = await cur.fetchone()
    if row is None:
        return None, False
    return int(row[0]), row[1] is not None


@router.delete("/v1/tweets/{tweet_id}", status_code=204, **operation(
    bearer="required", problems=(401, 403, 404, 422, 429, 503)))
async def delete_tweet(request: Request, tweet_id: Annotated[str, id_path("The tweet to delete")]) -> Response:
    res = get_resources(request)
    user_id = await authenticate(request)
    tid = parse_id(tweet_id, "tweet_id")
    owner, deleted = await _tweet_owner(res, tid)
    if owner is None:
        raise Problem(404, f"no tweet with id {tid}", slug="tweet-not-found")
    if owner != user_id:
        raise Problem(403, f"tweet {tid} belongs to another user; only its author can delete it")
    if not deleted:
        at = wall_clock_ms()
        await res.emit(TweetDeleted(tweet_id=tid, author_id=owner, deleted_at=at))
        await _record_owner(res, tid, {"a": owner, "d": at}, failed="could not mark tweet %d deleted in Redis: %s")
    return Response(status_code=204)
