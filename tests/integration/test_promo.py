"""Promo code pools on SQLite and PostgreSQL: filling, issuing, redeeming, the API and the CLI."""

from __future__ import annotations

import textwrap
import threading
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from touchline.cli import main
from touchline.config import Settings
from touchline.errors import InputError, NotFound
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.templates import (
    PROMO_SAMPLE,
    RenderContext,
    RenderError,
    Template,
    compile_template,
)
from touchline.store.db import run_in_transaction, transaction
from touchline.store.journeys import apply_journeys
from touchline.store.promo import (
    ALPHABET,
    DEFAULT_LENGTH,
    IssuedCode,
    create_pool,
    entropy_bits,
    generate_codes,
    import_codes,
    issue_code,
    pool_stats,
    promo_provider,
)
from touchline.store.tables import conversions, instances, profiles, promo_codes
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

CART = """\
journey: abandoned-cart
category: selling
trigger: {event: Product Added}
entry: {key: cart_id, reentry: once_per_key}
steps:
  - id: cool-off
    wait: 1h
  - id: reminder
    send: {channel: email, template: cart-reminder}
"""


@pytest.fixture
def ws(engine: Engine) -> str:
    return create_workspace(engine, "Shop", now=T0).id


def pool_with(engine: Engine, ws: str, key: str, codes: list[str], **validity: Any) -> None:
    with transaction(engine) as conn:
        create_pool(conn, ws, key=key, name=key, now=T0, **validity)
        import_codes(conn, ws, key, codes)


def issue(engine: Engine, ws: str, **kwargs: Any) -> IssuedCode:
    params = {"pool_key": "cart10", "now": T0, **kwargs}
    return run_in_transaction(engine, lambda conn: issue_code(conn, ws, **params))


def code_row(engine: Engine, code: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(promo_codes).where(promo_codes.c.code == code)).one()


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


# -- filling pools ---------------------------------------------------------------------------


def test_import_counts_duplicates_and_invalid_codes_without_failing(
    engine: Engine, ws: str
) -> None:
    """Import trims codes, adds the new ones, and counts repeats (in the file or the
    workspace, whatever pool) and malformed values instead of refusing the file."""
    # given: another pool already holds OLD-0001
    pool_with(engine, ws, "old", ["OLD-0001"])
    with transaction(engine) as conn:
        create_pool(conn, ws, key="cart10", name="Cart 10%", now=T0)
        # when
        result = import_codes(
            conn,
            ws,
            "cart10",
            [" CART-A1 ", "CART-A2", "CART-A1", "OLD-0001", "ab", "bad code", "x" * 65, "", 12345],
        )
    # then
    assert (result.added, result.duplicates, result.invalid) == (2, 2, 4)
    assert "bad code" in result.invalid_samples
    assert code_row(engine, "CART-A1").pool_id != code_row(engine, "OLD-0001").pool_id
    with engine.connect() as conn:
        stats = {p["key"]: p for p in pool_stats(conn, ws, now=T0)}
    assert stats["cart10"]["total"] == 2 and stats["cart10"]["left"] == 2


def test_import_into_an_unknown_pool_is_not_found(engine: Engine, ws: str) -> None:
    """Codes for a pool the workspace does not have are refused with promo_pool_unknown."""
    with transaction(engine) as conn, pytest.raises(NotFound) as caught:
        import_codes(conn, ws, "nope", ["CODE-1"])
    assert caught.value.code == "promo_pool_unknown"


def test_generated_codes_are_unique_unambiguous_and_long_enough(engine: Engine, ws: str) -> None:
    """Generated codes are new, distinct, prefixed and drawn from the alphabet without
    0/O/1/I/L; the default length carries at least 50 bits."""
    # given
    with transaction(engine) as conn:
        create_pool(conn, ws, key="cart10", name="Cart", now=T0)
        # when
        codes = generate_codes(conn, ws, "cart10", count=2000, prefix="C-")
        more = generate_codes(conn, ws, "cart10", count=10)
    # then
    assert len(set(codes + more)) == 2010
    assert all(c.startswith("C-") and len(c) == 2 + DEFAULT_LENGTH for c in codes)
    assert all(set(c[2:]) <= set(ALPHABET) for c in codes)
    assert not set(ALPHABET) & set("0O1IL")
    assert entropy_bits(DEFAULT_LENGTH) >= 50
    assert count(engine, promo_codes, promo_codes.c.workspace_id == ws) == 2010


def test_generate_refuses_too_many_codes_or_a_guessable_length(engine: Engine, ws: str) -> None:
    """count over the cap and lengths too short to be unguessable are input errors."""
    with transaction(engine) as conn:
        create_pool(conn, ws, key="cart10", name="Cart", now=T0)
    for kwargs in ({"count": 100_001}, {"count": 5, "length": 4}, {"count": 5, "prefix": "a b"}):
        with transaction(engine) as conn, pytest.raises(InputError):
            generate_codes(conn, ws, "cart10", **kwargs)


def test_creating_a_pool_twice_is_refused(engine: Engine, ws: str) -> None:
    """A second pool with the same key in a workspace answers promo_pool_exists."""
    with transaction(engine) as conn:
        create_pool(conn, ws, key="cart10", name="Cart", now=T0)
    with transaction(engine) as conn, pytest.raises(InputError) as caught:
        create_pool(conn, ws, key="cart10", name="Again", now=T0)
    assert caught.value.code == "promo_pool_exists"


# -- issuing ---------------------------------------------------------------------------------


def test_one_offer_keeps_its_code_and_other_offers_and_customers_get_others(
    engine: Engine, ws: str
) -> None:
    """Issuing is idempotent per offer (reminder 2 shows reminder 1's code); other offers
    and other customers get different codes, and nobody gets another customer's code."""
    # given
    pool_with(engine, ws, "cart10", [f"CART-{i:03d}" for i in range(10)])
    # when
    first = issue(engine, ws, profile_id=1, offer_key="instance:1", instance_id=1)
    again = issue(engine, ws, profile_id=1, offer_key="instance:1", instance_id=1)
    other_offer = issue(engine, ws, profile_id=1, offer_key="instance:2", instance_id=2)
    other_customer = issue(engine, ws, profile_id=2, offer_key="instance:3", instance_id=3)
    # then
    assert first.new and not again.new
    assert again.code == first.code
    assert len({first.code, other_offer.code, other_customer.code}) == 3
    row = code_row(engine, first.code)
    assert (row.profile_id, row.offer_key, row.instance_id, row.issued_at) == (
        1,
        "instance:1",
        1,
        T0,
    )
    with pytest.raises(InputError) as caught:
        issue(engine, ws, profile_id=2, offer_key="instance:1")
    assert caught.value.code == "promo_offer_taken"


def test_an_exhausted_pool_answers_promo_pool_empty(engine: Engine, ws: str) -> None:
    """When every code is issued, a new offer fails with promo_pool_empty; old offers still work."""
    # given
    pool_with(engine, ws, "cart10", ["ONLY-ONE"])
    issued = issue(engine, ws, profile_id=1, offer_key="a")
    # when
    with pytest.raises(InputError) as caught:
        issue(engine, ws, profile_id=2, offer_key="b")
    # then
    assert caught.value.code == "promo_pool_empty"
    assert issue(engine, ws, profile_id=1, offer_key="a").code == issued.code == "ONLY-ONE"


def test_issuing_outside_the_validity_answers_promo_pool_expired(engine: Engine, ws: str) -> None:
    """Before valid_from, at or after valid_until, or past a code's own end: promo_pool_expired."""
    # given
    pool_with(
        engine,
        ws,
        "cart10",
        ["CODE-AAA", "CODE-BBB"],
        valid_from=T0,
        valid_until=T0 + timedelta(days=7),
    )
    with transaction(engine) as conn:
        create_pool(conn, ws, key="short", name="Short", now=T0)
        import_codes(conn, ws, "short", ["SHORT-1"], valid_until=T0 + timedelta(hours=1))
    # when / then
    for when in (T0 - timedelta(seconds=1), T0 + timedelta(days=7)):
        with pytest.raises(InputError) as caught:
            issue(engine, ws, profile_id=1, offer_key="x", now=when)
        assert caught.value.code == "promo_pool_expired"
    assert issue(engine, ws, profile_id=1, offer_key="x", now=T0 + timedelta(days=6)).code
    late = T0 + timedelta(hours=2)
    with pytest.raises(InputError) as caught:
        issue(engine, ws, pool_key="short", profile_id=1, offer_key="y", now=late)
    assert caught.value.code == "promo_pool_empty"  # its only code has run out
    with pytest.raises(NotFound) as unknown:
        issue(engine, ws, pool_key="nope", profile_id=1, offer_key="z")
    assert unknown.value.code == "promo_pool_unknown"


def test_concurrent_issuers_of_different_offers_never_share_a_code(engine: Engine, ws: str) -> None:
    """Eight threads issuing at once for different offers get 80 distinct codes."""
    # given
    pool_with(engine, ws, "cart10", [f"CODE-{i:04d}" for i in range(100)])
    start = threading.Barrier(8)
    got: list[str] = []
    errors: list[BaseException] = []

    def issuer(n: int) -> None:
        try:
            start.wait()
            for j in range(10):
                got.append(issue(engine, ws, profile_id=n, offer_key=f"{n}:{j}").code)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    # when
    threads = [threading.Thread(target=issuer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # then
    assert not errors
    assert len(got) == len(set(got)) == 80
    assert count(engine, promo_codes, promo_codes.c.profile_id.is_not(None)) == 80


def test_concurrent_issuers_of_one_offer_all_get_the_same_code(engine: Engine, ws: str) -> None:
    """Eight threads issuing one offer at once all get one code, and only one code is used."""
    # given
    pool_with(engine, ws, "cart10", [f"CODE-{i:04d}" for i in range(20)])
    start = threading.Barrier(8)
    got: list[str] = []

    def issuer() -> None:
        start.wait()
        got.append(issue(engine, ws, profile_id=1, offer_key="instance:9").code)

    # when
    threads = [threading.Thread(target=issuer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # then
    assert len(got) == 8 and len(set(got)) == 1
    assert count(engine, promo_codes, promo_codes.c.profile_id.is_not(None)) == 1


def test_the_loser_of_a_race_for_one_offer_takes_the_winners_code(engine: Engine, ws: str) -> None:
    """An issuer that loses the race for an offer (PostgreSQL: the unique offer key; SQLite:
    the write lock) returns the winner's code and leaves the code it picked free."""
    # given
    pool_with(engine, ws, "cart10", [f"CODE-{i:04d}" for i in range(5)])
    results: list[IssuedCode] = []
    loser = threading.Thread(
        target=lambda: results.append(issue(engine, ws, profile_id=1, offer_key="instance:5"))
    )
    # when: the winner has bound the offer but not committed while the loser tries
    with transaction(engine) as conn:
        winner = issue_code(
            conn, ws, pool_key="cart10", profile_id=1, offer_key="instance:5", now=T0
        )
        loser.start()
        loser.join(0.5)
        assert loser.is_alive()  # it waits for the winner
    loser.join(30)
    # then
    assert [r.code for r in results] == [winner.code]
    assert not results[0].new
    assert count(engine, promo_codes, promo_codes.c.profile_id.is_not(None)) == 1


# -- templates -------------------------------------------------------------------------------


def test_a_template_prints_the_instance_code_through_promo_provider(
    engine: Engine, ws: str
) -> None:
    """promo_code("cart10") prints the code issued for the instance, the same in every part
    and on a retried send; a preview without a provider prints a sample."""
    # given
    pool_with(engine, ws, "cart10", ["CART-XYZ1", "CART-XYZ2"])
    template = compile_template(
        Template(
            name="cart-reminder",
            channel="email",
            subject="Скидка 10% по коду {{ promo_code('cart10') }}",
            text="Ваш код: {{ promo_code('cart10') }}",
        )
    )

    def render(promo: Any) -> tuple[str | None, str | None]:
        out = template.render(RenderContext(profile={}, now=T0, promo=promo))
        return out.subject, out.text

    provider = promo_provider(engine, workspace_id=ws, profile_id=7, instance_id=42, now=T0)
    # when
    subject, text = render(provider)
    retried = render(promo_provider(engine, workspace_id=ws, profile_id=7, instance_id=42, now=T0))
    preview = render(None)
    # then
    code = code_row(engine, "CART-XYZ1")
    assert subject == "Скидка 10% по коду CART-XYZ1" and text == "Ваш код: CART-XYZ1"
    assert retried == (subject, text)
    assert (code.profile_id, code.offer_key, code.instance_id) == (7, "instance:42", 42)
    assert preview == (f"Скидка 10% по коду {PROMO_SAMPLE}", f"Ваш код: {PROMO_SAMPLE}")


def test_a_pool_without_codes_fails_only_that_message_with_the_reason(
    engine: Engine, ws: str
) -> None:
    """An empty or unknown pool makes the render fail with a RenderError naming the reason."""
    # given
    pool_with(engine, ws, "empty", [])
    for pool, reason in (("empty", "promo_pool_empty"), ("nope", "promo_pool_unknown")):
        template = compile_template(
            Template(name="t", channel="sms", text=f"Код {{{{ promo_code('{pool}') }}}}")
        )
        provider = promo_provider(engine, workspace_id=ws, profile_id=1, instance_id=1, now=T0)
        # when
        with pytest.raises(RenderError) as caught:
            template.render(RenderContext(profile={}, now=T0, promo=provider))
        # then
        assert reason in caught.value.message and pool in caught.value.message


# -- redeeming -------------------------------------------------------------------------------


class Shop:
    """A workspace with the cart journey, a frozen clock and a worker."""

    def __init__(self, engine: Engine, ws: str) -> None:
        self.engine = engine
        self.ws = ws
        self.clock = FrozenClock(T0)
        self.worker = Worker(engine, clock=self.clock, owner="w1")
        text = textwrap.dedent(CART)
        loaded = LoadedJourney(
            path="cart.yaml", spec=load_journey_text(text, file="cart.yaml"), source=text
        )
        with transaction(engine) as conn:
            apply_journeys(conn, ws, [loaded], now=T0)

    def send(self, *raws: dict[str, Any]) -> None:
        send_events(self.engine, self.ws, list(raws), now=self.clock.now())
        run_until_idle(self.worker, self.clock)

    def instance_of(self, user_id: str) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(instances.c.id, instances.c.profile_id, instances.c.journey_id)
                .join(profiles, profiles.c.id == instances.c.profile_id)
                .where(profiles.c.user_id == user_id)
            ).one()

    def code_for(self, user_id: str) -> str:
        inst = self.instance_of(user_id)
        provide = promo_provider(
            self.engine,
            workspace_id=self.ws,
            profile_id=inst.profile_id,
            instance_id=inst.id,
            now=self.clock.now(),
        )
        return provide("cart10")


def test_an_order_with_the_code_redeems_it_once_and_converts_the_instance(
    engine: Engine, ws: str
) -> None:
    """An Order Completed with the issued code, processed by the worker, marks the code
    redeemed and records one conversion of the instance with the order's revenue;
    the same order again changes nothing."""
    # given
    pool_with(engine, ws, "cart10", ["CART-R1", "CART-R2"])
    shop = Shop(engine, ws)
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    code = shop.code_for("u1")
    inst = shop.instance_of("u1")
    # when
    order = {"order_id": "o1", "coupon": f"{code.lower()}, WELCOME10", "revenue": "1990.50"}
    shop.send(track("u1", "Order Completed", order))
    shop.send(track("u1", "Order Completed", {**order, "order_id": "o2"}))
    # then
    row = code_row(engine, code)
    assert row.redeemed_at == T0 and row.redeemed_profile_id == inst.profile_id
    assert row.redeemed_event_id is not None
    with engine.connect() as conn:
        conv = conn.execute(select(conversions)).all()
    assert [(c.instance_id, c.journey_id, c.event_name, c.value) for c in conv] == [
        (inst.id, inst.journey_id, "Order Completed", Decimal("1990.50"))
    ]
    assert conv[0].event_id == row.redeemed_event_id


def test_a_code_used_by_another_customer_is_redeemed_as_shared_without_a_conversion(
    engine: Engine, ws: str
) -> None:
    """A code passed on to a friend is marked redeemed by the friend, counted as shared,
    and converts nothing; checkout events with a coupon redeem nothing."""
    # given
    pool_with(engine, ws, "cart10", ["CART-S1"])
    shop = Shop(engine, ws)
    shop.send(track("u1", "Product Added", {"cart_id": "c1"}))
    code = shop.code_for("u1")
    # when
    shop.send(track("friend", "Checkout Started", {"coupon": code}))
    before = code_row(engine, code).redeemed_at
    shop.send(track("friend", "Order Completed", {"coupon": [code], "total": 500}))
    # then
    row = code_row(engine, code)
    assert before is None and row.redeemed_at == T0
    assert row.redeemed_profile_id != row.profile_id
    assert count(engine, conversions) == 0
    with engine.connect() as conn:
        stats = pool_stats(conn, ws, now=T0)
    assert (stats[0]["issued"], stats[0]["redeemed"], stats[0]["shared"], stats[0]["left"]) == (
        1,
        1,
        1,
        0,
    )


# -- admin API and CLI ------------------------------------------------------------------------


@pytest.fixture
def client(engine: Engine, database_url: str) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=database_url), engine=engine, clock=FrozenClock(T0))
    with TestClient(app) as client:
        yield client


def test_admin_api_creates_fills_lists_and_looks_up_pools(
    engine: Engine, client: TestClient
) -> None:
    """The admin API creates a pool, imports JSON and CSV codes, generates codes, lists
    counts and shows who holds a code; errors answer {code, message}."""
    created = create_workspace(engine, "Shop", now=T0)
    auth = {"Authorization": f"Bearer {created.admin_token}"}

    def post(path: str, **kwargs: Any) -> Any:
        return client.post(
            f"/admin/v1{path}", headers={**auth, **kwargs.pop("headers", {})}, **kwargs
        )

    # when
    made = post(
        "/promo-pools",
        json={"key": "cart10", "name": "Cart 10%", "valid_until": "2026-04-01T00:00:00Z"},
    )
    again = post("/promo-pools", json={"key": "cart10"})
    from_json = post("/promo-pools/cart10/codes", json={"codes": ["JSON-0001", "JSON-0001", "no"]})
    from_csv = post(
        "/promo-pools/cart10/codes",
        content="\ufeffnote;code\nfirst;CSV-0001\nsecond;CSV-0002\ndup;JSON-0001\n".encode(),
        headers={"Content-Type": "text/csv; charset=utf-8"},
    )
    generated = post("/promo-pools/cart10/generate", json={"count": 3, "prefix": "GEN-"})
    too_many = post("/promo-pools/cart10/generate", json={"count": 100_001})
    unknown_pool = post("/promo-pools/nope/codes", json={"codes": ["X-0001"]})
    issued = issue(engine, created.id, profile_id=5, offer_key="instance:77", instance_id=77)
    listed = client.get("/admin/v1/promo-pools", headers=auth)
    detail = client.get(f"/admin/v1/promo-codes/{issued.code}", headers=auth)
    missing = client.get("/admin/v1/promo-codes/NOPE-0000", headers=auth)
    # then
    assert made.status_code == 201, made.text
    assert made.json()["valid_until"] == "2026-04-01T00:00:00+00:00"
    assert (again.status_code, again.json()["code"]) == (400, "promo_pool_exists")
    assert from_json.json() == {
        "added": 1,
        "duplicates": 1,
        "invalid": 1,
        "invalid_samples": ["no"],
    }
    assert (from_csv.json()["added"], from_csv.json()["duplicates"]) == (2, 1)
    codes = generated.json()["codes"]
    assert generated.json()["generated"] == 3 and all(c.startswith("GEN-") for c in codes)
    assert (too_many.status_code, too_many.json()["code"]) == (400, "invalid_input")
    assert (unknown_pool.status_code, unknown_pool.json()["code"]) == (404, "promo_pool_unknown")
    [pool] = listed.json()["pools"]
    assert {k: pool[k] for k in ("key", "name", "status", "total", "issued", "left")} == {
        "key": "cart10",
        "name": "Cart 10%",
        "status": "active",
        "total": 6,
        "issued": 1,
        "left": 5,
    }
    body = detail.json()
    assert (body["pool"], body["status"], body["redeemed"]) == ("cart10", "issued", None)
    assert body["issued"]["offer_key"] == "instance:77" and body["issued"]["instance_id"] == 77
    assert missing.status_code == 404
    assert set(missing.json()) == {"code", "message"}
    assert missing.json()["code"] == "promo_code_unknown"


def test_the_cli_creates_imports_generates_and_lists(
    engine: Engine, ws: str, database_url: str, tmp_path: Any
) -> None:
    """`touchline promo` create, import FILE, generate and list work against the store."""
    # given
    csv_file = tmp_path / "codes.csv"
    csv_file.write_text("code\nFILE-0001\nFILE-0002\nFILE-0001\n", encoding="utf-8")
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(
            main,
            ["promo", *args, "--workspace", ws],
            obj={"engine": engine},
            env={"TOUCHLINE_DATABASE_URL": database_url},
        )

    # when
    created = run("create", "cart10", "--name", "Cart", "--valid-until", "2026-05-01")
    imported = run("import", "cart10", str(csv_file))
    generated = run("generate", "cart10", "--count", "4", "--prefix", "CLI-")
    listed = run("list")
    duplicate = run("create", "cart10")
    # then
    assert created.exit_code == 0, created.output
    assert "2 added, 1 duplicates, 0 invalid" in imported.output
    lines = [line for line in generated.stdout.splitlines() if line.startswith("CLI-")]
    assert len(lines) == 4
    assert "cart10" in listed.output and "6" in listed.output
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    with engine.connect() as conn:
        [pool] = pool_stats(conn, ws)
    assert pool["valid_until"] == "2026-05-01T00:00:00+00:00"
