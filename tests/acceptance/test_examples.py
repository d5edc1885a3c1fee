"""The e-commerce example pack and the commands that use it, run as real processes.

``touchline validate``, ``simulate`` and ``demo`` are started with the
interpreter running the tests (``python -m touchline.cli``), against the
pack in ``examples/ecommerce`` and temporary SQLite files. The pack's
templates are rendered in-process with the links and promo codes the
dispatcher would give them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from touchline.demo.report import SECTIONS
from touchline.journeys.loader import journey_files, load_journey_dir, load_journey_file
from touchline.messaging.sms import analyse
from touchline.messaging.template_files import load_template_dir
from touchline.messaging.templates import (
    PROMO_SAMPLE,
    CompiledTemplate,
    RenderContext,
    RenderedMessage,
    RenderError,
    compile_template,
)
from touchline.store.consent import CONFIRMATION_REQUESTED

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "examples" / "ecommerce"
PACK_FILES = sorted((PACK / "journeys").glob("*.yaml"))
# Longest a small demo may take; it needs a few seconds on a laptop.
DEMO_TIMEOUT = 120


def touchline(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "touchline.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=DEMO_TIMEOUT,
        check=False,
    )


# -- the pack ---------------------------------------------------------------------------


def test_pack_has_the_expected_journeys() -> None:
    """The loader reads exactly the sixteen files of journeys/ (segments/ and events/ stay out)."""
    loaded = load_journey_dir(PACK)
    assert journey_files(PACK) == PACK_FILES
    assert {j.spec.journey for j in loaded} == {
        "welcome",
        "browse-abandonment",
        "abandoned-cart",
        "order-confirmation",
        "order-shipped-sms",
        "order-delivered-sms",
        "payment-due-sms",
        "review-request",
        "cross-sell",
        "cancelled-order-offer",
        "confirm-subscription",
        "back-in-stock",
        "price-drop",
        "birthday",
        "win-back",
        "reactivation",
    }


@pytest.mark.parametrize("path", PACK_FILES, ids=lambda p: p.name)
def test_every_pack_file_validates_with_name_description_and_category(path: Path) -> None:
    """Each journey file loads on its own and documents itself."""
    spec = load_journey_file(path)
    assert spec.name and spec.description
    assert spec.journey == path.stem


def test_validate_command_accepts_the_pack(tmp_path: Path) -> None:
    """`touchline validate examples/ecommerce` exits 0 and counts the journeys and templates."""
    result = touchline("validate", str(PACK), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "16 journey(s) valid, 24 template(s) valid" in result.stdout


# -- simulate: the abandoned cart ---------------------------------------------------------

T0 = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)  # a Tuesday


def track(user: str, name: str, at: datetime, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": name,
        "properties": properties,
        "timestamp": at.isoformat().replace("+00:00", "Z"),
    }


def identify(user: str, at: datetime, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": user,
        "traits": {"email": f"{user}@example.ru", "timezone": "Europe/Moscow", **traits},
        "timestamp": at.isoformat().replace("+00:00", "Z"),
    }


def stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def test_simulate_reminds_of_an_abandoned_cart_at_1h_and_25h_and_stops_after_the_order(
    tmp_path: Path,
) -> None:
    """Reminders come at +1h and +25h (SMS with a phone, else email); ordering the cart stops them."""

    # given: four customers each put a product in their own cart at T0
    def ordered(user: str, at: datetime, cart_id: str) -> dict[str, Any]:
        props = {"order_id": f"o-{user}", "cart_id": cart_id, "revenue": 990, "currency": "RUB"}
        return track(user, "Order Completed", at, **props)

    events = [
        identify("anna", T0 - timedelta(minutes=5), phone="+79161234567"),
        identify("boris", T0 - timedelta(minutes=5)),
        identify("vera", T0 - timedelta(minutes=5)),
        identify("gleb", T0 - timedelta(minutes=5)),
        track("anna", "Product Added", T0, cart_id="cart-a", product_id="p-202", price=6990),
        track("boris", "Product Added", T0, cart_id="cart-b", product_id="p-401", price=990),
        track("vera", "Product Added", T0, cart_id="cart-c", product_id="p-401", price=990),
        track("gleb", "Product Added", T0, cart_id="cart-d", product_id="p-401", price=990),
        # boris orders another cart: his reminders go on
        ordered("boris", T0 + timedelta(minutes=30), "cart-x"),
        # vera orders her cart after the first reminder: nothing more
        ordered("vera", T0 + timedelta(hours=2), "cart-c"),
        # gleb orders his cart within the hour: no reminder at all
        ordered("gleb", T0 + timedelta(minutes=20), "cart-d"),
    ]
    ndjson = tmp_path / "events.ndjson"
    ndjson.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\n")

    # when
    until = stamp(T0 + timedelta(days=5))
    result = touchline(
        "simulate", "--journeys", str(PACK), "--events", str(ndjson), "--until", until, cwd=tmp_path
    )

    # then
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    reminders = [
        (m["user_id"], m["template"], m["channel"], m["at"])
        for m in messages
        if m["journey"] == "abandoned-cart"
    ]
    one_hour, a_day_later = stamp(T0 + timedelta(hours=1)), stamp(T0 + timedelta(hours=25))
    assert sorted(reminders) == sorted(
        [
            ("anna", "cart-reminder-1h", "email", one_hour),
            ("anna", "cart-reminder-sms", "sms", a_day_later),
            ("boris", "cart-reminder-1h", "email", one_hour),
            ("boris", "cart-reminder-24h", "email", a_day_later),
            ("vera", "cart-reminder-1h", "email", one_hour),
        ]
    )
    receipts = {m["user_id"] for m in messages if m["journey"] == "order-confirmation"}
    assert receipts == {"boris", "vera", "gleb"}
    assert "1 goals" in result.stderr  # vera's order after the reminder counts; gleb's does not


def test_simulate_runs_the_sample_story_of_the_pack(tmp_path: Path) -> None:
    """The NDJSON shipped in examples/ecommerce/events replays as the README says."""
    story = PACK / "events" / "abandoned-cart.ndjson"
    until = "2025-03-06T00:00:00Z"
    result = touchline(
        "simulate", "--journeys", str(PACK), "--events", str(story), "--until", until, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    templates = [json.loads(line)["template"] for line in result.stdout.splitlines()]
    assert templates == ["order-confirmation", "cart-reminder-1h", "cart-reminder-sms"]


def test_simulate_double_opt_in_sends_the_confirmation_and_holds_marketing(tmp_path: Path) -> None:
    """With double_opt_in for email, a sign-up gets the confirmation at once and no welcome promo."""
    story = PACK / "events" / "double-opt-in.ndjson"
    settings = PACK / "settings" / "double-opt-in.yaml"
    result = touchline(
        "simulate",
        "--journeys",
        str(PACK),
        "--events",
        str(story),
        "--settings",
        str(settings),
        "--until",
        "2025-03-06T00:00:00Z",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    outcomes = [(m["template"], m["outcome"], m["reason"]) for m in messages]
    assert outcomes == [
        ("confirm-subscription", "sent", "ok"),
        ("welcome-promo", "skipped", "consent_unconfirmed"),
    ]


# -- demo ---------------------------------------------------------------------------------


def test_small_demo_runs_and_prints_every_report_section(tmp_path: Path) -> None:
    """`touchline demo --customers 150 --days 7` exits 0, reports each section, keeps its store."""
    env = {"TOUCHLINE_DATABASE_URL": f"sqlite:///{tmp_path}/t.db", "TOUCHLINE_LOG_LEVEL": "WARNING"}
    result = touchline("demo", "--customers", "150", "--days", "7", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for section in SECTIONS:
        assert section in out
    assert "150 customers, 7 days" in out
    for journey in ("welcome", "abandoned-cart", "order-confirmation", "browse-abandonment"):
        assert journey in out
    assert "Traceback" not in result.stderr
    assert (tmp_path / "touchline-demo" / "simulation.db").is_file()

    # a second run replaces the kept store and prints the same figures
    again = touchline("demo", "--customers", "150", "--days", "7", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stderr
    figures = out.split("Time taken")[0]
    assert again.stdout.split("Time taken")[0] == figures


# -- templates: unsubscribe, preference and confirmation links; promo codes ---------------

TEMPLATE_DIR = PACK / "templates"
PUBLIC = "https://touchline.shop.example"
# Tokens look like the real ones: workspace id, a dot, URL-safe base64.
MARKETING_LINKS = {
    "unsubscribe_url": f"{PUBLIC}/u/ws1.AQEHkz-Xr_5pW3mQ8vT0dA",
    "preferences_url": f"{PUBLIC}/p/ws1.AgEHkz-Xr_5pW3mQ8vT0dA",
}
CONFIRM_URL = f"{PUBLIC}/c/ws1.AwEHkz-Xr_5pW3mQ8vT0dA"
# A code as `touchline promo generate --prefix BACK-` makes it: the longest the pack plans for.
PROMO_CODE = "BACK-7KQ4HX9M2TA"
# The pool each template takes its code from (the README lists them); the rest take none.
PROMO_POOLS = {
    "welcome-promo": "welcome10",
    "welcome-promo-last-chance": "welcome10",
    "cart-reminder-24h": "cart5",
    "order-cancelled-free-delivery": "freedelivery",
    "order-cancelled-apology": "freedelivery",
    "birthday-gift-code": "birthday15",
    "birthday-greeting-sms": "birthday15",
    "winback-we-miss-you-15": "winback15",
    "winback-last-call-sms": "winback15",
}
AT = datetime(2025, 3, 10, 9, 0, tzinfo=UTC)
SAMPLE_PROFILE = {
    "user_id": "cust-anna",
    "email": "anna.ivanova@mail.ru",
    "phone": "+79161234567",
    "first_name": "Анна",
    "last_name": "Иванова",
    "timezone": "Europe/Moscow",
    "locale": "ru-RU",
    "birthday": "1991-03-13",
}
_PRODUCTS = [
    {"product_id": "p-202", "name": "Наушники Galaxy Buds FE", "category": "Аудио", "price": 6990},
    {"product_id": "p-401", "name": "Чехол-книжка для смартфона", "price": 990, "quantity": 2},
]
# One event per trigger of the pack (the ones touchline stores too), each with
# every property some template of that trigger reads.
PRODUCT = {
    "product_id": "p-202",
    "name": "Наушники Galaxy Buds FE",
    "category": "Аудио",
    "price": 6990,
    "currency": "RUB",
    "url": "https://shop.example/product/p-202",
}
SAMPLE_PROPERTIES: dict[str, dict[str, Any]] = {
    "Signed Up": {"method": "email"},
    "Product Viewed": {
        "product_id": "p-202",
        "name": "Наушники Galaxy Buds FE",
        "category": "Аудио",
        "price": 6990,
        "currency": "RUB",
        "url": "https://shop.example/product/p-202",
    },
    "Product Added": {
        "cart_id": "cart-1001",
        "product_id": "p-202",
        "name": "Наушники Galaxy Buds FE",
        "price": 6990,
        "quantity": 1,
    },
    "Order Completed": {
        "order_id": "100231",
        "cart_id": "cart-1001",
        "products": _PRODUCTS,
        "total": 9269,
        "revenue": 8970,
        "shipping": 299,
        "discount": 0,
        "payment_method": "card",
        "currency": "RUB",
    },
    "Order Shipped": {
        "order_id": "100231",
        "tracking_number": "RU123456789CN",
        "carrier": "СДЭК",
        "estimated_delivery": "2025-03-12",
    },
    "Order Delivered": {
        "order_id": "100231",
        "tracking_number": "RU123456789CN",
        "carrier": "Boxberry",
        "delivery_type": "pickup_point",
        "keep_until": "2025-03-19",
    },
    "Payment Due": {
        "order_id": "100231",
        "amount": 12990,
        "currency": "RUB",
        "due_date": "2025-03-15",
        "payment_url": "https://shop.example/pay/100231",
    },
    "Order Cancelled": {
        "order_id": "100231",
        "products": _PRODUCTS,
        "cancelled_by": "shop",
        "reason": "out_of_stock",
    },
    CONFIRMATION_REQUESTED: {"channel": "email", "confirm_token": "ws1.AwEHkz-Xr_5pW3mQ8vT0dA"},
    "Date Reached": {"trait": "birthday", "date": "1991-03-13"},
    "Segment Entered": {"segment": "lapsed-buyers"},
    "Back In Stock": {
        **PRODUCT,
        "image_url": "https://shop.example/img/p-202.jpg",
        "reason": "requested",
        "alert_id": 17,
    },
    "Price Dropped": {
        **PRODUCT,
        "price": 5990,
        "old_price": 6990,
        "drop_percent": 14.3,
        "reason": "viewed",
        "alert_id": 18,
    },
}


@dataclass(frozen=True)
class PackSend:
    """A template as one send step of the pack uses it."""

    template: str
    channel: str
    journey: str
    trigger: str
    purpose: str


def _pack_sends() -> list[PackSend]:
    """Every send step of the pack, with its purpose."""
    sends = []
    for file in PACK_FILES:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
        trigger = data["trigger"]
        event = trigger.get("event") or (
            "Segment Entered" if "segment" in trigger else "Date Reached"
        )
        category = data.get("category", "engaging")
        for step in data["steps"]:
            if "send" in step:
                send = step["send"]
                default = "transactional" if category == "transactional" else "marketing"
                sends.append(
                    PackSend(
                        template=send["template"],
                        channel=send["channel"],
                        journey=data["journey"],
                        trigger=event,
                        purpose=send.get("purpose", default),
                    )
                )
    return sends


PACK_SENDS = _pack_sends()
MARKETING_EMAILS = [s for s in PACK_SENDS if s.purpose == "marketing" and s.channel == "email"]
TRANSACTIONAL = [s for s in PACK_SENDS if s.purpose == "transactional"]


def _send_id(send: PackSend) -> str:
    return send.template


@cache
def _compiled(name: str) -> CompiledTemplate:
    found = {t.name: t for t in load_template_dir(TEMPLATE_DIR)}
    return compile_template(found[name])


def links_for(send: PackSend) -> dict[str, str]:
    """The links the dispatcher gives this send: marketing gets unsubscribe and preferences,
    a journey started by a confirmation request gets the confirmation link, the rest none."""
    if send.purpose == "marketing":
        return dict(MARKETING_LINKS)
    if send.trigger == CONFIRMATION_REQUESTED:
        return {"confirm_url": CONFIRM_URL}
    return {}


def render(
    send: PackSend, *, links: dict[str, str] | None = None, pools: list[str] | None = None
) -> RenderedMessage:
    """``send``'s template for the sample customer; ``pools`` collects the pools asked for."""
    asked = pools if pools is not None else []

    def promo(pool: str) -> str:
        asked.append(pool)
        return PROMO_CODE

    event = {
        "type": "track",
        "name": send.trigger,
        "properties": SAMPLE_PROPERTIES[send.trigger],
        "timestamp": (AT - timedelta(hours=3)).isoformat(),
    }
    return _compiled(send.template).render(
        RenderContext(
            profile=SAMPLE_PROFILE,
            now=AT,
            event=event,
            journey=send.journey,
            links=links_for(send) if links is None else links,
            promo=promo,
        )
    )


def parts_of(message: RenderedMessage) -> list[str]:
    return [p for p in (message.subject, message.html, message.text) if p is not None]


def test_every_template_of_the_pack_is_sent_by_some_journey() -> None:
    """The sends found here cover every template file, so the tests below see them all."""
    names = {t.name for t in load_template_dir(TEMPLATE_DIR)}
    assert {s.template for s in PACK_SENDS} == names
    assert {s.trigger for s in PACK_SENDS} <= set(SAMPLE_PROPERTIES)


@pytest.mark.parametrize("send", PACK_SENDS, ids=_send_id)
def test_every_template_renders_with_its_links_and_promo_code(send: PackSend) -> None:
    """Each template renders the sample customer; codes come from its own pool, and only there."""
    # when
    pools: list[str] = []
    message = render(send, pools=pools)

    # then
    text = "\n".join(parts_of(message))
    expected = PROMO_POOLS.get(send.template)
    assert set(pools) == ({expected} if expected else set())
    assert (PROMO_CODE in text) == bool(expected)
    assert PROMO_SAMPLE not in text
    if expected and send.channel == "email":
        assert message.html is not None and message.text is not None
        assert PROMO_CODE in message.html and PROMO_CODE in message.text
    for junk in ("None", "{{", "}}", "{%", "%}", "shop.example/account/subscriptions"):
        assert junk not in text, junk


@pytest.mark.parametrize("send", MARKETING_EMAILS, ids=_send_id)
def test_every_marketing_email_links_unsubscribe_and_preferences(send: PackSend) -> None:
    """A marketing email's footer links the customer's own unsubscribe and preference pages."""
    message = render(send)
    assert message.html is not None and message.text is not None
    for url, label in (
        (MARKETING_LINKS["unsubscribe_url"], "Отписаться"),
        (MARKETING_LINKS["preferences_url"], "Настроить рассылки"),
    ):
        anchor = re.search(rf'<a href="{re.escape(url)}[?"][^>]*>([^<]*)</a>', message.html)
        assert anchor is not None, f"no link to {url}"
        assert anchor.group(1) == label
        assert url in message.text


@pytest.mark.parametrize("send", MARKETING_EMAILS, ids=_send_id)
def test_marketing_email_without_links_fails_rather_than_going_out(send: PackSend) -> None:
    """Without an unsubscribe link a marketing email is not rendered at all."""
    with pytest.raises(RenderError) as caught:
        render(send, links={})
    assert caught.value.variable == "links.unsubscribe_url"


@pytest.mark.parametrize("send", TRANSACTIONAL, ids=_send_id)
def test_transactional_templates_need_no_marketing_links(send: PackSend) -> None:
    """Service messages get no unsubscribe link and render without one."""
    source = (TEMPLATE_DIR / f"{send.template}.yaml").read_text(encoding="utf-8")
    assert "unsubscribe_url" not in source and "preferences_url" not in source
    message = render(send)  # links as the dispatcher gives them: none, or only confirm_url
    assert MARKETING_LINKS["unsubscribe_url"] not in "\n".join(parts_of(message))


def test_confirm_subscription_carries_the_confirmation_link() -> None:
    """The double opt-in email has a button to the confirmation link, in HTML and text."""
    (send,) = [s for s in PACK_SENDS if s.template == "confirm-subscription"]
    assert send.purpose == "transactional" and send.channel == "email"
    message = render(send)
    assert message.html is not None and message.text is not None
    assert re.search(rf'<a class="button" href="{re.escape(CONFIRM_URL)}[?"]', message.html)
    assert CONFIRM_URL in message.text
    with pytest.raises(RenderError) as caught:
        render(send, links={})
    assert caught.value.variable == "links.confirm_url"


@pytest.mark.parametrize("send", [s for s in PACK_SENDS if s.channel == "sms"], ids=_send_id)
def test_sms_with_a_personal_code_and_a_long_name_fit_in_two_parts(send: PackSend) -> None:
    """SMS stay within two parts with a 16-character code and a name cut to 15 letters."""
    long_name = {**SAMPLE_PROFILE, "first_name": "Александра-Мария"}
    event = {
        "type": "track",
        "name": send.trigger,
        "properties": {
            **SAMPLE_PROPERTIES[send.trigger],
            "name": "Наушники беспроводные Galaxy Buds FE с шумоподавлением",
        },
        "timestamp": (AT - timedelta(hours=3)).isoformat(),
    }
    message = _compiled(send.template).render(
        RenderContext(
            profile=long_name,
            now=AT,
            event=event,
            journey=send.journey,
            links=links_for(send),
            promo=lambda pool: PROMO_CODE,
        )
    )
    assert message.text is not None
    info = analyse(message.text)
    assert info.parts <= 2, f"{info.parts} parts: {message.text}"


def test_readme_shows_how_to_make_every_pool_the_templates_use() -> None:
    """Each pool a template names has its create and generate commands in the pack README."""
    readme = (PACK / "README.md").read_text(encoding="utf-8")
    used = {
        match
        for file in TEMPLATE_DIR.glob("*.yaml")
        for match in re.findall(r"""promo_code\(["']([^"']+)["']\)""", file.read_text("utf-8"))
    }
    assert used == set(PROMO_POOLS.values())
    for pool in used:
        assert f"touchline promo create {pool} " in readme, pool
        assert f"touchline promo generate {pool} " in readme, pool
    assert "promo_pool_unknown" in readme
