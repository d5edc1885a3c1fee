"""The console's pages, in-process (TestClient) on SQLite and PostgreSQL.

Each test signs in through the real form and works through the pages as a
person would: reading figures, pausing a journey, making one from a recipe,
editing YAML, previewing a template, finding a customer, working the call
queue, reading the inbox, changing settings. The shops are built by
``console_world``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from console_world import MARKUP, PASSWORD, Browser, World, build, fast_passwords
from sqlalchemy import Engine, select

from touchline.store.tables import (
    api_keys,
    console_sessions,
    events,
    journey_versions,
    journeys,
    tasks,
    templates,
    workspaces,
)


@pytest.fixture
def world(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    fast_passwords(monkeypatch)
    yield build(engine)


def test_sign_in_sets_a_session_cookie_only_the_server_can_read(world: World) -> None:
    """The cookie is HttpOnly and SameSite=Lax; the store keeps only the token's hash."""
    browser = Browser(world.client())
    response = browser.sign_in("admin@a.example")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("tl_console="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
    token = cookie.split(";")[0].split("=", 1)[1]
    with world.engine.connect() as conn:
        stored = conn.execute(select(console_sessions.c.token_hash)).scalars().all()
    assert len(stored) == 1 and stored[0] != token and len(stored[0]) == 64
    page = browser.get("/console/overview")
    assert page.status_code == 200
    assert "Shop A" in page.text and "admin@a.example" in page.text


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(world: World) -> None:
    """A wrong password and an unknown email get the same 401 page and no session."""
    browser = Browser(world.client())
    wrong = browser.sign_in("admin@a.example", "not the password")
    unknown = browser.sign_in("nobody@a.example", PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong email or password." in wrong.text and "Wrong email or password." in unknown.text
    assert "tl_console=" not in " ".join(wrong.headers.get_list("set-cookie"))
    assert browser.get("/console/overview").status_code == 303


def test_sign_out_ends_the_session_in_the_store(world: World) -> None:
    """After signing out, the old cookie opens nothing."""
    browser = world.signed_in("marketer@a.example")
    token = browser.client.cookies.get("tl_console")
    response = browser.post("/console/sign-out")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/console/sign-in")
    replay = world.client()
    replay.cookies.set("tl_console", token, path="/console")
    assert replay.get("/console/journeys").status_code == 303
    with world.engine.connect() as conn:
        assert conn.execute(select(console_sessions)).first() is None


def test_overview_draws_rollup_figures_as_svg(world: World) -> None:
    """Key figures are the rollups' sums; each chart is an inline SVG; top journeys listed."""
    browser = world.signed_in("marketer@a.example")
    page = browser.get("/console/overview?days=7")
    assert page.status_code == 200
    # 100+101+102 emails and 3 × 30 SMS were bumped over three days, and the thank-you sent
    figures = page.text[page.text.index('id="key-figures"') : page.text.index('id="charts"')]
    assert ">394<" in figures  # sent
    assert ">13,500.00<" in figures  # attributed revenue: 3 days × 4,500
    assert page.text.count('<svg class="chart"') == 5
    assert "Messages by channel" in page.text and "<rect" in page.text
    assert 'href="/console/journeys/abandoned-cart"' in page.text


def test_journey_page_draws_the_flow_with_live_counts(world: World) -> None:
    """Anna waits at cool-off: the diagram says so, with every step and the exit."""
    browser = world.signed_in("marketer@a.example")
    page = browser.get("/console/journeys/abandoned-cart")
    assert page.status_code == 200
    flow = page.text[page.text.index('id="flow"') :]
    for step in ("cool-off", "reminder", "by-phone", "last-call"):
        assert f'data-step="{step}"' in flow
    cool_off = flow[flow.index('data-step="cool-off"') : flow.index('data-step="reminder"')]
    assert "1 now" in cool_off and "1 passed" in cool_off
    assert "exists(profile.phone)" in flow  # the branch case labels its jump
    assert "v1" in page.text and "Uplift over the holdout" in page.text


def test_pause_and_resume_need_the_form_and_change_the_status(world: World) -> None:
    """Pausing posts with the CSRF token; the journey row says paused, then active again."""
    browser = world.signed_in("marketer@a.example")

    def status() -> str:
        with world.engine.connect() as conn:
            return str(
                conn.execute(
                    select(journeys.c.status).where(
                        journeys.c.workspace_id == world.a, journeys.c.key == "abandoned-cart"
                    )
                ).scalar_one()
            )

    response = browser.post("/console/journeys/abandoned-cart/pause")
    assert response.status_code == 303 and status() == "paused"
    assert "The journey is paused" in browser.get(response.headers["location"]).text
    browser.post("/console/journeys/abandoned-cart/resume")
    assert status() == "active"


def test_recipe_makes_a_valid_paused_journey(world: World) -> None:
    """The review-request recipe with a custom trigger is applied, paused, with its file."""
    browser = world.signed_in("marketer@a.example")
    form = browser.get("/console/journeys/new?recipe=review-request")
    assert form.status_code == 200 and 'value="Order Delivered"' in form.text
    response = browser.post(
        "/console/journeys/new",
        {
            "recipe": "review-request",
            "journey": "reviews",
            "name": "Ask for reviews",
            "trigger_event": "Parcel Delivered",
            "delay": "5d",
            "channel": "email",
            "template": "thanks",
        },
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith("/console/journeys/reviews")
    with world.engine.connect() as conn:
        row = conn.execute(
            select(journeys.c.status, journeys.c.trigger_event, journey_versions.c.source)
            .join(journey_versions, journey_versions.c.id == journeys.c.current_version_id)
            .where(journeys.c.workspace_id == world.a, journeys.c.key == "reviews")
        ).one()
    assert row.status == "paused" and row.trigger_event == "Parcel Delivered"
    assert "wait: 5d" in row.source and "match: order_id" in row.source


def test_recipe_with_a_bad_wait_shows_the_loaders_problem(world: World) -> None:
    """A wait of "soon" is placed on its file, line and field, and nothing is applied."""
    browser = world.signed_in("marketer@a.example")
    response = browser.post(
        "/console/journeys/new",
        {
            "recipe": "welcome",
            "journey": "hello",
            "trigger_event": "Signed Up",
            "delay": "soon",
            "channel": "email",
            "template": "thanks",
        },
    )
    assert response.status_code == 400
    assert re.search(r"hello\.yaml:\d+</code> <strong>steps\[0\]\.wait", response.text), (
        response.text
    )
    with world.engine.connect() as conn:
        assert conn.execute(select(journeys).where(journeys.c.key == "hello")).first() is None


def test_yaml_editor_shows_problems_inline_and_saves_a_new_version(world: World) -> None:
    """A goto to a missing step is named with its line; a good edit becomes version 2."""
    browser = world.signed_in("marketer@a.example")
    source = browser.get("/console/journeys/thanks/edit").text
    assert "template: thanks" in source
    from console_world import THANKS

    broken = THANKS + "    next: nowhere\n"
    response = browser.post("/console/journeys/thanks/edit", {"source": broken})
    assert response.status_code == 400
    assert "thanks.yaml:9</code> <strong>steps[0].next</strong>" in response.text
    assert "no step with id" in response.text and "nowhere" in response.text
    fixed = THANKS.replace("name: Order thanks", "name: Thank you for the order")
    response = browser.post("/console/journeys/thanks/edit", {"source": fixed})
    assert response.status_code == 303
    page = browser.get("/console/journeys/thanks")
    assert (
        "Thank you for the order" in page.text
        and "/console/journeys/thanks/versions/2" in page.text
    )
    old = browser.get("/console/journeys/thanks/versions/1")
    assert old.status_code == 200 and "name: Order thanks" in old.text


def test_sms_preview_reports_encoding_parts_and_cost(world: World) -> None:
    """Typed text is rendered for Anna: Cyrillic makes it UCS-2, 2 parts at 3.50 each."""
    browser = world.signed_in("marketer@a.example")
    page = browser.get("/console/templates/cart-sms?customer=u-anna")
    assert page.status_code == 200 and "Anna, your cart waits" in page.text
    text = "{{ profile.first_name }}: " + "привет " * 10
    response = browser.post(
        "/console/templates/cart-sms/preview",
        {"channel": "sms", "text": text, "customer": "anna@example.com", "price": "3.50"},
    )
    assert response.status_code == 200
    found = response.json()
    assert found["error"] is None and found["text"].startswith("Anna: привет")
    assert found["sms"]["encoding"] == "UCS-2"
    assert found["sms"]["parts"] == 2 and found["sms"]["cost"] == "7.00"


def test_template_preview_names_a_syntax_error_and_save_refuses_it(world: World) -> None:
    """An unclosed tag is reported with part and line; the stored template is unchanged."""
    browser = world.signed_in("marketer@a.example")
    bad = {"channel": "email", "subject": "Hi", "html": "<p>ok</p>\n{% if %}"}
    preview = browser.post("/console/templates/thanks/preview", bad).json()
    assert "html line 2" in preview["error"]
    response = browser.post("/console/templates/thanks", bad)
    assert response.status_code == 400 and "html line 2" in response.text
    good = {
        "channel": "email",
        "subject": "Thanks, {{ profile.first_name }}",
        "html": "<p>Thanks</p>",
    }
    assert browser.post("/console/templates/thanks", good).status_code == 303
    with world.engine.connect() as conn:
        spec = conn.execute(
            select(templates.c.spec).where(
                templates.c.workspace_id == world.a, templates.c.key == "thanks"
            )
        ).scalar_one()
    assert spec["subject"] == "Thanks, {{ profile.first_name }}"
    assert spec["defaults"] == {"profile.first_name": "Friend"}  # kept from the file


@pytest.mark.parametrize("query", ["u-anna", "ANNA@example.com", "8 916 123-45-67"])
def test_customer_search_finds_by_id_email_or_phone(world: World, query: str) -> None:
    """Any of the three identifiers leads straight to Anna's page."""
    browser = world.signed_in("operator@a.example")
    response = browser.get("/console/customers", params={"q": query})
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/customers/{world.anna}"


def test_customer_timeline_mixes_events_and_messages_newest_first(world: World) -> None:
    """Mallory's order, then the thank-you sent for it and its send fact, newest on top."""
    browser = world.signed_in("marketer@a.example")
    world.clock.advance(__import__("datetime").timedelta(minutes=1))
    page = browser.get(f"/console/customers/{world.mallory}")
    assert page.status_code == 200
    timeline = page.text[page.text.index('id="timeline"') :]
    assert timeline.index("email sent") < timeline.index("Order Completed")
    assert "email · thanks" in timeline
    assert "mallory@example.com" in page.text
    assert "order-confirmation" not in page.text  # nothing of another journey


def test_operator_claims_the_next_call_and_closes_it(world: World) -> None:
    """Take next gives the due task; "reached" closes it and stores Call Completed."""
    browser = world.signed_in("operator@a.example")
    queue = browser.get("/console/queue")
    assert "Cart left twice" in queue.text
    response = browser.post("/console/queue/next")
    assert response.headers["location"].startswith(f"/console/queue/{world.task_a}")
    page = browser.get(f"/console/queue/{world.task_a}")
    assert "Ask whether delivery cost was the problem." in page.text
    assert "+79161234567" in page.text  # the customer's context
    response = browser.post(
        f"/console/queue/{world.task_a}/close", {"outcome": "reached", "note": "will order"}
    )
    assert response.status_code == 303
    with world.engine.connect() as conn:
        row = conn.execute(select(tasks).where(tasks.c.id == world.task_a)).one()
        stored = conn.execute(
            select(events.c.properties).where(events.c.name == "Call Completed")
        ).scalar_one()
    assert (row.status, row.outcome, row.assignee) == ("closed", "reached", "operator@a.example")
    assert stored["outcome"] == "reached" and stored["note"] == "will order"


def test_call_back_needs_a_time_in_the_workspace_zone(world: World) -> None:
    """ "Call back" without a time is refused; with one, a follow-up task is due then."""
    browser = world.signed_in("operator@a.example")
    browser.post(f"/console/queue/{world.task_a}/claim")
    refused = browser.post(f"/console/queue/{world.task_a}/close", {"outcome": "call_back"})
    assert refused.status_code == 400 and "when to call back" in refused.text
    done = browser.post(
        f"/console/queue/{world.task_a}/close",
        {"outcome": "call_back", "call_back_at": "2026-03-03T15:30"},
    )
    assert done.status_code == 303
    with world.engine.connect() as conn:
        follow = conn.execute(select(tasks).where(tasks.c.previous_id == world.task_a)).one()
    assert follow.due_at.isoformat() == "2026-03-03T15:30:00+00:00"  # Shop A is on UTC


def test_inbox_shows_the_captured_email_without_its_open_pixel(world: World) -> None:
    """The thank-you is listed; its page frames the HTML sandboxed, minus /t/o/."""
    browser = world.signed_in("marketer@a.example")
    inbox = browser.get("/console/inbox")
    assert f"/console/inbox/{world.message_a}" in inbox.text
    page = browser.get(f"/console/inbox/{world.message_a}")
    assert page.status_code == 200
    assert '<iframe class="mail" id="message-html" title="Email as sent" sandbox=""' in page.text
    assert "o-9" in page.text and "/t/o/" not in page.text
    assert "/t/c/" in page.text  # links stay as sent
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_settings_refuse_a_bad_document_and_save_a_good_one(world: World) -> None:
    """A misspelt key is named and nothing stored; a valid document is stored."""
    admin = world.signed_in("admin@a.example")
    bad = admin.post("/console/settings", {"document": '{"quiet_hourz": []}'})
    assert bad.status_code == 400 and "quiet_hourz" in bad.text
    good = admin.post("/console/settings", {"document": '{"topics": {"news": "News"}}'})
    assert good.status_code == 303
    with world.engine.connect() as conn:
        stored = conn.execute(
            select(workspaces.c.settings).where(workspaces.c.id == world.a)
        ).scalar_one()
    assert stored == {"topics": {"news": "News"}}


def test_a_new_key_is_shown_once_and_can_be_revoked(world: World) -> None:
    """The created write key appears in the page and in the snippet; revoking marks it."""
    admin = world.signed_in("admin@a.example")
    page = admin.post("/console/settings/keys", {"kind": "write"})
    key = re.search(r'id="new-key-value">([^<]+)<', page.text).group(1)  # type: ignore[union-attr]
    assert key.startswith("tlw_") and f'data-write-key="{key}"' in page.text.replace("&#34;", '"')
    again = admin.get("/console/settings")
    assert key not in again.text
    with world.engine.connect() as conn:
        key_id = (
            conn.execute(
                select(api_keys.c.id)
                .where(api_keys.c.workspace_id == world.a)
                .order_by(api_keys.c.id.desc())
            )
            .scalars()
            .first()
        )
    assert admin.post(f"/console/settings/keys/{key_id}/revoke").status_code == 303
    with world.engine.connect() as conn:
        revoked = conn.execute(
            select(api_keys.c.revoked_at).where(api_keys.c.id == key_id)
        ).scalar()
    assert revoked is not None


def test_tracker_script_is_served_to_any_site(world: World) -> None:
    """/touchline.js is public JavaScript that posts batches to /v1/batch."""
    response = world.client().get("/touchline.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "/v1/batch" in response.text and "sendBeacon" in response.text


def test_the_markup_customer_is_listed_as_text(world: World) -> None:
    """A sanity check of the seed: Mallory's name really holds a script tag."""
    with world.engine.connect() as conn:
        from touchline.store.tables import profiles

        name = conn.execute(
            select(profiles.c.first_name).where(profiles.c.id == world.mallory)
        ).scalar_one()
    assert name == MARKUP


@pytest.mark.parametrize(
    "key", sorted(__import__("touchline.web.console.recipes", fromlist=["RECIPES"]).RECIPES)
)
def test_every_recipe_with_its_defaults_is_a_valid_journey(key: str) -> None:
    """Each recipe's starting form makes a file the journey loader accepts, created paused."""
    from touchline.journeys.loader import load_journey_text
    from touchline.web.console.recipes import RECIPES, build, defaults, form_problems

    values = defaults(RECIPES[key])
    assert form_problems(values) == {}
    spec = load_journey_text(build(RECIPES[key], values), file=f"{key}.yaml")
    assert spec.journey == key and spec.status == "paused"
    assert spec.steps[-1].send is not None


def test_drawings_escape_every_text_they_show() -> None:
    """A journey key, step label or series name with markup is drawn as text in the SVG."""
    from touchline.journeys.loader import load_journey_text
    from touchline.web.console.charts import Series, line_chart
    from touchline.web.console.flow import draw

    chart = line_chart(["<b>"], [Series("<script>x</script>", [1.0])], title="<t>")
    assert "<script>" not in chart and "&lt;script&gt;" in chart and "<b>" not in chart
    spec = load_journey_text(
        'journey: j\ntrigger: {event: "<img src=x>"}\nsteps:\n  - send: {channel: email, template: "<i>"}\n',
        file="j.yaml",
    )
    svg = draw(spec, {}, entered=0)
    assert "<img" not in svg and "<i>" not in svg and "&lt;img src=x&gt;" in svg
