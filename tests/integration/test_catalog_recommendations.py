"""Recommendations on SQLite and PostgreSQL, against a small catalog with known answers.

The catalog (price in roubles; ``-`` out of stock, ``a`` archived)::

    phones    ph1 10000   ph2 11000   ph3 12500   ph4 20000   ph5 9500 -   ph6 10500 a
    cases     c1 500      c2 700      c3 900 -
    chargers  ch1 1500

Orders: (ph1 c1 ch1), (ph1 c1), (ph1 c2), (ph2 c2), (ph3 c3) by others, and anna's (c1).
So ph1 sold 3, c1 3, c2 2, the rest 1; with ph1 went c1 twice, c2 and ch1 once.
Anna viewed ph2, ph4, c3 and ph1, in that order.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from touchline.audience.catalog import CatalogRules, parse_product, upsert_products
from touchline.audience.recommendations import Recommender
from touchline.messaging.template_files import load_template_dir
from touchline.messaging.templates import RenderContext, Template, compile_template
from touchline.store.db import transaction
from touchline.store.tables import profiles
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, run_until_idle, send_events, track
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

CATALOG = [
    ("ph1", "phones", 10000, True),
    ("ph2", "phones", 11000, True),
    ("ph3", "phones", 12500, True),
    ("ph4", "phones", 20000, True),
    ("ph5", "phones", 9500, False),
    ("ph6", "phones", 10500, True),
    ("c1", "cases", 500, True),
    ("c2", "cases", 700, True),
    ("c3", "cases", 900, False),
    ("ch1", "chargers", 1500, True),
]
ORDERS = [
    ("x", ["ph1", "c1", "ch1"]),
    ("y", ["ph1", "c1"]),
    ("z", ["ph1", "c2"]),
    ("w", ["ph2", "c2"]),
    ("v", ["ph3", "c3"]),
    ("anna", ["c1"]),
]
ANNA_VIEWS = ["ph2", "ph4", "c3", "ph1"]


@pytest.fixture(scope="function")
def store(engine: Engine) -> tuple[Engine, str, int]:
    """The catalog above, its orders and anna's views; returns (engine, workspace, anna's id)."""
    clock = FrozenClock(T0)
    ws = create_workspace(engine, "Shop", now=T0).id
    with transaction(engine) as conn:
        upsert_products(
            conn,
            ws,
            [
                parse_product(
                    {
                        "id": pid,
                        "name": pid.upper(),
                        "category": cat,
                        "price": price,
                        "currency": "RUB",
                    }
                )
                for pid, cat, price, _ in CATALOG
            ],
            now=T0,
            rules=CatalogRules(),
        )
        upsert_products(
            conn,
            ws,
            [parse_product({"id": pid, "in_stock": False}) for pid, *_, ok in CATALOG if not ok],
            now=T0,
            rules=CatalogRules(),
        )
    worker = Worker(engine, clock=clock, owner="w")
    raws: list[dict[str, Any]] = []
    for n, (user, items) in enumerate(ORDERS):
        products = [{"product_id": p} for p in items]
        at = T0 + timedelta(minutes=n)
        raws.append(
            track(user, "Order Completed", {"products": products}, timestamp=at.isoformat())
        )
    for n, pid in enumerate(ANNA_VIEWS):
        at = T0 + timedelta(hours=1 + n)
        raws.append(track("anna", "Product Viewed", {"product_id": pid}, timestamp=at.isoformat()))
    clock.set(T0 + timedelta(hours=6))
    send_events(engine, ws, raws, now=clock.now())
    run_until_idle(worker, clock)
    with transaction(engine) as conn:
        from touchline.audience.catalog import archive_product

        archive_product(conn, ws, "ph6", now=clock.now())
        anna = conn.execute(select(profiles.c.id).where(profiles.c.user_id == "anna")).scalar_one()
    return engine, ws, anna


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["product_id"] for item in items]


def test_similar_is_the_category_near_the_price_popular_first_never_bought_or_unavailable(
    store: tuple[Engine, str, int],
) -> None:
    """Like ph1: ph2 and ph3 (within 30 %, one order each, ph2 nearer), then ph4 (far);
    not ph5 (out of stock), ph6 (archived) or ph1 itself."""
    engine, ws, anna = store
    r = Recommender(engine, workspace_id=ws, profile_id=anna)
    assert ids(r.similar("ph1", 4)) == ["ph2", "ph3", "ph4"]
    assert ids(r.similar("ph1", 1)) == ["ph2"]
    assert r.similar("nope", 4) == []


def test_similar_cases_leave_out_what_the_customer_bought(store: tuple[Engine, str, int]) -> None:
    """Like c2, for anna who bought c1: nothing but out-of-stock c3 is left, so nothing;
    for someone unknown, c1."""
    engine, ws, anna = store
    assert ids(Recommender(engine, workspace_id=ws, profile_id=anna).similar("c2", 4)) == []
    assert ids(Recommender(engine, workspace_id=ws, profile_id=None).similar("c2", 4)) == ["c1"]


def test_bought_together_ranks_by_shared_orders_and_leaves_out_purchases(
    store: tuple[Engine, str, int],
) -> None:
    """With ph1: c1 (2 orders), then c2 and ch1 (1 each, by id); anna bought c1, so not for her.
    With ph3: c3 only, which is out of stock."""
    engine, ws, anna = store
    nobody = Recommender(engine, workspace_id=ws, profile_id=None)
    assert ids(nobody.bought_together(["ph1"], 4)) == ["c1", "c2", "ch1"]
    assert ids(
        Recommender(engine, workspace_id=ws, profile_id=anna).bought_together(["ph1"], 4)
    ) == [
        "c2",
        "ch1",
    ]
    assert nobody.bought_together(["ph3"], 4) == []


def test_bought_together_with_several_products_sums_their_pairs(
    store: tuple[Engine, str, int],
) -> None:
    """With ph1 and ph2: c1 and c2 shared two orders each (one with each for c2), ch1 one."""
    engine, ws, _ = store
    nobody = Recommender(engine, workspace_id=ws, profile_id=None)
    assert ids(nobody.bought_together(["ph1", "ph2"], 4)) == ["c1", "c2", "ch1"]


def test_viewed_not_bought_is_latest_first_and_in_stock(store: tuple[Engine, str, int]) -> None:
    """Anna viewed ph2, ph4, c3, ph1: ph1, ph4, ph2 (c3 is out of stock)."""
    engine, ws, anna = store
    r = Recommender(engine, workspace_id=ws, profile_id=anna)
    assert ids(r.viewed_not_bought(4)) == ["ph1", "ph4", "ph2"]
    assert Recommender(engine, workspace_id=ws, profile_id=None).viewed_not_bought(4) == []


def test_popular_ranks_by_orders_then_id(store: tuple[Engine, str, int]) -> None:
    """ph1 (3), c2 (2), then ch1, ph2, ph3 (1 each, by id); c1 is anna's, c3 out of stock."""
    engine, ws, anna = store
    r = Recommender(engine, workspace_id=ws, profile_id=anna)
    assert ids(r.popular(4)) == ["ph1", "c2", "ch1", "ph2"]
    assert ids(r.popular(4, "phones")) == ["ph1", "ph2", "ph3"]


def test_for_customer_mixes_views_then_companions_then_similar_then_popular(
    store: tuple[Engine, str, int],
) -> None:
    """Anna: her views ph1, ph4, ph2; then what went with her purchases and views (c2 and ch1
    shared 2 orders with them, ph3 1)."""
    engine, ws, anna = store
    r = Recommender(engine, workspace_id=ws, profile_id=anna)
    assert ids(r.for_customer(6)) == ["ph1", "ph4", "ph2", "c2", "ch1", "ph3"]
    assert ids(r.for_customer(2)) == ["ph1", "ph4"]


def test_a_template_lists_recommendations_with_prices(store: tuple[Engine, str, int]) -> None:
    """`recommend.similar` and `recommend.viewed_not_bought` in a template render names and prices."""
    engine, ws, anna = store
    template = compile_template(
        Template(
            name="t",
            channel="email",
            text=(
                "{% for p in recommend.similar('ph1', 2) %}{{ p.name }} {{ p.price | money(p.currency) }};{% endfor %}"
                "{% for p in recommend.viewed_not_bought(1) %} seen {{ p.name }}{% endfor %}"
            ),
        )
    )
    out = template.render(
        RenderContext(
            profile={},
            now=T0,
            recommend=Recommender(engine, workspace_id=ws, profile_id=anna),
        )
    )
    assert out.text == "PH2 11\xa0000,00\xa0₽;PH3 12\xa0500,00\xa0₽; seen PH1"


PACK_TEMPLATES = Path(__file__).resolve().parents[2] / "examples" / "ecommerce" / "templates"
LINKS = {"unsubscribe_url": "https://t.example/u/x", "preferences_url": "https://t.example/p/x"}


@pytest.mark.parametrize(
    ("template", "properties", "listed"),
    [
        (
            "back-in-stock",
            {"product_id": "ph1", "name": "PH1", "price": 10000, "reason": "viewed"},
            ["PH2", "PH3", "PH4"],
        ),
        (
            "price-drop",
            {
                "product_id": "ph1",
                "name": "PH1",
                "price": 9000,
                "old_price": 10000,
                "drop_percent": 10.0,
            },
            ["PH4", "PH2"],
        ),
        (
            "browse-similar-products",
            {"product_id": "ph1", "name": "PH1", "category": "phones"},
            ["PH2", "PH3", "PH4"],
        ),
        (
            "cross-sell-accessories",
            {"order_id": "9", "products": [{"product_id": "ph1", "name": "PH1"}]},
            ["C2", "CH1"],
        ),
        ("cross-sell-bestsellers", {"order_id": "9"}, ["PH1", "C2", "CH1", "PH2"]),
    ],
)
def test_the_pack_templates_list_the_recommendations(
    store: tuple[Engine, str, int], template: str, properties: dict[str, Any], listed: list[str]
) -> None:
    """The example pack's emails list what the recommender gives anna, in its order."""
    engine, ws, anna = store
    [found] = [t for t in load_template_dir(PACK_TEMPLATES) if t.name == template]
    out = compile_template(found).render(
        RenderContext(
            profile={"first_name": "Анна"},
            now=T0,
            event={"name": "x", "properties": properties},
            links=LINKS,
            recommend=Recommender(engine, workspace_id=ws, profile_id=anna),
        )
    )
    assert out.html is not None
    names = re.findall(r'<td[^>]*><a href="[^"]*"[^>]*>([A-Z0-9]+)</a></td>', out.html)
    assert names == listed
