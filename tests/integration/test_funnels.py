"""Funnel reports over the store (touchline.measure.funnels), the admin API and the CLI.

Every test runs on SQLite and PostgreSQL. Events, journeys and instances are
written straight into their tables, so each customer's history is exactly
what the test states and the expected figures can be worked out by hand.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert

from touchline.cli import main
from touchline.config import Settings
from touchline.errors import InputError, NotFound
from touchline.measure.funnels import FunnelReport, build_funnel, compute_funnel
from touchline.store.db import transaction
from touchline.store.tables import (
    events,
    instances,
    journeys,
    profiles,
    segment_changes,
    segments,
)
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.testing import FrozenClock
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SINCE, UNTIL = T0, T0 + timedelta(days=14)
H, D = timedelta(hours=1), timedelta(days=1)
VIEW, ADD, CHECKOUT, ORDER = (
    "Product Viewed",
    "Product Added",
    "Checkout Started",
    "Order Completed",
)
SHOP_STEPS = [(VIEW, None), (ADD, None), (CHECKOUT, None), (ORDER, None)]


class Store:
    """One workspace's customers, events, journeys and journey instances, written directly."""

    def __init__(self, engine: Engine, name: str = "Shop") -> None:
        self.engine = engine
        self.workspace: CreatedWorkspace = create_workspace(engine, name, now=T0)
        self.ws = self.workspace.id
        self._ids = count(1)

    def customer(self) -> int:
        with transaction(self.engine) as conn:
            result = conn.execute(
                insert(profiles).values(workspace_id=self.ws, created_at=T0, updated_at=T0)
            )
            return int(result.inserted_primary_key[0])

    def track(self, profile_id: int, name: str, at: datetime, **properties: Any) -> None:
        with transaction(self.engine) as conn:
            conn.execute(
                insert(events).values(
                    workspace_id=self.ws,
                    message_id=f"m-{next(self._ids)}",
                    type="track",
                    name=name,
                    profile_id=profile_id,
                    properties=properties,
                    timestamp=at,
                    received_at=at,
                    status=1,
                )
            )

    def history(self, *steps: tuple[str, datetime]) -> int:
        """A new customer who did ``steps`` (name, time), stored in the order given."""
        pid = self.customer()
        for name, at in steps:
            self.track(pid, name, at)
        return pid

    def journey(self, key: str) -> int:
        with transaction(self.engine) as conn:
            result = conn.execute(
                insert(journeys).values(
                    workspace_id=self.ws,
                    key=key,
                    name=key,
                    status="active",
                    category="selling",
                    trigger_event=ADD,
                    created_at=T0,
                    updated_at=T0,
                )
            )
            return int(result.inserted_primary_key[0])

    def enter(self, journey_id: int, profile_id: int, at: datetime) -> None:
        with transaction(self.engine) as conn:
            conn.execute(
                insert(instances).values(
                    workspace_id=self.ws,
                    journey_id=journey_id,
                    version_id=1,
                    profile_id=profile_id,
                    status="completed",
                    state={},
                    entered_at=at,
                    updated_at=at,
                )
            )

    def segment(self, key: str, *changes: tuple[int, str, datetime]) -> None:
        """A segment and its recorded history: (profile, entered | exited, at) rows."""
        with transaction(self.engine) as conn:
            segment_id = conn.execute(
                insert(segments).values(
                    workspace_id=self.ws,
                    key=key,
                    name=key,
                    spec={},
                    source="",
                    checksum="",
                    status="ready",
                    created_at=T0,
                    updated_at=T0,
                )
            ).inserted_primary_key[0]
            for profile_id, change, at in changes:
                conn.execute(
                    insert(segment_changes).values(
                        workspace_id=self.ws,
                        segment_id=segment_id,
                        profile_id=profile_id,
                        change=change,
                        at=at,
                    )
                )

    def funnel(
        self,
        steps: list[tuple[str, str | None]] = SHOP_STEPS,
        *,
        window: str = "7d",
        split_by_journey: str | None = None,
        split_by_segment: str | None = None,
    ) -> FunnelReport:
        with self.engine.connect() as conn:
            return compute_funnel(
                conn,
                self.ws,
                build_funnel(steps, window=window),
                since=SINCE,
                until=UNTIL,
                split_by_journey=split_by_journey,
                split_by_segment=split_by_segment,
            )


def counts(report: FunnelReport, group: str = "all") -> list[int]:
    return [s.customers for s in report.group(group).steps]


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


# -- the query -------------------------------------------------------------------------


def test_each_customer_counts_up_to_the_furthest_step_reached_in_order(store: Store) -> None:
    """Counts, conversions and median times match a hand-worked set of four customers."""
    # given
    store.history((VIEW, T0 + H), (ADD, T0 + 2 * H), (CHECKOUT, T0 + 4 * H), (ORDER, T0 + 5 * H))
    store.history((VIEW, T0 + D), (ADD, T0 + D + 3 * H), (CHECKOUT, T0 + D + 5 * H))
    store.history((VIEW, T0 + 2 * D), (ADD, T0 + 2 * D + 5 * H))
    store.history((VIEW, T0 + 3 * D))
    # when
    steps = store.funnel().group("all").steps
    # then
    assert [s.customers for s in steps] == [4, 3, 2, 1]
    assert [s.from_previous for s in steps] == [None, 0.75, 2 / 3, 0.5]
    assert [s.from_first for s in steps] == [1.0, 0.75, 0.5, 0.25]
    assert [s.median_from_previous for s in steps] == [None, 3 * H, 2 * H, H]


def test_out_of_order_steps_are_not_counted(store: Store) -> None:
    """A step done before the previous one does not count, on either backend."""
    # given: an add before the first view; an order before checkout started
    store.history((ADD, T0 + H), (VIEW, T0 + 2 * H), (ORDER, T0 + 3 * H), (CHECKOUT, T0 + 4 * H))
    store.history((VIEW, T0 + H), (ADD, T0 + 2 * H), (ORDER, T0 + 3 * H), (CHECKOUT, T0 + 4 * H))
    # when
    report = store.funnel()
    # then
    assert counts(report) == [2, 1, 1, 0]


def test_steps_outside_the_window_are_not_counted(store: Store) -> None:
    """The window is inclusive from step 1 and may run past ``until``; starts must be inside."""
    # given
    store.history((VIEW, T0), (ADD, T0 + 7 * D))  # exactly at the window's edge: counts
    store.history((VIEW, T0), (ADD, T0 + 7 * D + timedelta(seconds=1)))  # a second late
    store.history((VIEW, UNTIL - H), (ADD, UNTIL + H))  # after until, within the window
    store.history((VIEW, UNTIL), (ADD, UNTIL + H))  # starts at until: outside the period
    store.history((VIEW, SINCE - H), (ADD, SINCE + H))  # starts before since
    # when
    report = store.funnel([(VIEW, None), (ADD, None)])
    # then
    assert counts(report) == [3, 2]


def test_a_customer_repeating_step_one_is_counted_once_from_the_first(store: Store) -> None:
    """Repeated step-1 events count one customer, timed and windowed from the first."""
    # given
    store.history((VIEW, T0), (VIEW, T0 + 6 * D), (ADD, T0 + 8 * D))  # a restart would convert
    store.history(
        (VIEW, T0), (VIEW, T0 + H), (VIEW, T0 + 90 * timedelta(minutes=1)), (ADD, T0 + 2 * H)
    )
    # when
    steps = store.funnel([(VIEW, None), (ADD, None)]).group("all").steps
    # then
    assert [s.customers for s in steps] == [2, 1]
    assert steps[1].median_from_previous == 2 * H


def test_events_with_equal_timestamps_count_in_funnel_order(store: Store) -> None:
    """Steps stored in reverse order but sharing one timestamp all count, with zero gaps."""
    # given
    store.history((ORDER, T0 + H), (CHECKOUT, T0 + H), (ADD, T0 + H), (VIEW, T0 + H))
    # when
    steps = store.funnel().group("all").steps
    # then
    assert [s.customers for s in steps] == [1, 1, 1, 1]
    assert steps[3].median_from_previous == timedelta()


def test_where_conditions_read_the_stored_properties(store: Store) -> None:
    """Conditions on steps see the event properties as stored, on both backends."""
    # given
    x = store.customer()
    store.track(x, VIEW, T0 + H, category="hats")
    store.track(x, VIEW, T0 + 2 * H, category="shoes")
    store.track(x, ORDER, T0 + 3 * H, total=50)
    store.track(x, ORDER, T0 + 4 * H, total=150)
    y = store.customer()
    store.track(y, VIEW, T0 + H, category="hats")
    store.track(y, ORDER, T0 + 2 * H, total=500)
    # when
    steps = (
        store.funnel(
            [
                (VIEW, "event.properties.category == 'shoes'"),
                (ORDER, "event.properties.total >= 100"),
            ]
        )
        .group("all")
        .steps
    )
    # then
    assert [s.customers for s in steps] == [1, 1]
    assert steps[1].median_from_previous == 2 * H


def test_split_by_journey_uses_instances_entered_at_or_before_step_one(store: Store) -> None:
    """'In the journey' means an instance of it entered no later than the customer's first step."""
    # given
    cart, welcome = store.journey("abandoned-cart"), store.journey("welcome")
    early = store.history((VIEW, T0 + H), (ADD, T0 + 2 * H))
    store.enter(cart, early, T0)
    store.enter(cart, early, T0 + 5 * H)  # a second, later entry changes nothing
    same_time = store.history((VIEW, T0 + 2 * H))
    store.enter(cart, same_time, T0 + 2 * H)
    late = store.history((VIEW, T0 + H), (ADD, T0 + 2 * H))
    store.enter(cart, late, T0 + 3 * H)
    other = store.history((VIEW, T0 + H))
    store.enter(welcome, other, T0)
    store.history((VIEW, T0 + H))  # in no journey at all
    # when
    report = store.funnel([(VIEW, None), (ADD, None)], split_by_journey="abandoned-cart")
    # then
    assert [g.group for g in report.groups] == ["all", "in_journey", "not_in_journey"]
    assert counts(report) == [5, 2]
    assert counts(report, "in_journey") == [2, 1]
    assert counts(report, "not_in_journey") == [3, 1]
    assert report.group("in_journey").steps[1].from_previous == 0.5


def test_split_by_segment_uses_membership_when_the_customer_started(store: Store) -> None:
    """'In the segment' is the recorded membership at step 1, not membership gained later."""
    # given
    member = store.history((VIEW, T0 + 2 * H), (ADD, T0 + 3 * H))
    joined_after = store.history((VIEW, T0 + 2 * H), (ADD, T0 + 3 * H))
    left_before = store.history((VIEW, T0 + 2 * H))
    rejoined = store.history((VIEW, T0 + 4 * H))
    store.history((VIEW, T0 + 2 * H))  # never a member
    store.segment(
        "vip",
        (member, "entered", T0),
        (joined_after, "entered", T0 + 3 * H),
        (left_before, "entered", T0),
        (left_before, "exited", T0 + H),
        (rejoined, "entered", T0),
        (rejoined, "exited", T0 + H),
        (rejoined, "entered", T0 + 4 * H),
    )
    # when
    report = store.funnel([(VIEW, None), (ADD, None)], split_by_segment="vip")
    # then
    assert [g.group for g in report.groups] == ["all", "in_segment", "not_in_segment"]
    assert counts(report) == [5, 2]
    assert counts(report, "in_segment") == [2, 1]
    assert counts(report, "not_in_segment") == [3, 1]
    assert report.as_dict()["split_by_segment"] == "vip"


def test_a_funnel_split_by_an_unknown_segment_or_by_two_things_is_refused(store: Store) -> None:
    """An unknown segment is NotFound; a journey and a segment at once is an input error."""
    store.journey("abandoned-cart")
    with pytest.raises(NotFound, match="no segment 'ghost'"):
        store.funnel(split_by_segment="ghost")
    with pytest.raises(InputError, match="not both"):
        store.funnel(split_by_journey="abandoned-cart", split_by_segment="ghost")


def test_an_empty_funnel_reports_zeros(store: Store) -> None:
    """With no matching events every count is zero and no ratio or median is made up."""
    # given: only events the funnel does not name
    store.history(("Signed Up", T0 + H))
    store.journey("abandoned-cart")
    # when
    report = store.funnel(split_by_journey="abandoned-cart")
    # then
    for group in ("all", "in_journey", "not_in_journey"):
        assert counts(report, group) == [0, 0, 0, 0]
        for step in report.group(group).steps:
            assert step.from_previous is None and step.from_first is None
            assert step.median_from_previous is None


def test_other_workspaces_events_and_journeys_are_not_seen(engine: Engine, store: Store) -> None:
    """A funnel reads its own workspace only: events and journey keys of others are invisible."""
    # given
    other = Store(engine, "Other shop")
    other.history((VIEW, T0 + H), (ADD, T0 + 2 * H))
    other.journey("abandoned-cart")
    store.history((VIEW, T0 + H))
    # when
    report = store.funnel([(VIEW, None), (ADD, None)])
    # then
    assert counts(report) == [1, 0]
    with pytest.raises(NotFound, match="no journey 'abandoned-cart'"):
        store.funnel(split_by_journey="abandoned-cart")


# -- the admin API ---------------------------------------------------------------------


@pytest.fixture
def client(engine: Engine, database_url: str) -> Iterator[TestClient]:
    clock = FrozenClock(UNTIL)
    app = create_app(Settings(database_url=database_url), engine=engine, clock=clock)
    with TestClient(app) as test_client:
        yield test_client


def post_funnel(client: TestClient, store: Store, body: dict[str, Any], *, query: str = "") -> Any:
    return client.post(
        f"/admin/v1/reports/funnel{query}",
        json=body,
        headers={"Authorization": f"Bearer {store.workspace.admin_token}"},
    )


BODY = {
    "steps": [
        {"event": VIEW},
        {"event": ADD},
        {"event": ORDER, "where": "event.properties.total > 0"},
    ],
    "window": "7d",
    "since": "2026-03-02T09:00:00Z",
    "until": "2026-03-16T09:00:00",
}


def test_the_api_answers_the_funnel_as_json_and_csv(client: TestClient, store: Store) -> None:
    """POST /admin/v1/reports/funnel gives the same figures as compute_funnel, in JSON and CSV."""
    # given
    cart = store.journey("abandoned-cart")
    a = store.history((VIEW, T0 + H), (ADD, T0 + 2 * H))
    store.track(a, ORDER, T0 + 3 * H, total=99)
    store.enter(cart, a, T0)
    store.history((VIEW, T0 + H))
    body = {**BODY, "split_by_journey": "abandoned-cart"}
    # when
    as_json = post_funnel(client, store, body)
    as_csv = post_funnel(client, store, body, query="?format=csv")
    # then
    assert as_json.status_code == 200, as_json.text
    expected = store.funnel(
        [(VIEW, None), (ADD, None), (ORDER, "event.properties.total > 0")],
        split_by_journey="abandoned-cart",
    )
    assert as_json.json() == expected.as_dict()
    assert as_json.json()["groups"][0]["steps"][2]["conversion_from_first"] == 0.5
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(r["group"], r["step"], r["customers"]) for r in rows[:3]] == [
        ("all", "1", "2"),
        ("all", "2", "1"),
        ("all", "3", "1"),
    ]
    assert len(rows) == 9


def test_the_api_defaults_to_the_month_before_now(client: TestClient, store: Store) -> None:
    """Without since and until the report covers the 30 days before the app clock's now."""
    # given: the clock is at UNTIL
    store.history((VIEW, UNTIL - 29 * D))
    store.history((VIEW, UNTIL - 31 * D))
    # when
    response = post_funnel(client, store, {"steps": BODY["steps"], "window": "1d"})
    # then
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["until"] == UNTIL.isoformat()
    assert data["groups"][0]["steps"][0]["customers"] == 1


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"window": "a week"}, 400, "invalid_input"),
        ({"window": "0d"}, 400, "invalid_input"),
        ({"split_by_journey": "nope"}, 404, "not_found"),
        ({"steps": [{"event": VIEW}]}, 400, "invalid_input"),
        ({"steps": [{"event": VIEW}, {"event": ""}]}, 400, "invalid_input"),
        (
            {"steps": [{"event": VIEW}, {"event": ADD, "where": "event.x >"}]},
            400,
            "invalid_condition",
        ),
        ({"since": "2026-03-20T00:00:00Z"}, 400, "invalid_input"),
        ({"until": "not a time"}, 400, "invalid_input"),
        ({"until": "9999-12-31T00:00:00Z"}, 400, "invalid_input"),
        ({"split_by": "abandoned-cart"}, 400, "invalid_input"),
    ],
)
def test_the_api_refuses_bad_requests_with_code_and_message(
    client: TestClient, store: Store, change: dict[str, Any], status: int, code: str
) -> None:
    """Bad windows, steps, conditions, periods or fields are 400; an unknown journey is 404."""
    # when
    response = post_funnel(client, store, {**BODY, **change})
    # then
    assert response.status_code == status, response.text
    assert set(response.json()) == {"code", "message"}
    assert response.json()["code"] == code


def test_the_api_needs_an_admin_token(client: TestClient, store: Store) -> None:
    """Without the admin token the report is refused, and a write key does not do."""
    # when
    anonymous = client.post("/admin/v1/reports/funnel", json=BODY)
    write_key = client.post(
        "/admin/v1/reports/funnel",
        json=BODY,
        headers={"Authorization": f"Bearer {store.workspace.write_key}"},
    )
    # then
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    assert write_key.status_code == 401


def test_the_api_rejects_an_unknown_format(client: TestClient, store: Store) -> None:
    """``?format=`` is json or csv; anything else is 400."""
    response = post_funnel(client, store, BODY, query="?format=xml")
    assert response.status_code == 400 and response.json()["code"] == "invalid_input"


# -- the CLI ---------------------------------------------------------------------------


def run_cli(engine: Engine, database_url: str, store: Store, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        ["report", "funnel", "--workspace", store.ws, *args],
        obj={"engine": engine},
        env={"TOUCHLINE_DATABASE_URL": database_url},
    )


PERIOD = ["--since", "2026-03-02T09:00:00", "--until", "2026-03-16T09:00:00"]


def test_the_cli_prints_json_csv_and_a_table(
    engine: Engine, database_url: str, store: Store
) -> None:
    """`touchline report funnel` gives compute_funnel's figures as JSON, CSV and a table."""
    # given
    cart = store.journey("abandoned-cart")
    a = store.history((VIEW, T0 + H), (ADD, T0 + 2 * H))
    store.track(a, ORDER, T0 + 3 * H, total=120)
    store.enter(cart, a, T0)
    store.history((VIEW, T0 + H), (ADD, T0 + 3 * H))
    store.history((VIEW, T0 + H))
    steps = f"{VIEW},{ADD},{ORDER}"
    common = ["--steps", steps, "--where", "3=event.properties.total > 100", "--window", "7d"]
    split = ["--split-by-journey", "abandoned-cart"]
    # when
    as_json = run_cli(engine, database_url, store, *common, *PERIOD, *split, "--format", "json")
    as_csv = run_cli(engine, database_url, store, *common, *PERIOD, "--format", "csv")
    table = run_cli(engine, database_url, store, *common, *PERIOD, *split)
    # then
    assert as_json.exit_code == 0, as_json.output
    expected = store.funnel(
        [(VIEW, None), (ADD, None), (ORDER, "event.properties.total > 100")],
        split_by_journey="abandoned-cart",
    )
    assert json.loads(as_json.output) == expected.as_dict()
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [r["customers"] for r in rows] == ["3", "2", "1"]
    assert table.exit_code == 0, table.output
    assert "All customers" in table.output and "In journey abandoned-cart" in table.output
    assert "66.7%" in table.output and "33.3%" in table.output


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--steps", f"{VIEW},{ADD}", "--window", "soon"], 2, "window"),
        (["--steps", VIEW], 2, "2 to"),
        (["--steps", f"{VIEW},{ADD}", "--where", "5=event.type == 'x'"], 2, "no step 5"),
        (["--steps", f"{VIEW},{ADD}", "--split-by-journey", "nope"], 1, "no journey 'nope'"),
        (["--steps", f"{VIEW},{ADD}", "--since", "2026-04-01"], 2, "since must be before until"),
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
    """Bad usage exits 2 and a refused report (unknown journey) exits 1, each saying why."""
    # when
    result = run_cli(engine, database_url, store, *args, "--until", "2026-03-16")
    # then
    assert result.exit_code == exit_code, result.output
    assert message in result.output
