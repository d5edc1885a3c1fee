"""Reports over the daily rollups (touchline.measure.reports), the admin API and the CLI.

Every test runs on SQLite and PostgreSQL. Rollup rows are written with
``rollups.bump`` exactly as the runtime, dispatcher and tracking write them, so
each expected figure can be worked out by hand from the counters a test adds.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from touchline.cli import main
from touchline.config import Settings
from touchline.demo.report import SECTIONS, DemoReport, render
from touchline.errors import InputError, NotFound
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.measure import rollups
from touchline.measure.experiments import GroupFigures, uplift
from touchline.measure.reports import (
    JOURNEY_COLUMNS,
    VARIANT_MIN_SAMPLE,
    JourneyFigures,
    JourneyReport,
    ReportTable,
    journey_summary,
    parse_by,
    report,
    variant_report,
)
from touchline.measure.stats import Summary
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.testing import FrozenClock
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
D = timedelta(days=1)
DAY0 = T0.date()
LAST = DAY0 + 6 * D  # a week of days, both ends included
NOW = T0 + 7 * D  # the app's clock: the day after the week

CART = """\
journey: abandoned-cart
name: Abandoned cart
category: selling
holdout: 10
trigger: {event: Product Added}
goal: {event: Order Completed, within: 7d, value: event.properties.total}
steps:
  - id: cool-off
    wait: 1h
  - id: offer-test
    split:
      - {name: plain, percent: 50, goto: plain}
      - {name: discount, percent: 50, goto: discount}
  - id: plain
    send: {channel: email, template: cart-plain}
    next: exit
  - id: discount
    send: {channel: email, template: cart-discount}
"""
WELCOME = """\
journey: welcome
name: "=Welcome"
trigger: {event: Signed Up}
steps:
  - id: hello
    send: {channel: email, template: welcome}
  - id: nudge
    send: {channel: sms, template: welcome-sms}
"""


class Store:
    """One workspace with the two journeys above, and a way to add to its rollups."""

    def __init__(self, engine: Engine, name: str = "Shop") -> None:
        self.engine = engine
        self.workspace: CreatedWorkspace = create_workspace(engine, name, now=T0)
        self.ws = self.workspace.id
        loaded = [
            LoadedJourney(f"{key}.yaml", load_journey_text(text, file=f"{key}.yaml"), text)
            for key, text in (("abandoned-cart", CART), ("welcome", WELCOME))
        ]
        with transaction(engine) as conn:
            applied = apply_journeys(conn, self.ws, loaded, now=T0)
        self.ids = {a.key: a.journey_id for a in applied}

    def bump(self, at: datetime, *, journey: str | None = None, **key_and_counters: Any) -> None:
        with transaction(self.engine) as conn:
            rollups.bump(
                conn,
                workspace_id=self.ws,
                at=at,
                journey_id=self.ids[journey] if journey else None,
                **key_and_counters,
            )

    def convert(self, at: datetime, journey: str, value: str, *, holdout: bool = False) -> None:
        """One goal conversion, counted as the runtime counts it."""
        counters = rollups.conversion_counters(Decimal(value), holdout=holdout)
        self.bump(at, journey=journey, **counters)

    def messages(self, by: str, *, since: date = DAY0, until: date = LAST) -> ReportTable:
        with self.engine.connect() as conn:
            return report(conn, self.ws, since=since, until=until, by=parse_by(by))

    def journeys(self, *, since: date = DAY0, until: date = LAST) -> dict[str, JourneyFigures]:
        with self.engine.connect() as conn:
            return {j.key: j for j in journey_summary(conn, self.ws, since=since, until=until)}

    def variants(self, step: str = "offer-test", **options: Any) -> Any:
        with self.engine.connect() as conn:
            return variant_report(
                conn, self.ws, "abandoned-cart", step, since=DAY0, until=LAST, **options
            )


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


def records(table: ReportTable) -> list[dict[str, Any]]:
    return table.records()


def email_week(store: Store) -> None:
    """Two days of the cart's plain email and a day of welcome email and SMS."""
    email = {"journey": "abandoned-cart", "step_id": "plain", "variant": "plain"}
    store.bump(T0, **email, channel="email", sent=100, delivered=90, bounced=5, opened=45)
    store.bump(T0, **email, channel="email", clicked=9, unsubscribed=2, machine_opened=7)
    store.bump(T0 + D, **email, channel="email", sent=100, delivered=96, undelivered=4)
    store.bump(T0 + D, **email, channel="email", opened=30, clicked=6, attributed=3)
    store.bump(T0 + D, **email, channel="email", attributed_revenue=Decimal("4500.50"))
    hello = {"journey": "welcome", "step_id": "hello"}
    store.bump(T0 + 2 * D, **hello, channel="email", sent=50, delivered=50, opened=10, clicked=4)
    nudge = {"journey": "welcome", "step_id": "nudge"}
    store.bump(T0 + 2 * D, **nudge, channel="sms", sent=40, clicked=8, skipped=5)
    store.bump(T0 + 2 * D, **nudge, channel="sms", sms_parts=80, sms_cost=Decimal("196.00"))


# -- messages --------------------------------------------------------------------------


def test_message_counters_are_summed_per_journey_and_channel_with_their_rates(
    store: Store,
) -> None:
    """by=journey,channel sums both days of the cart email and works out every rate."""
    # given
    email_week(store)
    # when
    rows = records(store.messages("journey,channel"))
    # then
    assert [(r["journey"], r["channel"]) for r in rows] == [
        ("abandoned-cart", "email"),
        ("welcome", "email"),
        ("welcome", "sms"),
    ]
    cart = rows[0]
    assert (cart["sent"], cart["delivered"], cart["opened"], cart["clicked"]) == (200, 186, 75, 15)
    assert cart["machine_opened"] == 7 and cart["undelivered"] == 4
    assert cart["delivery_rate"] == 0.93  # 186 / 200
    assert cart["open_rate"] == round(75 / 186, 4) and cart["open_rate_base"] == "delivered"
    assert cart["ctr"] == 0.075  # 15 / 200
    assert cart["click_to_open"] == 0.2  # 15 / 75
    assert cart["unsubscribe_rate"] == 0.01 and cart["bounce_rate"] == 0.025
    assert cart["conversion_rate"] == 0.015 and cart["revenue"] == 4500.5
    sms = rows[2]
    assert sms["sms_parts"] == 80 and sms["sms_cost"] == 196.0 and sms["skipped"] == 5
    assert sms["delivery_rate"] is None and sms["open_rate"] is None
    assert sms["ctr"] == 0.2 and sms["click_to_open"] is None


def test_open_rate_is_out_of_sent_when_the_channel_reports_no_delivery(store: Store) -> None:
    """Without any delivery report for email in the period, opens are counted out of sent."""
    # given
    email = {"journey": "welcome", "step_id": "hello", "channel": "email"}
    store.bump(T0, **email, sent=80, opened=20, clicked=5)
    # when
    [row] = records(store.messages("channel"))
    # then
    assert row["open_rate"] == 0.25 and row["open_rate_base"] == "sent"
    assert row["delivery_rate"] is None and row["bounce_rate"] is None


def test_rates_of_a_group_of_channels_take_opens_from_email_alone(store: Store) -> None:
    """By journey, the welcome's SMS adds to sent and clicks but not to opens or their base."""
    # given
    email_week(store)
    # when
    rows = {r["journey"]: r for r in records(store.messages("journey"))}
    # then
    welcome = rows["welcome"]
    assert welcome["sent"] == 90 and welcome["clicked"] == 12
    assert welcome["open_rate"] == 0.2  # 10 opens of 50 emails delivered
    assert welcome["click_to_open"] == 0.4  # the 4 email clicks of 10 opens; SMS clicks left out
    assert welcome["ctr"] == round(12 / 90, 4)
    assert welcome["delivery_rate"] == 1.0  # only email reports delivery: 50 of its 50


def test_grouping_by_day_nothing_or_step_and_the_period_is_inclusive(store: Store) -> None:
    """Days are UTC days, both ends included; no grouping gives one row; step brings journey."""
    # given
    email_week(store)
    store.bump(T0 + 7 * D, journey="welcome", step_id="hello", channel="email", sent=1000)
    # when
    by_day = records(store.messages("day"))
    total = records(store.messages(""))
    by_step = store.messages("step")
    last_day = records(store.messages("", since=LAST + D, until=LAST + D))
    # then
    assert [(r["day"], r["sent"]) for r in by_day] == [
        ("2026-03-02", 100),
        ("2026-03-03", 100),
        ("2026-03-04", 90),
    ]
    assert len(total) == 1 and total[0]["sent"] == 290
    assert by_step.columns[:2] == ("journey", "step")
    assert [(r["journey"], r["step"]) for r in records(by_step)] == [
        ("abandoned-cart", "plain"),
        ("welcome", "hello"),
        ("welcome", "nudge"),
    ]
    assert last_day[0]["sent"] == 1000


def test_journey_level_rows_and_unknown_groupings_stay_out_of_message_reports(
    store: Store,
) -> None:
    """Entries and conversions are no message facts; an unknown grouping is refused."""
    # given
    store.bump(T0, journey="welcome", entered=10)
    # when
    rows = records(store.messages("journey"))
    # then
    assert rows == []
    with pytest.raises(InputError, match="unknown grouping 'template'"):
        parse_by("journey,template")


# -- journeys and their holdout ----------------------------------------------------------


def test_uplift_matches_experiments_uplift_on_the_same_per_entry_figures(store: Store) -> None:
    """Goal rates, revenue and the uplift equal experiments.uplift on entries as the unit."""
    # given: 400 treated entries with 60 orders, 50 held out with 3
    store.bump(T0, journey="abandoned-cart", entered=400, holdout_entered=50)
    treated = [Decimal("1000.00") if i % 2 else Decimal("2500.50") for i in range(60)]
    for i, value in enumerate(treated):
        store.convert(T0 + (i % 5) * D, "abandoned-cart", str(value))
    for _ in range(3):
        store.convert(T0 + D, "abandoned-cart", "1000.00", holdout=True)
    # a split step's row of the same journey is not the journey's
    store.bump(T0, journey="abandoned-cart", step_id="offer-test", variant="plain", entered=200)
    # when
    found = store.journeys()["abandoned-cart"]
    # then
    expected = uplift(
        GroupFigures(400, 60, Summary.of([float(v) for v in treated] + [0.0] * 340)),
        GroupFigures(50, 3, Summary.of([1000.0] * 3 + [0.0] * 47)),
    )
    assert (found.entered, found.holdout_entered) == (400, 50)
    assert (found.converted, found.holdout_converted) == (60, 3)
    assert found.goal_rate == 0.15 and found.holdout_goal_rate == 0.06
    assert found.cart_recovery_rate == 0.15 and found.holdout_percent == 10
    assert found.revenue == sum(treated) and found.holdout_revenue == Decimal("3000.00")
    assert found.uplift is not None and found.uplift_note is None
    got, want = found.uplift.conversion, expected.conversion
    assert got.difference == pytest.approx(want.difference)
    assert got.interval is not None and want.interval is not None
    assert (got.interval.low, got.interval.high) == pytest.approx(
        (want.interval.low, want.interval.high)
    )
    assert got.p_value == pytest.approx(want.p_value) and got.significant == want.significant
    revenue, want_revenue = found.uplift.revenue_per_customer, expected.revenue_per_customer
    assert revenue.difference == pytest.approx(want_revenue.difference)
    assert revenue.p_value == pytest.approx(want_revenue.p_value)
    extra, want_extra = found.uplift.incremental_revenue, expected.incremental_revenue
    assert extra is not None and want_extra is not None
    assert (extra.estimate, extra.low, extra.high) == pytest.approx(
        (want_extra.estimate, want_extra.low, want_extra.high)
    )
    assert found.significant is want.significant


def test_a_journey_without_holdout_entries_reports_no_uplift_and_says_why(store: Store) -> None:
    """Every journey is listed; one without a holdout or with no entries has no uplift."""
    # given
    store.bump(T0, journey="welcome", entered=30)
    store.convert(T0, "welcome", "0")
    # when
    found = store.journeys()
    # then
    assert list(found) == ["abandoned-cart", "welcome"]
    welcome = found["welcome"]
    assert welcome.uplift is None and welcome.uplift_note == "no holdout entries in the period"
    assert welcome.goal_rate == pytest.approx(1 / 30) and welcome.cart_recovery_rate is None
    assert found["abandoned-cart"].entered == 0 and found["abandoned-cart"].goal_rate is None


def test_conversions_of_entries_before_the_period_leave_the_uplift_out(store: Store) -> None:
    """A period holding more conversions than entries gets a note, not a broken statistic."""
    # given: entries on day 0, conversions on day 3
    store.bump(T0, journey="abandoned-cart", entered=10, holdout_entered=2)
    for _ in range(3):
        store.convert(T0 + 3 * D, "abandoned-cart", "100")
    store.bump(T0 + 3 * D, journey="abandoned-cart", entered=1, holdout_entered=1)
    # when
    late = store.journeys(since=DAY0 + 3 * D)["abandoned-cart"]
    whole = store.journeys()["abandoned-cart"]
    # then
    assert late.uplift is None and "more conversions than entries" in (late.uplift_note or "")
    assert whole.uplift is not None


def test_the_journeys_table_flattens_uplift_and_quotes_formula_like_names(store: Store) -> None:
    """The CSV has JOURNEY_COLUMNS, the uplift's numbers, and a name starting '=' quoted."""
    # given
    store.bump(T0, journey="abandoned-cart", entered=100, holdout_entered=100)
    for _ in range(30):
        store.convert(T0, "abandoned-cart", "10")
    for _ in range(10):
        store.convert(T0, "abandoned-cart", "10", holdout=True)
    # when
    text = JourneyReport(DAY0, LAST, list(store.journeys().values())).table().to_csv()
    # then
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == JOURNEY_COLUMNS
    cart, welcome = rows
    assert cart["uplift"] == "0.2" and cart["significant"] == "true"
    assert float(cart["uplift_low"]) > 0 and cart["incremental_conversions"] == "20.0"
    assert welcome["name"] == "'=Welcome" and welcome["uplift"] == ""


def test_the_demo_closes_with_the_uplift_of_each_journey_with_a_holdout(store: Store) -> None:
    """The demo's last section shows entries, goal rates, uplift, extra revenue and verdict."""
    # given
    store.bump(T0, journey="abandoned-cart", entered=100, holdout_entered=100)
    for _ in range(30):
        store.convert(T0, "abandoned-cart", "1000")
    for _ in range(10):
        store.convert(T0, "abandoned-cart", "1000", holdout=True)
    found = store.journeys()
    period = {"start": T0, "end": T0 + 6 * D}
    demo = DemoReport(Path("."), 1, 7, 1, **period, uplifts=[found["abandoned-cart"]])
    out = io.StringIO()
    # when
    render(demo, out)
    # then
    closing = out.getvalue().split(SECTIONS[-1])[1]
    assert SECTIONS[-1] == "Holdout uplift"
    assert "abandoned-cart" in closing and "welcome" not in closing
    assert "30.0%" in closing and "10.0%" in closing and "+20.0" in closing
    assert "20 000 RUB" in closing and "yes" in closing


# -- split tests ------------------------------------------------------------------------


def split_week(store: Store) -> None:
    """300 entries per variant at the split; discount converts and is clicked more."""
    split = {"journey": "abandoned-cart", "step_id": "offer-test"}
    store.bump(T0, **split, variant="plain", entered=300, converted=30)
    store.bump(T0, **split, variant="plain", revenue=Decimal(3000), revenue_sq=Decimal(300000))
    store.bump(T0, **split, variant="discount", entered=300, converted=75)
    store.bump(T0, **split, variant="discount", revenue=Decimal(6000), revenue_sq=Decimal(480000))
    plain = {"journey": "abandoned-cart", "step_id": "plain", "variant": "plain"}
    store.bump(T0, **plain, channel="email", sent=280, opened=100, clicked=20)
    discount = {"journey": "abandoned-cart", "step_id": "discount", "variant": "discount"}
    store.bump(T0, **discount, channel="email", sent=290, opened=110, clicked=22)


def test_variants_are_compared_per_entry_at_the_split_and_a_clear_leader_wins(
    store: Store,
) -> None:
    """Conversion counts entries at the split; with min_sample reached, discount wins."""
    # given
    split_week(store)
    # when
    found = store.variants(metric="conversion", min_sample=200)
    # then
    assert [(r.variant, r.entries, r.converted, r.sent) for r in found.variants] == [
        ("plain", 300, 30, 280),
        ("discount", 300, 75, 290),
    ]
    assert found.variants[1].value == 0.25 and found.unit == "entries at the split"
    assert found.verdict.winner == "discount"
    data = found.as_dict()
    assert data["verdict"]["comparisons"]["plain"]["difference"] == 0.15
    assert data["variants"][1]["winner"] is True


def test_variants_wait_for_the_minimum_sample_and_clicks_count_per_message(
    store: Store,
) -> None:
    """By default each variant needs VARIANT_MIN_SAMPLE; clicks are per message sent."""
    # given
    split_week(store)
    # when
    waiting = store.variants(metric="conversion")
    clicks = store.variants(metric="click", min_sample=200)
    revenue = store.variants(metric="revenue", min_sample=200)
    # then
    assert waiting.min_sample == VARIANT_MIN_SAMPLE and waiting.verdict.winner is None
    assert waiting.verdict.reason.startswith("not enough data yet")
    assert clicks.unit == "messages sent" and clicks.verdict.winner is None
    assert clicks.variants[0].value == pytest.approx(20 / 280)
    assert revenue.variants[1].value == 20.0 and revenue.variants[1].low is None


def test_a_variant_report_needs_a_split_of_a_known_journey(store: Store) -> None:
    """An unknown journey or step is NotFound; a step that does not split is refused."""
    with pytest.raises(NotFound, match="no step 'nope'"):
        store.variants("nope", metric="conversion")
    with pytest.raises(InputError, match="not a split"):
        store.variants("plain", metric="conversion")
    with store.engine.connect() as conn, pytest.raises(NotFound, match="no journey"):
        variant_report(conn, store.ws, "gone", "x", metric="click", since=DAY0, until=LAST)


# -- workspaces ---------------------------------------------------------------------------


def test_another_workspaces_rows_never_appear(engine: Engine, store: Store) -> None:
    """Rows of another workspace, even under the same journey id, are in no report of this one."""
    # given
    other = Store(engine, "Other shop")
    email_week(other)
    split_week(other)
    other.bump(T0, journey="abandoned-cart", entered=50, holdout_entered=5)
    with transaction(engine) as conn:  # the other workspace's rows under this one's journey id
        rollups.bump(
            conn,
            workspace_id=other.ws,
            at=T0,
            journey_id=store.ids["welcome"],
            step_id="hello",
            channel="email",
            sent=7,
            entered=7,
        )
    # when
    messages = records(store.messages("journey,channel"))
    journeys = store.journeys()
    variants = store.variants(metric="conversion")
    # then
    assert messages == []
    assert all(j.entered == 0 and j.holdout_entered == 0 for j in journeys.values())
    assert all(r.entries == 0 and r.sent == 0 for r in variants.variants)
    assert records(other.messages(""))[0]["sent"] == 290 + 570 + 7


# -- the admin API ---------------------------------------------------------------------------


@pytest.fixture
def client(engine: Engine, database_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=database_url), engine=engine, clock=FrozenClock(NOW))
    with TestClient(app) as test_client:
        yield test_client


def get(client: TestClient, store: Store, path: str) -> Any:
    return client.get(
        f"/admin/v1/reports/{path}",
        headers={"Authorization": f"Bearer {store.workspace.admin_token}"},
    )


def test_the_api_answers_each_report_as_the_library_computes_it(
    client: TestClient, store: Store
) -> None:
    """messages, journeys and variants give the library's JSON; CSV has the same rows."""
    # given
    email_week(store)
    split_week(store)
    store.bump(T0, journey="abandoned-cart", entered=100, holdout_entered=20)
    period = "since=2026-03-02&until=2026-03-08"
    # when
    messages = get(client, store, f"messages?{period}&by=journey,channel")
    messages_csv = get(client, store, f"messages?{period}&by=journey,channel&format=csv")
    journeys = get(client, store, f"journeys?{period}")
    journeys_csv = get(client, store, f"journeys?{period}&format=csv")
    variants = get(client, store, f"journeys/abandoned-cart/variants?step=offer-test&{period}")
    # then
    assert messages.status_code == 200, messages.text
    assert messages.json() == store.messages("journey,channel").as_dict()
    assert messages.json()["by"] == ["journey", "channel"]
    assert messages_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(messages_csv.text)))
    assert [(r["journey"], r["channel"], r["sent"]) for r in rows] == [
        ("abandoned-cart", "email", "770"),  # the week's email and the split's two
        ("welcome", "email", "50"),
        ("welcome", "sms", "40"),
    ]
    assert journeys.status_code == 200, journeys.text
    expected = JourneyReport(DAY0, LAST, list(store.journeys().values())).as_dict()
    assert journeys.json() == expected
    cart = journeys.json()["journeys"][0]
    assert cart["treated"]["entries"] == 100 and cart["holdout"]["entries"] == 20
    assert cart["uplift"]["conversion"]["difference"] == 0.0
    assert journeys_csv.text.splitlines()[0] == ",".join(JOURNEY_COLUMNS)
    assert variants.status_code == 200, variants.text
    assert variants.json()["metric"] == "conversion"
    assert variants.json()["min_sample"] == VARIANT_MIN_SAMPLE
    assert [v["entries"] for v in variants.json()["variants"]] == [300, 300]


def test_the_api_defaults_to_the_30_days_up_to_today(client: TestClient, store: Store) -> None:
    """Without since and until the period is the 30 UTC days ending on the clock's day."""
    # given: the clock is on 2026-03-09
    hello = {"journey": "welcome", "step_id": "hello", "channel": "email"}
    store.bump(NOW, **hello, sent=1)
    store.bump(NOW - 29 * D, **hello, sent=10)
    store.bump(NOW - 30 * D, **hello, sent=100)
    # when
    response = get(client, store, "messages")
    # then
    assert response.status_code == 200, response.text
    assert response.json()["since"] == "2026-02-08" and response.json()["until"] == "2026-03-09"
    assert response.json()["rows"][0]["sent"] == 11


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("messages?by=journey,template", 400, "invalid_input"),
        ("messages?since=2026-03-05&until=2026-03-01", 400, "invalid_input"),
        ("messages?since=yesterday", 400, "invalid_input"),
        ("messages?format=xml", 400, "invalid_input"),
        ("journeys?until=2026-02-30", 400, "invalid_input"),
        ("journeys?until=0001-01-01", 400, "invalid_input"),
        ("messages?since=0001-01-01&until=9999-12-31", 200, ""),
        ("journeys/abandoned-cart/variants", 400, "invalid_input"),
        ("journeys/abandoned-cart/variants?step=offer-test&metric=likes", 400, "invalid_input"),
        ("journeys/abandoned-cart/variants?step=offer-test&min_sample=0", 400, "invalid_input"),
        ("journeys/abandoned-cart/variants?step=plain", 400, "invalid_input"),
        ("journeys/abandoned-cart/variants?step=nope", 404, "not_found"),
        ("journeys/gone/variants?step=offer-test", 404, "not_found"),
    ],
)
def test_the_api_refuses_bad_requests_with_code_and_message(
    client: TestClient, store: Store, path: str, status: int, code: str
) -> None:
    """Bad groupings, periods, dates, formats, metrics or steps are 400; unknown ones 404; the
    first and last days there are make a period, not a 500."""
    # when
    response = get(client, store, path)
    # then
    assert response.status_code == status, response.text
    if status != 200:  # the widest period there is answers, and with no error
        assert set(response.json()) == {"code", "message"}
        assert response.json()["code"] == code


def test_the_api_needs_an_admin_token(client: TestClient, store: Store) -> None:
    """Without the admin token the reports are refused, and a write key does not do."""
    for path in ("messages", "journeys", "journeys/abandoned-cart/variants?step=offer-test"):
        anonymous = client.get(f"/admin/v1/reports/{path}")
        write_key = client.get(
            f"/admin/v1/reports/{path}",
            headers={"Authorization": f"Bearer {store.workspace.write_key}"},
        )
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
        assert write_key.status_code == 401


# -- the CLI ---------------------------------------------------------------------------------


def run_cli(engine: Engine, database_url: str, store: Store, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        ["report", *args, "--workspace", store.ws],
        obj={"engine": engine},
        env={"TOUCHLINE_DATABASE_URL": database_url},
    )


PERIOD = ["--since", "2026-03-02", "--until", "2026-03-08"]


def test_the_cli_prints_each_report_as_json_csv_and_a_table(
    engine: Engine, database_url: str, store: Store
) -> None:
    """`touchline report messages|journeys|variants` give the library's figures in each format."""
    # given
    email_week(store)
    split_week(store)
    store.bump(T0, journey="abandoned-cart", entered=100, holdout_entered=20)
    # when
    as_json = run_cli(
        engine, database_url, store, "messages", *PERIOD, "--by", "channel", "--format", "json"
    )
    as_csv = run_cli(
        engine, database_url, store, "messages", *PERIOD, "--by", "day", "--format", "csv"
    )
    table = run_cli(engine, database_url, store, "messages", *PERIOD, "--by", "journey")
    journeys = run_cli(engine, database_url, store, "journeys", *PERIOD)
    journeys_json = run_cli(engine, database_url, store, "journeys", *PERIOD, "--format", "json")
    split = ["abandoned-cart", "--step", "offer-test", "--min-sample", "200"]
    variants = run_cli(engine, database_url, store, "variants", *split, *PERIOD)
    # then
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == store.messages("channel").as_dict()
    assert [r["sent"] for r in csv.DictReader(io.StringIO(as_csv.output))] == ["670", "100", "90"]
    assert table.exit_code == 0, table.output
    assert "Messages 2026-03-02 to 2026-03-08" in table.output
    assert "abandoned-cart" in table.output and "24.2%" in table.output  # 186 of 770 delivered
    assert journeys.exit_code == 0, journeys.output
    assert "no holdout entries in the period" in journeys.output
    assert json.loads(journeys_json.output)["journeys"][0]["treated"]["entries"] == 100
    assert variants.exit_code == 0, variants.output
    assert "Verdict: discount beats plain" in variants.output


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["messages", "--by", "template"], 2, "unknown grouping 'template'"),
        (["messages", "--since", "2026-03-09", "--until", "2026-03-01"], 2, "since must not"),
        (["journeys", "--since", "last week"], 2, "--since"),
        (["variants", "gone", "--step", "offer-test"], 1, "no journey 'gone'"),
        (["variants", "abandoned-cart", "--step", "plain"], 1, "not a split"),
    ],
)
def test_the_cli_reports_bad_input(
    engine: Engine,
    database_url: str,
    store: Store,
    args: list[str],
    exit_code: int,
    message: str,
) -> None:
    """Bad usage exits 2 and a refused report (unknown journey, not a split) exits 1."""
    # when
    result = run_cli(engine, database_url, store, *args)
    # then
    assert result.exit_code == exit_code, result.output
    assert message in result.output
