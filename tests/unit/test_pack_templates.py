"""The e-commerce pack's templates: they load, match the journeys and render demo-shop data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from touchline.demo.catalogue import build_catalogue
from touchline.demo.shop import Customer, Shop, parse_iso
from touchline.messaging.sms import analyse
from touchline.messaging.template_files import load_template_dir
from touchline.messaging.templates import (
    CompiledTemplate,
    RenderContext,
    RenderedMessage,
    Template,
    compile_template,
)

PACK = Path(__file__).resolve().parents[2] / "examples" / "ecommerce"
TEMPLATES = PACK / "templates"
JOURNEY_DIRS = (PACK / "journeys", PACK / "pending")

SAMPLES_PER_EVENT = 6
"""Demo events rendered per trigger, picked to cover each shape the shop sends."""


@dataclass(frozen=True)
class Send:
    journey: str
    trigger: str
    channel: str
    template: str
    purpose: str = "marketing"


def pack_sends() -> list[Send]:
    """Every send step of the pack's journeys, pending ones included."""
    sends = []
    for folder in JOURNEY_DIRS:
        for file in sorted(folder.glob("*.yaml")):
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
            trigger = data["trigger"]
            # Pending journeys start on time, not on an event: name the synthetic event.
            event = trigger.get("event") or (
                "Inactive" if "inactive" in trigger else "Date Reached"
            )
            category = data.get("category", "engaging")
            default = "transactional" if category == "transactional" else "marketing"
            for step in data["steps"]:
                if "send" in step:
                    send = step["send"]
                    purpose = send.get("purpose", default)
                    sends.append(
                        Send(data["journey"], event, send["channel"], send["template"], purpose)
                    )
    return sends


SENDS = pack_sends()


@cache
def templates() -> dict[str, Template]:
    return {t.name: t for t in load_template_dir(TEMPLATES)}


@cache
def shop() -> Shop:
    return Shop(seed=7, customers=600, days=28)


def profile_of(customer: Customer, *, named: bool) -> dict[str, Any]:
    """The profile a customer's identify gives (traits as the store keeps them)."""
    profile: dict[str, Any] = {
        "email": customer.email,
        "phone": customer.phone,
        "timezone": customer.timezone,
        "locale": "ru-RU",
        "birthday": customer.birthday.isoformat(),
    }
    if named:
        profile |= {"first_name": customer.first_name, "last_name": customer.last_name}
    return profile


def _shape(event: dict[str, Any]) -> tuple[Any, ...]:
    props = event["properties"]
    return (
        tuple(sorted(props)),
        props.get("delivery_type"),
        props.get("cancelled_by"),
        props.get("payment_method"),
        len(props.get("products", ())),
    )


SYNTHETIC = (
    "Date Reached",
    "Inactive",
    "Consent Confirmation Requested",
    "Back In Stock",
    "Price Dropped",
)
"""Triggers the demo shop does not send: pending journeys', the double opt-in request and
the catalog's restock and price-drop announcements."""


def synthetic_events(name: str, customer: Customer) -> list[dict[str, Any]]:
    """The proposed time-based triggers' events (pending journeys) and the opt-in request."""
    at = shop().end - timedelta(days=1)
    props: dict[str, Any]
    if name == "Consent Confirmation Requested":
        props = {"channel": "email", "confirm_token": "ws1.AwEHkz-Xr_5pW3mQ8vT0dA"}
    elif name in ("Back In Stock", "Price Dropped"):
        product = build_catalogue()[5].as_segment()
        props = {**product, "url": f"https://shop.example/product/{product['product_id']}"}
        props |= {"alert_id": 3, "reason": "viewed"}
        if name == "Price Dropped":
            props |= {"old_price": product["price"] + 500, "drop_percent": 12.5}
    elif name == "Date Reached":
        props = {"trait": "birthday", "date": customer.birthday.isoformat()}
    else:
        props = {"days": 30, "last_order_at": (at - timedelta(days=30)).isoformat()}
    return [{"type": "track", "event": name, "properties": props, "timestamp": at.isoformat()}]


@cache
def trigger_events(name: str) -> list[tuple[dict[str, Any], Customer]]:
    """Demo-shop events named ``name``, one per shape, with the customer who sent them."""
    s = shop()
    by_user = {c.user_id: c for c in s.customers}
    if name in SYNTHETIC:
        return [(e, c) for c in s.customers[:2] for e in synthetic_events(name, c)]
    picked: dict[tuple[Any, ...], tuple[dict[str, Any], Customer]] = {}
    for event in s.events:
        if event.get("event") == name and event.get("userId") in by_user:
            picked.setdefault(_shape(event), (event, by_user[event["userId"]]))
    assert picked, f"the demo shop sent no {name!r}"
    samples = list(picked.values())[:SAMPLES_PER_EVENT]
    if name == "Order Completed":  # the demo's organic orders have no coupon: add one that has
        event, customer = samples[0]
        props = event["properties"]
        products = [{**p, "quantity": 2} for p in props["products"]]
        subtotal = sum(p["price"] * 2 for p in products)
        discount = round(subtotal * 0.1)
        coupon = {"coupon": "WELCOME10", "discount": discount, "revenue": subtotal - discount}
        props = {**props, **coupon, "products": products, "total": subtotal - discount}
        samples.append(({**event, "properties": props}, customer))
    return samples


def recommendations() -> list[dict[str, Any]]:
    """What a recommender would hand in as ``products``."""
    return [
        {**p.as_segment(), "url": f"https://shop.example/product/{p.product_id}"}
        for p in build_catalogue()[18:22]
    ]


@dataclass(frozen=True)
class Rendered:
    send: Send
    label: str
    message: RenderedMessage


def links_of(send: Send) -> dict[str, str]:
    """The links the dispatcher gives a message of ``send``."""
    if send.purpose == "marketing":
        return {
            "unsubscribe_url": "https://touchline.shop.example/u/ws1.AQEHkz-Xr_5pW3mQ8vT0dA",
            "preferences_url": "https://touchline.shop.example/p/ws1.AgEHkz-Xr_5pW3mQ8vT0dA",
        }
    if send.trigger == "Consent Confirmation Requested":
        return {"confirm_url": "https://touchline.shop.example/c/ws1.AwEHkz-Xr_5pW3mQ8vT0dA"}
    return {}


def contexts(send: Send) -> Iterator[tuple[str, RenderContext]]:
    for event, customer in trigger_events(send.trigger):
        now = parse_iso(str(event["timestamp"]).replace("+00:00", "Z")) + timedelta(hours=3)
        for named in (True, False):
            for products in ((), recommendations()):
                for context in ({}, {"promo_code": "CART5"}):
                    label = f"{event['event']}/{_shape(event)[1:]}/named={named}/{len(products)}"
                    yield (
                        f"{label}/{context}",
                        RenderContext(
                            profile=profile_of(customer, named=named),
                            now=now,
                            event=event,
                            context=context,
                            products=products,
                            journey=send.journey,
                            links=links_of(send),
                        ),
                    )


@cache
def compiled(name: str) -> CompiledTemplate:
    return compile_template(templates()[name])


@cache
def rendered(send: Send) -> list[Rendered]:
    return [
        Rendered(send, label, compiled(send.template).render(ctx)) for label, ctx in contexts(send)
    ]


def by_channel(channel: str) -> list[Send]:
    return [s for s in SENDS if s.channel == channel]


def _id(send: Send) -> str:
    return send.template


# ------------------------------------------------------------------------ tests


def test_template_dir_loads() -> None:
    """The pack's templates folder loads without problems and is not empty."""
    loaded = load_template_dir(TEMPLATES)
    assert loaded
    assert len({t.name for t in loaded}) == len(loaded)


@pytest.mark.parametrize("send", SENDS, ids=_id)
def test_every_sent_template_exists_with_its_channel(send: Send) -> None:
    """Each template a journey sends has a file with the channel the journey sends it on."""
    template = templates().get(send.template)
    assert template is not None, f"{send.journey} sends {send.template!r}, which has no file"
    assert template.channel == send.channel


def test_no_template_without_a_journey() -> None:
    """Every template file is sent by some journey of the pack (no leftovers)."""
    assert set(templates()) == {s.template for s in SENDS}


@pytest.mark.parametrize("send", SENDS, ids=_id)
def test_renders_demo_events_with_and_without_a_name(send: Send) -> None:
    """Each template renders its trigger's demo events for named and unnamed customers."""
    outputs = rendered(send)  # RenderError would fail here
    assert outputs
    for out in outputs:
        if send.channel == "email":
            assert out.message.subject and out.message.html and out.message.text, out.label
        else:
            assert out.message.text, out.label


@pytest.mark.parametrize("send", by_channel("sms"), ids=_id)
def test_sms_fit_in_two_parts(send: Send) -> None:
    """Every rendered SMS is at most two parts."""
    for out in rendered(send):
        assert out.message.text is not None
        info = analyse(out.message.text)
        assert info.parts <= 2, f"{out.label}: {info.parts} parts: {out.message.text}"


_HREF = re.compile(r"""href="([^"]*)\"""")
_URL = re.compile(r"""https?://[^\s<>"'()\[\]]+""")


@pytest.mark.parametrize("send", by_channel("email"), ids=_id)
def test_email_links_carry_utm(send: Send) -> None:
    """Every shop link of an email's HTML and text has utm source, medium and campaign."""
    for out in rendered(send):
        assert out.message.html is not None and out.message.text is not None
        links = [u.replace("&amp;", "&") for u in _HREF.findall(out.message.html)]
        links += [u.rstrip(".,;:!?") for u in _URL.findall(out.message.text)]
        own = set(links_of(send).values())  # touchline's own links carry no UTM
        web = [u for u in links if u.startswith(("http://", "https://")) and u not in own]
        assert web or send.template == "confirm-subscription", out.label
        for url in web:
            query = parse_qs(urlsplit(url).query)
            assert query.get("utm_source") == ["touchline"], url
            assert query.get("utm_medium") == ["email"], url
            assert query.get("utm_campaign") == [send.journey], url


@pytest.mark.parametrize("send", SENDS, ids=_id)
def test_no_leftovers_in_output(send: Send) -> None:
    """No rendered part shows "None" or unrendered template syntax."""
    for out in rendered(send):
        for part in (out.message.subject, out.message.html, out.message.text):
            if part is not None:
                for junk in ("None", "{{", "}}", "{%", "%}"):
                    assert junk not in part, f"{out.label}: {junk!r} in {part!r}"
