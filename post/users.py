"""The account routes of the Post service: sign-up (``POST /v1/users``), follow and
unfollow (``/v1/users/{user_id}/following``, within ``TL_MAX_FOLLOWING``:
``post.follow_cap``). What they answer: ``post.service``."""
from __future__ import annotations

import logging
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Request
from starlette.responses import Response

from api.auth import authenticate, hash_token, new_token
from api.body import parse_id, read_json
from api.common import json_response
from api.errors import Problem
from api.kafka import KafkaUnavailable
from api.limits import request_address
from api.observe import note_user
from api.openapi import id_path, operation
from policies.following import over_cap_detail
from policies.snowflake import wall_clock_ms
from policies.text import TextRuleError, validate_handle
from post.bodies import FollowIn, FollowingOut, SignupIn, UserCreated, rule_problem
from post.follow_cap import FollowCap, FollowCapReached, Intent
from post.resources import Resources, get_resources
from schemas.events import Event, UserActive, UserFollowed, UserUnfollowed

log = logging.getLogger(__name__)

USER_CACHE_MAX = 100_000

router = APIRouter()

UserId = Annotated[str, id_path("The caller's own user id")]
TargetId = Annotated[str, id_path("The user to unfollow")]


@router.post("/v1/users", status_code=201,
             **operation(ok=UserCreated, body=SignupIn, problems=(400, 409, 413, 415, 422, 429, 503)))
async def sign_up(request: Request) -> Response:
    res = get_resources(request)
    body = await read_json(request, SignupIn, res.settings.max_body_bytes)
    try:
        handle = validate_handle(body.handle)
    except TextRuleError as exc:
        raise rule_problem("handle", exc) from None
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
            await res.emit(UserActive(user_id=user_id, at=wall_clock_ms()))
    except psycopg.errors.UniqueViolation as exc:
        constraint = getattr(exc.diag, "constraint_name", "") or ""
        if "handle" in constraint:
            raise Problem(409, f"handle {handle!r} is already taken (handles are case-insensitive)",
                          slug="handle-taken") from None
        raise
    request.app.state.known_users.add(user_id)
    note_user(request, user_id)
    return json_response({"user_id": str(user_id), "handle": handle, "token": token}, 201)


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
        await res.emit(event)
    except KafkaUnavailable as exc:
        if not exc.maybe_written:
            try:
                await cap.undo(intent)
            except Exception as undo_exc:  # noqa: BLE001 - the 503 below is the answer either way
                log.warning("could not undo the follow intent %s -> %s: %s", intent.follower, intent.followee,
                            undo_exc)
        raise


@router.post("/v1/users/{user_id}/following", **operation(
    ok=FollowingOut, body=FollowIn, bearer="required", problems=(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)))
async def follow(request: Request, user_id: UserId) -> Response:
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
    event = UserFollowed(follower_id=caller, followee_id=target, at=wall_clock_ms())
    await _emit_follow_change(res, cap, intent, event)
    return json_response({"following": True})


@router.delete("/v1/users/{user_id}/following/{target_user_id}", **operation(
    ok=FollowingOut, bearer="required", problems=(401, 403, 404, 422, 429, 503)))
async def unfollow(request: Request, user_id: UserId, target_user_id: TargetId) -> Response:
    res = get_resources(request)
    caller = await authenticate(request)
    _check_caller(user_id, caller)
    target = await _follow_target(request, target_user_id, caller)
    cap = res.follow_cap
    intent = await cap.unfollow(caller, target)
    event = UserUnfollowed(follower_id=caller, followee_id=target, at=wall_clock_ms())
    await _emit_follow_change(res, cap, intent, event)
    return json_response({"following": False})
