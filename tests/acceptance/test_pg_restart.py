"""PostgreSQL restarted twice under a running `touchline worker`: it reconnects and finishes.

The test starts a PRIVATE throwaway PostgreSQL (``initdb`` into a temporary
folder, ``pg_ctl start`` on a free port; as the ``postgres`` OS user when
run as root), never the shared server. A `touchline worker` process mails
one receipt per ``Order Completed`` event to a local SMTP sink; the server
is restarted with ``pg_ctl restart -m fast`` twice while it works. The
worker must log the outage, wait it out with back-off, and carry on: every
event processed, every message sent and recorded, and the only duplicates
those of the documented window (a message handed to the mail server whose
result the lost connection kept from being recorded is sent again, with the
same Message-ID, after its lease ends).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mail_sink import Sink
from sqlalchemy import Engine, func, select

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.template_files import load_template_text
from touchline.store.db import make_engine, migrate, transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import EVENT_PENDING, events, outbox
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import identify, send_events, track

PG_BIN = Path(os.environ.get("TOUCHLINE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ORDERS = 400
RESTART_AT = (100, 250)  # receipts at the sink when PostgreSQL is restarted
CLAIM_BATCH = 25
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
subject: "Order {{ event.properties.order_id }}"
text: "Thank you! Order number {{ event.properties.order_id }}"
"""


# -- a private PostgreSQL -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL cluster of its own in a temporary folder, on a free port."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    def pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, *extra
        )


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        message = (
            f"no initdb in {PG_BIN} (set TOUCHLINE_TEST_PG_BIN): private PostgreSQL tests skipped"
        )
        if IN_CI:
            pytest.fail(message + " (CI requires it)", pytrace=False)
        pytest.skip(message)
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="tl-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    server = PrivatePostgres(folder, _free_port())
    server.init()
    server.pg_ctl("start")
    try:
        yield server
    finally:
        try:
            server.pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(folder, ignore_errors=True)


# -- the run ------------------------------------------------------------------------------


def _start_worker(url: str, smtp_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")},
        "TOUCHLINE_DATABASE_URL": url,
        "TOUCHLINE_SMTP_HOST": "127.0.0.1",
        "TOUCHLINE_SMTP_PORT": str(smtp_port),
        "TOUCHLINE_SMTP_SECURITY": "none",
        "TOUCHLINE_SMTP_FROM": "shop@example.com",
        "TOUCHLINE_CLAIM_BATCH": str(CLAIM_BATCH),
        "TOUCHLINE_LEASE_SECONDS": "2",
        "TOUCHLINE_POLL_MS": "20",
        "TOUCHLINE_LOG_LEVEL": "INFO",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "touchline.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def _wait_for(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log: Path,
    worker: subprocess.Popen[bytes],
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, (
            f"the worker exited while waiting for {what}:\n{log.read_text()[-4000:]}"
        )
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - the store may be restarting under the probe too
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{log.read_text()[-4000:]}")


def _count(engine: Engine, stmt: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def _prepare(engine: Engine) -> None:
    """A workspace, the receipt journey and template, and ORDERS pending order events."""
    now = datetime.now(UTC) - timedelta(minutes=1)
    ws = create_workspace(engine, "shop", now=now).id
    journey, template = textwrap.dedent(JOURNEY), textwrap.dedent(TEMPLATE)
    with transaction(engine) as conn:
        spec = load_journey_text(journey, file="receipt.yaml")
        apply_journeys(conn, ws, [LoadedJourney("receipt.yaml", spec, journey)], now=now)
        apply_templates(conn, ws, [load_template_text(template, file="receipt.yaml")], now=now)
    people = range(ORDERS)
    send_events(engine, ws, [identify(f"u{i}", email=f"u{i}@example.com") for i in people], now=now)
    send_events(
        engine, ws, [track(f"u{i}", "Order Completed", {"order_id": i}) for i in people], now=now
    )


def test_worker_carries_on_through_two_postgresql_restarts(
    postgres: PrivatePostgres, sink: tuple[Sink, int], tmp_path: Path
) -> None:
    """Two fast restarts mid-run: the worker logs, reconnects, and every receipt is sent once
    (a resend only for a message whose result the outage kept from being recorded)."""
    # given
    handler, smtp_port = sink
    engine = make_engine(postgres.url)
    migrate(engine)
    _prepare(engine)
    log = tmp_path / "worker.log"
    worker = _start_worker(postgres.url, smtp_port, log)
    pending_events = (
        select(func.count()).select_from(events).where(events.c.status == EVENT_PENDING)
    )
    unsettled = select(func.count()).where(outbox.c.status.in_(("pending", "sending")))
    settled = select(func.count()).where(outbox.c.status == "sent")
    try:
        # when: PostgreSQL restarts twice while receipts go out
        for threshold in RESTART_AT:
            _wait_for(
                lambda t=threshold: handler.received() >= t,
                timeout=120,
                what=f"{threshold} receipts",
                log=log,
                worker=worker,
            )
            postgres.pg_ctl("restart", "-m", "fast")
        _wait_for(
            lambda: (
                _count(engine, pending_events) == 0
                and _count(engine, settled) == ORDERS
                and _count(engine, unsettled) == 0
            ),
            timeout=180,
            what="every event and message settled",
            log=log,
            worker=worker,
        )
        # then: the worker is still running, and said what happened
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        engine.dispose()
    text = log.read_text()
    assert "store unavailable, retrying" in text or "dispatcher round failed" in text, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    by_id = Counter(m["Message-ID"] for m in handler.messages)
    orders = Counter(str(m["Subject"]) for m in handler.messages)
    assert len(orders) == ORDERS, "some receipt never arrived"
    assert len(by_id) == ORDERS, "a receipt was sent twice as two different messages"
    duplicates = sum(n - 1 for n in by_id.values())
    # At most the messages in flight when each restart cut the connection: one claimed batch.
    assert duplicates <= len(RESTART_AT) * CLAIM_BATCH, f"{duplicates} duplicates"
