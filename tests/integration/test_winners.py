"""Automatic split-test winners on SQLite and PostgreSQL: decided once, then everyone gets it.

Real customers go through journeys on a frozen clock with a real worker; the
rollups that decide are topped up by hand (as a few hundred more customers
would), so each test states exactly the figures a verdict rests on.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, Engine, event, func, select

from touchline.cli import main
from touchline.config import Settings
from touchline.journeys.engine import pick_variant
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.measure.rollups import bump
from touchline.measure.winners import (
    WINNER_CACHE_TTL,
    WinnerCache,
    assess,
    declared_winners,
    evaluate_experiments,
    find_experiments,
)
from touchline.store.db import transaction
from touchline.store.journeys import SpecCache, apply_journeys
from touchline.store.tables import (
    daily_stats,
    experiment_winners,
    instances,
    journeys,
    outbox,
    profiles,
    step_log,
)
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import EVALUATE_EVERY, Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

AB = """
journey: ab
category: selling
trigger: {event: Cart Left}
entry: {reentry: always}
goal: {event: Order Completed, within: 7d, value: event.properties.revenue}
steps:
  - id: test
    split:
      - {name: a, percent: 50}
      - {name: b, percent: 50}
    winner: {metric: METRIC, min_sample: 200}
  - wait: 1h
  - id: mail
    send: {channel: email, template: cart}
"""
PLAIN_AB = AB.replace("    winner: {metric: METRIC, min_sample: 200}\n", "").replace(
    "journey: ab", "journey: plain-ab"
)


def ab(metric: str = "conversion", key: str = "ab") -> str:
    return AB.replace("METRIC", metric).replace("journey: ab", f"journey: {key}")


class Shop:
    """One workspace with journeys applied, a frozen clock and a worker."""

    def __init__(self, engine: Engine, *texts: str, name: str = "shop") -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        self.workspace = create_workspace(engine, name, now=T0)
        self.ws = self.workspace.id
        with transaction(engine) as conn:
            apply_journeys(
                conn,
                self.ws,
                [
                    LoadedJourney(f"j{i}.yaml", load_journey_text(t, file="j"), t)
                    for i, t in enumerate(textwrap.dedent(t) for t in texts)
                ],
                now=T0,
            )
        self.worker = Worker(engine, clock=self.clock, owner="w1")

    def journey_id(self, key: str = "ab") -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(journeys.c.id).where(
                        journeys.c.workspace_id == self.ws, journeys.c.key == key
                    )
                ).scalar_one()
            )

    def enter(self, users: list[str]) -> None:
        send_events(
            self.engine, self.ws, [track(u, "Cart Left") for u in users], now=self.clock.now()
        )
        run_until_idle(self.worker, self.clock)

    def advance(self, delta: timedelta) -> None:
        run_until_idle(self.worker, self.clock, until=self.clock.now() + delta)

    def bump(self, key: str = "ab", **counters: Any) -> None:
        """Add ``counters`` to a rollup row of journey ``key`` (step, variant, channel given)."""
        with transaction(self.engine) as conn:
            bump(
                conn,
                workspace_id=self.ws,
                at=self.clock.now(),
                journey_id=self.journey_id(key),
                **counters,
            )

    def variants(self, key: str = "ab") -> dict[str, str]:
        """The variant each customer got at split ``test`` of journey ``key``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(profiles.c.user_id, instances.c.state)
                .join(profiles, profiles.c.id == instances.c.profile_id)
                .where(instances.c.journey_id == self.journey_id(key))
            ).all()
        return {r.user_id: r.state["context"]["variants"]["test"] for r in rows}

    def mailed_variants(self) -> dict[str, str | None]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(profiles.c.user_id, outbox.c.variant).join(
                    profiles, profiles.c.id == outbox.c.profile_id
                )
            ).all()
        return {r.user_id: r.variant for r in rows}

    def split_entries(self, variant: str, key: str = "ab") -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.coalesce(func.sum(daily_stats.c.entered), 0)).where(
                        daily_stats.c.journey_id == self.journey_id(key),
                        daily_stats.c.step_id == "test",
                        daily_stats.c.variant == variant,
                    )
                ).scalar_one()
            )

    def winners(self) -> list[tuple[str, str, str, datetime]]:
        with self.engine.connect() as conn:
            return [
                (w.journey, w.step_id, w.winner, w.decided_at)
                for w in declared_winners(conn, workspace_id=self.ws)
            ]

    def evaluate(self) -> list[Any]:
        """Judge the experiments now, as another process (the CLI) would."""
        with transaction(self.engine) as conn:
            return evaluate_experiments(conn, now=self.clock.now())


def split_rows(shop: Shop, key: str = "ab", **by_variant: tuple[int, int]) -> None:
    """Top up split ``test``'s rows: ``a=(entries, conversions)``, 100 revenue per order."""
    for variant, (entered, converted) in by_variant.items():
        shop.bump(
            key,
            step_id="test",
            variant=variant,
            entered=entered,
            converted=converted,
            revenue=100 * converted,
            revenue_sq=100 * 100 * converted,
        )


@contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements run on ``engine`` inside the block."""
    seen: list[str] = []

    def count(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


NEW = [f"new-{n}" for n in range(30)]


def test_a_significant_difference_declares_the_winner_and_new_entries_all_get_it(
    engine: Engine,
) -> None:
    """b converts far better: the worker records b, then every new entry gets b, the old keep theirs."""
    # given: forty customers split both ways, and figures that favour b clearly
    shop = Shop(engine, ab())
    early = [f"early-{n}" for n in range(40)]
    shop.enter(early)
    before = shop.variants()
    assert set(before.values()) == {"a", "b"}
    split_rows(shop, a=(300, 30), b=(300, 75))
    # when: a minute later the worker judges the test
    shop.advance(EVALUATE_EVERY)
    # then
    assert shop.winners() == [("ab", "test", "b", T0 + EVALUATE_EVERY)]
    with engine.connect() as conn:
        detail = conn.execute(select(experiment_winners.c.detail)).scalar_one()
    assert detail["winner"] == "b" and detail["metric"] == "conversion"
    assert [v["variant"] for v in detail["variants"]] == ["a", "b"]
    assert detail["comparisons"]["a"]["adjusted_p_value"] < 0.05
    # when: new customers arrive
    b_entries = shop.split_entries("b")
    shop.enter(NEW)
    # then: all of them get b, though the unrouted split would have given some a
    spec = load_journey_text(textwrap.dedent(ab()), file="ab").step("test").split
    assert spec is not None and any(pick_variant("ab", "test", u, spec).name == "a" for u in NEW)
    after = shop.variants()
    assert {after[u] for u in NEW} == {"b"}
    assert shop.split_entries("b") == b_entries + len(NEW)
    with engine.connect() as conn:
        logged = conn.execute(
            select(func.count()).where(step_log.c.action == "variant", step_log.c.detail == "b")
        ).scalar_one()
    assert logged == list(before.values()).count("b") + len(NEW)
    # and the earlier customers keep theirs, down to the message they get after the wait
    shop.advance(timedelta(hours=2))
    assert {u: after[u] for u in early} == before
    mailed = shop.mailed_variants()
    assert {u: mailed[u] for u in early} == before


def test_below_min_sample_nothing_is_declared_however_large_the_lead(engine: Engine) -> None:
    """With 150 entries per variant of the 200 required, the verdict is "not enough data"."""
    # given
    shop = Shop(engine, ab())
    split_rows(shop, a=(150, 5), b=(150, 90))
    # when
    decisions = shop.evaluate()
    shop.advance(EVALUATE_EVERY)
    shop.enter(NEW)
    # then
    assert [(d.experiment.step_id, d.winner, d.recorded) for d in decisions] == [
        ("test", None, False)
    ]
    assert decisions[0].verdict.reason.startswith("not enough data yet")
    assert shop.winners() == []
    assert set(shop.variants().values()) == {"a", "b"}


def test_a_declared_winner_is_never_changed(engine: Engine) -> None:
    """Once b is recorded, figures that later favour a change neither the record nor the routing."""
    # given
    shop = Shop(engine, ab())
    split_rows(shop, a=(300, 30), b=(300, 75))
    (first,) = shop.evaluate()
    assert first.recorded and first.winner == "b"
    # when: a pulls far ahead and the test is judged again, a day later
    split_rows(shop, a=(5000, 4000))
    shop.clock.advance(timedelta(days=1))
    again = shop.evaluate()
    shop.advance(EVALUATE_EVERY)
    shop.enter(NEW)
    # then
    assert again == []
    with engine.connect() as conn:
        (experiment,) = find_experiments(conn, undecided=False)
        assert assess(conn, experiment).winner == "a"  # what the figures would say now
    assert shop.winners() == [("ab", "test", "b", T0)]
    assert {shop.variants()[u] for u in NEW} == {"b"}


def test_journeys_without_winner_are_untouched(engine: Engine) -> None:
    """A split without winner: is never judged nor routed, and looking for tests is one query."""
    # given
    shop = Shop(engine, PLAIN_AB)
    split_rows(shop, key="plain-ab", a=(5000, 50), b=(5000, 4000))
    # when
    with statements(engine) as run:
        decisions = shop.evaluate()
    shop.advance(EVALUATE_EVERY)
    shop.enter(NEW)
    # then
    assert decisions == []
    assert len([s for s in run if s.lstrip().upper().startswith("SELECT")]) == 1
    assert shop.winners() == []
    assert set(shop.variants("plain-ab").values()) == {"a", "b"}
    journey_id = shop.journey_id("plain-ab")
    with engine.connect() as conn:
        version_id = conn.execute(select(journeys.c.current_version_id)).scalar_one()
        spec = SpecCache().get(conn, version_id)
        with statements(engine) as routed:
            same = WinnerCache().route(conn, spec, journey_id=journey_id, version_id=version_id)
    assert same is spec and routed == []


@pytest.mark.parametrize("metric", ["click", "revenue"])
def test_click_and_revenue_metrics_read_their_own_rollups(engine: Engine, metric: str) -> None:
    """click reads the journey's message rows per variant, revenue the split rows' revenue."""
    # given
    shop = Shop(engine, ab(metric))
    if metric == "click":
        for variant, clicked in (("a", 20), ("b", 80)):
            shop.bump(step_id="mail", variant=variant, channel="email", sent=400, clicked=clicked)
        split_rows(shop, a=(400, 300), b=(400, 10))  # conversions favour a; they do not count
    else:
        split_rows(shop, a=(300, 30), b=(300, 90))
    # when
    (decision,) = shop.evaluate()
    # then
    assert (decision.winner, decision.recorded) == ("b", True)
    figures = decision.figures
    if metric == "click":
        assert (figures["b"].customers, figures["b"].clicked) == (400, 80)
    else:
        revenue = figures["b"].revenue
        assert revenue is not None and (revenue.n, revenue.total) == (300, 9000.0)
    assert shop.winners() == [("ab", "test", "b", T0)]


def test_another_process_decision_reaches_a_worker_within_the_cache_ttl(engine: Engine) -> None:
    """A winner recorded elsewhere routes this runtime's customers once its cached list expires."""
    # given: a cache that has just read "no winners"
    shop = Shop(engine, ab())
    tick = [0.0]
    cache = WinnerCache(monotonic=lambda: tick[0])
    with engine.connect() as conn:
        version_id = conn.execute(select(journeys.c.current_version_id)).scalar_one()
        spec = SpecCache().get(conn, version_id)
        route = {"journey_id": shop.journey_id(), "version_id": version_id}
        assert cache.route(conn, spec, **route) is spec
    # when: another process records b
    split_rows(shop, a=(300, 30), b=(300, 75))
    shop.evaluate()
    with engine.connect() as conn:
        stale = cache.route(conn, spec, **route)
        tick[0] += WINNER_CACHE_TTL
        fresh = cache.route(conn, spec, **route)
    # then
    assert stale is spec
    split = fresh.step("test").split
    assert split is not None and [(v.name, v.percent) for v in split] == [("b", 100)]


def test_the_api_lists_declared_winners_and_live_verdicts_of_its_workspace(engine: Engine) -> None:
    """GET /admin/v1/experiments: winners, then running tests; another workspace sees neither."""
    # given: two tests, one decided
    shop = Shop(engine, ab(), ab(key="ab-two"))
    other = create_workspace(engine, "other", now=T0)
    split_rows(shop, a=(300, 30), b=(300, 75))
    shop.evaluate()
    app = create_app(Settings(), engine=engine, clock=shop.clock)
    # when
    with TestClient(app) as client:
        mine = client.get(
            "/admin/v1/experiments",
            headers={"Authorization": f"Bearer {shop.workspace.admin_token}"},
        )
        theirs = client.get(
            "/admin/v1/experiments", headers={"Authorization": f"Bearer {other.admin_token}"}
        )
        anonymous = client.get("/admin/v1/experiments")
    # then
    assert mine.status_code == 200, mine.text
    body = mine.json()
    assert [(w["journey"], w["step"], w["winner"]) for w in body["winners"]] == [
        ("ab", "test", "b")
    ]
    assert body["winners"][0]["decided_at"] == T0.isoformat()
    assert body["winners"][0]["detail"]["winner"] == "b"
    (running,) = body["running"]
    assert (running["journey"], running["winner"]) == ("ab-two", None)
    assert running["reason"].startswith("not enough data yet")
    assert [(v["variant"], v["customers"]) for v in running["variants"]] == [("a", 0), ("b", 0)]
    assert theirs.json() == {"winners": [], "running": []}
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"


def test_the_cli_evaluates_and_records_the_winner(engine: Engine, database_url: str) -> None:
    """`touchline experiments evaluate` judges the tests now and says what it recorded."""
    # given
    shop = Shop(engine, ab())
    split_rows(shop, a=(300, 30), b=(300, 75))
    # when
    result = CliRunner().invoke(
        main,
        ["experiments", "evaluate"],
        obj={"engine": engine},
        env={"TOUCHLINE_DATABASE_URL": database_url},
    )
    # then
    assert result.exit_code == 0, result.output
    assert result.output.startswith(
        f"{shop.ws} ab/test: winner b recorded (b beats a on conversion"
    )
    assert [w[2] for w in shop.winners()] == ["b"]
