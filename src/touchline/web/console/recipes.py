"""Journeys from recipes: a short form becomes a journey file.

Each recipe is a proven shape from the seeds (welcome, abandoned cart,
review request, win-back, birthday): its entry rule, the events that end it
early, its goal. The form asks only what differs between shops: the trigger
event, the waits, the channels and templates. :func:`build` writes the
journey as YAML text, which is then checked by the same loader as any file
(:func:`touchline.journeys.loader.load_journey_text`) and applied like one,
so a recipe can never make a journey a file could not.

Win-back and birthday start on an event the shop sends (a nightly job that
finds lapsed customers or coming birthdays), since journey triggers are
events. Pure: form values in, text out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from touchline.journeys.spec import KEY_RE

CHANNELS = ("email", "sms", "telegram", "push", "webhook", "call")


@dataclass(frozen=True)
class Recipe:
    """A journey shape and the form's starting values."""

    key: str
    title: str
    summary: str
    category: str
    trigger_event: str
    delay: str
    channel: str
    template: str
    follow_up_delay: str = ""
    follow_up_channel: str = "email"
    follow_up_template: str = ""
    trigger_where: str | None = None
    entry: Mapping[str, Any] = field(default_factory=dict)
    exit_on: tuple[Mapping[str, Any], ...] = ()
    goal: Mapping[str, Any] | None = None


RECIPES: dict[str, Recipe] = {
    r.key: r
    for r in (
        Recipe(
            key="welcome",
            title="Welcome",
            summary="Greets a new customer after sign-up, then reminds them once.",
            category="engaging",
            trigger_event="Signed Up",
            delay="1h",
            channel="email",
            template="welcome",
            follow_up_delay="3d",
            follow_up_template="welcome-reminder",
            entry={"reentry": "never"},
            goal={"event": "Order Completed", "within": "14d", "value": "event.properties.revenue"},
        ),
        Recipe(
            key="abandoned-cart",
            title="Abandoned cart",
            summary="Reminds of a cart left behind; ordering that cart stops it.",
            category="selling",
            trigger_event="Product Added",
            trigger_where="exists(event.properties.cart_id)",
            delay="1h",
            channel="email",
            template="cart-reminder",
            follow_up_delay="24h",
            follow_up_channel="sms",
            follow_up_template="cart-reminder-sms",
            entry={"reentry": "once_per_key", "key": "cart_id"},
            exit_on=({"event": "Order Completed", "match": "cart_id"},),
            goal={
                "event": "Order Completed",
                "match": "cart_id",
                "within": "7d",
                "value": "event.properties.revenue",
            },
        ),
        Recipe(
            key="review-request",
            title="Review request",
            summary="Asks for a review a few days after delivery; a refund stops it.",
            category="engaging",
            trigger_event="Order Delivered",
            delay="3d",
            channel="email",
            template="review-request",
            entry={"reentry": "once_per_key", "key": "order_id"},
            exit_on=({"event": "Order Refunded", "match": "order_id"},),
            goal={"event": "Product Reviewed", "match": "order_id", "within": "14d"},
        ),
        Recipe(
            key="win-back",
            title="Win-back",
            summary="Brings back a customer gone quiet; any order stops it.",
            category="selling",
            trigger_event="Customer Lapsed",
            delay="",
            channel="email",
            template="winback",
            follow_up_delay="7d",
            follow_up_channel="sms",
            follow_up_template="winback-last-call-sms",
            entry={"reentry": "not_within", "not_within": "60d"},
            exit_on=({"event": "Order Completed"},),
            goal={"event": "Order Completed", "within": "30d", "value": "event.properties.revenue"},
        ),
        Recipe(
            key="birthday",
            title="Birthday",
            summary="A gift before the birthday, a greeting on the day.",
            category="engaging",
            trigger_event="Birthday Approaching",
            delay="",
            channel="email",
            template="birthday-gift-code",
            follow_up_delay="3d",
            follow_up_channel="sms",
            follow_up_template="birthday-greeting-sms",
            entry={"reentry": "not_within", "not_within": "300d"},
            goal={"event": "Order Completed", "within": "10d", "value": "event.properties.revenue"},
        ),
    )
}

FORM_FIELDS = (
    "journey",
    "name",
    "trigger_event",
    "delay",
    "channel",
    "template",
    "follow_up_delay",
    "follow_up_channel",
    "follow_up_template",
)


def defaults(recipe: Recipe) -> dict[str, str]:
    """The form's starting values for ``recipe``."""
    return {
        "journey": recipe.key,
        "name": recipe.title,
        "trigger_event": recipe.trigger_event,
        "delay": recipe.delay,
        "channel": recipe.channel,
        "template": recipe.template,
        "follow_up_delay": recipe.follow_up_delay,
        "follow_up_channel": recipe.follow_up_channel,
        "follow_up_template": recipe.follow_up_template,
        "start": "",
    }


def form_problems(values: Mapping[str, str]) -> dict[str, str]:
    """Problems with the form's own fields, by field name (before any YAML is made)."""
    problems: dict[str, str] = {}
    if not KEY_RE.match(values.get("journey", "")):
        problems["journey"] = "1-64 lowercase letters, digits, '-' or '_'"
    if not values.get("trigger_event", "").strip():
        problems["trigger_event"] = "the event that starts the journey"
    if not values.get("template", "").strip():
        problems["template"] = "the template of the first message"
    if values.get("channel") not in CHANNELS:
        problems["channel"] = "one of " + ", ".join(CHANNELS)
    if values.get("follow_up_template", "").strip():
        if values.get("follow_up_channel") not in CHANNELS:
            problems["follow_up_channel"] = "one of " + ", ".join(CHANNELS)
        if not values.get("follow_up_delay", "").strip():
            problems["follow_up_delay"] = "how long after the first message"
    return problems


def build(recipe: Recipe, values: Mapping[str, str]) -> str:
    """The journey file for ``recipe`` filled with the form's ``values``."""
    trigger: dict[str, Any] = {"event": values["trigger_event"].strip()}
    if recipe.trigger_where:
        trigger["where"] = recipe.trigger_where
    steps: list[dict[str, Any]] = []
    delay = values.get("delay", "").strip()
    if delay:
        steps.append({"id": "first-wait", "wait": delay})
    steps.append(
        {
            "id": "first-message",
            "send": {"channel": values["channel"], "template": values["template"].strip()},
        }
    )
    follow_up = values.get("follow_up_template", "").strip()
    if follow_up:
        steps.append({"id": "follow-up-wait", "wait": values.get("follow_up_delay", "").strip()})
        steps.append(
            {
                "id": "follow-up",
                "send": {"channel": values["follow_up_channel"], "template": follow_up},
            }
        )
    document: dict[str, Any] = {
        "journey": values["journey"].strip(),
        "name": values.get("name", "").strip() or recipe.title,
        "description": recipe.summary,
        "category": recipe.category,
        "status": "active" if values.get("start") else "paused",
        "trigger": trigger,
        "entry": dict(recipe.entry),
    }
    if recipe.exit_on:
        document["exit_on"] = [dict(e) for e in recipe.exit_on]
    if recipe.goal:
        document["goal"] = dict(recipe.goal)
    document["steps"] = steps
    header = f"# Made from the {recipe.title.lower()} recipe in the console.\n"
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
