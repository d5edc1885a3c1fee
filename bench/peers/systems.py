"""The three systems under test, each scheduling the same plan and running it to the end.

Each ``run_*`` function starts the system's worker processes, hands it every
reminder of the plan through the system's own scheduling API (the
*schedule* phase), then lets the plan's clock run: orders cancel 10 % of the
reminders before they are due, and the workers send the rest to the sink
when they fall due (the *run* phase). Worker memory is sampled throughout.
What the sink received is returned, judged in :mod:`bench.peers`.

The origin ``T`` of the plan's times is fixed when the system can honour it:
touchline after its workers have entered every customer into the journey;
Celery and procrastinate need each due time when the task is queued, so
their origin is set a few seconds ahead (:func:`_queue_lead`) and reminders
are queued in order of due time. A reminder scheduled after its due time is
counted (``scheduled_late``) and should be none.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, func, select, update

from bench.common import log, scratch_store
from bench.peers.plan import START, Plan, Reminder
from bench.peers.procs import RssSampler, Workers, percentile, start_workers
from bench.peers.sink import Sink
from touchline.clock import SystemClock
from touchline.ingest.segment import parse_payload
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.ingest import ingest
from touchline.store.journeys import apply_journeys
from touchline.store.tables import instances, outbox, profiles, timers
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import identify, track

# Worker processes per system: the same for all three, one job at a time each.
WORKERS = 2
REDIS_URL = os.environ.get("TOUCHLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
# Events per ingest call (a /v1/batch body), jobs per procrastinate batch insert.
BATCH = 500
# After the last reminder is due, wait this long for stragglers, duplicates and
# wrongly sent cancelled reminders before stopping the workers.
SETTLE = 10.0
# ...and give up waiting for missing reminders once the sink has received nothing
# new for this long (a system that is behind but sending is waited for), or after
# MAX_TAIL at the latest.
STALL = 60.0
MAX_TAIL = 3600.0
# Celery's and procrastinate's origin is set ahead by QUEUE_LEAD_MIN plus a
# second per this many jobs; reminders are queued in order of due time, so the
# queuing only has to stay ahead of the due times, which it does as long as it
# outpaces the plan's rate (count / window).
QUEUE_RATE_FLOOR = 2000.0
# The least lead, so that a tiny plan still starts after its workers are up.
QUEUE_LEAD_MIN = 5.0
JOURNEY = textwrap.dedent(
    """
    journey: peers-cart-reminder
    category: transactional        # no consent, caps or quiet hours: the peers have none
    trigger:
      event: Product Added
      where: exists(event.properties.cart_id)
    entry: {reentry: once_per_key, key: cart_id}
    exit_on:
      - event: Order Completed
        match: cart_id
    steps:
      - id: cool-off
        wait: 1h                   # moved to the plan's due time before the run
      - id: reminder
        send: {channel: email, template: peers-cart-reminder}
    """
)
TEMPLATE = textwrap.dedent(
    """
    template: peers-cart-reminder
    channel: email
    subject: You left something in your cart
    html: |
      <p>Hello {{ profile.user_id }}, cart <b>{{ event.properties.cart_id }}</b>
      is still waiting for you.</p>
    """
)


@dataclass
class Outcome:
    """One system's run, as the sink and the sampler saw it."""

    system: str
    setup: str
    origin: float  # the plan's T, as time.time()
    schedule_seconds: float
    scheduled_late: int
    cancels_late: int
    rss_peak: int
    sends: list[tuple[float, str]]
    ended: float
    detail: str = ""  # where the lateness came from, when the system can say


def _pg_dsn(database_url: str) -> str:
    return "postgresql://" + database_url.split("://", 1)[1]


def _late(plan: Plan, origin: float, at: float) -> int:
    return sum(1 for r in plan.reminders if origin + r.due < at)


def _by_due(plan: Plan) -> list[Reminder]:
    """The order a shop would queue reminders in: as carts are abandoned, earliest due first."""
    return sorted(plan.reminders, key=lambda r: r.due)


def _queue_lead(count: int) -> float:
    return QUEUE_LEAD_MIN + count / QUEUE_RATE_FLOOR


def drive(
    plan: Plan,
    *,
    origin: float,
    cancel: Callable[[list[Reminder]], None],
    the_sink: Sink,
    workers: Workers,
) -> tuple[int, float]:
    """Run the plan's clock: cancel on time, wait until everything due was sent.

    Cancellations run in a thread, in batches of those whose time has come.
    Returns (cancellations issued after their reminder was due, end time).
    """
    pending = plan.cancellations()
    late = 0
    failure: list[BaseException] = []

    def cancel_loop() -> None:
        nonlocal late
        i = 0
        try:
            while i < len(pending):
                now = time.time()
                wait = origin + (pending[i].cancel or 0.0) - now
                if wait > 0:
                    time.sleep(min(wait, 0.5))
                    continue
                batch = []
                while i < len(pending) and origin + (pending[i].cancel or 0.0) <= now:
                    batch.append(pending[i])
                    i += 1
                cancel(batch)
                done = time.time()
                late += sum(1 for r in batch if origin + r.due <= done)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=cancel_loop, name="cancellations", daemon=True)
    thread.start()
    last_due = origin + max((r.due for r in plan.reminders), default=START)
    expected = plan.expected
    seen, progressed, checked = 0, time.time(), 0.0
    while True:
        time.sleep(0.5)
        if failure:
            raise RuntimeError("cancelling failed") from failure[0]
        workers.check_alive()
        now = time.time()
        if now < last_due + SETTLE:
            continue
        received = the_sink.count()
        if received != seen:
            seen, progressed = received, now
        # Counting sends is not enough: a wrongly sent cancelled reminder or a
        # duplicate would stand in for one still to come.
        if received >= len(expected) and now - checked >= 5.0:
            checked = now
            if expected <= the_sink.recipients():
                break
        if now - progressed > STALL or now > last_due + MAX_TAIL:
            break
    thread.join(timeout=5)
    return late, time.time()


# -- touchline -------------------------------------------------------------------


def touchline_command() -> list[str]:
    script = Path(sys.executable).with_name("touchline")
    if script.exists():
        return [str(script), "worker"]
    return [sys.executable, "-m", "touchline.cli", "worker"]


def _setup_touchline(engine: Engine) -> str:
    now = SystemClock().now()
    ws = create_workspace(engine, "peers", now=now).id
    with transaction(engine) as conn:
        spec = load_journey_text(JOURNEY, file="peers-cart-reminder.yaml")
        apply_journeys(
            conn, ws, [LoadedJourney("peers-cart-reminder.yaml", spec, JOURNEY)], now=now
        )
        template = load_template_text(TEMPLATE, file="peers-cart-reminder.yaml")
        apply_templates(conn, ws, [template], now=now)
    return ws


def _ingest(engine: Engine, ws: str, raws: Sequence[dict[str, Any]]) -> None:
    """Store ``raws`` as ``POST /v1/batch`` does after decoding each body."""
    clock = SystemClock()
    for start in range(0, len(raws), BATCH):
        now = clock.now()
        parsed = parse_payload(
            {"batch": list(raws[start : start + BATCH])}, kind="batch", received_at=now
        )
        result = ingest(engine, ws, parsed, now=now)
        if result.accepted != len(parsed):
            raise RuntimeError(f"ingest accepted {result.accepted} of {len(parsed)}")


def _wait_for(check: Callable[[], bool], *, workers: Workers, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        workers.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _move_due_times(engine: Engine, plan: Plan, origin: float) -> None:
    """Set each waiting timer to its reminder's due time (the journey's 1h is a placeholder)."""
    due = {r.user: datetime.fromtimestamp(origin + r.due, UTC) for r in plan.reminders}
    with transaction(engine) as conn:
        rows = conn.execute(
            select(timers.c.id, profiles.c.user_id).join(
                profiles, profiles.c.id == timers.c.profile_id
            )
        ).all()
        conn.execute(
            update(timers).where(timers.c.id == bindparam("tid")).values(due_at=bindparam("due")),
            [{"tid": tid, "due": due[user]} for tid, user in rows],
        )


def run_touchline(plan: Plan, folder: Path, the_sink: Sink, *, workers: int = WORKERS) -> Outcome:
    """touchline on PostgreSQL: ``touchline worker`` processes, email over SMTP to the sink."""
    count = len(plan.reminders)
    with scratch_store("postgresql", "peers_touchline", folder) as store:
        engine = store.engine()
        try:
            ws = _setup_touchline(engine)
            env = {
                "TOUCHLINE_DATABASE_URL": store.url,
                "TOUCHLINE_SMTP_HOST": "127.0.0.1",
                "TOUCHLINE_SMTP_PORT": str(the_sink.port),
                "TOUCHLINE_SMTP_SECURITY": "none",
                "TOUCHLINE_SMTP_FROM": "shop@peers.example.com",
                "TOUCHLINE_LOG_LEVEL": "WARNING",
            }
            commands = [touchline_command() for _ in range(workers)]
            with start_workers(commands, env=env, folder=folder, label="peers-touchline") as procs:
                sampler = RssSampler(procs.pids).start()
                log(f"peers/touchline: {count:,} carts in through ingest, entered by the workers")
                started = time.time()
                raws: list[dict[str, Any]] = []
                for r in plan.reminders:
                    raws.append(identify(r.user, email=r.address))
                    raws.append(track(r.user, "Product Added", {"cart_id": r.cart, "sku": "SKU-1"}))
                _ingest(engine, ws, raws)

                def all_waiting() -> bool:
                    with engine.connect() as conn:
                        n = conn.execute(select(func.count()).select_from(timers)).scalar_one()
                    return int(n) >= count

                _wait_for(all_waiting, workers=procs, what="every cart to wait", timeout=3600)
                origin = time.time() + 2.0 + count / 20_000
                _move_due_times(engine, plan, origin)
                scheduled = time.time()
                log(f"peers/touchline: scheduled in {scheduled - started:.1f}s; running the plan")

                def cancel(batch: list[Reminder]) -> None:
                    _ingest(
                        engine,
                        ws,
                        [
                            track(r.user, "Order Completed", {"cart_id": r.cart, "revenue": 10})
                            for r in batch
                        ],
                    )

                cancels_late, ended = drive(
                    plan, origin=origin, cancel=cancel, the_sink=the_sink, workers=procs
                )
                peak = sampler.stop()
            detail = _touchline_split(engine, plan, origin)
            log(f"peers/touchline: {detail}")
        finally:
            engine.dispose()
    return Outcome(
        "touchline",
        f"{workers} x `touchline worker` (worker + dispatcher thread each), PostgreSQL, "
        "SMTP channel",
        origin,
        scheduled - started,
        _late(plan, origin, scheduled),
        cancels_late,
        peak,
        the_sink.take(),
        ended,
        detail,
    )


def _touchline_split(engine: Engine, plan: Plan, origin: float) -> str:
    """Lateness split into firing (round start minus due) and dispatch (sent minus fired).

    ``outbox.created_at`` is the ``now`` of the worker round that fired the
    timer, and ``sent_at`` the dispatcher's clock after the server accepted.
    """
    due = {r.user: origin + r.due for r in plan.reminders}
    with engine.connect() as conn:
        rows = conn.execute(
            select(profiles.c.user_id, outbox.c.created_at, outbox.c.sent_at)
            .join(profiles, profiles.c.id == outbox.c.profile_id)
            .where(outbox.c.status == "sent")
        ).all()
        active = conn.execute(
            select(func.count()).select_from(instances).where(instances.c.status == "active")
        ).scalar_one()
    fired = [created.timestamp() - due[user] for user, created, _ in rows]
    dispatched = [sent.timestamp() - created.timestamp() for _, created, sent in rows]
    return (
        f"fired p50 {percentile(fired, 0.5) * 1000:,.0f} ms p99 {percentile(fired, 0.99) * 1000:,.0f} "
        f"ms after due, sent p50 {percentile(dispatched, 0.5) * 1000:,.0f} ms p99 "
        f"{percentile(dispatched, 0.99) * 1000:,.0f} ms after firing; {active} instances active"
    )


# -- Celery ------------------------------------------------------------------------


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def run_celery(
    plan: Plan,
    folder: Path,
    the_sink: Sink,
    *,
    workers: int = WORKERS,
    cancel_mode: str = "revoke",
    redis_url: str = REDIS_URL,
) -> Outcome:
    """Celery on Redis: ``apply_async(eta=...)``, cancelled by ``revoke`` or a checked set."""
    import redis

    from bench.peers import celery_app

    count = len(plan.reminders)
    _flush_redis(redis_url)  # the benchmark's own Redis database: left from a failed run
    celery_app.app.conf.broker_url = redis_url
    env = {
        "PEERS_BROKER_URL": redis_url,
        "PEERS_SMTP_PORT": str(the_sink.port),
        "PEERS_CANCEL": cancel_mode,
    }
    commands = [
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.peers.celery_app",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
            "--hostname",
            f"peers{i}@%h",
        ]
        for i in range(workers)
    ]
    client = redis.Redis.from_url(redis_url)
    try:
        with start_workers(commands, env=env, folder=folder, label="peers-celery") as procs:
            _wait_for(
                lambda: len(celery_app.app.control.ping(timeout=1.0)) >= workers,
                workers=procs,
                what="Celery workers to answer a ping",
                timeout=120,
            )
            sampler = RssSampler(procs.pids).start()
            log(f"peers/celery: queuing {count:,} reminders with apply_async(eta=...)")
            started = time.time()
            origin = started + _queue_lead(count)
            queued_late = 0
            for r in _by_due(plan):
                celery_app.remind.apply_async(
                    (r.n,),
                    eta=datetime.fromtimestamp(origin + r.due, UTC),
                    task_id=f"peers-{r.n}",
                )
                queued_late += time.time() > origin + r.due
            scheduled = time.time()
            log(f"peers/celery: queued in {scheduled - started:.1f}s; running the plan")

            def cancel(batch: list[Reminder]) -> None:
                if cancel_mode == "check":
                    client.sadd(celery_app.CANCELLED_SET, *[str(r.n) for r in batch])
                else:
                    celery_app.app.control.revoke([f"peers-{r.n}" for r in batch])

            cancels_late, ended = drive(
                plan, origin=origin, cancel=cancel, the_sink=the_sink, workers=procs
            )
            peak = sampler.stop()
    finally:
        client.close()
        _flush_redis(redis_url)
    return Outcome(
        "celery",
        f"{workers} x `celery worker --pool solo`, Redis broker, cancel by {cancel_mode}",
        origin,
        scheduled - started,
        queued_late,
        cancels_late,
        peak,
        the_sink.take(),
        ended,
    )


# -- procrastinate -----------------------------------------------------------------


def run_procrastinate(
    plan: Plan, folder: Path, the_sink: Sink, *, workers: int = WORKERS
) -> Outcome:
    """procrastinate on PostgreSQL: jobs with ``schedule_at``, cancelled by ``cancel_job_by_id``."""
    import procrastinate

    from bench.peers import procrastinate_app

    count = len(plan.reminders)
    with scratch_store("postgresql", "peers_procrastinate", folder) as store:
        dsn = _pg_dsn(store.url)
        app = procrastinate_app.app.with_connector(procrastinate.PsycopgConnector(conninfo=dsn))
        env = {"PEERS_PROCRASTINATE_DSN": dsn, "PEERS_SMTP_PORT": str(the_sink.port)}
        commands = [
            [
                sys.executable,
                "-m",
                "procrastinate",
                "--app",
                "bench.peers.procrastinate_app.app",
                "worker",
                "--concurrency",
                "1",
            ]
            for _ in range(workers)
        ]
        with app.open():
            app.schema_manager.apply_schema()
            with start_workers(
                commands, env=env, folder=folder, label="peers-procrastinate"
            ) as procs:
                sampler = RssSampler(procs.pids).start()
                log(f"peers/procrastinate: deferring {count:,} jobs with schedule_at")
                started = time.time()
                origin = started + _queue_lead(count)
                remind = app.tasks["peers.remind"]
                ids: dict[int, int] = {}
                ordered = _by_due(plan)
                queued_late = 0
                for first in range(0, count, BATCH):
                    chunk = ordered[first : first + BATCH]
                    jobs = [
                        remind.configure(
                            schedule_at=datetime.fromtimestamp(origin + r.due, UTC)
                        ).make_new_job(n=r.n)
                        for r in chunk
                    ]
                    deferred = app.job_manager.batch_defer_jobs(jobs)
                    for r, job in zip(chunk, deferred, strict=True):
                        assert job.id is not None
                        ids[r.n] = job.id
                    queued_late += sum(1 for r in chunk if time.time() > origin + r.due)
                scheduled = time.time()
                log(
                    f"peers/procrastinate: deferred in {scheduled - started:.1f}s; running the plan"
                )

                def cancel(batch: list[Reminder]) -> None:
                    for r in batch:
                        app.job_manager.cancel_job_by_id(ids[r.n])

                cancels_late, ended = drive(
                    plan, origin=origin, cancel=cancel, the_sink=the_sink, workers=procs
                )
                peak = sampler.stop()
    return Outcome(
        "procrastinate",
        f"{workers} x `procrastinate worker --concurrency 1`, PostgreSQL, "
        "default 5 s polling for scheduled jobs",
        origin,
        scheduled - started,
        queued_late,
        cancels_late,
        peak,
        the_sink.take(),
        ended,
    )


SYSTEMS: dict[str, Callable[..., Outcome]] = {
    "touchline": run_touchline,
    "celery": run_celery,
    "procrastinate": run_procrastinate,
}
