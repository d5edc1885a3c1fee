"""The dispatcher: claims outbox rows, applies the delivery rules, renders, sends, records.

A round has four steps: **claim** leases due rows; **judge** applies the
delivery rules (:mod:`touchline.messaging.rules`: suppression, consent, caps,
quiet hours) in one write transaction, settling skips and deferrals with
their reasons and marking the rest ``sending``; **prepare** renders those;
**send** hands each to its channel and records the result in its own
transaction.

Claiming works like the engine's (see :mod:`touchline.worker.claims`): a short
transaction stamps a lease on up to N due rows, and every later write is
conditional on that lease still being ours, so two dispatchers never both
record one message.

**The guarantee.** A message is handed to its channel at most once per lease.
The only way it goes out twice is a crash (or a lease lost to a stall) after
the provider accepted it and before the result was committed: the lease then
runs out and another dispatcher sends it again. That resend carries the same
idempotency key — the SMTP ``Message-ID`` and the ``Idempotency-Key`` header
are derived from it — so a receiver that deduplicates drops it. Nothing is
lost: a row leaves ``pending`` only as ``sent``, ``failed`` or ``skipped``,
each with its reason.

Transient failures retry with exponential backoff and jitter up to
:data:`MAX_SEND_ATTEMPTS`; permanent ones fail the message at once; a template
that cannot render fails that one message with the reason, never the
dispatcher.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, bindparam, or_, select, update
from sqlalchemy.exc import DBAPIError, PendingRollbackError

from touchline.audience.recommendations import Recommender
from touchline.clock import Clock
from touchline.errors import (
    PermanentDeliveryError,
    StoreError,
    TouchlineError,
    TransientDeliveryError,
)
from touchline.measure.engagement import record_message_event
from touchline.measure.rollups import bump, bump_message
from touchline.measure.tracking import track_rendered
from touchline.messaging import sms
from touchline.messaging.channels.base import Channel, OutgoingMessage, SendResult
from touchline.messaging.links import confirm_url, links_for_message
from touchline.messaging.phone import INVALID_NUMBER
from touchline.messaging.policies import Decision
from touchline.messaging.receipts import receipt_from_report, record_receipt
from touchline.messaging.registry import ChannelRegistry
from touchline.messaging.rules import (
    PolicyCache,
    address_of,
    apply_verdict,
    judge,
    lock_customer,
    unreachable,
)
from touchline.messaging.templates import RenderContext, RenderError
from touchline.store.consent import CONFIRMATION_REQUESTED, suppress
from touchline.store.db import transaction
from touchline.store.promo import promo_provider
from touchline.store.runtime import profile_traits
from touchline.store.tables import instances, journeys, outbox, profiles
from touchline.store.templates import TemplateCache

if TYPE_CHECKING:
    from touchline.ops.metrics import Metrics

log = logging.getLogger("touchline.dispatcher")
# Longest pause between rounds while the store is unreachable.
MAX_RECONNECT_DELAY = 10.0

# A message that failed transiently this many times is failed for good.
MAX_SEND_ATTEMPTS = 8
# Retry delay after the n-th transient failure: BASE * 2**(n-1), capped, then +-20 % jitter.
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=1)
RETRY_JITTER = 0.2
DEFAULT_CHANNEL = "*"
# Rows a dispatcher may lease: due ones, and ones a crashed dispatcher left mid-send.
CLAIMABLE = ("pending", "sending")


@dataclass(frozen=True)
class Prepared:
    """One claimed row, rendered (``message``) or already decided (``outcome``)."""

    id: int
    channel: str
    message: OutgoingMessage | None
    outcome: tuple[str, str, str | None] | None = None  # status, reason, error
    workspace_id: str = ""


@dataclass
class DispatchTotals:
    """Running counts; ``by_reason`` counts skips, deferrals and suppressions by rule."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    deferred: int = 0
    retried: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)


# Per-message statements, built once.
_PROFILE = select(profiles).where(profiles.c.id == bindparam("pid"))
# A result is written only while the lease holds; the values go in as column-named parameters.
_RECORD = update(outbox).where(
    outbox.c.id == bindparam("oid"), outbox.c.lease_owner == bindparam("owner")
)


class Dispatcher:
    """Sends what journeys put in the outbox. Safe to run many at once on one store."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock,
        owner: str,
        channels: Mapping[str, Channel],
        batch: int = 100,
        lease_seconds: int = 60,
        rng: random.Random | None = None,
        policies: PolicyCache | None = None,
        registry: ChannelRegistry | None = None,
        public_url: str | None = "http://127.0.0.1:8000",
        metrics: Metrics | None = None,
    ) -> None:
        """``channels`` maps channel names (or ``"*"``) to adapters; with a ``registry``
        the workspace's own channel settings decide instead (it owns the adapters).
        ``metrics``, when given, counts outcomes and provider errors."""
        self.engine = engine
        self.clock = clock
        self.owner = owner
        self.channels = dict(channels)
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.rng = rng or random.Random()
        self.templates = TemplateCache()
        self.policies = policies or PolicyCache()
        self.registry = registry
        self.public_url = public_url
        self.metrics = metrics
        self.totals = DispatchTotals()

    # -- one round ----------------------------------------------------------------------

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim, judge, render, send and record one batch. Returns how many rows it settled."""
        now = now or self.clock.now()
        ids = await asyncio.to_thread(self.claim, now)
        if not ids:
            return 0
        to_send = await asyncio.to_thread(self.judge, ids, now)
        prepared = await asyncio.to_thread(self.prepare, to_send, now)
        settled = [item for item in prepared if item.message is None]
        if settled:
            await asyncio.to_thread(self.record, [(i, None, None) for i in settled], now)
        for item in prepared:
            if item.message is None:
                continue
            outcome = await self._send(item)
            # Recorded at once, one message per transaction: the window in which a
            # crash can repeat a send is this one message, never the whole batch.
            await asyncio.to_thread(self.record, [(item, *outcome)], self.clock.now())
        return len(ids)

    async def _send(self, item: Prepared) -> tuple[SendResult | None, TouchlineError | None]:
        assert item.message is not None
        try:
            channel = await self._channel(item)
        except TouchlineError as exc:  # the workspace's channel settings are unusable
            return None, exc
        if channel is None:
            error = PermanentDeliveryError(
                f"no channel {item.channel!r} is configured", code="channel_not_configured"
            )
            return None, error
        try:
            return await channel.send(item.message), None
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            return None, exc
        except Exception as exc:  # noqa: BLE001 - an adapter bug must not lose the batch
            log.exception("channel %s raised an untranslated error", item.channel)
            return None, TransientDeliveryError(f"{type(exc).__name__}: {exc}")

    async def _channel(self, item: Prepared) -> Channel | None:
        if self.registry is not None:
            assert item.message is not None
            workspace_id = str(item.message.metadata["workspace_id"])
            return await self.registry.get(workspace_id, item.channel)
        return self.channels.get(item.channel) or self.channels.get(DEFAULT_CHANNEL)

    def claim(self, now: datetime) -> list[int]:
        """Lease up to ``batch`` due rows: pending ones, and any a crashed dispatcher left sending."""
        free = or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now)
        pick = (
            select(outbox.c.id)
            .where(outbox.c.status.in_(CLAIMABLE), outbox.c.available_at <= now, free)
            .order_by(outbox.c.available_at, outbox.c.id)
            .limit(self.batch)
        )
        with transaction(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            stmt = (
                update(outbox)
                .where(outbox.c.id.in_(pick.scalar_subquery()))
                .values(
                    lease_owner=self.owner,
                    lease_until=now + self.lease,
                    attempts=outbox.c.attempts + 1,
                )
                .returning(outbox.c.id)
            )
            return [row[0] for row in conn.execute(stmt)]

    def judge(self, ids: list[int], now: datetime) -> list[int]:
        """Apply the delivery rules to claimed rows; returns the ids cleared to send.

        Skips and deferrals are written here, each with its reason; see
        :mod:`touchline.messaging.rules` for why this is one write transaction
        holding each customer's lock.
        """
        cleared: list[int] = []
        with transaction(self.engine) as conn:
            rows = conn.execute(
                select(outbox, journeys.c.key.label("journey_key"))
                .join(journeys, journeys.c.id == outbox.c.journey_id)
                .where(outbox.c.id.in_(ids), outbox.c.lease_owner == self.owner)
                .order_by(outbox.c.profile_id, outbox.c.id)
            ).all()
            for row in rows:
                lock_customer(conn, row.profile_id)
                profile = conn.execute(_PROFILE, {"pid": row.profile_id}).one()
                decision = self._decide(conn, row, profile, now)
                status = apply_verdict(conn, row.id, decision, now=now, owner=self.owner)
                if self.metrics is not None:
                    self.metrics.count_judged(row.channel, status=status)
                if status == "sending":
                    cleared.append(row.id)
                elif status == "skipped":
                    self.totals.skipped += 1
                    self.totals.by_reason[decision.reason] += 1
                    bump(
                        conn,
                        workspace_id=row.workspace_id,
                        at=now,
                        journey_id=row.journey_id,
                        step_id=row.step_id,
                        variant=row.variant,
                        channel=row.channel,
                        skipped=1,
                    )
                else:
                    self.totals.deferred += 1
                    self.totals.by_reason[decision.reason] += 1
        return cleared

    def _decide(self, conn: Any, row: Any, profile: Any, now: datetime) -> Decision:
        skip = unreachable(row, profile)
        if skip is not None:
            return skip
        policy = self.policies.get(conn, row.workspace_id)
        return judge(conn, row, profile, journey_key=row.journey_key, policy=policy, now=now)

    def prepare(self, ids: list[int], now: datetime) -> list[Prepared]:
        """Render each row cleared to send; a row that cannot render gets its failure here."""
        out: list[Prepared] = []
        if not ids:
            return out
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outbox, journeys.c.key.label("journey_key"), instances.c.state)
                .join(journeys, journeys.c.id == outbox.c.journey_id)
                .join(instances, instances.c.id == outbox.c.instance_id)
                .where(outbox.c.id.in_(ids), outbox.c.lease_owner == self.owner)
                .order_by(outbox.c.id)
            ).all()
            for row in rows:
                out.append(self._prepare_one(conn, row, now))
        return out

    def _prepare_one(self, conn: Any, row: Any, now: datetime) -> Prepared:
        profile = conn.execute(_PROFILE, {"pid": row.profile_id}).one()
        scope = profile_scope(profile)
        address = address_of(row.channel, profile) or ""
        try:
            links = self._links(conn, row, now)
            template = self.templates.get(conn, row.workspace_id, row.template)
            state = row.state or {}
            rendered = template.render(
                RenderContext(
                    profile=scope,
                    now=now,
                    event=state.get("trigger") or {},
                    context=state.get("context") or {},
                    locale=(profile.locale or "ru_RU").replace("-", "_"),
                    timezone=profile.timezone,
                    journey=row.journey_key,
                    links=links,
                    promo=promo_provider(
                        self.engine,
                        workspace_id=row.workspace_id,
                        profile_id=row.profile_id,
                        instance_id=row.instance_id,
                        now=now,
                    ),
                    recommend=Recommender(
                        self.engine, workspace_id=row.workspace_id, profile_id=row.profile_id
                    ),
                )
            )
            html, text = rendered.html, rendered.text
            if self.public_url is not None:  # click links, the open pixel, SMS short links
                html, text = track_rendered(
                    conn,
                    channel=row.channel,
                    html=html,
                    text=text,
                    public_url=self.public_url,
                    workspace_id=row.workspace_id,
                    outbox_id=row.id,
                    now=now,
                    skip=set(links.values()),
                )
        except RenderError as exc:
            failed = ("failed", "render_failed", exc.message)
            return Prepared(row.id, row.channel, None, failed, row.workspace_id)
        except TouchlineError as exc:
            failed = ("failed", exc.code, exc.message)
            return Prepared(row.id, row.channel, None, failed, row.workspace_id)
        message = OutgoingMessage(
            idempotency_key=row.idempotency_key,
            channel=row.channel,
            to=address,
            text=text or "",
            subject=rendered.subject,
            html=html,
            metadata={
                "purpose": row.purpose,
                "category": row.category,
                "journey": row.journey_key,
                "journey_id": row.journey_id,
                "instance_id": row.instance_id,
                "profile_id": row.profile_id,
                "step": row.step_id,
                "template": row.template,
                "workspace_id": row.workspace_id,
                "outbox_id": row.id,
                "variant": row.variant,
                **links,
            },
        )
        return Prepared(row.id, row.channel, message, None, row.workspace_id)

    def _links(self, conn: Any, row: Any, now: datetime) -> dict[str, str]:
        """Unsubscribe and preference links for marketing messages; the confirmation
        link when the journey was triggered by a double opt-in request."""
        if self.public_url is None:
            return {}
        if row.purpose != "marketing":
            trigger = (row.state or {}).get("trigger") or {}
            token = (trigger.get("properties") or {}).get("confirm_token")
            if trigger.get("name") == CONFIRMATION_REQUESTED and isinstance(token, str):
                return {"confirm_url": confirm_url(self.public_url, token)}
            return {}
        return links_for_message(
            conn,
            public_url=self.public_url,
            workspace_id=row.workspace_id,
            profile_id=row.profile_id,
            channel=row.channel,
            message_id=row.id,
            now=now,
        )

    def record(
        self,
        results: list[tuple[Prepared, SendResult | None, TouchlineError | None]],
        now: datetime,
    ) -> None:
        """Write every result, each only while our lease holds."""
        with transaction(self.engine) as conn:
            for item, result, error in results:
                mine = (outbox.c.id == item.id, outbox.c.lease_owner == self.owner)
                cleared = {"lease_owner": None, "lease_until": None}
                values: dict[str, Any]
                rendered = _rendered(item.message)
                address = item.message.to if item.message else None
                if item.outcome is not None:
                    status, reason, detail = item.outcome
                    values = {"status": status, "reason": reason, "error": detail, "sent_at": None}
                    if status == "failed":
                        self.totals.failed += 1
                    else:
                        self.totals.skipped += 1
                elif result is not None:
                    values = {
                        "status": "sent",
                        "reason": result.status,
                        "provider_id": result.provider_id,
                        "sent_at": now,
                    }
                    self.totals.sent += 1
                elif isinstance(error, TransientDeliveryError):
                    attempts = conn.execute(
                        select(outbox.c.attempts).where(*mine)
                    ).scalar_one_or_none()
                    if attempts is None:
                        continue
                    if attempts >= MAX_SEND_ATTEMPTS:
                        values = {
                            "status": "failed",
                            "reason": "retries_exhausted",
                            "error": error.message,
                            "sent_at": None,
                        }
                        self.totals.failed += 1
                    else:
                        values = {
                            "status": "pending",
                            "available_at": now + self._backoff(attempts),
                            "reason": error.code,
                            "error": error.message,
                            "sent_at": None,
                        }
                        self.totals.retried += 1
                else:
                    assert error is not None
                    values = {
                        "status": "failed",
                        "reason": error.code,
                        "error": error.message,
                        "sent_at": None,
                    }
                    self.totals.failed += 1
                    if address and _is_hard_bounce(error):
                        self._suppress_bounce(conn, item, address, error, now)
                written = conn.execute(
                    _RECORD,
                    {
                        "oid": item.id,
                        "owner": self.owner,
                        **cleared,
                        **values,
                        "rendered": rendered,
                        "address": address,
                    },
                ).rowcount
                if written and self.metrics is not None:
                    self.metrics.count_recorded(item.channel, status=values["status"], error=error)
                if written and values.get("status") in ("sent", "failed"):
                    self._count(conn, item, str(values["status"]), now, detail=values.get("reason"))

    def _count(self, conn: Any, item: Prepared, status: str, now: datetime, *, detail: Any) -> None:
        """The message event and the report counters of a sent or failed message."""
        record_message_event(
            conn,
            workspace_id=item.workspace_id,
            outbox_id=item.id,
            kind=status,
            at=now,
            detail=None if status == "sent" else str(detail),
        )
        counters: dict[str, int | Decimal] = {status: 1}
        if status == "sent" and item.channel == "sms" and item.message is not None:
            parts = sms.analyse(item.message.text).parts
            counters["sms_parts"] = parts
            counters["sms_cost"] = parts * self._sms_price(item.workspace_id)
        bump_message(conn, item.id, at=now, **counters)

    def _sms_price(self, workspace_id: str) -> Decimal:
        """The workspace's price of one SMS part (``channels.sms.price_per_part``), else 0."""
        if self.registry is None:
            return Decimal(0)
        try:
            spec = self.registry.settings(workspace_id).channel("sms")
        except TouchlineError:  # unusable settings already fail the send itself
            return Decimal(0)
        price = spec.option("price_per_part") if spec is not None else None
        return price if isinstance(price, Decimal) else Decimal(0)

    def _suppress_bounce(
        self, conn: Any, item: Prepared, address: str, error: TouchlineError, now: datetime
    ) -> None:
        assert item.message is not None
        meta = item.message.metadata
        suppress(
            conn,
            workspace_id=str(meta["workspace_id"]),
            channel=item.channel,
            address=address,
            reason="hard_bounce",
            at=now,
            profile_id=int(meta["profile_id"]),
            detail=f"{error.code}: {error.message}"[:1000],
        )
        self.totals.by_reason["suppressed:hard_bounce"] += 1

    def _backoff(self, attempts: int) -> timedelta:
        delay = min(RETRY_BASE * 2 ** max(attempts - 1, 0), RETRY_CAP)
        return delay * (1 + self.rng.uniform(-RETRY_JITTER, RETRY_JITTER))

    # -- running ------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, poll: float = 0.2) -> None:
        """Loop in this thread (with its own event loop) until ``stop`` is set."""
        asyncio.run(self._loop(stop, poll))

    async def collect_receipts(self) -> int:
        """Apply delivery receipts that adapters gather themselves (SMPP ``deliver_sm``).

        HTTP providers report through the callback endpoints instead. Returns
        how many receipts were applied.
        """
        if self.registry is None:
            return 0
        applied = 0
        for workspace_id, name, adapter in self.registry.built():
            poll = getattr(adapter, "poll_receipts", None)
            if poll is None:
                continue
            for report in await poll():
                # An SMSC's UNDELIV/REJECTD does not say the number is gone: no suppression.
                receipt = receipt_from_report(report, permanent=False)
                await asyncio.to_thread(
                    record_receipt,
                    self.engine,
                    workspace_id,
                    channel=name,
                    provider="smpp",
                    receipt=receipt,
                    now=self.clock.now(),
                )
                applied += 1
        return applied

    async def _loop(self, stop: threading.Event, poll: float) -> None:
        delay = poll
        try:
            while not stop.is_set():
                try:
                    done = await self.run_once()
                    await self.collect_receipts()
                    delay = poll
                except (TouchlineError, DBAPIError, PendingRollbackError) as exc:
                    # A lost store connection is waited out with growing pauses, never fatal:
                    # the thread dying would leave a live worker that sends nothing.
                    delay = min(max(delay * 2, 0.5), MAX_RECONNECT_DELAY)
                    log.warning("dispatcher round failed, retrying in %.1fs: %s", delay, exc)
                    lost = isinstance(exc, StoreError) or not isinstance(exc, TouchlineError)
                    if self.metrics is not None and lost:
                        self.metrics.count_outage("dispatcher")
                    done = 0
                if not done:
                    await asyncio.to_thread(stop.wait, delay)
        finally:
            if self.registry is not None:
                await self.registry.aclose()
            else:
                for channel in {id(c): c for c in self.channels.values()}.values():
                    await channel.aclose()


def profile_scope(row: Any) -> dict[str, Any]:
    """A profile row as templates see it: custom traits plus the known columns."""
    scope = profile_traits(row)
    scope["user_id"] = row.user_id
    return scope


def _is_hard_bounce(error: TouchlineError) -> bool:
    """A permanent refusal of the address itself: suppress it so it is never tried again."""
    return bool(getattr(error, "hard_bounce", False)) or error.code == INVALID_NUMBER


def _rendered(message: OutgoingMessage | None) -> dict[str, Any] | None:
    if message is None:
        return None
    return {"subject": message.subject, "text": message.text, "html": message.html}
