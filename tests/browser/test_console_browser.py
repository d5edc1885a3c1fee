"""The console in a real browser: what a marketer and an operator do in a day.

Headless Chromium against ``touchline serve`` on a seeded SQLite store (see
``conftest.py`` and ``seed.py``). Each test starts signed out in a fresh
browser context; screenshots of the main pages are kept as artifacts.
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect
from seed import MARKETER, OPERATOR, PASSWORD, Seeded
from server import Served
from sqlalchemy import create_engine, select

from conftest import screenshot
from touchline.store.tables import broadcasts, events, journeys, tasks


def sign_in(page: Any, email: str = MARKETER, *, to: str = "/console/") -> None:
    page.goto(to)
    expect(page.locator("#sign-in")).to_be_visible()
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("header.top")).to_contain_text("shop.example")


def test_sign_in_opens_the_overview_with_charts(page: Any) -> None:
    """A marketer signs in and lands on the overview: figures, five SVG charts, top journeys."""
    page.goto("/console/overview")
    expect(page).to_have_url("/console/sign-in?next=%2Fconsole%2Foverview")  # signed out
    page.fill("input[name=email]", MARKETER)
    page.fill("input[name=password]", "wrong password")
    page.click("#sign-in button[type=submit]")
    expect(page.locator(".error")).to_have_text("Wrong email or password.")
    page.fill("input[name=password]", PASSWORD)
    page.click("#sign-in button[type=submit]")
    expect(page).to_have_url("/console/overview")
    expect(page.locator("svg.chart")).to_have_count(5)
    expect(page.locator("#charts rect").first).to_be_visible()
    expect(page.locator("#top-journeys")).to_contain_text("Abandoned cart")
    expect(page.locator(".workspace")).to_have_text("shop.example")
    screenshot(page, "overview", docs=True)


def test_journey_diagram_shows_live_counts(page: Any) -> None:
    """The abandoned-cart journey's flow shows the customers waiting at cool-off now."""
    sign_in(page)
    page.click("nav.sections >> text=Journeys")
    expect(page.locator("#journey-list")).to_contain_text("Abandoned cart")
    page.click("#journey-list >> text=Abandoned cart")
    expect(page).to_have_url("/console/journeys/abandoned-cart")
    flow = page.locator("#flow svg.flow")
    expect(flow).to_be_visible()
    waiting = page.locator('#flow g[data-step="cool-off"] .waiting')
    expect(waiting).to_have_text("4 now")
    expect(page.locator('#flow g[data-step="by-phone"]')).to_contain_text("1 case, otherwise")
    expect(page.locator("#uplift")).to_be_visible()
    screenshot(page, "journey", docs=True)
    page.click("#pause")
    expect(page.locator("#journey-status")).to_have_text("paused")
    page.click("#resume")
    expect(page.locator("#journey-status")).to_have_text("active")


def test_create_a_journey_from_the_win_back_recipe(page: Any) -> None:
    """Recipe form in, journey out: the new journey opens paused with its flow drawn."""
    sign_in(page)
    page.goto("/console/journeys/new")
    page.click("#recipe-win-back")
    page.fill("input[name=journey]", "win-back-test")
    page.fill("input[name=trigger_event]", "Customer Lapsed 45d")
    page.fill("input[name=delay]", "2h")
    page.fill("input[name=template]", "winback-we-miss-you-15")
    page.fill("input[name=follow_up_template]", "winback-last-call-sms")
    screenshot(page, "journey-recipe")
    page.click("#create-journey")
    expect(page).to_have_url("/console/journeys/win-back-test?notice=created")
    expect(page.locator("#journey-status")).to_have_text("paused")
    expect(page.locator('#flow g[data-step="follow-up"]')).to_contain_text("winback-last-call-sms")
    expect(page.locator("main")).to_contain_text("Customer Lapsed 45d")


def test_journey_yaml_errors_are_shown_inline(page: Any) -> None:
    """Saving a journey with a bad wait lists the problem with its file, line and field."""
    sign_in(page)
    page.goto("/console/journeys/review-request/edit")
    source = page.locator("#source").input_value()
    page.fill("#source", source.replace("wait: 3d", "wait: three days"))
    page.click("#save-journey")
    expect(page.locator("#problems")).to_contain_text("review-request.yaml:")
    expect(page.locator("#problems")).to_contain_text("steps[0].wait")


def test_sms_template_preview_follows_typing(page: Any) -> None:
    """Typing into an SMS template re-renders it for Anna; encoding and parts change live."""
    sign_in(page)
    page.goto("/console/templates/cart-reminder-sms?customer=u-1001&price=4.20")
    expect(page.locator("#preview-text")).to_contain_text("Анна")
    expect(page.locator("#sms-encoding")).to_have_text("UCS-2")
    page.fill("#text", "Hello {{ profile.user_id }}, your cart is waiting.")
    expect(page.locator("#sms-encoding")).to_have_text("GSM-7")
    expect(page.locator("#preview-text")).to_have_text("Hello u-1001, your cart is waiting.")
    expect(page.locator("#sms-parts")).to_have_text("1")
    page.fill("#text", "Ж" * 71)
    expect(page.locator("#sms-parts")).to_have_text("2")
    expect(page.locator("#sms-cost")).to_have_text("8.40")
    screenshot(page, "template-sms")


def test_email_template_preview_renders_in_a_sandbox(page: Any) -> None:
    """The cart email renders for a customer inside a sandboxed frame."""
    sign_in(page)
    page.goto("/console/templates/cart-reminder-1h?customer=anna@example.com")
    frame = page.frame_locator("#preview-html")
    expect(frame.locator("h1")).to_have_text("Ваша корзина ждёт")
    assert page.locator("#preview-html").get_attribute("sandbox") == ""
    screenshot(page, "template-email")


def test_find_a_customer_and_read_their_timeline(page: Any) -> None:
    """Search by phone in national form; the page shows consent, journeys and the timeline."""
    sign_in(page)
    page.click("nav.sections >> text=Customers")
    page.fill("input[name=q]", "8 916 123-45-02")
    page.press("input[name=q]", "Enter")
    expect(page.locator("#customer-name")).to_have_text("Борис")
    expect(page.locator("#consents")).to_contain_text("granted")
    expect(page.locator("#customer-journeys")).to_contain_text("Abandoned cart")
    entries = page.locator("#timeline li")
    expect(entries.first).to_be_visible()
    assert entries.count() >= 2
    expect(page.locator("#timeline")).to_contain_text("Product Added")
    screenshot(page, "customer")


def test_operator_claims_and_closes_a_call(page: Any, shop: tuple[Served, Seeded, str]) -> None:
    """The operator takes the most urgent call, reads the script, and records "reached"."""
    sign_in(page, OPERATOR)
    expect(page).to_have_url("/console/overview")
    page.click("nav.sections >> text=Operator queue")
    expect(page.locator("#due-tasks")).to_contain_text("Cart left twice")
    page.click("#take-next")
    expect(page.locator("#task-status")).to_have_text("claimed")
    expect(page.locator("#script")).to_contain_text("offer free delivery")
    expect(page.locator("#task-customer")).to_contain_text("Борис")
    screenshot(page, "task")
    page.fill("textarea[name=note]", "Will order tonight")
    page.click("#outcome-reached")
    expect(page.locator(".notice")).to_have_text("The task is closed.")
    engine = create_engine(shop[2])
    try:
        with engine.connect() as conn:
            closed = conn.execute(
                select(tasks.c.outcome, tasks.c.note).where(tasks.c.status == "closed")
            ).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in closed] == [("reached", "Will order tonight")]


def test_sign_out_ends_the_session(page: Any) -> None:
    """Signing out returns to the sign-in page, and the console asks again."""
    sign_in(page)
    page.click("#sign-out")
    expect(page.locator(".notice")).to_have_text("You are signed out.")
    page.goto("/console/journeys")
    expect(page.locator("#sign-in")).to_be_visible()


class _SamplePage(http.server.BaseHTTPRequestHandler):
    """A shop's page on its own origin, loading touchline's tracker."""

    body = b""

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def sample_site(shop: tuple[Served, Seeded, str]) -> Iterator[str]:
    served, seeded, _ = shop
    html = f"""<!DOCTYPE html><html><head><title>Kettle — shop.example</title>
<script>window.touchline = [["track", "Product Viewed", {{"product_id": "p-kettle", "price": 2490}}]];</script>
<script src="{served.url}/touchline.js" data-write-key="{seeded.write_key}" async></script>
</head><body><button id="buy" onclick="touchline.identify('u-2001', {{email: 'new@example.com'}}); touchline.track('Product Added', {{cart_id: 'c-web', product_id: 'p-kettle'}}); touchline.flush();">Buy</button></body></html>"""
    handler = type("Handler", (_SamplePage,), {"body": html.encode()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/product/kettle"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_tracker_on_a_shop_page_stores_its_events(
    page: Any, sample_site: str, shop: tuple[Served, Seeded, str]
) -> None:
    """touchline.js on another origin sends a page view, a queued track, identify and a track."""
    page.goto(sample_site)
    page.wait_for_function("window.touchline && window.touchline.loaded === true")
    page.click("#buy")
    cookie = next(c for c in page.context.cookies() if c["name"] == "tl_aid")
    engine = create_engine(shop[2])
    try:
        deadline = time.monotonic() + 15
        found: list[Any] = []
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                found = conn.execute(
                    select(events.c.type, events.c.name, events.c.anonymous_id, events.c.user_id)
                    .where(events.c.anonymous_id == cookie["value"])
                    .order_by(events.c.id)
                ).all()
            if len(found) >= 4:
                break
            time.sleep(0.2)
        with engine.connect() as conn:
            journey_count = conn.execute(select(journeys.c.id)).all()
    finally:
        engine.dispose()
    kinds = [(r.type, r.name) for r in found]
    assert ("page", "Kettle — shop.example") in kinds, kinds
    assert ("track", "Product Viewed") in kinds, kinds
    assert ("identify", None) in kinds, kinds
    assert ("track", "Product Added") in kinds, kinds
    assert any(r.user_id == "u-2001" for r in found)
    assert journey_count


def test_create_schedule_and_follow_a_broadcast(
    page: Any, shop: tuple[Served, Seeded, str]
) -> None:
    """A marketer saves a broadcast as a draft from the form, schedules it, and its page
    follows it (by its own poll) until the server's worker has taken the audience."""
    sign_in(page)
    page.click("nav.sections >> text=Broadcasts")
    page.click("#new-broadcast")
    page.fill("input[name=broadcast]", "still-with-us")
    page.fill("input[name=name]", "Still with us?")
    page.select_option("select[name=audience]", "all")
    page.select_option("select[name=channel]", "email")
    page.select_option("select[name=template]", "reactivation-still-interested")
    page.fill("input[name=rate]", "600")
    screenshot(page, "broadcast-new")
    page.click("#save-draft")
    expect(page).to_have_url("/console/broadcasts/still-with-us?notice=broadcast_draft")
    expect(page.locator("#broadcast-status")).to_have_text("draft")
    expect(page.locator("#broadcast-settings")).to_contain_text("600 a minute")
    page.click("#schedule")
    expect(page.locator(".notice")).to_have_text("The broadcast is scheduled.")
    # The page polls its progress and shows itself anew when the status moves on.
    expect(page.locator("#broadcast-status")).to_have_text(
        re.compile("^(sending|sent)$"), timeout=30_000
    )
    expect(page.locator("#figure-audience")).not_to_have_text("0")
    screenshot(page, "broadcast")
    engine = create_engine(shop[2])
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(broadcasts.c.audience, broadcasts.c.queued).where(
                    broadcasts.c.key == "still-with-us"
                )
            ).one()
    finally:
        engine.dispose()
    assert row.audience >= 5  # the seeded customers, and any a test before added
    expect(page.locator("#figure-queued")).to_have_text(str(row.audience), timeout=20_000)
    page.click("nav.sections >> text=Broadcasts")
    expect(page.locator("#broadcast-list")).to_contain_text("Still with us?")
