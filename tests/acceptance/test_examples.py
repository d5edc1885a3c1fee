"""The e-commerce example pack and the commands that use it, run as real processes.

``touchline validate``, ``simulate`` and ``demo`` are started with the
interpreter running the tests (``python -m touchline.cli``), against the
pack in ``examples/ecommerce`` and temporary SQLite files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from touchline.demo.report import SECTIONS
from touchline.errors import SpecError
from touchline.journeys.loader import journey_files, load_journey_dir, load_journey_file

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "examples" / "ecommerce"
PACK_FILES = sorted((PACK / "journeys").glob("*.yaml"))
PENDING_FILES = sorted((PACK / "pending").glob("*.yaml"))
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
    """The loader reads exactly the ten files of journeys/ (pending/ and events/ stay out)."""
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
    }


@pytest.mark.parametrize("path", PACK_FILES, ids=lambda p: p.name)
def test_every_pack_file_validates_with_name_description_and_category(path: Path) -> None:
    """Each journey file loads on its own and documents itself."""
    spec = load_journey_file(path)
    assert spec.name and spec.description
    assert spec.journey == path.stem


@pytest.mark.parametrize("path", PENDING_FILES, ids=lambda p: p.name)
def test_pending_files_fail_only_on_their_proposed_trigger(path: Path) -> None:
    """Win-back and birthday are valid journeys except for the time-based trigger they wait for."""
    with pytest.raises(SpecError) as caught:
        load_journey_file(path)
    assert caught.value.problems
    assert all(p.field.startswith("trigger") for p in caught.value.problems)


def test_validate_command_accepts_the_pack(tmp_path: Path) -> None:
    """`touchline validate examples/ecommerce` exits 0 and counts ten journeys."""
    result = touchline("validate", str(PACK), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "10 journey(s) valid" in result.stdout


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
