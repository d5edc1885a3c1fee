"""A/B-then-winner broadcasts end to end on a frozen clock, on SQLite and PostgreSQL.

The test sample's messages go through the dispatcher, people click them
(recorded as the tracking route records them), the wait ends, the worker's
tick judges the variants and the rest of the audience receives the winner.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from broadcast_shop import BroadcastShop
from sqlalchemy import Engine, select

from touchline.audience.broadcast_spec import load_broadcast_data, recipient_lot
from touchline.measure.engagement import Hit, record_hit
from touchline.measure.reports import variant_report
from touchline.store.db import transaction
from touchline.store.tables import broadcast_recipients, experiment_winners

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
AB = {
    "variants": [{"name": "a", "template": "promo-a"}, {"name": "b", "template": "promo-b"}],
    "sample": 50,
    "wait": "4h",
    "metric": "click",
    "min_sample": 100,
}


def click(shop: BroadcastShop, rows: list[object], share: float) -> None:
    """People click the first ``share`` of these messages (an hour after they were sent)."""
    chosen = rows[: round(len(rows) * share)]
    with transaction(shop.engine) as conn:
        for row in chosen:
            record_hit(
                conn,
                Hit(
                    kind="clicked",
                    workspace_id=shop.ws,
                    outbox_id=row.id,  # type: ignore[attr-defined]
                    at=shop.clock.now(),
                    url="https://shop.example/sale",
                    ip="203.0.113.9",
                    user_agent=BROWSER,
                ),
            )


def sent_by_variant(shop: BroadcastShop) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for row in shop.messages():
        if row.status == "sent":
            out.setdefault(row.variant, []).append(row)
    return out


def test_the_sample_tests_both_variants_and_everyone_else_gets_the_significant_winner(
    engine: Engine,
) -> None:
    """Half the audience is split between a and b; b is clicked far more; after the wait
    the decision names b on its figures and the other half all receive b."""
    # given
    shop = BroadcastShop(engine, T0)
    people = shop.customers(600)
    shop.create(send_at=T0.isoformat(), ab_test=AB)
    shop.tick()
    shop.dispatch()
    assert shop.row().status == "waiting"
    test_sent = sent_by_variant(shop)
    shop.clock.advance(timedelta(hours=1))
    click(shop, test_sent["a"], 0.10)
    click(shop, test_sent["b"], 0.40)
    # when: not yet at the end of the wait, then at it
    shop.clock.advance(timedelta(hours=2))
    shop.tick()
    early = shop.row()
    shop.clock.set(T0 + timedelta(hours=4))
    shop.tick()
    shop.dispatch()
    shop.settle()
    # then
    assert early.status == "waiting" and early.winner is None
    found = shop.show()
    assert found["status"] == "sent" and found["winner"] == "b"
    decision = found["decision"]
    assert decision["significant"] is True and decision["chosen_by"] == "test"
    figures = {v["variant"]: v for v in decision["variants"]}
    assert figures["a"]["sent"] == len(test_sent["a"]) and figures["b"]["sent"] == len(
        test_sent["b"]
    )
    assert figures["b"]["clicked"] == round(len(test_sent["b"]) * 0.4)
    # everyone got exactly one message: the sample its own variant, the rest b
    spec = load_broadcast_data(shop.row().spec)
    row_id = shop.row().id
    by_person = Counter(int(m.metadata["profile_id"]) for m in shop.capture.messages)
    assert set(by_person) == set(people) and set(by_person.values()) == {1}
    for message in shop.capture.messages:
        lot = recipient_lot(spec, row_id, int(message.metadata["profile_id"]))
        expected = lot.variant if lot.phase == "test" else "b"
        assert message.metadata["variant"] == expected
        assert message.subject == expected.upper()
    rest = [m for m in shop.messages() if m.created_at == T0 + timedelta(hours=4)]
    assert (
        rest
        and {m.template for m in rest} == {"promo-b"}
        and {m.step_id for m in rest} == {"send-2"}
    )
    with engine.connect() as conn:
        winner = conn.execute(select(experiment_winners)).one()
        phases = Counter(
            conn.execute(select(broadcast_recipients.c.phase, broadcast_recipients.c.variant)).all()
        )
        report = variant_report(
            conn,
            shop.ws,
            "broadcast:promo",
            "split",
            metric="click",
            since=date(2026, 3, 2),
            until=date(2026, 3, 2),
        )
    assert (winner.step_id, winner.winner, winner.metric) == ("split", "b", "click")
    assert phases[("main", "b")] == len(rest)
    assert {v.variant: v.entries for v in report.variants} == {
        "a": len(test_sent["a"]),
        "b": len(test_sent["b"]),
    }


@pytest.mark.parametrize(("fallback", "expected"), [("best", "b"), ("first", "a")])
def test_without_a_significant_winner_the_fallback_decides_and_says_so(
    engine: Engine, fallback: str, expected: str
) -> None:
    """b leads a little, not significantly: `best` sends b, `first` sends a; the decision records
    that it was a fallback and why there was no winner."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(600)
    shop.create(send_at=T0.isoformat(), ab_test={**AB, "fallback": fallback})
    shop.tick()
    shop.dispatch()
    test_sent = sent_by_variant(shop)
    shop.clock.advance(timedelta(hours=1))
    click(shop, test_sent["a"], 0.10)
    click(shop, test_sent["b"], 0.12)
    # when
    shop.clock.set(T0 + timedelta(hours=4))
    shop.tick()
    shop.dispatch()
    # then
    found = shop.show()
    assert found["winner"] == expected
    decision = found["decision"]
    assert decision["significant"] is False
    assert decision["chosen_by"].startswith("fallback")
    assert "no significant difference" in decision["reason"]
    assert decision["leader"] == "b"
    rest = [m for m in shop.messages() if m.created_at == T0 + timedelta(hours=4)]
    assert rest and {m.variant for m in rest} == {expected}


def test_a_throttled_test_waits_from_its_last_message(engine: Engine) -> None:
    """With a rate, the wait starts when the sample's last message is due, not at send_at."""
    # given
    shop = BroadcastShop(engine, T0)
    shop.customers(200)
    shop.create(send_at=T0.isoformat(), rate=10, ab_test={**AB, "sample": 50, "wait": "1h"})
    # when
    for _ in range(30):
        shop.tick()
        shop.clock.advance(timedelta(minutes=1))
    # then
    row = shop.row()
    tested = row.queued
    last = T0 + timedelta(seconds=6 * (tested - 1))
    assert row.status == "waiting"
    assert row.test_ends_at == last + timedelta(hours=1)
