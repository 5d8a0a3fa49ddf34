"""Read markers over HTTP (Mastodon-style), stored in PostgreSQL ``timeline_markers``.

    GET /v1/users/{user_id}/markers              (Bearer, own only) -> {"home": {...}} ({} before any write)
    PUT /v1/users/{user_id}/markers/{timeline}   (Bearer, own only) body {"last_read_id": "123", "version": 4}

A marker is ``{"last_read_id": "<id>", "version": n, "updated_at": "<ISO-8601>"}``. A write
never moves a marker backwards by accident (``policies/markers.py``): without ``version``
only a newer ``last_read_id`` is applied (a stale write answers 409 with the stored
marker in ``marker``); with the ``version`` last read, any id is applied if nobody wrote
since (else 409). The row is read ``FOR UPDATE`` and written in one transaction, so two
devices writing at once are decided one after the other. In a secondary region both
routes use the primary region's server (``TL_POSTGRES_PRIMARY_DSN``), so a device reads
back what any device wrote, wherever it was written.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path as PathParam, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.auth import authenticate
from api.body import parse_id, read_json
from api.common import json_response
from api.errors import Problem
from api.openapi import ID_PATTERN, id_path, operation
from policies.markers import TIMELINES, Decision, Marker, decide
from query.deps import get_query_resources

router = APIRouter()


class MarkerIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    last_read_id: str = Field(json_schema_extra={"pattern": ID_PATTERN},
                              description="the newest tweet id read on this timeline")
    version: int | None = Field(default=None, ge=0, description=(
        "the version last read: moves the marker to any id (backwards too) if nobody wrote since; "
        "without it the marker only moves forward"))


class MarkerOut(BaseModel):
    last_read_id: str = Field(pattern=ID_PATTERN)
    version: int = Field(description="counts the applied writes")
    updated_at: str = Field(description="ISO-8601 UTC")


class MarkersOut(BaseModel):
    """The caller's markers by timeline (``home``), absent before the first write."""

    home: MarkerOut | None = None


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_marker(last_read_id: int, version: int, updated_at: datetime) -> dict[str, Any]:
    return {"last_read_id": str(last_read_id), "version": version, "updated_at": _iso(updated_at)}


async def _owner(request: Request, user_id: str) -> int:
    caller = await authenticate(request)
    owner = parse_id(user_id, "user_id")
    if owner != caller:
        raise Problem(403, f"you are authenticated as user {caller}; markers can only be read and written by "
                           f"their owner (requested: user {owner})")
    return owner


@router.get("/v1/users/{user_id}/markers", **operation(
    ok=MarkersOut, bearer="required", problems=(401, 403, 422, 503)))
async def get_markers(request: Request, user_id: Annotated[str, id_path("The caller's own user id")]) -> Response:
    owner = await _owner(request, user_id)
    res = get_query_resources(request)
    async with res.pg_write_conn() as conn:  # the writes' server: a device reads back its own write
        cur = await conn.execute(
            "SELECT timeline, last_read_id, version, updated_at FROM timeline_markers WHERE user_id = %s",
            (owner,))
        rows = await cur.fetchall()
    return json_response({t: render_marker(i, v, at) for t, i, v, at in rows})


async def write_marker(conn: Any, user_id: int, timeline: str, last_read_id: int,
                       version: int | None) -> tuple[Decision, datetime | None]:
    """Decide and apply one write in one transaction (the row locked while deciding)."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT last_read_id, version, updated_at FROM timeline_markers "
            "WHERE user_id = %s AND timeline = %s FOR UPDATE", (user_id, timeline))
        row = await cur.fetchone()
        stored = Marker(row[0], row[1]) if row else None
        decision = decide(stored, last_read_id, version)
        updated_at = row[2] if row else None
        if decision.outcome == "applied":
            assert decision.marker is not None
            cur = await conn.execute(
                "INSERT INTO timeline_markers (user_id, timeline, last_read_id, version, updated_at) "
                "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (user_id, timeline) DO UPDATE SET "
                "last_read_id = EXCLUDED.last_read_id, version = EXCLUDED.version, updated_at = now() "
                "WHERE timeline_markers.version = %s RETURNING updated_at",
                (user_id, timeline, decision.marker.last_read_id, decision.marker.version,
                 stored.version if stored else 0))
            found = await cur.fetchone()
            if found is None:  # a first write raced ours between the SELECT and the INSERT
                raise Problem(409, "the marker was written concurrently; read it and try again")
            updated_at = found[0]
    return decision, updated_at


@router.put("/v1/users/{user_id}/markers/{timeline}", **operation(
    ok=MarkerOut, body=MarkerIn, bearer="required", problems=(400, 401, 403, 404, 409, 413, 415, 422, 503)))
async def put_marker(request: Request, user_id: Annotated[str, id_path("The caller's own user id")],
                     timeline: Annotated[str, PathParam(description="home")]) -> Response:
    owner = await _owner(request, user_id)
    if timeline not in TIMELINES:
        raise Problem(404, f"no marker for timeline {timeline[:40]!r}; timelines with markers: "
                           f"{', '.join(TIMELINES)}")
    res = get_query_resources(request)
    body = await read_json(request, MarkerIn, res.settings.max_body_bytes)
    last_read_id = parse_id(body.last_read_id, "last_read_id")
    async with res.pg_write_conn() as conn:
        decision, updated_at = await write_marker(conn, owner, timeline, last_read_id, body.version)
    marker = decision.marker
    shown = render_marker(marker.last_read_id, marker.version, updated_at) if marker and updated_at else None
    if decision.outcome == "conflict":
        raise Problem(409, f"marker not moved: {decision.reason}", slug="stale-marker", marker=shown)
    assert shown is not None
    return json_response(shown)
