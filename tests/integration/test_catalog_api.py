"""The catalog's admin API and `touchline catalog import`, on SQLite and PostgreSQL."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from touchline.audience.catalog import CatalogRules, parse_product, upsert_products
from touchline.cli import main
from touchline.config import Settings
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.tables import catalog_alerts
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def client(engine: Engine, database_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=database_url), engine=engine, clock=FrozenClock(T0))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def shop(engine: Engine) -> tuple[str, dict[str, str]]:
    created = create_workspace(engine, "Shop", now=T0)
    return created.id, {"Authorization": f"Bearer {created.admin_token}"}


def test_put_get_list_and_archive_a_product(
    client: TestClient, shop: tuple[str, dict[str, str]]
) -> None:
    """PUT creates then updates the fields given; GET shows it; DELETE archives it."""
    _, auth = shop
    base = "/admin/v1/catalog/products"
    # when
    made = client.put(
        f"{base}/p-1", headers=auth, json={"name": "Наушники", "price": 6990.5, "category": "Аудио"}
    )
    stock = client.put(f"{base}/p-1", headers=auth, json={"in_stock": False})
    got = client.get(f"{base}/p-1", headers=auth)
    listed = client.get(base, headers=auth, params={"category": "Аудио", "limit": 1})
    gone = client.delete(f"{base}/p-1", headers=auth)
    after = client.get(base, headers=auth)
    # then
    assert made.status_code == 200, made.text
    assert made.json()["result"]["created"] == 1
    assert stock.json()["result"]["updated"] == 1
    body = got.json()
    assert (body["name"], body["price"], body["in_stock"], body["archived"]) == (
        "Наушники",
        "6990.50",
        False,
        False,
    )
    assert [p["product_id"] for p in listed.json()["products"]] == ["p-1"]
    assert listed.json()["next_after"] == "p-1"
    assert gone.json()["archived"] is True
    assert after.json() == {"products": [], "next_after": None}


def test_bad_products_answer_4xx_code_and_message(
    client: TestClient, shop: tuple[str, dict[str, str]]
) -> None:
    """A bad field, a nameless new product, a stranger's id, an unknown product, no token."""
    _, auth = shop
    base = "/admin/v1/catalog/products"
    answers = [
        client.put(f"{base}/p-1", headers=auth, json={"name": "X", "price": "cheap"}),
        client.put(f"{base}/p-1", headers=auth, json={"price": 10}),
        client.put(f"{base}/p-1", headers=auth, json={"id": "p-2", "name": "X"}),
        client.put(f"{base}/p-1", headers=auth, content=b"{not json"),
        client.get(f"{base}/nope", headers=auth),
        client.delete(f"{base}/nope", headers=auth),
        client.get(f"{base}/p-1"),
        client.post(base, headers=auth, json={"items": []}),
    ]
    assert [(a.status_code, a.json()["code"]) for a in answers] == [
        (400, "invalid_input"),
        (400, "invalid_input"),
        (400, "invalid_input"),
        (400, "invalid_input"),
        (404, "product_not_found"),
        (404, "product_not_found"),
        (401, "unauthorized"),
        (400, "invalid_input"),
    ]
    assert answers[0].json()["message"].startswith("price:")
    assert answers[1].json()["message"] == "name: a new product needs a name"
    assert all(set(a.json()) == {"code", "message"} for a in answers)


def test_a_batch_applies_the_good_items_and_lists_the_bad_by_index(
    client: TestClient, shop: tuple[str, dict[str, str]]
) -> None:
    """Three items: one bad field, one nameless new product, one good; a restock is counted."""
    _, auth = shop
    base = "/admin/v1/catalog/products"
    client.put(f"{base}/p-0", headers=auth, json={"name": "Старый", "in_stock": False})
    # when
    answer = client.post(
        base,
        headers=auth,
        json={
            "products": [
                {"id": "p-1", "name": "Шапка", "price": -5},
                {"id": "p-2", "price": 5},
                {"id": "p-3", "name": "Шарф"},
                {"id": "p-0", "in_stock": True},
            ]
        },
    )
    alerts = client.get("/admin/v1/catalog/alerts", headers=auth)
    # then
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["created"], body["updated"], body["restocks"]) == (1, 1, 1)
    assert [(r["at"], r["product_id"]) for r in body["rejected"]] == [(0, "p-1"), (1, "p-2")]
    [alert] = alerts.json()["alerts"]
    assert (alert["product_id"], alert["kind"], alert["status"]) == (
        "p-0",
        "back_in_stock",
        "pending",
    )


def test_recommendations_route_shows_what_a_template_would_list(
    engine: Engine, client: TestClient, shop: tuple[str, dict[str, str]]
) -> None:
    """After an order of a and b, bought_together(a) lists b; for_customer needs a profile."""
    ws, auth = shop
    client.post(
        "/admin/v1/catalog/products",
        headers=auth,
        json={
            "products": [
                {"id": "a", "name": "A", "price": 10},
                {"id": "b", "name": "B", "price": 20},
            ]
        },
    )
    clock = FrozenClock(T0)
    send_events(
        engine,
        ws,
        [track("u1", "Order Completed", {"products": [{"product_id": "a"}, {"product_id": "b"}]})],
        now=T0,
    )
    run_until_idle(Worker(engine, clock=clock, owner="w"), clock)
    # when
    together = client.get(
        "/admin/v1/catalog/recommendations",
        headers=auth,
        params={"kind": "bought_together", "product_id": "a"},
    )
    mine = client.get(
        "/admin/v1/catalog/recommendations",
        headers=auth,
        params={"kind": "for_customer", "profile": "u1"},
    )
    unnamed = client.get(
        "/admin/v1/catalog/recommendations", headers=auth, params={"kind": "for_customer"}
    )
    # then
    assert [(p["product_id"], p["price"]) for p in together.json()["products"]] == [("b", "20.00")]
    assert mine.json()["products"] == []  # u1 bought both
    assert (unnamed.status_code, unnamed.json()["code"]) == (400, "invalid_input")


def test_the_cli_imports_a_csv_reporting_bad_rows_by_line(
    engine: Engine, shop: tuple[str, dict[str, str]], database_url: str, tmp_path: Path
) -> None:
    """Good rows are stored, bad ones named with file and line; exit status 1; a second import
    of a restock file records one back-in-stock, a third none."""
    ws, _ = shop
    first = tmp_path / "catalog.csv"
    first.write_text(
        "id,name,price,currency,category,in_stock,brand\n"
        "p1,Куртка,4990,RUB,Одежда,no,North\n"
        "p2,Шапка,990,RUB,Одежда,yes,\n"
        "p3,Шарф,много,RUB,Одежда,yes,\n"
        "p4,,100,RUB,Одежда,yes,\n",
        encoding="utf-8",
    )
    stock = tmp_path / "stock.csv"
    stock.write_text("id,in_stock\np1,yes\n", encoding="utf-8")
    runner = CliRunner()

    def run(path: Path, *extra: str) -> Any:
        return runner.invoke(
            main,
            ["catalog", "import", str(path), "--workspace", ws, *extra],
            obj={"engine": engine},
            env={"TOUCHLINE_DATABASE_URL": database_url},
        )

    # when
    imported = run(first, "--batch", "2")
    restocked = run(stock)
    repeated = run(stock)
    # then
    assert imported.exit_code == 1, imported.output
    assert "2 created, 0 updated, 0 unchanged, 2 rejected" in imported.stdout
    assert f"{first}:4: price:" in imported.stderr
    assert f"{first}:5: name: a new product needs a name" in imported.stderr
    assert restocked.exit_code == 0, restocked.output
    assert "1 back in stock" in restocked.stdout
    assert "1 unchanged" in repeated.stdout and "0 back in stock" in repeated.stdout
    with engine.connect() as conn:
        kinds = conn.execute(select(catalog_alerts.c.kind)).scalars().all()
    assert kinds == ["back_in_stock"]


def test_catalog_settings_are_checked_by_the_settings_api(
    client: TestClient, shop: tuple[str, dict[str, str]]
) -> None:
    """PUT /settings accepts a catalog section and names a bad field in it."""
    _, auth = shop
    ok = client.put("/admin/v1/settings", headers=auth, json={"catalog": {"view_window": "14d"}})
    bad = client.put(
        "/admin/v1/settings", headers=auth, json={"catalog": {"price_drop_percent": 150}}
    )
    assert ok.status_code == 200, ok.text
    assert bad.status_code == 400 and bad.json()["message"].startswith("catalog.price_drop_percent")


PREVIEWED = """
template: picks
channel: email
subject: "Для вас"
text: "{% for p in recommend.for_customer(3) %}{{ p.name }};{% else %}ничего{% endfor %}"
"""


def test_preview_lists_the_customers_recommendations_from_the_store(
    engine: Engine, shop: tuple[str, dict[str, str]], database_url: str
) -> None:
    """`touchline preview` renders recommend.* for the customer, from the store."""
    ws, _ = shop
    with transaction(engine) as conn:
        apply_templates(conn, ws, [load_template_text(PREVIEWED, file="t.yaml")], now=T0)
        upsert_products(
            conn,
            ws,
            [parse_product({"id": p, "name": p.upper()}) for p in ("a", "b")],
            now=T0,
            rules=CatalogRules(),
        )
    clock = FrozenClock(T0)
    send_events(engine, ws, [track("u1", "Product Viewed", {"product_id": "b"})], now=T0)
    run_until_idle(Worker(engine, clock=clock, owner="w"), clock)
    # when
    result = CliRunner().invoke(
        main,
        ["preview", "picks", "--profile", "u1", "--workspace", ws],
        obj={"engine": engine},
        env={"TOUCHLINE_DATABASE_URL": database_url},
    )
    # then
    assert result.exit_code == 0, result.output
    assert "B;" in result.stdout and "ничего" not in result.stdout
