"""The Post service: the write side of the home timeline, over HTTP.

Stateless FastAPI app. Every accepted write is an event on the Kafka log first; the
service never writes tweets or follows to a database itself (Faust agents project the
log into PostgreSQL, Cassandra and Redis). It owns only accounts, Idempotency-Key
records and Snowflake worker-id leases (PostgreSQL) and a little Redis state, all of it
a cache or a limit that may be lost (rate-limit buckets, tweet owners).

Endpoints (ids are decimal strings in JSON and in paths)::

    POST   /v1/users                                   {"handle"} -> 201 {user_id, handle, token}
    POST   /v1/tweets                  (Bearer)        {"text"}   -> 201 {tweet_id, author_id, text, created_at}
    DELETE /v1/tweets/{tweet_id}       (Bearer)                   -> 204
    POST   /v1/users/{user_id}/following          (Bearer) {"target_user_id"} -> 200 {"following": true}
    DELETE /v1/users/{user_id}/following/{target} (Bearer)       -> 200 {"following": false}
    GET    /healthz                                               -> 200 / 503 with each dependency
    GET    /metrics                                               -> Prometheus text

Events: signup -> ``user_active`` (user-activity topic, key user id); post ->
``tweet_posted`` and delete -> ``tweet_deleted`` (tweets topic, key author id); follow ->
``followed`` / ``unfollowed`` (follows topic, key *followee* id). A write answers 2xx only
after Kafka acknowledged its event (``acks='all'``, idempotent producer); if Kafka does
not answer within ``kafka_timeout_s`` (5 s) the answer is 503: "nothing was accepted" when
the event never left the service, "the outcome is unknown" (``"outcome": "unknown"``)
when it was handed to Kafka and may still reach the log - for a tweet, retry with the
same ``Idempotency-Key`` to get the same tweet, posted once.

Semantics worth knowing:

* Deleting a tweet is idempotent for its author: a second DELETE is 204 again (and
  emits nothing once the service knows the tweet is deleted). Another user's tweet is
  403, an unknown id 404. The author is found in Redis (``tweet:owner:<id>``, written
  before the 201 of the post, 90-day TTL) and else in the PostgreSQL ``tweets``
  projection.
* Following twice or unfollowing someone not followed is harmless: 200, and the event
  is emitted again (consumers treat follow state as last-event-wins per pair).
* Malformed ids (not ``[1-9][0-9]*`` within int64) are 422; well-formed unknown ids 404.
* Posting is rate limited per user by a token bucket in Redis (``TL_POST_RATE_BURST``,
  ``TL_POST_RATE_PER_S``): 429 with ``Retry-After``. Replays of an Idempotency-Key do
  not spend tokens.
* Abuse limits (``api.limits``; docs/operations.md "Abuse limits"): sign-ups per client
  address (``TL_SIGNUP_RATE_*``), follows and unfollows per user (``TL_FOLLOW_RATE_*``),
  and bearer-token lookups in PostgreSQL per client address, checked before the lookup
  (``TL_TOKEN_LOOKUP_RATE_*``, with negative caching of unknown tokens: ``api.auth``).
  Each is 429 with ``Retry-After`` and a ``detail``; each fails open when Redis does not
  answer (the token-lookup limit falls back to in-process buckets).
* A user follows at most ``TL_MAX_FOLLOWING`` accounts (5,000): a follow of one more is
  409 ``following-limit``; following someone already followed and unfollowing always
  work. Counted in PostgreSQL: the ``follows`` projection plus the service's own recent
  follow decisions, so follows the projection has not applied yet count too
  (``api.follow_cap``). Follows and unfollows therefore need PostgreSQL (else 503).
* ``Idempotency-Key`` (``api.idempotency``): records in PostgreSQL for 24 h, so a retry
  returns the same tweet even after Redis lost everything; 409 while another request
  with the key is running, 422 for the same key with another text.
* Snowflake worker ids: fixed from ``TL_SNOWFLAKE_WORKER_ID`` when >= 0, else leased
  from PostgreSQL (the lowest free row of ``snowflake_worker_leases``, 60 s, renewed
  every 20 s, trusted 10 s less, released on shutdown; fenced by a generation and by
  time) - see ``api.worker_id``. Without a lease, ids stop (503) before another process
  could take the number, so two processes never issue the same id.

Run: ``python -m api.post_service [--host 127.0.0.1] [--port 8081]``.
"""
from __future__ import annotations

import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import Any

import psycopg
import redis.exceptions
from fastapi import APIRouter, FastAPI, Request
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict
from starlette.responses import Response

from api.auth import authenticate, hash_token, new_token
from api.body import parse_id, read_json
from api.common import build_app, health_response, json_response, serve
from api.deps import Resources, get_resources, install_dependency_errors
from api.errors import Problem
from api.follow_cap import FollowCap, FollowCapReached, Intent
from api.idempotency import MAX_KEY_CHARS, Record, fingerprint
from api.kafka import KafkaUnavailable
from api.limits import request_address
from api.metrics import Metrics
from api.worker_id import NoWorkerId
from policies.following import over_cap_detail
from policies.snowflake import snowflake_timestamp_ms
from policies.text import TextRuleError, validate_handle, validate_tweet_text
from schemas.events import Event, TweetDeleted, TweetPosted, UserActive, UserFollowed, UserUnfollowed
from settings import Settings, get_settings

log = logging.getLogger("api.post_service")

DEFAULT_PORT = 8081
OWNER_TTL_S = 90 * 24 * 3600
USER_CACHE_MAX = 100_000


# --- request bodies -------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SignupIn(_Strict):
    handle: str


class TweetIn(_Strict):
    text: str


class FollowIn(_Strict):
    target_user_id: str


# --- helpers ---------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_utc(ms: int) -> str:
    # Integer arithmetic: ms / 1000 as a float can land a microsecond early and truncate.
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc).replace(microsecond=(ms % 1000) * 1000)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rule_problem(what: str, exc: TextRuleError) -> Problem:
    return Problem(422, f"{what} breaks rule '{exc.rule}': {exc.detail}", slug=f"{what}-rule", rule=exc.rule)


async def _emit(res: Resources, topic: str, event: Event) -> None:
    await res.kafka.produce(topic, event)
    res.metrics.events.labels(event.TYPE).inc()


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


async def _user_exists(res: Resources, cache: set[int], user_id: int) -> bool:
    if user_id in cache:
        return True
    async with res.pg_conn() as conn:
        cur = await conn.execute("SELECT 1 FROM users WHERE user_id = %s", (user_id,))
        found = await cur.fetchone() is not None
    if found:
        if len(cache) >= USER_CACHE_MAX:
            cache.clear()
        cache.add(user_id)
    return found


def _owner_key(tweet_id: int) -> str:
    return f"tweet:owner:{tweet_id}"


# --- routes ----------------------------------------------------------------------------

router = APIRouter()


@router.post("/v1/users", status_code=201)
async def sign_up(request: Request) -> Response:
    res = get_resources(request)
    body = await read_json(request, SignupIn, res.settings.max_body_bytes)
    try:
        handle = validate_handle(body.handle)
    except TextRuleError as exc:
        raise _rule_problem("handle", exc) from None
    await res.signup_limiter.check(request_address(request, res.settings))
    user_id = res.ids.next_id()
    token = new_token()
    try:
        async with res.pg_conn() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO users (user_id, handle, token_hash) VALUES (%s, %s, %s)",
                (user_id, handle, hash_token(token)),
            )
            # Produce before COMMIT: if Kafka is down the account is rolled back (503).
            await _emit(res, res.settings.topic_activity, UserActive(user_id=user_id, at=now_ms()))
    except psycopg.errors.UniqueViolation as exc:
        constraint = getattr(exc.diag, "constraint_name", "") or ""
        if "handle" in constraint:
            raise Problem(409, f"handle {handle!r} is already taken (handles are case-insensitive)",
                          slug="handle-taken") from None
        raise
    request.app.state.known_users.add(user_id)
    return json_response({"user_id": str(user_id), "handle": handle, "token": token}, 201)


@router.post("/v1/tweets", status_code=201)
async def post_tweet(request: Request) -> Response:
    res = get_resources(request)
    user_id = await authenticate(request)
    idem_key = _idempotency_key(request)
    body = await read_json(request, TweetIn, res.settings.max_body_bytes)
    try:
        text = validate_tweet_text(body.text, res.settings.tweet_max_chars)
    except TextRuleError as exc:
        raise _rule_problem("text", exc) from None

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
    await _emit(res, res.settings.topic_tweets, event)
    try:
        async with res.redis.pipeline(transaction=False) as pipe:
            pipe.hset(_owner_key(tweet_id), mapping={"a": user_id, "c": created})
            pipe.expire(_owner_key(tweet_id), OWNER_TTL_S)
            await pipe.execute()
    except redis.exceptions.RedisError as exc:
        # The tweet is in the log: the answer is 201 regardless. Deletes fall back to the
        # PostgreSQL projection for the owner.
        log.warning("could not record the owner of tweet %d: %s", tweet_id, exc)
    return _tweet_response(tweet_id, user_id, created, text)


async def _tweet_owner(res: Resources, tweet_id: int) -> tuple[int | None, bool]:
    """(author id or None if unknown, already deleted?)"""
    try:
        record = await res.redis.hgetall(_owner_key(tweet_id))
    except redis.exceptions.RedisError as exc:
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


@router.delete("/v1/tweets/{tweet_id}", status_code=204)
async def delete_tweet(request: Request, tweet_id: str) -> Response:
    res = get_resources(request)
    user_id = await authenticate(request)
    tid = parse_id(tweet_id, "tweet_id")
    owner, deleted = await _tweet_owner(res, tid)
    if owner is None:
        raise Problem(404, f"no tweet with id {tid}", slug="tweet-not-found")
    if owner != user_id:
        raise Problem(403, f"tweet {tid} belongs to another user; only its author can delete it")
    if not deleted:
        at = now_ms()
        await _emit(res, res.settings.topic_tweets, TweetDeleted(tweet_id=tid, author_id=owner, deleted_at=at))
        try:
            async with res.redis.pipeline(transaction=False) as pipe:
                pipe.hset(_owner_key(tid), mapping={"a": owner, "d": at})
                pipe.expire(_owner_key(tid), OWNER_TTL_S)
                await pipe.execute()
        except redis.exceptions.RedisError as exc:
            log.warning("could not mark tweet %d deleted in Redis: %s", tid, exc)
    return Response(status_code=204)


def _check_caller(user_id: str, caller: int) -> None:
    path_user = parse_id(user_id, "user_id")
    if path_user != caller:
        raise Problem(403, f"you are authenticated as user {caller} and can only change your own follows, "
                      f"not those of user {path_user}")


async def _follow_target(request: Request, target_raw: Any, caller: int) -> int:
    """The target of a follow or unfollow: well-formed, not the caller, within the caller's
    follow rate limit (spent only by requests that got this far), and an existing user."""
    res = get_resources(request)
    target = parse_id(target_raw, "target_user_id")
    if target == caller:
        raise Problem(422, "you cannot follow or unfollow yourself", slug="self-follow")
    await res.follow_limiter.check(caller)
    if not await _user_exists(res, request.app.state.known_users, target):
        raise Problem(404, f"no user with id {target}", slug="user-not-found")
    return target


async def _emit_follow_change(res: Resources, cap: FollowCap, intent: Intent, event: Event) -> None:
    """Produce the event of a recorded intent; if Kafka surely did not get it, undo the intent."""
    try:
        await _emit(res, res.settings.topic_follows, event)
    except KafkaUnavailable as exc:
        if not exc.maybe_written:
            try:
                await cap.undo(intent)
            except Exception as undo_exc:  # noqa: BLE001 - the 503 below is the answer either way
                log.warning("could not undo the follow intent %s -> %s: %s", intent.follower, intent.followee,
                            undo_exc)
        raise


@router.post("/v1/users/{user_id}/following")
async def follow(request: Request, user_id: str) -> Response:
    res = get_resources(request)
    caller = await authenticate(request)
    _check_caller(user_id, caller)
    body = await read_json(request, FollowIn, res.settings.max_body_bytes)
    target = await _follow_target(request, body.target_user_id, caller)
    cap = res.follow_cap
    try:
        intent = await cap.follow(caller, target)
    except FollowCapReached as exc:
        res.metrics.following_cap.inc()
        raise Problem(409, over_cap_detail(exc.count, exc.cap), slug="following-limit",
                      limit=exc.cap, following=exc.count) from None
    await _emit_follow_change(res, cap, intent, UserFollowed(follower_id=caller, followee_id=target, at=now_ms()))
    return json_response({"following": True})


@router.delete("/v1/users/{user_id}/following/{target_user_id}")
async def unfollow(request: Request, user_id: str, target_user_id: str) -> Response:
    res = get_resources(request)
    caller = await authenticate(request)
    _check_caller(user_id, caller)
    target = await _follow_target(request, target_user_id, caller)
    cap = res.follow_cap
    intent = await cap.unfollow(caller, target)
    await _emit_follow_change(res, cap, intent, UserUnfollowed(follower_id=caller, followee_id=target, at=now_ms()))
    return json_response({"following": False})


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    return health_response(await get_resources(request).health())


# --- app -------------------------------------------------------------------------------


def _resources(app: FastAPI) -> Resources:
    return Resources.create(
        app.state.settings,
        kafka_timeout_s=app.state.kafka_timeout_s,
        instance=app.state.instance,
        metrics=app.state.metrics,
    )


def create_app(
    settings: Settings | None = None, *, kafka_timeout_s: float = 5.0, instance: str | None = None
) -> FastAPI:
    """The Post service as an ASGI app. Its lifespan opens (and closes) the connections."""
    settings = settings or get_settings()
    return build_app(
        title="Home timeline - Post service",
        settings=settings,
        resources=_resources,
        router=router,
        metrics=Metrics(),
        error_handlers=[install_dependency_errors],
        kafka_timeout_s=kafka_timeout_s,
        instance=instance,
        known_users=set(),
    )


def main(argv: list[str] | None = None) -> None:
    serve(create_app, prog="python -m api.post_service", description=__doc__.splitlines()[0],
          default_port=DEFAULT_PORT, argv=argv)


if __name__ == "__main__":
    main()
