"""End to end: ``Order Completed`` events in, receipts out at an SMTP server, against a raw send loop.

touchline side: a fresh migrated store with one workspace, one transactional
journey (``Order Completed`` → send email ``order-confirmation``) and its
template: a subject, an HTML body with a style sheet, links and a loop over
``event.properties.products``. N customers are identified first and the
worker runs over those identifies (not timed). Then, timed, phase after
phase:

1. **ingest** — N ``Order Completed`` track messages, prepared as decoded
   ``/v1/batch`` bodies of :data:`BATCH_SIZE`, go through
   :func:`touchline.ingest.segment.parse_payload` and
   :func:`touchline.store.ingest.ingest`: what ``POST /v1/batch`` does after
   reading and decoding the body. HTTP itself is left out; the ``http batch
   ingest`` row measures it, and an in-process client would bill its own
   costs to touchline.
2. **engine** — ``Worker.run_once`` until it does nothing: each event enters
   the journey and puts one message in the outbox.
3. **dispatch** — ``Dispatcher.run_once`` with the real
   :class:`~touchline.messaging.channels.smtp.SmtpChannel` (one reused
   connection, no TLS) until the outbox is empty: the mail server then has
   N messages, since a send returns only after the server's ``250``.

The clock runs from the first event handed to ingest to the N-th message
accepted by the server. The phases run one after the other, each driven to
completion, so the split is exact and no polling interval is counted; a
deployment running them side by side overlaps them.

The mail server is an aiosmtpd sink in its own process, so its work does not
compete with touchline for the interpreter. It keeps every message with the
time it was accepted; afterwards every message must parse, carry its own
``Message-ID`` (no duplicates), reach a distinct customer and hold the
rendered order, and the outbox must show N sent rows.

Baseline: the same N messages, built beforehand (not timed) as
:class:`email.message.EmailMessage` from the subject, text, HTML, address and
``Message-ID`` touchline recorded, sent by a plain ``aiosmtplib`` loop over
one connection to the same server. It is the least a Python sender does per
message: serialise it and run one SMTP transaction. It runs
:data:`RAW_REPEATS` times; the median counts.
"""

from __future__ import annotations

import asyncio
import cProfile
import email
import email.policy
import pickle
import pstats
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
from sqlalchemy import Engine, func, select

from bench.common import Result, free_port, log, scratch_store, spread
from touchline.clock import SystemClock
from touchline.ingest.segment import parse_payload
from touchline.journeys.loader import LoadedJourney, load_journey_text
from touchline.messaging.channels.smtp import SmtpChannel, SmtpSettings
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.ingest import ingest
from touchline.store.journeys import apply_journeys
from touchline.store.tables import outbox
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import identify, send_events, track
from touchline.worker.loop import Worker

NAME = "e2e email to smtp"
# Events per ingest call: the size of the /v1/batch bodies in the ingest row.
BATCH_SIZE = 500
# Rows per worker and dispatcher claim: touchline's default TOUCHLINE_CLAIM_BATCH.
CLAIM_BATCH = 200
# The raw loop takes a second or two; the median of this many runs is reported.
RAW_REPEATS = 3
# A dispatch that has not finished in this long is stuck, not slow.
DISPATCH_TIMEOUT = 600.0
ROOT = Path(__file__).resolve().parents[1]
FROM_ADDRESS = "orders@shop.example.com"
FROM_NAME = "Example Shop"
# Matches touchline's SMTP policy, so both sides put the same bytes on the wire.
POLICY = email.policy.default.clone(linesep="\r\n", cte_type="7bit")
JOURNEY = textwrap.dedent(
    """
    journey: order-confirmation
    category: transactional
    trigger:
      event: Order Completed
    entry:
      reentry: once_per_key
      key: order_id
    steps:
      - id: receipt
        send: {channel: email, template: order-confirmation}
    """
)
TEMPLATE = textwrap.dedent(
    """
    template: order-confirmation
    channel: email
    subject: "Order {{ event.properties.order_id }} is confirmed"
    html: |
      <!DOCTYPE html>
      <html lang="en">
      <head>
      <meta charset="utf-8">
      <style>
        body { margin: 0; background: #f3f4f6; font-family: Arial, sans-serif; }
        .card { max-width: 600px; margin: 0 auto; background: #ffffff; padding: 32px; }
        .items { width: 100%; border-collapse: collapse; }
        .items td { padding: 8px 0; border-bottom: 1px solid #e5e7eb; }
        .num { text-align: right; white-space: nowrap; }
        .button { display: inline-block; padding: 12px 24px; background: #2f6fed; color: #ffffff; }
      </style>
      </head>
      <body>
      <div class="card">
      {%- set o = event.properties %}
      <h1>Thank you, {{ profile.first_name }}!</h1>
      <p>We have received order <strong>{{ o.order_id }}</strong> and are packing it.</p>
      <table class="items">
      {%- for p in o.products %}
        <tr>
          <td><a href="https://shop.example.com/p/{{ p.product_id }}">{{ p.name }}</a></td>
          <td class="num">{{ p.quantity }} × {{ p.price | money(o.currency) }}</td>
        </tr>
      {%- endfor %}
        <tr><td>Shipping</td><td class="num">{{ o.shipping | money(o.currency) }}</td></tr>
        <tr><td><strong>Total</strong></td><td class="num">{{ o.total | money(o.currency) }}</td></tr>
      </table>
      <p><a class="button" href="https://shop.example.com/account/orders/{{ o.order_id }}">View your order</a></p>
      <p>Questions? Just reply to this email.</p>
      </div>
      </body>
      </html>
    defaults:
      profile.first_name: there
    """
)
_NAMES = ("Anna", "Boris", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Iris", "Jonas")
_PRODUCTS = ("Trail Sneaker", "Wool Scarf", "Canvas Tote", "Rain Jacket", "Linen Shirt")

T = TypeVar("T")


@dataclass(frozen=True)
class Received:
    """What the sink saw in one phase: the raw messages and when the last one was accepted."""

    messages: list[bytes]
    last_at: float  # time.monotonic() in the sink process; system-wide on Linux


@dataclass(frozen=True)
class Figures:
    """One touchline run: phase times in seconds, and what the sink checked."""

    count: int
    ingest: float
    engine: float
    dispatch: float
    received: int
    unique_ids: int
    recipients: int
    mean_bytes: float

    @property
    def total(self) -> float:
        return self.ingest + self.engine + self.dispatch


# -- the workload ----------------------------------------------------------------


def customers(count: int) -> list[dict[str, Any]]:
    """One identify per customer: an email address and a first name."""
    return [
        identify(
            f"user-{n:06d}",
            email=f"customer.{n}@example.com",
            firstName=_NAMES[n % len(_NAMES)],
        )
        for n in range(count)
    ]


def orders(count: int) -> list[dict[str, Any]]:
    """One ``Order Completed`` per customer, with one to three products."""
    out = []
    for n in range(count):
        items = [
            (round(19.9 + (n * 13 + i * 31) % 300, 2), 1 + (n + i) % 3) for i in range(1 + n % 3)
        ]
        products = [
            {
                "product_id": f"p-{(n * 7 + i) % 5000:05d}",
                "name": _PRODUCTS[(n + i) % len(_PRODUCTS)],
                "price": price,
                "quantity": quantity,
            }
            for i, (price, quantity) in enumerate(items)
        ]
        subtotal = sum(price * quantity for price, quantity in items)
        properties = {
            "order_id": f"o-{n:07d}",
            "currency": "EUR",
            "shipping": 4.9,
            "total": round(subtotal + 4.9, 2),
            "products": products,
        }
        out.append(track(f"user-{n:06d}", "Order Completed", properties))
    return out


def setup(engine: Engine, count: int) -> str:
    """A workspace with the journey and template, its customers identified; returns its id."""
    now = SystemClock().now()
    ws = create_workspace(engine, "bench", now=now).id
    with transaction(engine) as conn:
        spec = load_journey_text(JOURNEY, file="order-confirmation.yaml")
        apply_journeys(conn, ws, [LoadedJourney("order-confirmation.yaml", spec, JOURNEY)], now=now)
        template = load_template_text(TEMPLATE, file="order-confirmation.yaml")
        apply_templates(conn, ws, [template], now=now)
    people = customers(count)
    for start in range(0, count, BATCH_SIZE):
        send_events(engine, ws, people[start : start + BATCH_SIZE], now=now)
    worker = Worker(engine, clock=SystemClock(), owner="bench-setup", batch=CLAIM_BATCH)
    while worker.run_once():
        pass
    return ws


# -- the sink ---------------------------------------------------------------------


class Sink:
    """The parent's handle on the sink process.

    The process starts listening while the parent prepares its store; the
    first :meth:`take` waits for it (the benchmark takes once before sending).
    """

    def __init__(self, port: int, process: subprocess.Popen[bytes], errors: Path) -> None:
        self.port = port
        self._process = process
        self._errors = errors
        self._ready = False

    def take(self) -> Received:
        """Everything accepted since the last ``take``; the sink starts again from nothing."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        if not self._ready:
            if stdout.readline() != b"ready\n":
                raise RuntimeError(f"the SMTP sink did not start:\n{self._errors.read_text()}")
            self._ready = True
        stdin.write(b"take\n")
        stdin.flush()
        messages, last_at = pickle.load(stdout)
        return Received(messages, last_at)


@contextmanager
def sink(folder: Path) -> Iterator[Sink]:
    """An aiosmtpd server in its own process on a free local port."""
    port = free_port()
    errors = folder / f"sink-{port}.log"
    with errors.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.smtp_sink", str(port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdin is not None and process.stdout is not None
    try:
        yield Sink(port, process, errors)
    finally:
        try:
            process.stdin.write(b"stop\n")
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        process.stdout.close()


def check_received(taken: Received, count: int) -> tuple[int, int, float]:
    """Each message parses, has its own Message-ID and the order: (ids, recipients, mean size).

    Parsed with the stdlib's ``compat32`` policy, which leaves header values as
    text: several times faster than the default policy for these checks.
    """
    ids: set[str] = set()
    recipients: set[str] = set()
    for raw in taken.messages:
        message = email.message_from_bytes(raw)
        message_id = str(message["Message-ID"] or "")
        if not message_id or message_id in ids:
            raise RuntimeError(f"missing or duplicate Message-ID {message_id!r}")
        ids.add(message_id)
        recipients.add(str(message["To"]))
        html = ""
        for part in message.walk():
            if part.defects:
                raise RuntimeError(f"message {message_id} did not parse cleanly: {part.defects}")
            if part.get_content_type() == "text/html":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                html = payload.decode(part.get_content_charset() or "ascii")
        if "View your order" not in html:
            raise RuntimeError(f"message {message_id} has no rendered order")
    if len(taken.messages) != count or len(recipients) != count:
        raise RuntimeError(
            f"the sink got {len(taken.messages)} messages for {len(recipients)} customers, "
            f"expected {count}"
        )
    mean = sum(len(raw) for raw in taken.messages) / max(len(taken.messages), 1)
    return len(ids), len(recipients), mean


def message_id_of(raw: bytes) -> str:
    """The Message-ID header of a raw message, read without parsing the rest."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line[:11].lower() == b"message-id:":
            return line[11:].strip().decode("ascii")
    return ""


# -- touchline ---------------------------------------------------------------------


class _Profiles:
    """cProfile for the calling thread and, inside ``asyncio.run``, for the executor thread.

    The dispatcher does its database work through ``asyncio.to_thread``; a
    single-thread executor that profiles itself catches it, and the two
    profiles are merged into one file.
    """

    def __init__(self) -> None:
        self.main = cProfile.Profile()
        self.threads: list[cProfile.Profile] = []

    def start_thread(self) -> None:
        profile = cProfile.Profile()
        self.threads.append(profile)
        profile.enable()

    def stop_thread(self) -> None:
        for profile in self.threads:
            profile.disable()

    def dump(self, path: Path) -> None:
        stats = pstats.Stats(self.main)
        for profile in self.threads:
            stats.add(profile)
        stats.dump_stats(path)


def _profiled(profiles: _Profiles | None, step: Callable[[], T]) -> T:
    if profiles is None:
        return step()
    profiles.main.enable()
    try:
        return step()
    finally:
        profiles.main.disable()


async def _with_executor(profiles: _Profiles | None, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; when profiling, on a loop whose executor thread profiles itself."""
    if profiles is None:
        return await work()
    executor = ThreadPoolExecutor(max_workers=1, initializer=profiles.start_thread)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(executor)
    profiles.main.enable()
    try:
        return await work()
    finally:
        profiles.main.disable()
        await loop.run_in_executor(executor, profiles.stop_thread)


def ingest_orders(engine: Engine, ws: str, bodies: list[dict[str, Any]]) -> None:
    """Parse and store each ``/v1/batch`` body, as the endpoint does after decoding it."""
    clock = SystemClock()
    for body in bodies:
        now = clock.now()
        parsed = parse_payload(body, kind="batch", received_at=now)
        result = ingest(engine, ws, parsed, now=now)
        if result.accepted != len(parsed):
            raise RuntimeError(f"ingest accepted {result.accepted} of {len(parsed)}")


def run_engine(engine: Engine, count: int) -> None:
    worker = Worker(engine, clock=SystemClock(), owner="bench-worker", batch=CLAIM_BATCH)
    while worker.run_once():
        pass
    if worker.totals.failed or worker.totals.events != count:
        raise RuntimeError(
            f"the worker processed {worker.totals.events} of {count} events, "
            f"{worker.totals.failed} failed"
        )


async def dispatch(engine: Engine, port: int, count: int) -> None:
    """Dispatch over the real SMTP channel until the outbox has nothing left to send.

    A send returns after the server's ``250``, so by then the sink holds every
    message; the dispatcher must have sent all ``count`` (none skipped, deferred or failed).
    """
    channel = SmtpChannel(
        SmtpSettings(
            host="127.0.0.1",
            port=port,
            from_address=FROM_ADDRESS,
            from_name=FROM_NAME,
            security="none",
        )
    )
    dispatcher = Dispatcher(
        engine,
        clock=SystemClock(),
        owner="bench-dispatcher",
        channels={"email": channel},
        batch=CLAIM_BATCH,
    )
    deadline = time.monotonic() + DISPATCH_TIMEOUT
    try:
        while await dispatcher.run_once() and time.monotonic() < deadline:
            pass
    finally:
        await channel.aclose()
    if dispatcher.totals.sent != count:
        raise RuntimeError(f"the dispatcher settled {dispatcher.totals} for {count} messages")


def run_touchline(
    engine: Engine, ws: str, the_sink: Sink, count: int, *, profile_to: Path | None = None
) -> Figures:
    """The three timed phases (module docstring); checks the sink and the outbox after."""
    tracks = orders(count)
    bodies = [{"batch": tracks[i : i + BATCH_SIZE]} for i in range(0, count, BATCH_SIZE)]
    the_sink.take()
    upstream = _Profiles() if profile_to is not None else None
    started = time.monotonic()
    _profiled(upstream, lambda: ingest_orders(engine, ws, bodies))
    ingested = time.monotonic()
    _profiled(upstream, lambda: run_engine(engine, count))
    processed = time.monotonic()
    downstream = _Profiles() if profile_to is not None else None
    asyncio.run(_with_executor(downstream, lambda: dispatch(engine, the_sink.port, count)))
    taken = the_sink.take()
    if profile_to is not None and upstream is not None and downstream is not None:
        upstream.dump(profile_to.with_name(f"{profile_to.name}-ingest-engine.prof"))
        downstream.dump(profile_to.with_name(f"{profile_to.name}-dispatch.prof"))
    unique, recipients, mean = check_received(taken, count)
    with engine.connect() as conn:
        sent = conn.execute(
            select(func.count()).select_from(outbox).where(outbox.c.status == "sent")
        ).scalar_one()
    if sent != count:
        raise RuntimeError(f"the outbox shows {sent} of {count} messages sent")
    return Figures(
        count=count,
        ingest=ingested - started,
        engine=processed - ingested,
        dispatch=taken.last_at - processed,
        received=len(taken.messages),
        unique_ids=unique,
        recipients=recipients,
        mean_bytes=mean,
    )


# -- the baseline -----------------------------------------------------------------


def recorded_messages(engine: Engine) -> list[EmailMessage]:
    """The messages touchline sent, rebuilt with the stdlib from what the outbox recorded."""
    now = SystemClock().now()
    out = []
    with engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.address, outbox.c.rendered, outbox.c.provider_id).order_by(outbox.c.id)
        ).all()
    for address, rendered, message_id in rows:
        message = EmailMessage(policy=POLICY)
        message["From"] = f"{FROM_NAME} <{FROM_ADDRESS}>"
        message["To"] = address
        message["Subject"] = rendered["subject"]
        message["Date"] = format_datetime(now)
        message["Message-ID"] = message_id
        message.set_content(rendered["text"])
        message.add_alternative(rendered["html"], subtype="html")
        out.append(message)
    return out


async def raw_send(port: int, messages: list[EmailMessage]) -> float:
    """Send every message over one connection; the monotonic time the loop started."""
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await smtp.connect()
    try:
        started = time.monotonic()
        for message in messages:
            await smtp.send_message(message)
        return started
    finally:
        await smtp.quit()


def raw_baseline(the_sink: Sink, messages: list[EmailMessage]) -> float:
    """One run of the raw loop; seconds from its start to the last message accepted.

    The messages are touchline's, already checked, so the sink must simply
    hold each of their Message-IDs once.
    """
    expected = sorted(str(message["Message-ID"]) for message in messages)
    the_sink.take()
    started = asyncio.run(raw_send(the_sink.port, messages))
    taken = the_sink.take()
    if sorted(message_id_of(raw) for raw in taken.messages) != expected:
        raise RuntimeError(f"the raw loop delivered {len(taken.messages)} of {len(messages)}")
    return taken.last_at - started


# -- the benchmark ----------------------------------------------------------------


def measure(
    kind: str, folder: Path, *, count: int, profile_to: Path | None = None
) -> tuple[Figures, list[float]]:
    """touchline's figures and the raw loop's timings, on one fresh store and one sink."""
    # The sink first: its process starts up while the store is created and migrated.
    with sink(folder) as the_sink, scratch_store(kind, "e2e", folder) as store:
        engine = store.engine()
        try:
            log(f"e2e/{kind}: identifying {count:,} customers (not timed)")
            ws = setup(engine, count)
            store.analyze()
            log(f"e2e/{kind}: {count:,} orders through ingest, engine and dispatch")
            figures = run_touchline(engine, ws, the_sink, count, profile_to=profile_to)
            messages = recorded_messages(engine)
        finally:
            engine.dispose()
        log(f"e2e/{kind}: raw aiosmtplib loop over the same {count:,} messages, {RAW_REPEATS}x")
        raw_runs = [raw_baseline(the_sink, messages) for _ in range(RAW_REPEATS)]
    return figures, raw_runs


def run(kind: str, folder: Path, *, count: int, profile_to: Path | None = None) -> Result:
    figures, raw_runs = measure(kind, folder, count=count, profile_to=profile_to)
    return summarise(kind, figures, raw_runs)


def summarise(kind: str, figures: Figures, raw_runs: list[float]) -> Result:
    """The report's row: end-to-end rate against the raw loop's, the phases in the notes."""
    count = figures.count
    raw_elapsed = statistics.median(raw_runs)
    dispatch_rate = count / figures.dispatch
    raw_rate = count / raw_elapsed
    return Result(
        NAME,
        kind,
        touchline=count / figures.total,
        baseline=raw_rate,
        unit="msgs/s",
        notes=(
            f"{count:,} orders, {figures.mean_bytes:,.0f} B/message; touchline "
            f"{figures.total:.1f}s = ingest {figures.ingest:.2f}s + engine {figures.engine:.2f}s "
            f"+ dispatch {figures.dispatch:.2f}s (dispatch alone {dispatch_rate:,.0f} msgs/s, "
            f"{dispatch_rate / raw_rate:.2g} of raw); raw {spread(raw_runs)}"
        ),
    )
