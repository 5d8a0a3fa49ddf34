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
  (``post.follow_cap``). Follows and unfollows therefore need PostgreSQL (else 503).
* ``Idempotency-Key`` (``post.idempotency``): records in PostgreSQL for 24 h, so a retry
  returns the same tweet even after Redis lost everything; 409 while another request
  with the key is running, 422 for the same key with another text.
* Snowflake worker ids: fixed from ``TL_SNOWFLAKE_WORKER_ID`` when >= 0, else leased
  from PostgreSQL (the lowest free row of ``snowflake_worker_leases``, 60 s, renewed
  every 20 s, trusted 10 s less, released on shutdown; fenced by a generation and by
  time) - see ``post.worker_id``. Without a lease, ids stop (503) before another process
  could take the number, so two processes never issue the same id.

In a secondary region (``TL_REGION_ROLE=secondary``) the service is ``post.forward``'s
instead: every request forwarded to the primary region's Post service.

Run: ``python -m post.service [--host 127.0.0.1] [--port 8081]``.
"""
from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from api.common import DirectRoute, build_app, health_response, serve
from api.openapi import Health, operation
from post import tweets, users
from post.forward import create_forwarding_app
from post.metrics import Metrics
from post.resources import Resources, get_resources, install_post_errors
from settings import Settings, get_settings

DEFAULT_PORT = 8081

# The service's routes: sign-up and follows, tweets, and /healthz below.
router = APIRouter(routes=[*users.router.routes, *tweets.router.routes])


@router.get("/healthz", **operation(ok=Health, problems=(503,)))
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
    if settings.secondary_region:
        return create_forwarding_app(settings)
    return build_app(
        title="Home timeline - Post service",
        settings=settings,
        resources=_resources,
        router=router,
        metrics=Metrics(),
        error_handlers=[install_post_errors],
        direct=[DirectRoute("/v1/tweets", tweets.post_tweet, methods=["POST"])],  # most of this service's requests
        kafka_timeout_s=kafka_timeout_s,
        instance=instance,
        known_users=set(),
    )


def main(argv: list[str] | None = None) -> None:
    serve(create_app, prog="python -m post.service", service="post", description=__doc__.splitlines()[0],
          default_port=DEFAULT_PORT, argv=argv)


if __name__ == "__main__":
    main()
