"""The console's broadcast pages, in-process (TestClient) on SQLite and PostgreSQL.

A marketer makes broadcasts through the form (and sees each problem next to
its field), schedules and cancels them with the buttons, and reads their
progress after the worker's tick and a dispatcher run with the capture
channel. Another shop's people find none of it; posts without the form's
token change nothing. The shops are built by ``console_world``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from console_world import MARKUP, Browser, World, build, fast_passwords
from sqlalchemy import Engine, func, select, update

from touchline.audience.broadcast_runner import SETTLE_EVERY, advance_broadcasts
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.store.db import transaction
from touchline.store.tables import broadcasts, journeys, segments, workspaces
from touchline.web.console.broadcasts import (
    blank_form,
    definition,
    form_errors,
    local_time_to_utc,
)

LEASE = timedelta(seconds=60)


@pytest.fixture
def world(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    fast_passwords(monkeypatch)
    yield build(engine)


def form(**fields: str) -> dict[str, str]:
    """A new-broadcast form as a marketer fills it: one template, to everyone, by email."""
    return {
        "broadcast": "spring-news",
        "name": "Spring news",
        "audience": "all",
        "channel": "email",
        "purpose": "transactional",
        "template": "thanks",
        "properties": '{"order_id": "spring", "revenue": 990}',
        "action": "draft",
        **fields,
    }


def ab_form(**fields: str) -> dict[str, str]:
    test = {
        "ab": "on",
        "template": "",
        "variant_0_name": "a",
        "variant_0_template": "thanks",
        "variant_1_name": "b",
        "variant_1_template": "cart-reminder",
        "sample": "100",
        "wait": "1h",
        "metric": "click",
        "min_sample": "1",
        "fallback": "first",
        "properties": '{"order_id": "spring", "revenue": 990, "cart_id": "c-9"}',
    }
    return form(**{**test, **fields})


def stored(world: World, key: str = "spring-news", ws: str | None = None) -> Any:
    with world.engine.connect() as conn:
        return conn.execute(
            select(broadcasts).where(
                broadcasts.c.workspace_id == (ws or world.a), broadcasts.c.key == key
            )
        ).first()


def count(world: World) -> int:
    with world.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(broadcasts)).scalar_one())


def tick(world: World) -> None:
    """The worker's broadcast step, until nothing more is due now."""
    while advance_broadcasts(world.engine, owner="w", now=world.clock.now(), lease=LEASE):
        pass


def dispatch(world: World) -> CaptureChannel:
    """A dispatcher run with the capture channel, until nothing is due now."""
    capture = CaptureChannel()
    dispatcher = Dispatcher(
        world.engine, clock=world.clock, owner="d", channels={"*": capture}, batch=100
    )

    async def drive() -> None:
        while await dispatcher.run_once(world.clock.now()):
            pass

    asyncio.run(drive())
    return capture


def figure(html: str, name: str) -> str:
    found = re.search(rf'id="figure-{name}">([^<]*)<', html)
    assert found, f"no figure {name} on the page"
    return found.group(1)


def error_for(html: str, name: str) -> str:
    found = re.search(rf'data-error-for="{name}">([^<]*)<', html)
    assert found, f"no problem shown for {name}"
    return found.group(1)


# -- pure pieces of the form -----------------------------------------------------------------


def test_a_time_typed_in_the_workspace_zone_is_stored_in_utc() -> None:
    """15:00 in Moscow is 12:00 UTC; a typed offset wins over the zone."""
    moscow = ZoneInfo("Europe/Moscow")
    assert local_time_to_utc("2026-03-02T15:00", moscow) == datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert local_time_to_utc("2026-03-02T15:00+00:00", moscow).hour == 15


def test_the_definitions_problems_land_on_their_form_fields() -> None:
    """Paths are mapped to form fields; variant indexes to the rows they came from."""
    message = (
        "broadcast: must be 1-54 lowercase letters; ab_test.variants[1].template: no template "
        "'x' in this workspace; ab_test.wait: must be at most 30d; (document): give either "
        "template: or ab_test: with its variants, not both"
    )
    errors = form_errors(message, rows=[0, 3])
    assert errors["broadcast"] == "must be 1-54 lowercase letters"
    assert errors["variant_3_template"] == "no template 'x' in this workspace"
    assert errors["wait"] == "must be at most 30d"
    assert errors[""].startswith("(document): give either template: or ab_test:")


def test_a_draft_has_no_start_and_a_schedule_without_a_time_starts_now() -> None:
    """ "Save as draft" leaves send_at out; "Schedule" with the time empty sends now."""
    now = datetime(2026, 3, 2, 9, tzinfo=UTC)
    values = {**blank_form(), **form()}
    draft, _, errors = definition(values, schedule=False, tz=ZoneInfo("UTC"), now=now)
    assert "send_at" not in draft and not errors
    scheduled, _, _ = definition(values, schedule=True, tz=ZoneInfo("UTC"), now=now)
    assert scheduled["send_at"] == now.isoformat()


# -- access ----------------------------------------------------------------------------------


def test_marketers_open_broadcasts_and_operators_are_refused(world: World) -> None:
    """The section is in a marketer's menu; an operator gets 403 on every page of it."""
    marketer = world.signed_in("marketer@a.example")
    listing = marketer.get("/console/broadcasts")
    assert listing.status_code == 200
    assert 'href="/console/broadcasts"' in listing.text and "No broadcasts yet" in listing.text
    assert marketer.get("/console/broadcasts/new").status_code == 200
    operator = world.signed_in("operator@a.example")
    for path in ("/console/broadcasts", "/console/broadcasts/new"):
        response = operator.get(path)
        assert response.status_code == 403
        assert 'href="/console/broadcasts"' not in response.text
    assert operator.post("/console/broadcasts/new", form()).status_code == 403
    assert count(world) == 0


def test_signed_out_the_pages_send_to_sign_in(world: World) -> None:
    """No session: the list, a broadcast and its progress all redirect to the sign-in page."""
    client = world.client()
    for path in ("/console/broadcasts", "/console/broadcasts/x", "/console/broadcasts/x/progress"):
        response = client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/sign-in")


# -- creating --------------------------------------------------------------------------------


def test_the_form_offers_the_workspaces_segments_and_templates(world: World) -> None:
    """Audience choices are A's live segments with sizes; template choices A's templates."""
    with transaction(world.engine) as conn:
        for ws, key, status in ((world.a, "vip", "ready"), (world.a, "old", "archived")):
            conn.execute(
                segments.insert().values(
                    workspace_id=ws,
                    key=key,
                    name=key.upper(),
                    spec={},
                    source="",
                    checksum="",
                    status=status,
                    created_at=world.clock.now(),
                    updated_at=world.clock.now(),
                )
            )
    html = world.signed_in("marketer@a.example").get("/console/broadcasts/new").text
    assert '<option value="vip">VIP (vip, 0)</option>' in html
    assert 'value="old"' not in html
    assert '<option value="cart-sms">cart-sms · sms</option>' in html
    assert "Start at (UTC)" in html


def test_a_valid_form_saves_a_draft_through_the_store(world: World) -> None:
    """The draft is stored with the definition the API would store, and its page opens."""
    browser = world.signed_in("marketer@a.example")
    response = browser.post("/console/broadcasts/new", form())
    assert response.status_code == 303
    assert response.headers["location"] == "/console/broadcasts/spring-news?notice=broadcast_draft"
    row = stored(world)
    assert row.status == "draft" and row.send_at is None
    assert row.spec == {
        "broadcast": "spring-news",
        "name": "Spring news",
        "audience": "all",
        "channel": "email",
        "template": "thanks",
        "purpose": "transactional",
        "properties": {"order_id": "spring", "revenue": 990},
        "cap_exempt": False,
        "when_capped": "skip",
    }
    page = browser.get(response.headers["location"])
    assert page.status_code == 200
    assert "saved as a draft" in page.text and 'id="schedule"' in page.text
    assert 'data-poll="' not in page.text  # a draft does not move: nothing to follow
    listing = browser.get("/console/broadcasts").text
    assert 'data-broadcast="spring-news"' in listing and "Spring news" in listing


def test_schedule_at_a_time_typed_in_the_workspace_zone(world: World) -> None:
    """An A/B test scheduled for 15:00 Moscow time starts at 12:00 UTC with its settings."""
    with transaction(world.engine) as conn:
        conn.execute(
            update(workspaces).where(workspaces.c.id == world.a).values(timezone="Europe/Moscow")
        )
    browser = world.signed_in("marketer@a.example")
    response = browser.post(
        "/console/broadcasts/new",
        ab_form(action="schedule", send_at="2026-03-02T15:00", local_time="11:00", rate="600"),
    )
    assert response.status_code == 303, error_page(response.text)
    row = stored(world)
    assert row.status == "scheduled"
    assert row.send_at == datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert row.spec["ab_test"] == {
        "variants": [
            {"name": "a", "template": "thanks"},
            {"name": "b", "template": "cart-reminder"},
        ],
        "sample": 100.0,
        "wait": "1h",
        "metric": "click",
        "min_sample": 1,
        "confidence": 0.95,
        "fallback": "first",
    }
    assert (row.spec["local_time"], row.spec["rate"]) == ("11:00", 600)
    page = browser.get("/console/broadcasts/spring-news").text
    assert "2026-03-02 15:00 (Europe/Moscow)" in page
    assert 'data-status="scheduled"' in page  # the page follows it from now on


def error_page(html: str) -> str:
    found = re.search(r'id="problems">(.*?)</div>', html, re.S)
    return found.group(1) if found else html[:500]


#: Bad forms: (fields changed, the form field the problem is shown on, what it says).
BAD_FORMS: list[tuple[dict[str, str], str, str]] = [
    ({"broadcast": "Spring News!"}, "broadcast", "lowercase letters"),
    ({"rate": "0"}, "rate", "greater than or equal to 1"),
    ({"local_time": "25:00"}, "local_time", "25:00"),
    ({"action": "schedule", "send_at": "next tuesday"}, "send_at", "not a date and time"),
    ({"properties": "[1, 2]"}, "properties", "JSON object"),
    ({"template": ""}, "template", "choose a template"),
    ({"template": "cart-sms"}, "template", "is for sms, not email"),
    ({"template": "nope"}, "template", "no template &#39;nope&#39;"),
    ({"audience": "vip"}, "audience", "no segment &#39;vip&#39;"),
]


def test_an_invalid_form_names_the_field_and_stores_nothing(world: World) -> None:
    """Each problem is shown next to its field and in the list above; nothing is created."""
    browser = world.signed_in("marketer@a.example")
    for fields, field, says in BAD_FORMS:
        response = browser.post("/console/broadcasts/new", form(**fields))
        assert response.status_code == 400, fields
        assert says in error_for(response.text, field), fields
        assert 'id="problems"' in response.text
        typed = form(**fields)["broadcast"]
        assert f'value="{typed}"' in response.text, "what was typed is kept"
    assert count(world) == 0
    with world.engine.connect() as conn:
        made = conn.execute(
            select(func.count()).select_from(journeys).where(journeys.c.key.like("broadcast:%"))
        ).scalar_one()
    assert made == 0


def test_an_ab_problem_lands_on_the_row_it_came_from(world: World) -> None:
    """Variants in rows 1 and 3: a wrong channel in row 3 is shown on row 3; one variant is too few."""
    browser = world.signed_in("marketer@a.example")
    rows = ab_form(
        variant_0_template="",
        variant_1_template="thanks",
        variant_3_name="d",
        variant_3_template="cart-sms",
    )
    response = browser.post("/console/broadcasts/new", rows)
    assert response.status_code == 400
    assert "is for sms, not email" in error_for(response.text, "variant_3_template")
    lonely = browser.post("/console/broadcasts/new", ab_form(variant_1_template=""))
    assert lonely.status_code == 400
    assert "at least 2" in error_for(lonely.text, "variants")
    assert count(world) == 0


def test_a_key_in_use_is_refused_on_its_field(world: World) -> None:
    """A second broadcast with the same key is shown the problem; the first is untouched."""
    browser = world.signed_in("marketer@a.example")
    assert browser.post("/console/broadcasts/new", form()).status_code == 303
    again = browser.post("/console/broadcasts/new", form(name="Another"))
    assert again.status_code == 400
    assert "exists; choose another key" in error_for(again.text, "broadcast")
    assert stored(world).name == "Spring news" and count(world) == 1


# -- schedule, send, watch, cancel -----------------------------------------------------------


def test_schedule_a_draft_and_watch_it_sent(world: World) -> None:
    """Scheduled now from its page, the tick queues both customers and the dispatcher sends;
    the page and its poll show audience, queued and sent, and the list the figures."""
    browser = world.signed_in("marketer@a.example")
    browser.post("/console/broadcasts/new", form())
    scheduled = browser.post("/console/broadcasts/spring-news/schedule", {"send_at": ""})
    assert scheduled.status_code == 303
    assert scheduled.headers["location"].endswith("notice=broadcast_scheduled")
    assert stored(world).send_at == world.clock.now()
    # when: the worker's turn, then the dispatcher's
    tick(world)
    sending = browser.get("/console/broadcasts/spring-news/progress").json()
    capture = dispatch(world)
    world.clock.advance(SETTLE_EVERY)
    tick(world)
    # then
    assert sending["status"] == "sending" and sending["active"] is True
    assert (sending["audience"], sending["queued"], sending["pending"]) == (2, 2, 2)
    assert sorted(m.to for m in capture.messages) == ["anna@example.com", "mallory@example.com"]
    done = browser.get("/console/broadcasts/spring-news/progress").json()
    assert done["status"] == "sent" and done["active"] is False
    assert (done["sent"], done["settled"], done["pending"]) == (2, 2, 0)
    page = browser.get("/console/broadcasts/spring-news").text
    assert figure(page, "sent") == "2" and figure(page, "audience") == "2"
    assert '<progress id="progress-bar" max="2" value="2"' in page
    assert 'id="cancel"' not in page and 'id="schedule"' not in page
    row = re.search(
        r'data-broadcast="spring-news">.*?</tr>', browser.get("/console/broadcasts").text, re.S
    )
    assert row is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', row.group(0))
    assert cells == ["2", "2", "2", "0", "0"]  # customers, queued, sent, opened, clicked


def test_skipped_by_rule_shows_the_rule(world: World) -> None:
    """A marketing email to customers without consent is skipped, and the page says why."""
    browser = world.signed_in("marketer@a.example")
    browser.post("/console/broadcasts/new", form(purpose="marketing", action="schedule"))
    tick(world)
    dispatch(world)
    found = browser.get("/console/broadcasts/spring-news/progress").json()
    assert found["skipped"] == 2 and found["sent"] == 0
    page = browser.get("/console/broadcasts/spring-news").text
    assert figure(page, "skipped") == "2"
    table = re.search(r'id="skipped-by-reason">.*?</table>', page, re.S)
    assert table is not None
    reasons = dict(
        re.findall(r"<code>([^<]+)</code></td><td class=\"num\">([^<]+)<", table.group(0))
    )
    assert reasons == {reason: str(n) for reason, n in found["skipped_by_reason"].items()}
    assert sum(int(n) for n in reasons.values()) == 2


def test_cancel_skips_what_was_waiting(world: World) -> None:
    """A throttled broadcast cancelled after queueing: its waiting messages become skipped
    with reason "cancelled", the buttons go, and a second cancel is refused."""
    browser = world.signed_in("marketer@a.example")
    browser.post("/console/broadcasts/new", form(action="schedule", rate="1"))
    tick(world)
    cancelled = browser.post("/console/broadcasts/spring-news/cancel")
    assert cancelled.status_code == 303
    assert cancelled.headers["location"].endswith("notice=broadcast_cancelled")
    assert stored(world).status == "cancelled"
    found = browser.get("/console/broadcasts/spring-news/progress").json()
    assert found["skipped_by_reason"] == {"cancelled": 2} and found["pending"] == 0
    page = browser.get("/console/broadcasts/spring-news").text
    assert "<code>cancelled</code>" in page and 'id="cancel"' not in page
    again = browser.post("/console/broadcasts/spring-news/cancel")
    assert again.status_code == 409 and "already cancelled" in again.text
    assert browser.post("/console/broadcasts/spring-news/schedule").status_code == 409


def test_the_ab_decision_and_its_figures_are_shown_once_made(world: World) -> None:
    """Before the wait ends the page lists the variants' live figures; after, the winner
    (here the first, by fallback: nobody clicked) with each variant's figures."""
    browser = world.signed_in("marketer@a.example")
    browser.post("/console/broadcasts/new", ab_form(action="schedule"))
    tick(world)
    dispatch(world)
    tick(world)
    waiting = browser.get("/console/broadcasts/spring-news").text
    assert 'id="variant-figures"' in waiting and "The winner is chosen" in waiting
    world.clock.advance(timedelta(hours=1, seconds=1))
    tick(world)
    row = stored(world)
    assert row.winner == "a"
    page = browser.get("/console/broadcasts/spring-news").text
    assert "Winner: a" in page and row.decision["chosen_by"] in page
    table = re.search(r'id="decision-figures">.*?</table>', page, re.S)
    assert table is not None
    sent = re.findall(
        r"<tr>\s*<td>(\w)[^<]*(?:<span[^>]*>winner</span>)?</td>\s*<td class=\"num\">(\d+)",
        table.group(0),
    )
    assert sent == [(v["variant"], str(v["sent"])) for v in row.decision["variants"]]
    assert sum(v["sent"] for v in row.decision["variants"]) == 2


# -- isolation, CSRF, escaping ---------------------------------------------------------------


def test_another_shop_finds_none_of_our_broadcasts(world: World) -> None:
    """B's marketer and admin get 404 for A's broadcast, its progress and its buttons."""
    world.signed_in("marketer@a.example").post("/console/broadcasts/new", form(action="schedule"))
    for email in ("marketer@b.example", "admin@b.example"):
        other = world.signed_in(email)
        for path in ("/console/broadcasts/spring-news", "/console/broadcasts/spring-news/progress"):
            response = other.get(path)
            assert response.status_code == 404 and "Spring news" not in response.text
        assert other.post("/console/broadcasts/spring-news/cancel").status_code == 404
        assert other.post("/console/broadcasts/spring-news/schedule").status_code == 404
        assert "spring-news" not in other.get("/console/broadcasts").text
    assert stored(world).status == "scheduled"
    # B may use the same key for its own: it is another workspace's broadcast.
    b_marketer = world.signed_in("marketer@b.example")
    assert b_marketer.post("/console/broadcasts/new", form()).status_code == 303
    assert stored(world, ws=world.b).status == "draft" and stored(world).status == "scheduled"


def test_posts_without_the_forms_token_change_nothing(world: World) -> None:
    """Create, schedule and cancel without the CSRF token, or with another session's: 403."""
    browser = world.signed_in("marketer@a.example")
    browser.post("/console/broadcasts/new", form())
    other = world.signed_in("marketer@a.example")
    for path, data in (
        ("/console/broadcasts/new", form(broadcast="other")),
        ("/console/broadcasts/spring-news/schedule", {}),
        ("/console/broadcasts/spring-news/cancel", {}),
    ):
        assert browser.client.post(path, data=data).status_code == 403
        crossed = browser.client.post(path, data={**data, "csrf_token": other.csrf})
        assert crossed.status_code == 403
    assert count(world) == 1 and stored(world).status == "draft"


def test_markup_in_a_name_is_shown_as_text(world: World) -> None:
    """A script tag typed as the name is escaped on the list and on the broadcast's page."""
    browser = world.signed_in("marketer@a.example")
    assert browser.post("/console/broadcasts/new", form(name=MARKUP)).status_code == 303
    for path in ("/console/broadcasts", "/console/broadcasts/spring-news"):
        body = browser.get(path).text
        assert "<script>alert" not in body
        assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in body
        assert re.search(r"<script(?![^>]*\bsrc=)", body) is None


def test_the_progress_poll_is_wired_to_the_page(world: World) -> None:
    """While active the page names its poll URL and interval; the URL answers JSON figures."""
    browser: Browser = world.signed_in("marketer@a.example")
    browser.post("/console/broadcasts/new", form(action="schedule"))
    page = browser.get("/console/broadcasts/spring-news").text
    poll = re.search(r'data-poll="([^"]+)" data-every="(\d+)"', page)
    assert poll is not None and poll.group(1) == "/console/broadcasts/spring-news/progress"
    answer = browser.get(poll.group(1))
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["status"] == "scheduled" and answer.json()["audience"] == 0
