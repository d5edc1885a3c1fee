"""Dispatchers killed with SIGKILL while mailing: every message arrives, duplicates stay in the window."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mail_sink import Sink
from sqlalchemy import Engine, func, select

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import outbox
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
from touchline.worker.loop import Worker

CUSTOMERS = 1200
KILL_AT = (150, 420, 690, 960)  # messages received at the sink when a dispatcher is killed
OUTAGE_CUSTOMERS = 600  # the outage test needs a few batches, not a crowd
JOURNEY = """
journey: receipt
category: transactional
trigger: {event: Order Completed}
entry: {reentry: always}
steps:
  - send: {channel: email, template: receipt}
"""
TEMPLATE = """
template: receipt
channel: email
subject: "Заказ {{ event.properties.order_id }} принят"
text: "Спасибо! Номер заказа: {{ event.properties.order_id }}"
"""


def _count(engine: Engine, stmt: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def _wait_for(check: Callable[[], bool], *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}; log:\n{log.read_text()[-3000:]}")


def _start(database_url: str, smtp_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TOUCHLINE_DATABASE_URL": database_url,
        "TOUCHLINE_SMTP_HOST": "127.0.0.1",
        "TOUCHLINE_SMTP_PORT": str(smtp_port),
        "TOUCHLINE_SMTP_SECURITY": "none",
        "TOUCHLINE_SMTP_FROM": "shop@example.ru",
        "TOUCHLINE_CLAIM_BATCH": "25",
        "TOUCHLINE_LEASE_SECONDS": "2",
        "TOUCHLINE_POLL_MS": "20",
        "TOUCHLINE_LOG_LEVEL": "WARNING",
    }
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "touchline.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _fill_outbox(engine: Engine, customers: int = CUSTOMERS) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    clock = FrozenClock(start)
    ws = create_workspace(engine, "mail", now=start).id
    journey, template = textwrap.dedent(JOURNEY), textwrap.dedent(TEMPLATE)
    with transaction(engine) as conn:
        spec = load_journey_text(journey, file="j.yaml")
        apply_journeys(conn, ws, [LoadedJourney("j.yaml", spec, journey)], now=start)
        apply_templates(conn, ws, [load_template_text(template, file="t.yaml")], now=start)
    for chunk in range(0, customers, 500):
        people = range(chunk, min(chunk + 500, customers))
        send_events(
            engine, ws, [identify(f"u{i}", email=f"u{i}@example.ru") for i in people], now=start
        )
        send_events(
            engine,
            ws,
            [track(f"u{i}", "Order Completed", {"order_id": i}) for i in people],
            now=start,
        )
    run_until_idle(Worker(engine, clock=clock, owner="setup", batch=500), clock)


def test_sigkilled_dispatcher_delivers_everything_with_duplicates_only_in_the_window(
    engine: Engine, database_url: str, sink: tuple[Sink, int], tmp_path: Path
) -> None:
    """Four SIGKILLs while mailing 1,200 receipts: all arrive; each duplicate is a resend of one
    message with its first copy's Message-ID, and there are no more of them than kills."""
    # given
    handler, port = sink
    _fill_outbox(engine)
    # in flight: not yet sent, including rows a killed dispatcher left mid-send
    pending = select(func.count()).where(outbox.c.status.in_(("pending", "sending")))
    assert _count(engine, pending) == CUSTOMERS
    leased = select(func.count()).where(outbox.c.lease_owner.is_not(None))
    log = tmp_path / "worker.log"
    # when
    for threshold in KILL_AT:
        proc = _start(database_url, port, log)
        try:
            _wait_for(
                lambda t=threshold: handler.received() >= t, timeout=120, what="mail", log=log
            )
            _wait_for(lambda: _count(engine, leased) > 0, timeout=30, what="a claim", log=log)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    proc = _start(database_url, port, log)
    try:
        _wait_for(lambda: _count(engine, pending) == 0, timeout=180, what="the outbox", log=log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # then
    by_id = Counter(m["Message-ID"] for m in handler.messages)
    recipients: dict[str, set[str]] = {}
    for m in handler.messages:
        recipients.setdefault(m["Message-ID"], set()).add(str(m["To"]))
    duplicates = sum(n - 1 for n in by_id.values())
    assert len(by_id) == CUSTOMERS, "some message never arrived"
    assert all(len(to) == 1 for to in recipients.values()), "a Message-ID was reused across people"
    assert duplicates <= len(KILL_AT), f"{duplicates} duplicates for {len(KILL_AT)} kills"
    sent = select(func.count()).where(outbox.c.status == "sent")
    assert _count(engine, sent) == CUSTOMERS


def test_smtp_outage_mid_run_is_retried_until_everything_arrives(
    engine: Engine, sink: tuple[Sink, int]
) -> None:
    """The mail server refuses with 421 for a while; retries deliver every message once it is back."""
    # given
    import asyncio

    from touchline.messaging.channels.smtp import SmtpChannel, SmtpSettings
    from touchline.messaging.dispatcher import Dispatcher

    handler, port = sink
    _fill_outbox(engine, OUTAGE_CUSTOMERS)
    clock = FrozenClock(datetime.now(UTC))
    channel = SmtpChannel(
        SmtpSettings(host="127.0.0.1", port=port, from_address="shop@example.ru", security="none")
    )
    dispatcher = Dispatcher(engine, clock=clock, owner="d", channels={"email": channel}, batch=200)

    async def drive() -> None:
        await dispatcher.run_once()  # 200 go out
        handler.up = False
        await dispatcher.run_once()  # 200 refused: retried later
        handler.up = True
        for _ in range(100):
            clock.advance(timedelta(minutes=5))
            if not await dispatcher.run_once():
                break
        await channel.aclose()

    # when
    asyncio.run(drive())
    # then
    assert dispatcher.totals.retried >= 200
    assert len({m["Message-ID"] for m in handler.messages}) == OUTAGE_CUSTOMERS
    assert handler.received() == OUTAGE_CUSTOMERS
    assert _count(engine, select(func.count()).where(outbox.c.status == "sent")) == OUTAGE_CUSTOMERS
