"""``recommend.*`` in templates: what it asks the recommender, and what it does without one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from touchline.messaging.templates import (
    MAX_RECOMMENDATIONS,
    RenderContext,
    RenderError,
    Template,
    compile_template,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ITEMS = [
    {"product_id": f"p{n}", "name": f"Товар {n}", "price": Decimal(100 * n), "url": None}
    for n in range(1, 6)
]


class Fake:
    """A recommender that records its calls and answers from :data:`ITEMS`."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def similar(self, product_id: str, limit: int) -> Sequence[Mapping[str, Any]]:
        self.calls.append(("similar", product_id, limit))
        return ITEMS  # more than asked: the template keeps `limit`

    def bought_together(
        self, product_ids: Sequence[str], limit: int
    ) -> Sequence[Mapping[str, Any]]:
        self.calls.append(("bought_together", list(product_ids), limit))
        return ITEMS[:limit]

    def viewed_not_bought(self, limit: int) -> Sequence[Mapping[str, Any]]:
        self.calls.append(("viewed_not_bought", limit))
        return ITEMS[:limit]

    def popular(self, limit: int, category: str | None = None) -> Sequence[Mapping[str, Any]]:
        self.calls.append(("popular", limit, category))
        return ITEMS[:limit]

    def for_customer(self, limit: int) -> Sequence[Mapping[str, Any]]:
        self.calls.append(("for_customer", limit))
        return ITEMS[:limit]


def render(text: str, *, recommend: Any = None, event: dict[str, Any] | None = None) -> str:
    template = compile_template(Template(name="t", channel="email", text=text))
    context = RenderContext(profile={}, now=NOW, event=event or {}, recommend=recommend)
    return template.render(context).text or ""


def test_each_call_asks_the_recommender_and_lists_at_most_the_count() -> None:
    """similar, bought_together (one id or a list), viewed_not_bought, popular, for_customer."""
    fake = Fake()
    event = {
        "properties": {"product_id": 42, "products": [{"product_id": "a"}, {"product_id": "b"}]}
    }
    text = render(
        "{% for p in recommend.similar(event.properties.product_id, 2) %}{{ p.product_id }} {% endfor %}|"
        "{{ recommend.bought_together(event.properties.products | map(attribute='product_id') | list) | length }}|"
        "{{ recommend.bought_together('x', 1)[0].name }}|"
        "{{ recommend.viewed_not_bought(3) | length }}|"
        "{{ recommend.popular(2, category='Аудио') | length }}|"
        "{{ recommend.for_customer() | length }}",
        recommend=fake,
        event=event,
    )
    assert text == "p1 p2 |4|Товар 1|3|2|4"
    assert fake.calls == [
        ("similar", "42", 2),
        ("bought_together", ["a", "b"], 4),
        ("bought_together", ["x"], 1),
        ("viewed_not_bought", 3),
        ("popular", 2, "Аудио"),
        ("for_customer", 4),
    ]


def test_without_a_recommender_every_call_is_an_empty_list() -> None:
    """Renders without a store (checks, unit renders) show the template's fallback."""
    text = render(
        "{% for p in recommend.for_customer(4) %}{{ p.name }}{% else %}Каталог{% endfor %}"
        "{{ recommend.similar('p1') | length }}"
    )
    assert text == "Каталог0"


def test_a_missing_field_of_a_recommended_product_names_its_path() -> None:
    """Null fields are missing, like any data: printing one fails the message with its name."""
    with pytest.raises(RenderError) as caught:
        render("{{ recommend.similar('p1', 1)[0].url }}", recommend=Fake())
    assert caught.value.variable == "recommend.similar[0].url"
    assert render("{{ recommend.similar('p1', 1)[0].url | default('-') }}", recommend=Fake()) == "-"


@pytest.mark.parametrize(
    "call",
    [
        "recommend.similar('p1', 0)",
        f"recommend.popular({MAX_RECOMMENDATIONS + 1})",
        "recommend.for_customer('4')",
    ],
)
def test_a_count_outside_one_to_the_maximum_fails_the_render(call: str) -> None:
    """A count of 0, over the maximum, or not a whole number is the template's mistake."""
    with pytest.raises(RenderError, match="count"):
        render(f"{{{{ {call} | length }}}}", recommend=Fake())


def test_a_missing_product_id_fails_with_its_name() -> None:
    """similar() of an event without product_id names the missing value."""
    with pytest.raises(RenderError) as caught:
        render("{{ recommend.similar(event.properties.product_id) | length }}", recommend=Fake())
    assert caught.value.variable == "event.properties"


def test_private_parts_of_recommend_stay_out_of_reach() -> None:
    """The sandbox refuses underscore attributes of the global."""
    with pytest.raises(RenderError, match="not allowed: access to attribute .?_ask"):
        render("{{ recommend._ask }}", recommend=Fake())
