"""Date triggers against the store, with a frozen clock, on SQLite and PostgreSQL.

A shop applies a birthday (or sign-up) journey, customers identify themselves,
the clock moves, and the worker runs until idle: what was sent, when, and what
the customer's date timer holds afterwards.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update

from touchline.audience.date_timers import fire_due, refresh_profile
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.journeys.spec import DATE_EVENT
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys, set_status
from touchline.store.tables import date_timers, events, outbox, profiles, time_triggers
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

BIRTHDAY = """
journey: birthday
trigger:
  date:
    trait: birthday
    at: "10:00"
entry:
  reentry: always
steps:
  - send: {channel: email, template: happy-birthday}
"""

AHEAD = """
journey: birthday-ahead
trigger:
  date: {trait: birthday, at: "10:00", offset: -3d}
entry:
  reentry: always
steps:
  - send: {channel: email, template: gift-code}
"""

WEEK_AFTER_SIGN_UP = """
journey: week-one
trigger:
  date: {trait: created_at, at: "11:00", offset: 7d, repeat: once}
entry:
  reentry: always
steps:
  - send: {channel: email, template: how-is-it-going}
"""


def journey(text: str, name: str) -> LoadedJourney:
    text = textwrap.dedent(text)
    return LoadedJourney(path=name, spec=load_journey_text(text, file=name), source=text)


class Shop:
    """One workspace, its journeys, a frozen clock and a worker."""

    def __init__(
        self, engine: Engine, *texts: str, timezone: str = "UTC", start: datetime = T0
    ) -> None:
        self.engine = engine
        self.clock = FrozenClock(start)
        self.ws = create_workspace(engine, "shop", now=start, timezone=timezone).id
        self.worker = Worker(engine, clock=self.clock, owner="w1")
        if texts:
            self.apply(*texts)

    def apply(self, *texts: str) -> None:
        with transaction(self.engine) as conn:
            apply_journeys(
                conn,
                self.ws,
                [journey(t, f"j{i}.yaml") for i, t in enumerate(texts)],
                now=self.clock.now(),
            )

    def send(self, *raws: dict[str, Any]) -> None:
        send_events(self.engine, self.ws, list(raws), now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def advance_to(self, when: datetime) -> None:
        run_until_idle(self.worker, self.clock, until=when)

    def sent(self) -> list[tuple[str, str, datetime]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(profiles.c.user_id, outbox.c.template, outbox.c.created_at)
                .join(profiles, profiles.c.id == outbox.c.profile_id)
                .where(outbox.c.workspace_id == self.ws)
                .order_by(outbox.c.created_at, profiles.c.user_id)
            ).all()
        return [(r.user_id, r.template, r.created_at) for r in rows]

    def timer(self, user_id: str, journey_key: str | None = None) -> Any:
        with self.engine.connect() as conn:
            stmt = (
                select(date_timers)
                .join(profiles, profiles.c.id == date_timers.c.profile_id)
                .where(profiles.c.user_id == user_id)
            )
            if journey_key is not None:
                from touchline.store.tables import journeys

                stmt = stmt.join(journeys, journeys.c.id == date_timers.c.journey_id).where(
                    journeys.c.key == journey_key
                )
            return conn.execute(stmt).one()

    def count(self, table: Any, *where: Any) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# -- the birthday ----------------------------------------------------------------------------------


def test_birthday_greeting_at_10_in_each_customers_zone(engine: Engine) -> None:
    """Moscow, New York and Kamchatka share a birthday; each is greeted at their own 10:00."""
    # given
    shop = Shop(engine, BIRTHDAY)
    shop.send(
        identify("msk", birthday="1990-03-13", timezone="Europe/Moscow"),
        identify("nyc", birthday="1985-03-13", timezone="America/New_York"),
        identify("kam", birthday="2001-03-13", timezone="Asia/Kamchatka"),
    )
    # when
    shop.advance_to(at(2026, 3, 15))
    # then
    assert shop.sent() == [
        ("kam", "happy-birthday", at(2026, 3, 12, 22, 0)),  # UTC+12
        ("msk", "happy-birthday", at(2026, 3, 13, 7, 0)),  # UTC+3
        ("nyc", "happy-birthday", at(2026, 3, 13, 14, 0)),  # EDT, UTC-4
    ]
    assert shop.timer("msk").due_at == at(2027, 3, 13, 7, 0)
    assert shop.timer("msk").outcome == "fired"


def test_customer_without_zone_is_greeted_in_the_workspace_zone(engine: Engine) -> None:
    """No profile zone: 10:00 on the workspace's clock (Europe/Moscow here)."""
    shop = Shop(engine, BIRTHDAY, timezone="Europe/Moscow")
    shop.send(identify("anna", birthday="1990-03-13"))

    shop.advance_to(at(2026, 3, 14))

    assert shop.sent() == [("anna", "happy-birthday", at(2026, 3, 13, 7, 0))]


def test_greeted_again_next_year_and_event_carries_the_occurrence(engine: Engine) -> None:
    """Yearly: one message per birthday, and each Date Reached event says which one."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))

    shop.advance_to(at(2027, 3, 14))

    assert [t for _, _, t in shop.sent()] == [at(2026, 3, 13, 7), at(2027, 3, 13, 7)]
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.message_id, events.c.properties, events.c.timestamp)
            .where(events.c.name == DATE_EVENT)
            .order_by(events.c.id)
        ).all()
    assert [r.properties["occurrence"] for r in rows] == ["2026-03-13", "2027-03-13"]
    assert rows[0].properties["years"] == 36 and rows[0].properties["journey"] == "birthday"
    assert rows[0].timestamp == at(2026, 3, 13, 7)
    assert rows[0].message_id.startswith("date:birthday:")


def test_three_days_ahead(engine: Engine) -> None:
    """offset -3d: the gift code goes out at 10:00 three days before the birthday."""
    shop = Shop(engine, AHEAD)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))

    shop.advance_to(at(2026, 3, 14))

    assert shop.sent() == [("anna", "gift-code", at(2026, 3, 10, 7, 0))]


def test_leap_day_birthday_on_28_february_then_29_february(engine: Engine) -> None:
    """Born on 29 February: greeted on 28 February 2027 and on 29 February 2028."""
    shop = Shop(engine, BIRTHDAY, start=at(2026, 6, 1))
    shop.send(identify("leap", birthday="1996-02-29", timezone="Europe/Moscow"))

    shop.advance_to(at(2028, 3, 2))

    assert [t for _, _, t in shop.sent()] == [at(2027, 2, 28, 7), at(2028, 2, 29, 7)]


def test_time_skipped_by_spring_forward_goes_out_after_the_change(engine: Engine) -> None:
    """At 02:30 on 8 March 2026 New York jumps to 03:00: the greeting goes at 03:30 EDT."""
    birthday_at_230 = BIRTHDAY.replace('at: "10:00"', 'at: "02:30"')
    shop = Shop(engine, birthday_at_230)
    shop.send(identify("nyc", birthday="1980-03-08", timezone="America/New_York"))

    shop.advance_to(at(2026, 3, 9))

    assert shop.sent() == [("nyc", "happy-birthday", at(2026, 3, 8, 7, 30))]


def test_time_repeated_by_fall_back_goes_out_once(engine: Engine) -> None:
    """01:30 happens twice on 1 November 2026 in New York: one greeting, at the first."""
    birthday_at_130 = BIRTHDAY.replace('at: "10:00"', 'at: "01:30"')
    shop = Shop(engine, birthday_at_130, start=at(2026, 10, 1))
    shop.send(identify("nyc", birthday="1980-11-01", timezone="America/New_York"))

    shop.advance_to(at(2026, 11, 2))

    assert shop.sent() == [("nyc", "happy-birthday", at(2026, 11, 1, 5, 30))]


# -- changes before the day -----------------------------------------------------------------------


def test_zone_changed_between_scheduling_and_firing_moves_the_timer(engine: Engine) -> None:
    """A customer who moves from Moscow to New York is greeted at 10:00 in New York."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    assert shop.timer("anna").due_at == at(2026, 3, 13, 7)

    shop.advance_to(at(2026, 3, 1))
    shop.send(identify("anna", timezone="America/New_York"))

    assert shop.timer("anna").due_at == at(2026, 3, 13, 14)
    shop.advance_to(at(2026, 3, 14))
    assert shop.sent() == [("anna", "happy-birthday", at(2026, 3, 13, 14, 0))]


def test_zone_changed_without_an_identify_is_caught_when_the_timer_comes_due(
    engine: Engine,
) -> None:
    """A zone written behind the observer's back: the due timer notices and moves, then fires."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    with transaction(engine) as conn:
        conn.execute(update(profiles).values(timezone="America/New_York"))

    shop.advance_to(at(2026, 3, 13, 8))
    assert shop.sent() == []
    assert shop.timer("anna").due_at == at(2026, 3, 13, 14)

    shop.advance_to(at(2026, 3, 14))
    assert shop.sent() == [("anna", "happy-birthday", at(2026, 3, 13, 14, 0))]


def test_birthday_changed_moves_the_timer(engine: Engine) -> None:
    """A corrected birthday: the old date is not celebrated, the new one is."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))

    shop.send(identify("anna", birthday="1990-04-02"))
    shop.advance_to(at(2026, 4, 3))

    assert shop.sent() == [("anna", "happy-birthday", at(2026, 4, 2, 7, 0))]
    assert shop.timer("anna").occurrence == date(2027, 4, 2)


def test_customer_without_the_date_gets_no_timer(engine: Engine) -> None:
    """No birthday, no row; an unusable one neither."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("nobody", email="n@example.com"), identify("junk", birthday="soon"))

    assert shop.count(date_timers) == 0


# -- late, paused, twice -------------------------------------------------------------------------


def test_worker_down_for_hours_still_greets_once(engine: Engine) -> None:
    """The worker was down from 09:00 to 15:00 Moscow time: one greeting, six hours late."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    shop.advance_to(at(2026, 3, 13, 6))

    shop.clock.set(at(2026, 3, 13, 12))  # no worker ran in between
    run_until_idle(shop.worker, shop.clock)
    run_until_idle(shop.worker, shop.clock)

    assert shop.sent() == [("anna", "happy-birthday", at(2026, 3, 13, 12, 0))]


def test_worker_down_past_the_grace_skips_and_records(engine: Engine) -> None:
    """Three days late nobody wants a birthday message: none is sent, the skip is recorded."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    shop.advance_to(at(2026, 3, 13, 6))

    shop.clock.set(at(2026, 3, 16, 7))
    run_until_idle(shop.worker, shop.clock)

    assert shop.sent() == []
    row = shop.timer("anna")
    assert (row.handled, row.outcome, row.handled_at) == (
        date(2026, 3, 13),
        "late",
        at(2026, 3, 16, 7),
    )
    assert row.due_at == at(2027, 3, 13, 7)
    assert shop.worker.time_triggers.totals.late == 1


def test_grace_is_configurable(engine: Engine) -> None:
    """`grace: 2h`: four hours late is too late."""
    shop = Shop(engine, BIRTHDAY.replace('at: "10:00"', 'at: "10:00"\n    grace: 2h'))
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    shop.advance_to(at(2026, 3, 13, 6))

    shop.clock.set(at(2026, 3, 13, 11))
    run_until_idle(shop.worker, shop.clock)

    assert shop.sent() == []
    assert shop.timer("anna").outcome == "late"


def test_paused_journey_lets_the_day_pass(engine: Engine) -> None:
    """A paused journey stores no event; resuming it sends no old greeting, next year's goes."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    with transaction(engine) as conn:
        set_status(conn, shop.ws, "birthday", "paused", now=shop.clock.now())

    shop.advance_to(at(2026, 3, 14))
    with transaction(engine) as conn:
        set_status(conn, shop.ws, "birthday", "active", now=shop.clock.now())
    shop.advance_to(at(2027, 3, 14))

    assert shop.sent() == [("anna", "happy-birthday", at(2027, 3, 13, 7, 0))]
    assert shop.count(events, events.c.name == DATE_EVENT) == 1


def test_a_firing_repeated_after_a_crash_stores_nothing_new(engine: Engine) -> None:
    """The same occurrence fired twice (its row restored as if the first commit was lost
    after the event) stores one event: the messageId names the occurrence."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    before = shop.timer("anna")
    due = before.due_at
    shop.clock.set(due)

    for _ in range(2):
        with transaction(engine) as conn:
            conn.execute(
                update(date_timers)
                .where(date_timers.c.id == before.id)
                .values(due_at=due, occurrence=before.occurrence, handled=None, lease_owner="w9")
            )
        result = fire_due(engine, [before.id], owner="w9", now=due)
        assert result.fired == 1
    run_until_idle(shop.worker, shop.clock)

    assert shop.count(events, events.c.name == DATE_EVENT) == 1
    assert len(shop.sent()) == 1


def test_another_workers_lease_is_not_fired(engine: Engine) -> None:
    """A timer leased by someone else is left alone by a worker that does not own it."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    row = shop.timer("anna")

    result = fire_due(engine, [row.id], owner="not-the-owner", now=row.due_at)

    assert result.handled == 0
    assert shop.count(events, events.c.name == DATE_EVENT) == 0


# -- applying a journey to customers already known --------------------------------------------------


def test_apply_backfills_every_customer_in_chunks(engine: Engine) -> None:
    """Customers known before the journey get timers; chunks of 2 go through all of them."""
    shop = Shop(engine)
    shop.worker.time_triggers.chunk = 2
    shop.send(
        *[
            identify(f"c{i}", birthday=f"1990-03-{10 + i:02d}", timezone="Europe/Moscow")
            for i in range(5)
        ],
        identify("no-birthday", email="x@example.com"),
    )
    shop.advance_to(T0 + timedelta(hours=1))

    shop.apply(BIRTHDAY)
    run_until_idle(shop.worker, shop.clock)

    assert shop.count(date_timers) == 5
    assert shop.worker.time_triggers.totals.backfilled == 6  # every profile looked at
    with engine.connect() as conn:
        job = conn.execute(select(time_triggers)).one()
    assert job.next_run_at is None  # caught up
    shop.advance_to(at(2026, 3, 15))
    assert [u for u, _, _ in shop.sent()] == ["c0", "c1", "c2", "c3", "c4"]


def test_reapplying_keeps_what_fired_and_a_new_time_moves_every_timer(engine: Engine) -> None:
    """Unchanged: nothing restarts. A new `at`: timers move, this year's greeting is not repeated."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13", timezone="Europe/Moscow"))
    shop.advance_to(at(2026, 3, 13, 8))
    assert len(shop.sent()) == 1

    shop.apply(BIRTHDAY)
    with engine.connect() as conn:
        assert conn.execute(select(time_triggers.c.next_run_at)).scalar_one() is None
    shop.apply(BIRTHDAY.replace('at: "10:00"', 'at: "18:00"'))
    shop.advance_to(at(2026, 3, 14))

    assert len(shop.sent()) == 1  # 18:00 the same day would be the same occurrence
    assert shop.timer("anna").due_at == at(2027, 3, 13, 15)


def test_event_trigger_again_drops_the_timers(engine: Engine) -> None:
    """A journey whose trigger becomes an event has no date work left."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", birthday="1990-03-13"))
    assert shop.count(date_timers) == 1

    shop.apply(BIRTHDAY.replace('date:\n    trait: birthday\n    at: "10:00"', "event: Birthday"))

    assert shop.count(date_timers) == 0
    assert shop.count(time_triggers) == 0


# -- a week after sign-up ------------------------------------------------------------------------


def test_a_week_after_sign_up_once_even_without_an_identify(engine: Engine) -> None:
    """created_at + 7d at 11:00: a customer known only from a page view is found by the sweep."""
    shop = Shop(engine, WEEK_AFTER_SIGN_UP, timezone="Europe/Moscow")
    shop.send(track("visitor", "Product Viewed", {"product_id": "p1"}))  # 12:00 Moscow, 5 January

    shop.advance_to(at(2027, 1, 20))

    assert shop.sent() == [("visitor", "how-is-it-going", at(2026, 1, 12, 8, 0))]
    row = shop.timer("visitor")
    assert (row.outcome, row.due_at) == ("fired", None)


def test_custom_trait_date_time_is_read_on_the_customers_calendar(engine: Engine) -> None:
    """createdAt 2026-01-04T22:30Z is 5 January in Moscow: the week is counted from there."""
    text = WEEK_AFTER_SIGN_UP.replace("trait: created_at", "trait: createdAt")
    shop = Shop(engine, text)
    shop.send(identify("anna", createdAt="2026-01-04T22:30:00Z", timezone="Europe/Moscow"))

    shop.advance_to(at(2026, 1, 20))

    assert shop.sent() == [("anna", "how-is-it-going", at(2026, 1, 12, 8, 0))]


def test_refresh_profile_after_an_outside_change(engine: Engine) -> None:
    """refresh_profile recomputes one customer's timers when something else wrote the profile."""
    shop = Shop(engine, BIRTHDAY)
    shop.send(identify("anna", timezone="Europe/Moscow"))
    assert shop.count(date_timers) == 0
    with transaction(engine) as conn:
        pid = conn.execute(select(profiles.c.id)).scalar_one()
        conn.execute(update(profiles).values(birthday=date(1990, 3, 13)))
        changed = refresh_profile(conn, shop.ws, pid, now=shop.clock.now())

    assert changed == 1
    assert shop.timer("anna").due_at == at(2026, 3, 13, 7)


# -- the example pack's birthday journey, simulated ------------------------------------------------


def test_pack_birthday_journey_simulated() -> None:
    """The pack's birthday.yaml: the gift code at 10:00 Moscow time three days ahead, the SMS
    at 10:00 on the day, as `touchline simulate` replays it."""
    from pathlib import Path

    from touchline.journeys.loader import load_journey_file
    from touchline.simulation import Simulation

    path = Path(__file__).resolve().parents[2] / "examples/ecommerce/journeys/birthday.yaml"
    loaded = LoadedJourney(
        path=str(path), spec=load_journey_file(path), source=path.read_text(encoding="utf-8")
    )
    customer = identify(
        "anna",
        email="anna@example.com",
        phone="+79161234567",
        birthday="1991-03-13",
        timezone="Europe/Moscow",
        consent={"email": True, "sms": True},
    )
    with Simulation([loaded], start=at(2026, 3, 1), timezone="Europe/Moscow") as sim:
        sim.add(customer, at=at(2026, 3, 1, 12))
        messages = list(sim.run(until=at(2026, 3, 20)))

    assert [(m.template, m.at, m.outcome) for m in messages] == [
        ("birthday-gift-code", "2026-03-10T07:00:00Z", "sent"),
        ("birthday-greeting-sms", "2026-03-13T07:00:00Z", "sent"),
    ]


def test_two_workers_fire_each_birthday_once(engine: Engine) -> None:
    """Two workers running at once over the same due timers store one event per customer."""
    import threading

    shop = Shop(engine, BIRTHDAY)
    shop.send(
        *[identify(f"c{i:02d}", birthday="1990-03-13", timezone="Europe/Moscow") for i in range(30)]
    )
    due = at(2026, 3, 13, 7)
    workers = [Worker(engine, clock=FrozenClock(due), owner=f"w{n}", batch=4) for n in range(2)]
    errors: list[BaseException] = []

    def work(worker: Worker) -> None:
        try:
            while worker.run_once(due) > 0:
                pass
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    run_until_idle(shop.worker, FrozenClock(due))

    assert errors == []
    assert shop.count(events, events.c.name == DATE_EVENT) == 30
    assert len(shop.sent()) == 30
    assert sum(w.time_triggers.totals.fired for w in workers) == 30
