"""A customer's personal data: exported whole, then erased, on SQLite and PostgreSQL.

A customer goes through everything touchline does — identified with consent,
merged with their anonymous visits, sent an email (with a promo code), an SMS
(with a short link) and a call task, clicks, orders, unsubscribes, sits in a
segment — and is then exported and erased. After the erasure no column of any
table holds their email, phone, name or birthday, and the export shows only
the legal record.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from touchline.audience.customer_import import import_customers
from touchline.cli import main
from touchline.config import Settings
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.callcentre import CallCentreChannel
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.consent import load_suppressions, pseudonym, suppress
from touchline.store.db import run_in_transaction, transaction
from touchline.store.journeys import apply_journeys
from touchline.store.privacy import ERASURE_RULES, PROFILE_REFS, erase_customer, export_customer
from touchline.store.promo import create_pool, import_codes
from touchline.store.tables import (
    events,
    instances,
    metadata,
    outbox,
    product_interest,
    segment_changes,
    segment_members,
    segments,
    tasks,
    timers,
)
from touchline.store.tasks import claim_task, close_task
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PUBLIC_URL = "https://t.shop.example"
BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}

USER = "cust-zinaida-77"
EMAIL = "zinaida.kvasnikova@example.ru"
PHONE = "+79161234567"
FIRST, LAST = "Зинаида", "Квасникова"
BIRTHDAY = "1987-11-23"
#: What must be gone after erasure, wherever it was copied to.
NEEDLES = (USER, EMAIL, PHONE, PHONE[2:], FIRST, LAST, BIRTHDAY, "anon-zina")

JOURNEY = """
journey: cart
category: selling
trigger: {event: Cart Abandoned}
entry: {reentry: always}
goal: {event: Order Completed, within: 7d}
steps:
  - id: mail
    send: {channel: email, template: cart-mail}
  - id: text
    send: {channel: sms, template: cart-sms}
  - id: call
    send: {channel: call, template: cart-call, purpose: transactional}
  - id: later
    wait: 1d
  - id: again
    send: {channel: email, template: cart-mail}
"""

TEMPLATES = [
    """
    template: cart-mail
    channel: email
    subject: "{{ profile.first_name }}, корзина ждёт"
    html: '<p>{{ profile.first_name }} {{ profile.last_name }}, код {{ promo_code("cart10") }}:
      <a href="https://shop.example/cart?who={{ profile.email }}">корзина</a></p>'
    """,
    """
    template: cart-sms
    channel: sms
    text: "{{ profile.first_name }}, корзина: https://shop.example/cart"
    """,
    """
    template: cart-call
    channel: call
    subject: "Позвонить {{ profile.first_name }} {{ profile.last_name }}"
    text: "Номер {{ profile.phone }}, почта {{ profile.email }}"
    """,
]


class Shop:
    """A workspace where one customer has done everything there is to do."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        created = create_workspace(engine, "shop", now=T0)
        self.ws, self.token = created.id, created.admin_token
        source = textwrap.dedent(JOURNEY)
        with transaction(engine) as conn:
            apply_journeys(
                conn,
                self.ws,
                [LoadedJourney("j.yaml", load_journey_text(source, file="j"), source)],
                now=T0,
            )
            apply_templates(
                conn,
                self.ws,
                [load_template_text(textwrap.dedent(t), file="t") for t in TEMPLATES],
                now=T0,
            )
            create_pool(conn, self.ws, key="cart10", name="Cart", now=T0)
            import_codes(conn, self.ws, "cart10", ["CART-0001", "CART-0002", "CART-0003"])
        self.worker = Worker(engine, clock=self.clock, owner="w")
        self.capture = CaptureChannel()
        self.dispatcher = Dispatcher(
            engine,
            clock=self.clock,
            owner="d",
            channels={"*": self.capture, "call": CallCentreChannel(engine, clock=self.clock)},
            public_url=PUBLIC_URL,
        )
        self.app = create_app(Settings(public_url=PUBLIC_URL), engine=engine, clock=self.clock)
        self.auth = {"authorization": f"Bearer {self.token}"}

    def events(self, *raws: dict[str, Any], process: bool = True) -> None:
        stamped = [{**r, "timestamp": self.clock.now().isoformat()} for r in raws]
        send_events(self.engine, self.ws, stamped, now=self.clock.now())
        if process:
            run_until_idle(self.worker, self.clock)

    def dispatch(self) -> None:
        asyncio.run(self.dispatcher.run_once(self.clock.now()))

    def live_customer(self) -> int:
        """Take the customer through every part of touchline; returns their profile id."""
        self.events(
            identify(
                USER,
                email=EMAIL,
                phone=PHONE,
                firstName=FIRST,
                lastName=LAST,
                birthday=BIRTHDAY,
                timezone="Europe/Moscow",
                consent={"email": True, "sms": True},
                favourite=f"{FIRST} likes tea",
            )
        )
        # Separate calls, so the anonymous visitor is a stored profile merged later.
        self.events(
            {
                "type": "identify",
                "anonymousId": "anon-zina",
                "traits": {"email": EMAIL, "firstName": FIRST},
                "context": {"ip": "203.0.113.7", "page": {"url": f"https://shop/?e={EMAIL}"}},
            }
        )
        self.events(
            track(USER, "Product Viewed", {"sku": "tea-1"}, anonymousId="anon-zina"),
            track(USER, "Cart Abandoned", {"cart_id": "k1", "contact": f"{FIRST} {PHONE}"}),
        )
        self.dispatch()
        with TestClient(self.app) as client:
            html = self.capture.messages[0].html or ""
            (link,) = re.findall(r'href="(https://t\.shop\.example/t/c/[^"]+)"', html)
            self.clock.advance(timedelta(minutes=30))
            clicked = client.get(
                link.removeprefix(PUBLIC_URL), headers=BROWSER, follow_redirects=False
            )
            assert clicked.status_code == 302
            sms_off = client.post(
                f"/admin/v1/profiles/{USER}/consents",
                json={"channel": "sms", "granted": False, "source": f"call with {FIRST}"},
                headers=self.auth,
            )
            assert sms_off.status_code == 200, sms_off.text
        self.events(track(USER, "Order Completed", {"order_id": "o1", "total": 900, "to": EMAIL}))
        with transaction(self.engine) as conn:
            pid = conn.execute(select(tasks.c.profile_id)).scalar_one()
            task_id = conn.execute(select(tasks.c.id)).scalar_one()
            claim_task(conn, self.ws, task_id, operator="olga", now=self.clock.now())
            close_task(
                conn,
                self.ws,
                task_id,
                operator="olga",
                outcome="reached",
                note=f"{FIRST} asked to call {PHONE} later",
                now=self.clock.now(),
            )
            suppress(
                conn,
                workspace_id=self.ws,
                channel="email",
                address=EMAIL,
                reason="complaint",
                at=self.clock.now(),
                profile_id=pid,
                detail=f"feedback loop: {EMAIL}",
            )
            segment_id = conn.execute(
                segments.insert().values(
                    workspace_id=self.ws,
                    key="tea-lovers",
                    name="Tea lovers",
                    spec={},
                    source="",
                    checksum="x",
                    # archived: the worker's segment runtime leaves it (and its spec) alone
                    status="archived",
                    created_at=T0,
                    updated_at=T0,
                )
            ).inserted_primary_key[0]
            conn.execute(
                segment_members.insert().values(
                    segment_id=segment_id, profile_id=pid, workspace_id=self.ws, entered_at=T0
                )
            )
            conn.execute(
                segment_changes.insert().values(
                    workspace_id=self.ws,
                    segment_id=segment_id,
                    profile_id=pid,
                    change="entered",
                    at=T0,
                )
            )
            conn.execute(
                product_interest.insert().values(
                    workspace_id=self.ws, product_id="tea-1", profile_id=pid, viewed_at=T0
                )
            )
        # A second cart: messages written but not yet sent, a timer, an event not yet processed.
        self.events(track(USER, "Cart Abandoned", {"cart_id": "k2"}))
        self.events(track(USER, "Product Viewed", {"sku": "tea-2", "by": EMAIL}), process=False)
        return int(pid)

    def erase(self, ref: str = USER, **body: Any) -> Any:
        with TestClient(self.app) as client:
            return client.post(
                f"/admin/v1/profiles/{ref}/erase", json=body or None, headers=self.auth
            )

    def export(self, ref: str = USER) -> Any:
        with TestClient(self.app) as client:
            return client.get(f"/admin/v1/profiles/{ref}/export", headers=self.auth)


def scan(engine: Engine, needles: tuple[str, ...]) -> list[str]:
    """Every (table.column) of every table whose value contains one of ``needles``."""
    found = []
    wanted = [n.casefold() for n in needles]
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if value is None:
                        continue
                    text = (
                        json.dumps(value, ensure_ascii=False)
                        if isinstance(value, dict | list)
                        else str(value)
                    ).casefold()
                    found.extend(f"{table.name}.{column}: {n}" for n in wanted if n in text)
    return found


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


# -- export ----------------------------------------------------------------------------------


def test_the_export_holds_every_kind_of_data_kept_about_the_customer(engine: Engine) -> None:
    """Profile, merged profile, identities, events, journeys, messages with their rendered
    content, message events, consents, suppressions, segments, tasks, promo codes,
    attributions and conversions are all in the customer's export."""
    # given
    shop = Shop(engine)
    pid = shop.live_customer()
    # when
    answer = shop.export()
    # then
    assert answer.status_code == 200
    assert answer.headers["content-disposition"].endswith(f'customer-{shop.ws}-{pid}.json"')
    data = answer.json()
    assert data["profile_id"] == pid and data["erased"] is False
    assert data["profile"]["email"] == EMAIL and data["profile"]["first_name"] == FIRST
    assert [p["merged_into"] for p in data["merged_profiles"]] == [pid]
    for section in (
        "identities",
        "events",
        "instances",
        "outbox",
        "message_events",
        "consents",
        "suppressions",
        "segment_members",
        "segment_changes",
        "tasks",
        "promo_codes",
        "attributions",
        "conversions",
        "short_links",
        "step_log",
        "product_interest",
        "timers",
    ):
        assert data[section], f"{section} is empty"
    sent_mail = next(m for m in data["outbox"] if m["channel"] == "email" and m["rendered"])
    assert FIRST in json.dumps(sent_mail["rendered"], ensure_ascii=False)
    assert {r["kind"] for r in data["message_events"]} >= {"sent", "clicked"}
    assert {(s["channel"], s["reason"]) for s in data["suppressions"]} == {
        ("email", "complaint"),
        ("sms", "unsubscribe"),
    }
    assert [c["code"] for c in data["promo_codes"]] == ["CART-0001"]
    assert data["journey_keys"] == {str(data["instances"][0]["journey_id"]): "cart"}
    assert data["segment_keys"] == {str(data["segment_members"][0]["segment_id"]): "tea-lovers"}
    assert {(i["kind"], i["value"]) for i in data["identities"]} == {
        ("user_id", USER),
        ("anonymous_id", "anon-zina"),
    }


def test_export_and_erase_refuse_unknown_customers_and_foreign_tokens(engine: Engine) -> None:
    """An unknown reference is 404 not_found as JSON; no token is 401."""
    shop = Shop(engine)
    shop.live_customer()
    with TestClient(shop.app) as client:
        missing = client.get("/admin/v1/profiles/nobody/export", headers=shop.auth)
        anonymous = client.post(f"/admin/v1/profiles/{USER}/erase")
        bad_ref = client.post("/admin/v1/profiles/%23abc/erase", headers=shop.auth)
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    assert bad_ref.status_code == 400 and bad_ref.json()["code"] == "invalid_input"


# -- erasure ---------------------------------------------------------------------------------


def test_after_erasure_no_table_holds_the_customer_s_personal_data(engine: Engine) -> None:
    """Email, phone (both forms), names, birthday, user and anonymous ids appear in no
    column of any table once the customer is erased, and the export holds none of them."""
    # given
    shop = Shop(engine)
    pid = shop.live_customer()
    assert scan(engine, NEEDLES)  # the scan does find them before
    # when
    answer = shop.erase(requested_by="DPO ticket 4711")
    # then
    assert answer.status_code == 200, answer.text
    erasure = answer.json()
    assert erasure["profile_id"] == pid and erasure["requested_by"] == "DPO ticket 4711"
    assert scan(engine, NEEDLES) == []
    exported = shop.export(f"%23{pid}")
    assert exported.status_code == 200
    text = exported.text.casefold()
    assert [n for n in NEEDLES if n.casefold() in text] == []


def test_erasure_ends_the_journeys_and_cancels_what_was_not_sent(engine: Engine) -> None:
    """Active instances exit with reason erased, unsent messages are skipped, timers and the
    unprocessed event are gone, and a worker and a dispatcher afterwards do nothing for them."""
    # given
    shop = Shop(engine)
    pid = shop.live_customer()
    assert count(engine, outbox, outbox.c.status == "pending") > 0
    sent_before = len(shop.capture.messages)
    # when
    counts = shop.erase().json()["counts"]
    shop.clock.advance(timedelta(days=2))
    run_until_idle(shop.worker, shop.clock)
    shop.dispatch()
    # then
    assert counts["instances_ended"] >= 1 and counts["outbox_cancelled"] >= 1
    assert counts["events_cancelled"] == 1
    with engine.connect() as conn:
        statuses = {
            (r.status, r.exit_reason)
            for r in conn.execute(select(instances).where(instances.c.profile_id == pid))
        }
        unsent = conn.execute(
            select(outbox.c.reason).where(outbox.c.status == "skipped", outbox.c.reason == "erased")
        ).all()
    assert ("active", None) not in statuses and ("exited", "erased") in statuses
    assert unsent
    assert count(engine, timers) == 0
    assert count(engine, outbox, outbox.c.status.in_(("pending", "sending"))) == 0
    assert count(engine, events, events.c.status == 0) == 0
    assert len(shop.capture.messages) == sent_before
    assert count(engine, segment_members) == 0 and count(engine, product_interest) == 0
    # no personal data: the history is kept, and records the customer leaving
    assert count(engine, segment_changes) == 2
    assert count(engine, segment_changes, segment_changes.c.change == "exited") == 1


def test_after_erasure_the_export_is_the_legal_record_only(engine: Engine) -> None:
    """The export of an erased customer (by user id or #id) holds the erasure log, the consent
    ledger with a withdrawal per channel, and the suppressions as pseudonyms."""
    # given
    shop = Shop(engine)
    pid = shop.live_customer()
    # when
    shop.erase()
    by_user, by_id = shop.export(USER).json(), shop.export(f"%23{pid}").json()
    # then
    assert by_user == by_id
    assert set(by_user) == {"profile_id", "erased", "erasures", "consents", "suppressions"}
    assert by_user["erased"] is True
    [log] = by_user["erasures"]
    assert log["requested_by"] == f"admin token {shop.token[:12]}"
    assert log["counts"]["identities"] == 2
    withdrawals = {c["channel"] for c in by_user["consents"] if c["source"] == "erased"}
    assert withdrawals == {"email", "sms", "telegram", "push", "whatsapp", "viber", "call"}
    assert all(c["ip"] is None and c["user_agent"] is None for c in by_user["consents"])
    email_rows = [c for c in by_user["consents"] if c["channel"] == "email" and c["address"]]
    assert {c["address"] for c in email_rows} == {pseudonym(shop.ws, EMAIL)}
    reasons = {(s["channel"], s["reason"]) for s in by_user["suppressions"]}
    assert reasons >= {("email", "complaint"), ("sms", "unsubscribe"), ("email", "erased")}
    assert all(s["address"].startswith("sha256:") for s in by_user["suppressions"])


def test_an_erased_address_stays_blocked_and_is_not_imported_again(
    engine: Engine, tmp_path: Path
) -> None:
    """The pseudonymised suppressions still block the address for a new profile, and an
    import row carrying it is refused with a reason saying why."""
    # given
    shop = Shop(engine)
    shop.live_customer()
    shop.erase()
    path = tmp_path / "crm.csv"
    path.write_text(
        f"user_id,email,phone\nnew-1,{EMAIL.upper()},\nnew-2,fresh@example.ru,{PHONE}\n"
        "new-3,other@example.ru,\n",
        encoding="utf-8",
    )
    # when
    result = import_customers(engine, shop.ws, path, clock=shop.clock)
    with engine.connect() as conn:
        blocking = load_suppressions(conn, shop.ws, [("email", EMAIL)])
    # then
    assert (result.imported, result.rejected) == (1, 2)
    with (result.report or Path()).open(encoding="utf-8-sig") as f:
        report = f.read()
    assert "2,email,belongs to a customer erased on request" in report
    assert "3,phone,belongs to a customer erased on request" in report
    assert {s.reason for s in blocking} == {"complaint", "erased"}
    assert {s.address for s in blocking} == {EMAIL}
    # when: the person came back and asked; the erased suppression of the email is lifted
    with TestClient(shop.app) as client:
        lifted = client.request(
            "DELETE",
            "/admin/v1/suppressions",
            json={"channel": "email", "address": EMAIL, "reason": "erased"},
            headers=shop.auth,
        )
    again = import_customers(engine, shop.ws, path, clock=shop.clock, restart=True)
    # then
    assert lifted.json() == {"removed": True}
    assert (again.imported, again.duplicates, again.rejected) == (1, 1, 1)


def test_erasing_twice_is_safe_and_logs_both(engine: Engine) -> None:
    """A second erasure finds nothing left to remove, adds no withdrawals, and is logged."""
    shop = Shop(engine)
    pid = shop.live_customer()
    first = shop.erase().json()
    second = shop.erase(f"%23{pid}").json()
    assert first["counts"]["consents_withdrawn"] == 7
    assert second["counts"]["consents_withdrawn"] == 0
    assert second["counts"]["identities"] == 0
    assert len(shop.export(USER).json()["erasures"]) == 2


def test_every_table_naming_a_customer_has_an_erasure_rule() -> None:
    """A table with a profile column must say what erasure does to it (docs and code agree)."""
    naming = {t.name for t in metadata.sorted_tables if any(c in t.c for c in PROFILE_REFS)} | {
        "profiles"
    }
    assert sorted(naming - set(ERASURE_RULES)) == []


def test_the_cli_exports_and_erases_a_customer(engine: Engine, database_url: str) -> None:
    """`touchline customer export REF` prints the JSON; `customer erase` asks first, and
    with --yes erases."""
    shop = Shop(engine)
    shop.live_customer()
    runner = CliRunner()

    def run(*args: str, stdin: str | None = None) -> Any:
        return runner.invoke(
            main,
            ["customer", *args, "--workspace", shop.ws],
            obj={"engine": engine},
            env={"TOUCHLINE_DATABASE_URL": database_url},
            input=stdin,
        )

    exported = run("export", USER)
    declined = run("erase", USER, stdin="n\n")
    erased = run("erase", USER, "--yes", "--by", "support desk")
    unknown = run("export", "nobody")
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["profile"]["email"] == EMAIL
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert erased.exit_code == 0, erased.output
    assert "erased (erasure 1)" in erased.output
    assert unknown.exit_code == 1 and "no profile 'nobody'" in unknown.output
    with engine.connect() as conn:
        record = export_customer(conn, shop.ws, USER)
    assert record["erasures"][0]["requested_by"] == "support desk"


def test_erasure_needs_a_requester(engine: Engine) -> None:
    """An erasure without a named requester is refused before anything changes."""
    shop = Shop(engine)
    shop.live_customer()
    with pytest.raises(Exception) as caught:
        run_in_transaction(
            engine,
            lambda conn: erase_customer(conn, shop.ws, USER, requested_by="  ", now=T0),
        )
    assert "requested_by" in str(caught.value)
    assert scan(engine, (EMAIL,))
