"""The dispatcher: claims outbox rows, renders them, hands them to a channel, records the result.

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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, update

from touchline.clock import Clock
from touchline.errors import PermanentDeliveryError, TouchlineError, TransientDeliveryError
from touchline.messaging.channels.base import Channel, OutgoingMessage, SendResult
from touchline.messaging.templates import RenderContext, RenderError
from touchline.store.db import transaction
from touchline.store.runtime import profile_traits
from touchline.store.tables import instances, journeys, outbox, profiles
from touchline.store.templates import TemplateCache

log = logging.getLogger("touchline.dispatcher")

# A message that failed transiently this many times is failed for good.
MAX_SEND_ATTEMPTS = 8
# Retry delay after the n-th transient failure: BASE * 2**(n-1), capped, then +-20 % jitter.
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=1)
RETRY_JITTER = 0.2
# Which profile field a channel delivers to; other channels use the user id.
ADDRESS_FIELDS = {"email": "email", "sms": "phone", "smpp": "phone"}
DEFAULT_CHANNEL = "*"


@dataclass(frozen=True)
class Prepared:
    """One claimed row, rendered (``message``) or already decided (``outcome``)."""

    id: int
    channel: str
    message: OutgoingMessage | None
    outcome: tuple[str, str, str | None] | None = None  # status, reason, error


@dataclass
class DispatchTotals:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0


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
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.owner = owner
        self.channels = dict(channels)
        self.batch = batch
        self.lease = timedelta(seconds=lease_seconds)
        self.rng = rng or random.Random()
        self.templates = TemplateCache()
        self.totals = DispatchTotals()

    # -- one round ----------------------------------------------------------------------

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim, render, send and record one batch. Returns how many rows it settled."""
        now = now or self.clock.now()
        ids = await asyncio.to_thread(self.claim, now)
        if not ids:
            return 0
        prepared = await asyncio.to_thread(self.prepare, ids, now)
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
        return len(prepared)

    async def _send(self, item: Prepared) -> tuple[SendResult | None, TouchlineError | None]:
        assert item.message is not None
        channel = self.channels.get(item.channel) or self.channels.get(DEFAULT_CHANNEL)
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

    def claim(self, now: datetime) -> list[int]:
        free = or_(outbox.c.lease_until.is_(None), outbox.c.lease_until <= now)
        pick = (
            select(outbox.c.id)
            .where(outbox.c.status == "pending", outbox.c.available_at <= now, free)
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

    def prepare(self, ids: list[int], now: datetime) -> list[Prepared]:
        """Render each claimed row; rows that cannot be sent get their outcome here."""
        out: list[Prepared] = []
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
        profile = conn.execute(select(profiles).where(profiles.c.id == row.profile_id)).one()
        scope = profile_scope(profile)
        field = ADDRESS_FIELDS.get(row.channel)
        address = scope.get(field) if field else (profile.user_id or f"#{profile.id}")
        if not address:
            return Prepared(row.id, row.channel, None, ("skipped", f"no_{field}", None))
        if row.channel == "sms" and profile.phone_valid is False:
            return Prepared(row.id, row.channel, None, ("skipped", "invalid_phone", None))
        try:
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
                )
            )
        except RenderError as exc:
            return Prepared(row.id, row.channel, None, ("failed", "render_failed", exc.message))
        except TouchlineError as exc:
            return Prepared(row.id, row.channel, None, ("failed", exc.code, exc.message))
        message = OutgoingMessage(
            idempotency_key=row.idempotency_key,
            channel=row.channel,
            to=str(address),
            text=rendered.text or "",
            subject=rendered.subject,
            html=rendered.html,
            metadata={
                "purpose": row.purpose,
                "category": row.category,
                "journey": row.journey_key,
                "step": row.step_id,
                "template": row.template,
                "workspace_id": row.workspace_id,
                "outbox_id": row.id,
            },
        )
        return Prepared(row.id, row.channel, message)

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
                    values = {"status": status, "reason": reason, "error": detail}
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
                        }
                        self.totals.failed += 1
                    else:
                        values = {
                            "available_at": now + self._backoff(attempts),
                            "reason": error.code,
                            "error": error.message,
                        }
                        self.totals.retried += 1
                else:
                    assert error is not None
                    values = {"status": "failed", "reason": error.code, "error": error.message}
                    self.totals.failed += 1
                conn.execute(
                    update(outbox)
                    .where(*mine)
                    .values(**cleared, **values, rendered=rendered, address=address)
                )

    def _backoff(self, attempts: int) -> timedelta:
        delay = min(RETRY_BASE * 2 ** max(attempts - 1, 0), RETRY_CAP)
        return delay * (1 + self.rng.uniform(-RETRY_JITTER, RETRY_JITTER))

    # -- running ------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, poll: float = 0.2) -> None:
        """Loop in this thread (with its own event loop) until ``stop`` is set."""
        asyncio.run(self._loop(stop, poll))

    async def _loop(self, stop: threading.Event, poll: float) -> None:
        try:
            while not stop.is_set():
                try:
                    done = await self.run_once()
                except TouchlineError as exc:
                    log.warning("dispatcher round failed: %s", exc.message)
                    done = 0
                if not done:
                    await asyncio.to_thread(stop.wait, poll)
        finally:
            for channel in {id(c): c for c in self.channels.values()}.values():
                await channel.aclose()


def profile_scope(row: Any) -> dict[str, Any]:
    """A profile row as templates see it: custom traits plus the known columns."""
    scope = profile_traits(row)
    scope["user_id"] = row.user_id
    return scope


def _rendered(message: OutgoingMessage | None) -> dict[str, Any] | None:
    if message is None:
        return None
    return {"subject": message.subject, "text": message.text, "html": message.html}
