"""Customer pages: search, and one customer's traits, consent, segments, journeys and timeline.

Search takes what a person has at hand: a user id, an email, a phone number
in any national form, or ``#<internal id>``. Every lookup is by an indexed
column and scoped by the signed-in workspace; a profile merged into another
opens as the one it was merged into.

The timeline mixes the customer's events, the messages journeys wrote for
them and what happened to those messages, newest first, each kind read
through its ``(workspace, profile)`` index and cut at :data:`TIMELINE_LIMIT`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from sqlalchemy import Connection, or_, select
from starlette.requests import Request
from starlette.responses import Response

from touchline.errors import NotFound, TouchlineError
from touchline.ingest.traits import normalize_email, normalize_phone
from touchline.store.consent import ledger
from touchline.store.ingest import get_profile, list_events
from touchline.store.tables import (
    identities,
    instances,
    journeys,
    message_events,
    outbox,
    profiles,
    segment_members,
    segments,
    suppressions,
)
from touchline.web.console.base import PREFIX, engine_of, guard, page, redirect, run

router = APIRouter()

#: Entries of each kind read for the timeline, and shown in all.
TIMELINE_LIMIT = 100
#: Customers listed for a search, or as the most recently seen.
LIST_LIMIT = 50
MAX_QUERY = 320


def find_customers(conn: Connection, workspace_id: str, query: str) -> list[int]:
    """Profile ids matching ``query`` exactly: ``#id``, user id, email or phone."""
    query = query.strip()[:MAX_QUERY]
    if not query:
        return []
    if query.startswith("#"):
        try:
            return [int(get_profile(conn, workspace_id, query)["id"])]
        except TouchlineError:  # unknown, or "#abc", which names no profile
            return []
    found: list[int] = []
    by_user = conn.execute(
        select(identities.c.profile_id).where(
            identities.c.workspace_id == workspace_id,
            identities.c.kind.in_(("user_id", "anonymous_id")),
            identities.c.value == query,
        )
    ).scalars()
    found.extend(by_user)
    conditions = []
    email = normalize_email(query)
    if email:
        conditions.append(profiles.c.email == email)
    phone, valid = normalize_phone(query)
    if phone and valid:
        conditions.append(profiles.c.phone == phone)
    if conditions:
        found.extend(
            conn.execute(
                select(profiles.c.id)
                .where(profiles.c.workspace_id == workspace_id, or_(*conditions))
                .limit(LIST_LIMIT)
            ).scalars()
        )
    # Merged profiles lead to the one they were merged into.
    resolved: list[int] = []
    for pid in found:
        try:
            target = int(get_profile(conn, workspace_id, f"#{pid}")["id"])
        except NotFound:
            continue
        if target not in resolved:
            resolved.append(target)
    return resolved


def _summaries(conn: Connection, workspace_id: str, ids: list[int] | None) -> list[Any]:
    query = select(
        profiles.c.id,
        profiles.c.user_id,
        profiles.c.email,
        profiles.c.phone,
        profiles.c.first_name,
        profiles.c.last_name,
        profiles.c.last_seen_at,
    ).where(
        profiles.c.workspace_id == workspace_id,
        profiles.c.merged_into.is_(None),
        profiles.c.erased_at.is_(None),
    )
    if ids is not None:
        query = query.where(profiles.c.id.in_(ids))
    else:
        query = query.order_by(profiles.c.updated_at.desc(), profiles.c.id.desc())
    return list(conn.execute(query.limit(LIST_LIMIT)))


@router.get("/customers")
async def customer_search(request: Request) -> Response:
    session = await guard(request, "customers")
    ws = session.user.workspace_id
    query = request.query_params.get("q", "").strip()[:MAX_QUERY]

    def work() -> list[Any]:
        with engine_of(request).connect() as conn:
            if not query:
                return _summaries(conn, ws, None)
            return _summaries(conn, ws, find_customers(conn, ws, query))

    rows = await run(work)
    if query and len(rows) == 1:
        return redirect(f"{PREFIX}/customers/{rows[0].id}")
    return page(
        request,
        "customers.html",
        session=session,
        section="customers",
        title="Customers",
        query=query,
        customers=rows,
    )


def customer_data(conn: Connection, workspace_id: str, profile_id: int) -> dict[str, Any]:
    """Everything the customer page shows. NotFound for another workspace's customer."""
    profile = get_profile(conn, workspace_id, f"#{profile_id}")
    pid = profile["id"]
    known = {
        k: profile[k]
        for k in (
            "user_id",
            "email",
            "phone",
            "first_name",
            "last_name",
            "locale",
            "timezone",
            "birthday",
            "created_at",
            "last_seen_at",
        )
        if profile.get(k) is not None
    }
    consents = list(reversed(ledger(conn, workspace_id, pid)))
    suppressed = [
        dict(r._mapping)
        for r in conn.execute(
            select(
                suppressions.c.channel,
                suppressions.c.address,
                suppressions.c.reason,
                suppressions.c.at,
            )
            .where(suppressions.c.workspace_id == workspace_id, suppressions.c.profile_id == pid)
            .order_by(suppressions.c.at.desc())
        )
    ]
    member_of = [
        dict(r._mapping)
        for r in conn.execute(
            select(segments.c.key, segments.c.name, segment_members.c.entered_at)
            .join(segments, segments.c.id == segment_members.c.segment_id)
            .where(
                segment_members.c.workspace_id == workspace_id,
                segment_members.c.profile_id == pid,
                segments.c.workspace_id == workspace_id,
            )
            .order_by(segments.c.key)
        )
    ]
    journeys_in = [
        dict(r._mapping)
        for r in conn.execute(
            select(
                journeys.c.key,
                journeys.c.name,
                instances.c.status,
                instances.c.step_id,
                instances.c.entered_at,
                instances.c.ended_at,
                instances.c.exit_reason,
                instances.c.goal_reached_at,
            )
            .join(journeys, journeys.c.id == instances.c.journey_id)
            .where(instances.c.workspace_id == workspace_id, instances.c.profile_id == pid)
            .order_by(instances.c.entered_at.desc())
            .limit(TIMELINE_LIMIT)
        )
    ]
    return {
        "profile": profile,
        "known": known,
        "custom": profile["traits"],
        "consents": consents,
        "suppressions": suppressed,
        "segments": member_of,
        "journeys": journeys_in,
        "timeline": timeline(conn, workspace_id, pid),
    }


def timeline(conn: Connection, workspace_id: str, profile_id: int) -> list[dict[str, Any]]:
    """Events, messages and message events of one customer, newest first."""
    entries: list[dict[str, Any]] = []
    for e in list_events(conn, workspace_id, profile_id=profile_id, limit=TIMELINE_LIMIT):
        name = e["name"] or e["type"]
        entries.append(
            {
                "at": datetime.fromisoformat(e["timestamp"]),
                "kind": "event",
                "title": name if e["type"] == "track" else f"{e['type']}",
                "detail": e["properties"]
                if e["type"] == "track"
                else (e["traits"] or e["properties"]),
            }
        )
    for m in conn.execute(
        select(
            outbox.c.id,
            outbox.c.channel,
            outbox.c.template,
            outbox.c.status,
            outbox.c.reason,
            outbox.c.created_at,
            outbox.c.sent_at,
            outbox.c.delivery_status,
            journeys.c.key.label("journey"),
        )
        .join(journeys, journeys.c.id == outbox.c.journey_id, isouter=True)
        .where(outbox.c.workspace_id == workspace_id, outbox.c.profile_id == profile_id)
        .order_by(outbox.c.id.desc())
        .limit(TIMELINE_LIMIT)
    ):
        entries.append(
            {
                "at": m.sent_at or m.created_at,
                "kind": "message",
                "title": f"{m.channel} · {m.template}",
                "status": m.status,
                "detail": {
                    "journey": m.journey,
                    "message": m.id,
                    "reason": m.reason,
                    "delivery": m.delivery_status,
                },
                "message_id": m.id,
            }
        )
    for me in conn.execute(
        select(
            message_events.c.kind,
            message_events.c.at,
            message_events.c.channel,
            message_events.c.outbox_id,
            message_events.c.machine,
            message_events.c.url,
            message_events.c.detail,
        )
        .where(
            message_events.c.workspace_id == workspace_id,
            message_events.c.profile_id == profile_id,
        )
        .order_by(message_events.c.at.desc())
        .limit(TIMELINE_LIMIT)
    ):
        entries.append(
            {
                "at": me.at,
                "kind": "message_event",
                "title": f"{me.channel} {me.kind}" + (" (machine)" if me.machine else ""),
                "detail": {"message": me.outbox_id, "url": me.url, "detail": me.detail},
            }
        )
    # At the same instant, what a fact caused comes after it: event, message, message event.
    rank = {"event": 0, "message": 1, "message_event": 2}
    entries.sort(key=lambda e: (e["at"], rank[e["kind"]]), reverse=True)
    for entry in entries:
        detail = entry.get("detail") or {}
        entry["detail"] = {k: v for k, v in detail.items() if v not in (None, "", {}, [])}
    return entries[:TIMELINE_LIMIT]


@router.get("/customers/{profile_id}")
async def customer_page(request: Request, profile_id: int) -> Response:
    session = await guard(request, "customers")
    ws = session.user.workspace_id

    def work() -> dict[str, Any]:
        with engine_of(request).connect() as conn:
            return customer_data(conn, ws, profile_id)

    data = await run(work)
    if data["profile"]["id"] != profile_id:  # merged into another
        return redirect(f"{PREFIX}/customers/{data['profile']['id']}")
    profile = data["profile"]
    label = " ".join(p for p in (profile.get("first_name"), profile.get("last_name")) if p)
    return page(
        request,
        "customer.html",
        session=session,
        section="customers",
        title=label or profile.get("user_id") or f"#{profile['id']}",
        **data,
    )
