"""A `touchline worker` process killed with SIGKILL mid-batch loses nothing and repeats nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select

from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.store.db import transaction
from touchline.store.journeys import apply_journeys
from touchline.store.tables import instances, outbox, step_log, timers
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, run_until_idle, send_events, track
from touchline.worker.loop import Worker

CUSTOMERS = 3000
KILL_AT = (400, 1200, 2100)  # outbox sizes at which the worker is killed
REMINDER = textwrap.dedent(
    """
    journey: reminder
    trigger: {event: Product Added}
    entry: {reentry: always}
    steps:
      - id: wait
        wait: 1h
      - id: remind
        send: {channel: email, template: reminder}
    """
)


def _count(engine: Engine, stmt: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())  # type: ignore[call-overload]


def _start_worker(database_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TOUCHLINE_DATABASE_URL": database_url,
        "TOUCHLINE_CLAIM_BATCH": "50",
        "TOUCHLINE_LEASE_SECONDS": "2",
        "TOUCHLINE_POLL_MS": "20",
        "TOUCHLINE_LOG_LEVEL": "WARNING",
    }
    with log.open("ab") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "touchline.cli", "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def _wait_for(predicate: object, *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{log.read_text()[-3000:]}")


def test_sigkilled_worker_fires_every_timer_exactly_once(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """Three SIGKILLs mid-run: after restarts every one of 3,000 timers fired exactly once."""
    # given: 3,000 customers waiting on a 1-hour timer that is already due by the wall clock
    start = datetime.now(UTC) - timedelta(hours=2)
    clock = FrozenClock(start)
    ws = create_workspace(engine, "kill", now=start).id
    with transaction(engine) as conn:
        apply_journeys(
            conn,
            ws,
            [LoadedJourney("r.yaml", load_journey_text(REMINDER, file="r.yaml"), REMINDER)],
            now=start,
        )
    for chunk in range(0, CUSTOMERS, 500):
        batch = [track(f"u{i}", "Product Added") for i in range(chunk, chunk + 500)]
        send_events(engine, ws, batch, now=start)
    run_until_idle(Worker(engine, clock=clock, owner="setup", batch=500), clock)
    assert _count(engine, select(func.count()).select_from(timers)) == CUSTOMERS
    sent = select(func.count()).select_from(outbox)
    log = tmp_path / "worker.log"

    # when: the worker is killed with SIGKILL three times while firing, then left to finish
    kills = 0
    orphaned = 0  # kills that left claimed timers behind: they landed mid-batch
    leased = select(func.count()).where(timers.c.lease_owner.is_not(None))
    for threshold in KILL_AT:
        proc = _start_worker(database_url, log)
        try:
            _wait_for(
                lambda t=threshold: _count(engine, sent) >= t,
                timeout=120,
                what=f"{threshold} messages",
                log=log,
            )
            # kill while the worker holds a claimed batch it has not committed yet
            _wait_for(lambda: _count(engine, leased) > 0, timeout=30, what="a claim", log=log)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        kills += 1
        orphaned += _count(engine, leased) > 0
    proc = _start_worker(database_url, log)
    try:
        _wait_for(
            lambda: _count(engine, select(func.count()).select_from(timers)) == 0,
            timeout=180,
            what="all timers to fire",
            log=log,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)

    # then: one message and one firing per customer, every instance completed
    assert kills == len(KILL_AT)
    assert orphaned >= 1, "no kill landed while the worker held claimed timers"
    assert _count(engine, sent) == CUSTOMERS
    assert _count(engine, select(func.count(func.distinct(outbox.c.instance_id)))) == CUSTOMERS
    fired = (
        select(step_log.c.instance_id, func.count().label("n"))
        .where(step_log.c.step_id == "remind", step_log.c.action == "entered")
        .group_by(step_log.c.instance_id)
        .subquery()
    )
    assert _count(engine, select(func.count()).select_from(fired)) == CUSTOMERS
    assert _count(engine, select(func.max(fired.c.n))) == 1
    completed = select(func.count()).where(instances.c.status == "completed")
    assert _count(engine, completed) == CUSTOMERS
