"""Storing events: workspaces and keys, dedupe, identity merge, traits, isolation.

Every test runs on SQLite and on PostgreSQL (the ``engine`` fixture).
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from touchline.errors import AuthError, NotFound
from touchline.ingest.segment import IncomingEvent, parse_payload
from touchline.store.db import transaction
from touchline.store.ingest import get_profile, ingest, list_events
from touchline.store.tables import EVENT_PENDING, api_keys, events, identities, profiles
from touchline.store.workspaces import (
    KeyCache,
    authenticate,
    create_key,
    create_workspace,
    hash_key,
    list_keys,
    revoke_key,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def msg(kind: str, **fields: Any) -> IncomingEvent:
    """One parsed message; fields use Segment's names (userId, anonymousId...)."""
    return parse_payload(fields, kind=kind, received_at=NOW)[0]


@pytest.fixture
def ws(engine: Engine) -> str:
    return create_workspace(engine, "Shop", now=NOW).id


def profile_rows(engine: Engine, ws: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(profiles).where(profiles.c.workspace_id == ws).order_by(profiles.c.id)
        )
        return [dict(row._mapping) for row in rows]


def identity_map(engine: Engine, ws: str) -> dict[tuple[str, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
                identities.c.workspace_id == ws
            )
        )
        return {(kind, value): pid for kind, value, pid in rows}


def event_profiles(engine: Engine, ws: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.message_id, events.c.profile_id).where(events.c.workspace_id == ws)
        )
        return {mid: pid for mid, pid in rows}


# -- workspaces and keys ----------------------------------------------------


def test_workspace_keys_are_stored_hashed(engine: Engine) -> None:
    """Only a SHA-256 hash and a short prefix of each key reach the store."""
    created = create_workspace(engine, "Shop", now=NOW, timezone="Europe/Moscow")
    assert created.id.startswith("ws_") and len(created.id) == 15
    assert created.write_key.startswith("tlw_") and created.admin_token.startswith("tla_")
    assert created.write_key not in repr(created)
    with engine.connect() as conn:
        rows = conn.execute(select(api_keys).where(api_keys.c.workspace_id == created.id)).all()
    stored = {row.key_hash for row in rows}
    assert stored == {hash_key(created.write_key), hash_key(created.admin_token)}
    assert {row.prefix for row in rows} == {created.write_key[:12], created.admin_token[:12]}


def test_key_kinds_are_enforced(engine: Engine) -> None:
    """Write keys send events only; admin tokens do both; unknown keys fail."""
    created = create_workspace(engine, "Shop", now=NOW)
    assert authenticate(engine, created.write_key, kind="write") == created.id
    assert authenticate(engine, created.admin_token, kind="write") == created.id
    assert authenticate(engine, created.admin_token, kind="admin") == created.id
    with pytest.raises(AuthError, match="admin API"):
        authenticate(engine, created.write_key, kind="admin")
    for bad in ("tlw_nope", "garbage", "", None):
        with pytest.raises(AuthError):
            authenticate(engine, bad, kind="write")


def test_revoked_key_is_refused(engine: Engine) -> None:
    """A revoked key stops working at once in the process that revoked it."""
    created = create_workspace(engine, "Shop", now=NOW)
    cache = KeyCache()
    with transaction(engine) as conn:
        extra = create_key(conn, created.id, "write", now=NOW)
    assert authenticate(engine, extra.key, kind="write", cache=cache) == created.id
    with transaction(engine) as conn:
        revoke_key(conn, created.id, extra.id, now=NOW, cache=cache)
    with pytest.raises(AuthError):
        authenticate(engine, extra.key, kind="write", cache=cache)
    with engine.connect() as conn:
        listed = {row["id"]: row for row in list_keys(conn, created.id)}
    assert listed[extra.id]["revoked_at"] == NOW


def test_key_cache_trusts_a_key_until_ttl(engine: Engine) -> None:
    """Another process's revocation is seen once the cache entry expires."""
    created = create_workspace(engine, "Shop", now=NOW)
    clock = [100.0]
    cache = KeyCache(ttl=5, monotonic=lambda: clock[0])
    with transaction(engine) as conn:
        extra = create_key(conn, created.id, "write", now=NOW)
    authenticate(engine, extra.key, kind="write", cache=cache)
    with transaction(engine) as conn:
        revoke_key(conn, created.id, extra.id, now=NOW)  # no cache: "another process"
    assert authenticate(engine, extra.key, kind="write", cache=cache) == created.id
    clock[0] += 5
    with pytest.raises(AuthError):
        authenticate(engine, extra.key, kind="write", cache=cache)


def test_revoking_another_workspaces_key_is_not_found(engine: Engine) -> None:
    """A workspace cannot revoke (or learn about) another workspace's keys."""
    a = create_workspace(engine, "A", now=NOW)
    b = create_workspace(engine, "B", now=NOW)
    with engine.connect() as conn:
        b_key_id = list_keys(conn, b.id)[0]["id"]
    with transaction(engine) as conn, pytest.raises(NotFound):
        revoke_key(conn, a.id, b_key_id, now=NOW)  # type: ignore[arg-type]


# -- events and dedupe --------------------------------------------------------


def test_track_creates_profile_identity_and_pending_event(engine: Engine, ws: str) -> None:
    """A first track creates a profile, its identity and a pending event row."""
    result = ingest(
        engine,
        ws,
        [msg("track", anonymousId="a1", event="Viewed Product", messageId="m1")],
        now=NOW,
    )
    assert (result.accepted, result.duplicates) == (1, 0)
    [profile] = profile_rows(engine, ws)
    assert profile["user_id"] is None
    assert profile["last_seen_at"] == NOW
    assert identity_map(engine, ws) == {("anonymous_id", "a1"): profile["id"]}
    with engine.connect() as conn:
        row = conn.execute(select(events).where(events.c.message_id == "m1")).one()
    assert (row.type, row.name, row.status, row.profile_id) == (
        "track",
        "Viewed Product",
        EVENT_PENDING,
        profile["id"],
    )


def test_same_message_id_is_stored_once(engine: Engine, ws: str) -> None:
    """A messageId repeated in a batch or in a later call is counted as duplicate."""
    batch = [
        msg("track", userId="u1", event="E", messageId="m1"),
        msg("track", userId="u1", event="E", messageId="m1"),
        msg("track", userId="u1", event="E", messageId="m2"),
    ]
    first = ingest(engine, ws, batch, now=NOW)
    again = ingest(engine, ws, batch, now=NOW)
    assert (first.accepted, first.duplicates) == (2, 1)
    assert (again.accepted, again.duplicates) == (0, 3)
    assert sorted(event_profiles(engine, ws)) == ["m1", "m2"]


def test_duplicate_identify_does_not_roll_traits_back(engine: Engine, ws: str) -> None:
    """A retried old identify has no effect on traits set by a newer one."""
    old = msg("identify", userId="u1", traits={"email": "old@x.ru"}, messageId="i1")
    new = msg("identify", userId="u1", traits={"email": "new@x.ru"}, messageId="i2")
    ingest(engine, ws, [old], now=NOW)
    ingest(engine, ws, [new], now=NOW)
    ingest(engine, ws, [old], now=NOW)
    [profile] = profile_rows(engine, ws)
    assert profile["email"] == "new@x.ru"


def test_group_and_alias_events_keep_their_ids(engine: Engine, ws: str) -> None:
    """group stores properties.groupId, alias properties.previousId; names are null."""
    ingest(
        engine,
        ws,
        [
            msg("group", userId="u1", groupId="g7", traits={"plan": "pro"}, messageId="g"),
            msg("alias", userId="u1", previousId="old-1", messageId="a"),
        ],
        now=NOW,
    )
    with engine.connect() as conn:
        rows = {r.message_id: r for r in conn.execute(select(events))}
    assert rows["g"].properties == {"groupId": "g7"}
    assert rows["g"].traits == {"plan": "pro"}
    assert rows["a"].properties == {"previousId": "old-1"}
    assert rows["a"].name is None and rows["g"].name is None


# -- traits ---------------------------------------------------------------------


def test_identify_traits_are_normalised_and_merged(engine: Engine, ws: str) -> None:
    """Known traits land normalised in columns; custom traits merge across calls."""
    ingest(
        engine,
        ws,
        [
            msg(
                "identify",
                userId="u1",
                traits={
                    "email": " Ivan@Example.RU",
                    "phone": "8 916 123-45-67",
                    "birthday": "1990-05-17",
                    "name": "Ivan Petrov",
                    "plan": "gold",
                    "timezone": "Asia/Yekaterinburg",
                },
                context={"timezone": "Europe/Moscow", "locale": "ru-RU"},
            ),
            msg("identify", userId="u1", traits={"vip": True, "plan": "platinum"}),
        ],
        now=NOW,
    )
    [p] = profile_rows(engine, ws)
    assert p["email"] == "ivan@example.ru"
    assert (p["phone"], p["phone_valid"]) == ("+79161234567", True)
    assert p["birthday"] == date(1990, 5, 17)
    assert (p["first_name"], p["last_name"]) == ("Ivan", "Petrov")
    assert p["timezone"] == "Asia/Yekaterinburg"  # the trait beats the device's zone
    assert p["locale"] == "ru-RU"  # no trait: the device's locale fills the gap
    assert p["traits"] == {"plan": "platinum", "vip": True}


def test_invalid_phone_is_stored_flagged(engine: Engine, ws: str) -> None:
    """An invalid phone is kept raw with phone_valid false."""
    ingest(engine, ws, [msg("identify", userId="u1", traits={"phone": "12-34"})], now=NOW)
    [p] = profile_rows(engine, ws)
    assert (p["phone"], p["phone_valid"]) == ("12-34", False)


# -- identity resolution and merges ---------------------------------------------


def test_identify_merges_anonymous_history_into_customer(engine: Engine, ws: str) -> None:
    """identify(userId, anonymousId) moves the visitor's events and fills gaps."""
    ingest(
        engine,
        ws,
        [msg("identify", userId="u1", traits={"email": "u1@x.ru", "plan": "gold"})],
        now=NOW,
    )
    ingest(
        engine,
        ws,
        [
            msg("identify", anonymousId="a1", traits={"firstName": "Anna", "plan": "free"}),
            msg("track", anonymousId="a1", event="Added To Cart", messageId="cart"),
        ],
        now=NOW,
    )
    customer, visitor = profile_rows(engine, ws)
    assert event_profiles(engine, ws)["cart"] == visitor["id"]

    later = NOW + timedelta(hours=1)
    ingest(
        engine, ws, [msg("identify", userId="u1", anonymousId="a1", messageId="login")], now=later
    )

    customer, visitor = profile_rows(engine, ws)
    assert visitor["merged_into"] == customer["id"]
    assert customer["merged_into"] is None
    assert set(event_profiles(engine, ws).values()) == {customer["id"]}
    assert set(identity_map(engine, ws).values()) == {customer["id"]}
    assert customer["first_name"] == "Anna"  # filled from the visitor
    assert customer["email"] == "u1@x.ru"
    assert customer["traits"] == {"plan": "gold"}  # the customer's own value wins
    assert customer["last_seen_at"] == later


def test_anonymous_profile_becomes_the_customer_when_user_is_new(engine: Engine, ws: str) -> None:
    """A visitor who signs up keeps their profile; it gains the user id, no merge."""
    ingest(engine, ws, [msg("track", anonymousId="a1", event="Viewed")], now=NOW)
    ingest(engine, ws, [msg("identify", userId="u1", anonymousId="a1")], now=NOW)
    [p] = profile_rows(engine, ws)
    assert p["user_id"] == "u1"
    assert identity_map(engine, ws) == {("anonymous_id", "a1"): p["id"], ("user_id", "u1"): p["id"]}


def test_one_batch_resolves_a_whole_visit_to_one_profile(engine: Engine, ws: str) -> None:
    """Anonymous browsing, sign-in and purchase in one batch make one profile."""
    ingest(
        engine,
        ws,
        [
            msg("page", anonymousId="a1", name="Home"),
            msg("track", anonymousId="a1", event="Added To Cart"),
            msg("identify", userId="u1", anonymousId="a1", traits={"email": "u1@x.ru"}),
            msg("track", userId="u1", event="Order Completed"),
        ],
        now=NOW,
    )
    [p] = profile_rows(engine, ws)
    assert p["user_id"] == "u1" and p["email"] == "u1@x.ru"
    assert set(event_profiles(engine, ws).values()) == {p["id"]}


def test_merge_inside_one_batch_creates_no_orphan(engine: Engine, ws: str) -> None:
    """A visitor first seen and merged in the same batch never gets its own profile."""
    ingest(engine, ws, [msg("identify", userId="u1", traits={"email": "u1@x.ru"})], now=NOW)
    ingest(
        engine,
        ws,
        [
            msg("track", anonymousId="a9", event="Viewed", messageId="v"),
            msg("identify", anonymousId="a9", traits={"lastName": "Sidorova"}),
            msg("identify", userId="u1", anonymousId="a9"),
        ],
        now=NOW,
    )
    [p] = profile_rows(engine, ws)
    assert p["last_name"] == "Sidorova"
    assert event_profiles(engine, ws)["v"] == p["id"]


def test_new_customer_absorbs_stored_visitor_in_one_batch(engine: Engine, ws: str) -> None:
    """A customer first seen in a batch absorbs a stored visitor's history and traits."""
    ingest(
        engine,
        ws,
        [
            msg("track", anonymousId="a5", event="Viewed", messageId="old"),
            msg("identify", anonymousId="a5", traits={"phone": "+79161234567", "src": "ad"}),
        ],
        now=NOW,
    )
    ingest(
        engine,
        ws,
        [
            msg("track", userId="new-user", event="Signed Up", messageId="signup"),
            msg("identify", userId="new-user", anonymousId="a5", traits={"src": "direct"}),
        ],
        now=NOW,
    )
    visitor, customer = profile_rows(engine, ws)
    assert visitor["merged_into"] == customer["id"]
    assert customer["user_id"] == "new-user"
    assert customer["phone"] == "+79161234567"
    assert customer["traits"] == {"src": "direct"}
    assert event_profiles(engine, ws)["old"] == customer["id"]


def test_shared_device_does_not_merge_two_customers(engine: Engine, ws: str) -> None:
    """A second customer signing in on the same browser takes the anonymousId, no merge."""
    ingest(engine, ws, [msg("identify", userId="u1", anonymousId="a1")], now=NOW)
    ingest(engine, ws, [msg("identify", userId="u2", anonymousId="a1")], now=NOW)
    first, second = profile_rows(engine, ws)
    assert first["merged_into"] is None and second["merged_into"] is None
    assert (first["user_id"], second["user_id"]) == ("u1", "u2")
    assert identity_map(engine, ws)[("anonymous_id", "a1")] == second["id"]


def test_alias_merges_previous_id_into_user(engine: Engine, ws: str) -> None:
    """alias(previousId, userId) merges the previous profile into the user's."""
    ingest(engine, ws, [msg("track", anonymousId="anon-7", event="Viewed", messageId="v")], now=NOW)
    ingest(engine, ws, [msg("identify", userId="u1", traits={"email": "u1@x.ru"})], now=NOW)
    ingest(engine, ws, [msg("alias", previousId="anon-7", userId="u1", messageId="al")], now=NOW)
    visitor, customer = profile_rows(engine, ws)
    assert visitor["merged_into"] == customer["id"]
    assert set(event_profiles(engine, ws).values()) == {customer["id"]}


def test_alias_renames_a_known_user(engine: Engine, ws: str) -> None:
    """alias from an old user id to a new one keeps one profile reachable by both."""
    ingest(engine, ws, [msg("identify", userId="old", traits={"email": "o@x.ru"})], now=NOW)
    ingest(engine, ws, [msg("alias", previousId="old", userId="new")], now=NOW)
    [p] = profile_rows(engine, ws)
    assert p["user_id"] == "new"
    with engine.connect() as conn:
        assert get_profile(conn, ws, "old")["id"] == get_profile(conn, ws, "new")["id"]


def test_alias_with_unknown_previous_id_records_it(engine: Engine, ws: str) -> None:
    """An unknown previousId becomes an anonymous id of the user's profile."""
    ingest(engine, ws, [msg("alias", previousId="p1", userId="u1")], now=NOW)
    ingest(engine, ws, [msg("track", anonymousId="p1", event="Viewed")], now=NOW)
    [p] = profile_rows(engine, ws)
    assert identity_map(engine, ws) == {("anonymous_id", "p1"): p["id"], ("user_id", "u1"): p["id"]}


def test_concurrent_ingests_agree_on_new_profiles(engine: Engine, ws: str) -> None:
    """Parallel batches for the same new users end with one live profile per user."""
    users = [f"u{i}" for i in range(20)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        batch = [
            msg("identify", userId=u, traits={"w": worker}, messageId=f"{worker}-{u}")
            for u in users
        ]
        try:
            barrier.wait()
            ingest(engine, ws, batch, now=NOW)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = identity_map(engine, ws)
    live = {p["id"] for p in profile_rows(engine, ws) if p["merged_into"] is None}
    assert {ids[("user_id", u)] for u in users} == live
    assert len(live) == len(users)
    owner = {f"{n}-{u}": ids[("user_id", u)] for n in range(4) for u in users}
    assert event_profiles(engine, ws) == owner


def test_batch_of_known_profiles_uses_few_statements(engine: Engine, ws: str) -> None:
    """Storing 300 events of known people takes a constant number of statements."""
    ingest(engine, ws, [msg("identify", userId=f"u{i}") for i in range(30)], now=NOW)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "WITH")):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        batch = [
            msg("track", userId=f"u{i % 30}", event="Viewed", messageId=f"m{i}") for i in range(300)
        ]
        result = ingest(engine, ws, batch, now=NOW)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert result.accepted == 300
    assert len(statements) <= 6, statements


# -- reads and workspace isolation ---------------------------------------------


def test_workspaces_are_isolated(engine: Engine) -> None:
    """Keys, profiles and events of one workspace are invisible to another."""
    a = create_workspace(engine, "A", now=NOW)
    b = create_workspace(engine, "B", now=NOW)
    ws_a = authenticate(engine, a.write_key, kind="write")
    ws_b = authenticate(engine, b.write_key, kind="write")
    ingest(engine, ws_a, [msg("identify", userId="same", traits={"email": "a@a.ru"})], now=NOW)
    ingest(engine, ws_b, [msg("identify", userId="same", traits={"email": "b@b.ru"})], now=NOW)
    ingest(engine, ws_b, [msg("identify", userId="only-b")], now=NOW)

    admin_a = authenticate(engine, a.admin_token, kind="admin")
    assert admin_a == a.id
    with engine.connect() as conn:
        assert get_profile(conn, admin_a, "same")["email"] == "a@a.ru"
        with pytest.raises(NotFound):
            get_profile(conn, admin_a, "only-b")
        b_profile = get_profile(conn, ws_b, "only-b")["id"]
        with pytest.raises(NotFound):
            get_profile(conn, admin_a, f"#{b_profile}")
        assert len(list_events(conn, admin_a)) == 1
        assert list_events(conn, admin_a, profile_id=b_profile) == []


def test_get_profile_follows_merges_and_lists_identities(engine: Engine, ws: str) -> None:
    """#id of a merged profile resolves to the survivor, with all its identities."""
    ingest(engine, ws, [msg("track", anonymousId="a1", event="E")], now=NOW)
    ingest(engine, ws, [msg("identify", userId="u1", traits={"plan": "x"})], now=NOW)
    ingest(engine, ws, [msg("identify", userId="u1", anonymousId="a1")], now=NOW)
    visitor, customer = profile_rows(engine, ws)
    with engine.connect() as conn:
        data = get_profile(conn, ws, f"#{visitor['id']}")
        with pytest.raises(NotFound):
            get_profile(conn, ws, "#999999")
    assert data["id"] == customer["id"]
    assert data["traits"] == {"plan": "x"}
    assert data["identities"] == [
        {"kind": "anonymous_id", "value": "a1"},
        {"kind": "user_id", "value": "u1"},
    ]
    assert data["created_at"] == NOW.isoformat()


def test_list_events_is_newest_first_and_limited(engine: Engine, ws: str) -> None:
    """list_events orders by event time, newest first, and honours limit."""
    batch = [
        msg("track", userId="u1", event=f"E{i}", timestamp=(NOW + timedelta(minutes=i)).isoformat())
        for i in range(5)
    ]
    ingest(engine, ws, batch, now=NOW)
    with engine.connect() as conn:
        listed = list_events(conn, ws, limit=3)
        pid = get_profile(conn, ws, "u1")["id"]
        assert len(list_events(conn, ws, profile_id=pid)) == 5
    assert [e["name"] for e in listed] == ["E4", "E3", "E2"]
    assert listed[0]["timestamp"] == (NOW + timedelta(minutes=4)).isoformat()


def test_empty_call_stores_nothing(engine: Engine, ws: str) -> None:
    """An empty call stores nothing and opens no transaction."""
    assert ingest(engine, ws, [], now=NOW).accepted == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar() == 0


def test_deadlock_victim_is_retried_from_the_start(engine: Engine) -> None:
    """A transaction the store picks as a deadlock victim runs again; other errors do not."""
    # given
    from sqlalchemy.exc import OperationalError

    from touchline.errors import StoreError
    from touchline.store.db import run_in_transaction

    class Deadlock(Exception):
        sqlstate = "40P01"

    calls: list[int] = []

    def work(conn: object) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("UPDATE ...", {}, Deadlock("deadlock detected"))
        return "done"

    def broken(conn: object) -> str:
        raise OperationalError("UPDATE ...", {}, Exception("disk I/O error"))

    # when
    result = run_in_transaction(engine, work)
    # then
    assert (result, len(calls)) == ("done", 3)
    with pytest.raises(StoreError):
        run_in_transaction(engine, broken)


def test_a_merge_moves_consent_promo_codes_and_operator_tasks(engine: Engine, ws: str) -> None:
    """What belonged to the visitor (ledger rows, an issued code, a call task) follows the merge."""
    from touchline.store.consent import Provenance, record_consent
    from touchline.store.promo import create_pool, import_codes, issue_code
    from touchline.store.tables import consents, promo_codes, tasks
    from touchline.store.tasks import create_task

    # given: a visitor who consented, got a code and a call task
    ingest(
        engine, ws, [msg("track", anonymousId="anon-9", event="Viewed", messageId="v9")], now=NOW
    )
    [visitor] = profile_rows(engine, ws)
    with transaction(engine) as conn:
        record_consent(
            conn,
            workspace_id=ws,
            profile_id=visitor["id"],
            channel="email",
            granted=True,
            at=NOW,
            provenance=Provenance(source="popup"),
        )
        create_pool(conn, ws, key="p", name="p", now=NOW)
        import_codes(conn, ws, "p", ["CODE-1"])
        issue_code(conn, ws, pool_key="p", profile_id=visitor["id"], offer_key="o1", now=NOW)
        create_task(
            conn,
            ws,
            idempotency_key="t1",
            profile_id=visitor["id"],
            reason="call",
            script="hello",
            due_at=NOW,
            now=NOW,
        )
    ingest(engine, ws, [msg("identify", userId="u9", traits={"email": "u9@x.ru"})], now=NOW)
    # when
    ingest(engine, ws, [msg("alias", previousId="anon-9", userId="u9", messageId="al9")], now=NOW)
    # then
    with engine.connect() as conn:
        survivor = get_profile(conn, ws, "u9")["id"]
        owners = {
            table.name: set(
                conn.execute(select(table.c.profile_id).where(table.c.workspace_id == ws)).scalars()
            )
            for table in (consents, promo_codes, tasks)
        }
    assert survivor != visitor["id"]
    assert owners == {"consents": {survivor}, "promo_codes": {survivor}, "tasks": {survivor}}
