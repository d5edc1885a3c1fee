"""Broadcasts on SQLite and PostgreSQL: snapshot, throttle, local time, delivery rules, cancel, resume."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from broadcast_shop import LEASE, BroadcastShop
from sqlalchemy import Engine, func, select, update

from touchline.audience import broadcast_runner
from touchline.audience.broadcast_runner import QUEUE_AHEAD, advance_broadcast, claim_broadcasts
from touchline.audience.broadcasts import cancel_broadcast
from touchline.errors import Conflict
from touchline.store.db import transaction
from touchline.store.tables import broadcast_recipients, daily_stats, instances, outbox, segments

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)  # a Monday, 09:00 in Moscow


def test_a_broadcast_reaches_every_member_of_its_segment_once_through_the_outbox(
    engine: Engine,
) -> None:
    """Segment members get one rendered message each; others, and the unreachable, get none."""
    # given
    shop = BroadcastShop(engine, T0)
    members = shop.customers(5, segment="vip")
    shop.customers(3, prefix="other")  # not in the segment
    no_email = shop.customers(1, prefix="x", email=False)
    shop.add_to_segment("vip", no_email)
    shop.create(audience="vip", send_at=T0.isoformat(), properties={"deadline": "Sunday"})
    # when
    shop.tick()
    shop.dispatch()
    shop.settle()
    # then
    sent = shop.capture.messages
    assert sorted(m.to for m in sent) == [f"u{i}@example.ru" for i in range(5)]
    assert all("until Sunday" in m.text for m in sent)
    assert {int(m.metadata["profile_id"]) for m in sent} == set(members)
    found = shop.show()
    assert found["status"] == "sent"
    assert (found["audience"], found["unreachable"], found["queued"]) == (5, 1, 5)
    assert found["progress"]["sent"] == 5 and found["progress"]["pending"] == 0
    keys = {row.idempotency_key for row in shop.messages()}
    assert keys == {f"broadcast:{shop.row().id}:{p}" for p in members}


def test_each_recipient_gets_a_completed_instance_of_the_broadcast_journey(engine: Engine) -> None:
    """outbox.instance_id is a real instance of the broadcast's journey, so journey tools work."""
    # given
    shop = BroadcastShop(engine, T0)
    people = shop.customers(3)
    shop.create(send_at=T0.isoformat())
    # when
    shop.tick()
    # then
    row = shop.row()
    with engine.connect() as conn:
        found = conn.execute(
            select(instances).where(instances.c.journey_id == row.journey_id)
        ).all()
        entered = conn.execute(
            select(func.sum(daily_stats.c.entered)).where(
                daily_stats.c.journey_id == row.journey_id, daily_stats.c.step_id == ""
            )
        ).scalar_one()
    assert sorted(i.profile_id for i in found) == people
    assert {i.status for i in found} == {"completed"}
    by_instance = {m.instance_id: m.profile_id for m in shop.messages()}
    assert {i.id: i.profile_id for i in found} == by_instance
    assert entered == 3


def test_a_draft_waits_and_a_scheduled_broadcast_starts_at_send_at(engine: Engine) -> None:
    """Nothing is snapshotted before send_at; at send_at the audience is taken as it is then."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(2)
    shop.create(send_at=(T0 + timedelta(hours=1)).isoformat())
    # when
    shop.tick()
    before = shop.row()
    shop.customers(1, prefix="late")  # joins before the start: included
    shop.clock.advance(timedelta(hours=1))
    shop.tick()
    # then
    assert before.status == "scheduled" and before.audience == 0
    after = shop.row()
    assert after.status == "sending" and after.audience == 3 and after.queued == 3


def test_throttle_spaces_messages_by_the_rate_and_queues_only_the_near_ones(
    engine: Engine,
) -> None:
    """At 60 a minute each message is due a second after the one before; far ones wait."""
    # given
    shop = BroadcastShop(engine, T0)
    count = 900  # 15 minutes at 60 a minute
    shop.customers(count)
    shop.create(send_at=T0.isoformat(), rate=60)
    # when
    shop.tick()
    first = shop.messages()
    shop.clock.advance(timedelta(minutes=6))
    shop.tick()
    everything = shop.messages()
    # then
    limit = T0 + QUEUE_AHEAD
    assert len(first) == int(QUEUE_AHEAD.total_seconds()) + 1  # slots 0 s .. 600 s
    assert max(m.available_at for m in first) <= limit
    assert len(everything) == count
    slots = [m.available_at for m in everything]
    assert slots == [T0 + timedelta(seconds=i) for i in range(count)]
    assert [m.profile_id for m in everything] == sorted(m.profile_id for m in everything)


def test_the_dispatcher_sends_throttled_messages_no_faster_than_the_rate(engine: Engine) -> None:
    """Run by a frozen clock: after 10 s only the first 11 of 20 messages have gone."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(20)
    shop.create(send_at=T0.isoformat(), rate=60)
    shop.tick()
    # when
    shop.clock.advance(timedelta(seconds=10))
    shop.dispatch()
    # then
    assert len(shop.capture.messages) == 11


def test_local_time_sends_at_the_same_wall_clock_hour_in_each_zone(engine: Engine) -> None:
    """11:00 local: Vladivostok is first, then Moscow; a customer without a zone uses the shop's."""
    # given
    start = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
    shop = BroadcastShop(engine, start, timezone="Asia/Yekaterinburg")
    vladivostok = shop.customers(2, prefix="v", timezone="Asia/Vladivostok")
    moscow = shop.customers(2, prefix="m", timezone="Europe/Moscow")
    unknown = shop.customers(1, prefix="n", timezone=None)
    broken = shop.customers(1, prefix="b", timezone="Mars/Olympus")
    shop.create(send_at=start.isoformat(), local_time="11:00")
    # when: the worker runs through the night
    for _ in range(24 * 6):
        shop.tick()
        shop.clock.advance(timedelta(minutes=10))
    # then
    due = {m.profile_id: m.available_at for m in shop.messages()}
    for p in vladivostok:
        assert due[p] == datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 11:00 +10
    for p in moscow:
        assert due[p] == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # 11:00 +03
    for p in unknown + broken:
        assert due[p] == datetime(2026, 3, 2, 6, 0, tzinfo=UTC)  # 11:00 +05, the shop's zone
    order = [m.profile_id for m in shop.messages()]
    assert order[:2] == vladivostok


def test_local_time_and_a_rate_keep_the_pace_across_overlapping_zones(engine: Engine) -> None:
    """Two zones an hour apart, 90 customers each at 1 a minute: the second zone's messages
    queue after the first zone's last one, never two in the same minute."""
    # given
    start = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)
    shop = BroadcastShop(engine, start)
    shop.customers(90, prefix="e", timezone="Asia/Yekaterinburg")  # 11:00 = 06:00 UTC
    shop.customers(90, prefix="s", timezone="Europe/Samara")  # 11:00 = 07:00 UTC
    shop.create(send_at=start.isoformat(), local_time="11:00", rate=1)
    # when
    for _ in range(24 * 6):
        shop.tick()
        shop.clock.advance(timedelta(minutes=10))
    # then
    slots = [m.available_at for m in shop.messages()]
    first = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    assert slots == [first + timedelta(minutes=i) for i in range(180)]


def test_consent_caps_and_quiet_hours_are_the_dispatchers_and_skips_are_reported(
    engine: Engine,
) -> None:
    """No consent: skipped; over the cap: skipped; progress shows each reason."""
    # given
    settings = {"caps": [{"limit": 1, "window": "1d", "channel": "email"}], "quiet_hours": []}
    shop = BroadcastShop(engine, T0, settings=settings)
    consenting = shop.customers(3)
    refusing = shop.customers(2, prefix="r", consent=False)
    shop.create(broadcast="first", send_at=T0.isoformat())
    shop.tick()
    shop.dispatch()
    # when: a second marketing mail the same day
    shop.create(broadcast="second", send_at=T0.isoformat())
    shop.tick()
    shop.dispatch()
    shop.settle()
    # then
    first, second = shop.show("first"), shop.show("second")
    assert first["progress"]["sent"] == 3
    assert first["progress"]["skipped_by_reason"] == {"no_consent": 2}
    assert second["progress"]["sent"] == 0
    assert second["progress"]["skipped_by_reason"] == {
        "cap:marketing email 1/1d": 3,
        "no_consent": 2,
    }
    assert second["status"] == "sent"
    assert len(shop.capture.messages) == len(consenting)
    assert not {int(m.metadata["profile_id"]) for m in shop.capture.messages} & set(refusing)


def test_quiet_hours_defer_a_marketing_sms_to_the_morning(engine: Engine) -> None:
    """A promo SMS started at 23:00 local waits for 09:00: deferred, not skipped."""
    # given
    start = datetime(2026, 3, 2, 20, 0, tzinfo=UTC)  # 23:00 in Moscow
    shop = BroadcastShop(
        engine, start, settings={"caps": [], "quiet_hours": [{"start": "21:00", "end": "09:00"}]}
    )
    shop.customers(2, timezone="Europe/Moscow", phone=True)
    shop.create(channel="sms", template="promo-sms", send_at=start.isoformat())
    # when
    shop.tick()
    shop.dispatch()
    night = len(shop.capture.messages)
    shop.clock.set(datetime(2026, 3, 3, 6, 0, tzinfo=UTC))  # 09:00 in Moscow
    shop.dispatch()
    # then
    assert night == 0
    assert len(shop.capture.messages) == 2
    assert {m.deferred_reason for m in shop.messages()} == {"quiet_hours"}


def test_cancel_stops_queueing_and_skips_pending_messages(engine: Engine) -> None:
    """Cancelled mid-send: sent ones stay sent, pending ones become skipped 'cancelled',
    and no recipient is queued afterwards."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(1000)
    shop.create(send_at=T0.isoformat(), rate=60)
    shop.tick()
    shop.clock.advance(timedelta(seconds=30))
    shop.dispatch()
    sent_before = len(shop.capture.messages)
    # when
    with transaction(engine) as conn:
        cancelled = cancel_broadcast(conn, shop.ws, "promo", now=shop.clock.now())
    shop.clock.advance(timedelta(minutes=30))
    shop.tick()
    shop.dispatch()
    # then
    statuses = Counter((m.status, m.reason) for m in shop.messages())
    assert sent_before == 31
    assert len(shop.capture.messages) == sent_before
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_messages"] == statuses[("skipped", "cancelled")] == 601 - 31
    assert shop.row().queued == 601
    progress = shop.show()["progress"]
    assert progress["skipped"] == 570 and progress["skipped_by_reason"] == {"cancelled": 570}
    with transaction(engine) as conn, pytest.raises(Conflict):
        cancel_broadcast(conn, shop.ws, "promo", now=shop.clock.now())


def test_a_crash_mid_queue_resumes_where_the_committed_work_ends(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queueing step that dies rolls back whole; the next worker skips no one, doubles no one,
    and spaces the messages exactly as an uninterrupted run."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(700)
    shop.create(send_at=T0.isoformat(), rate=600)
    real = broadcast_runner._enqueue
    calls = {"n": 0}

    def dying(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        real(*args, **kwargs)  # type: ignore[arg-type]
        if calls["n"] == 2:
            raise RuntimeError("killed mid-transaction")

    monkeypatch.setattr(broadcast_runner, "_enqueue", dying)
    # when: the first worker dies in its second queueing transaction
    shop.tick("w1")
    crashed = shop.row()
    monkeypatch.setattr(broadcast_runner, "_enqueue", real)
    shop.clock.advance(broadcast_runner.RETRY_AFTER)
    shop.tick("w2")
    # then
    assert crashed.queued == broadcast_runner.QUEUE_CHUNK
    assert "killed mid-transaction" in crashed.cursor["error"]
    messages = shop.messages()
    assert len(messages) == 700 == len({m.profile_id for m in messages})
    assert [m.available_at for m in messages] == [
        T0 + timedelta(milliseconds=100 * i) for i in range(700)
    ]
    with engine.connect() as conn:
        queued = conn.execute(
            select(func.count()).where(
                broadcast_recipients.c.status == "queued",
                broadcast_recipients.c.outbox_id.is_not(None),
            )
        ).scalar_one()
        instances_made = conn.execute(select(func.count()).select_from(instances)).scalar_one()
    assert queued == 700 and instances_made == 700


def test_two_workers_never_queue_one_broadcast_at_once(engine: Engine) -> None:
    """A leased broadcast is not claimed by a second worker; its steps stop once the lease
    passes to another, so only the owner writes."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(500)
    shop.create(send_at=T0.isoformat())
    now = shop.clock.now()
    # when
    mine = claim_broadcasts(engine, owner="w1", now=now, lease=LEASE)
    theirs = claim_broadcasts(engine, owner="w2", now=now, lease=LEASE)
    later = now + LEASE + timedelta(seconds=1)
    stolen = claim_broadcasts(engine, owner="w2", now=later, lease=LEASE)
    stale = advance_broadcast(engine, mine[0], owner="w1", now=later, lease=LEASE)
    done = advance_broadcast(engine, stolen[0], owner="w2", now=later, lease=LEASE, chunks=50)
    # then
    assert len(mine) == 1 and theirs == [] and stolen == mine
    assert stale == 0
    assert done > 0
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
    assert rows == 500


def test_a_start_waits_while_its_segment_is_being_rebuilt(engine: Engine) -> None:
    """Members are incomplete during a rebuild: the snapshot waits for the segment to be ready."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(3, segment="vip")
    shop.create(audience="vip", send_at=T0.isoformat())
    with transaction(engine) as conn:
        conn.execute(update(segments).values(status="building"))
    # when
    shop.tick()
    waiting = shop.row()
    with transaction(engine) as conn:
        conn.execute(update(segments).values(status="ready"))
    shop.clock.advance(broadcast_runner.SEGMENT_WAIT)
    shop.tick()
    # then
    assert (waiting.status, waiting.audience) == ("scheduled", 0)
    assert shop.row().queued == 3
