"""A shop for broadcast tests: customers, consent, a segment and templates, on a frozen clock."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from touchline.audience.broadcast_runner import SETTLE_EVERY, advance_broadcasts
from touchline.audience.broadcast_spec import load_broadcast_data
from touchline.audience.broadcasts import create_broadcast, get_broadcast
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.dispatcher import Dispatcher
from touchline.messaging.template_files import load_template_text
from touchline.store.db import transaction
from touchline.store.tables import (
    broadcasts,
    consents,
    outbox,
    profiles,
    segment_members,
    segments,
    workspaces,
)
from touchline.store.templates import apply_templates
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock

NO_RULES = {"caps": [], "quiet_hours": []}
LEASE = timedelta(seconds=60)


class BroadcastShop:
    """One workspace with email and SMS templates; customers are added as rows."""

    def __init__(
        self,
        engine: Engine,
        now: datetime,
        *,
        timezone: str = "UTC",
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.engine = engine
        self.clock = FrozenClock(now)
        self.workspace = create_workspace(engine, "shop", now=now, timezone=timezone)
        self.ws = self.workspace.id
        self.capture = CaptureChannel()
        self.dispatcher = Dispatcher(
            engine, clock=self.clock, owner="d1", channels={"*": self.capture}, batch=500
        )
        with transaction(engine) as conn:
            conn.execute(
                update(workspaces)
                .where(workspaces.c.id == self.ws)
                .values(settings=NO_RULES if settings is None else settings)
            )
            apply_templates(
                conn,
                self.ws,
                [
                    load_template_text(textwrap.dedent(t), file="t.yaml")
                    for t in (
                        "template: promo\nchannel: email\nsubject: Sale\n"
                        'text: "Hi {{ profile.first_name }}, until {{ event.properties.deadline }}"\n',
                        "template: promo-a\nchannel: email\nsubject: A\ntext: Variant A\n",
                        "template: promo-b\nchannel: email\nsubject: B\ntext: Variant B\n",
                        "template: promo-sms\nchannel: sms\ntext: Sale until Sunday\n",
                    )
                ],
                now=now,
            )

    # -- customers ------------------------------------------------------------------

    def customers(
        self,
        n: int,
        *,
        prefix: str = "u",
        timezone: str | None = None,
        consent: bool = True,
        email: bool = True,
        phone: bool = False,
        segment: str | None = None,
    ) -> list[int]:
        """Add ``n`` customers (with marketing consent on email and SMS unless told not to)."""
        now = self.clock.now()
        ids = []
        with transaction(self.engine) as conn:
            for i in range(n):
                pid = conn.execute(
                    profiles.insert()
                    .values(
                        workspace_id=self.ws,
                        user_id=f"{prefix}{i}",
                        email=f"{prefix}{i}@example.ru" if email else None,
                        phone=f"+7900{len(prefix):01d}{i:06d}" if phone else None,
                        phone_valid=True if phone else None,
                        timezone=timezone,
                        first_name=f"Name{i}",
                        traits={},
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(profiles.c.id)
                ).scalar_one()
                ids.append(pid)
                if consent:
                    for channel in ("email", "sms"):
                        conn.execute(
                            consents.insert().values(
                                workspace_id=self.ws,
                                profile_id=pid,
                                channel=channel,
                                purpose="marketing",
                                granted=True,
                                confirmed=True,
                                at=now - timedelta(days=30),
                                source="test",
                            )
                        )
        if segment is not None:
            self.add_to_segment(segment, ids)
        return ids

    def add_to_segment(self, key: str, profile_ids: list[int]) -> None:
        now = self.clock.now()
        with transaction(self.engine) as conn:
            segment_id = conn.execute(
                select(segments.c.id).where(
                    segments.c.workspace_id == self.ws, segments.c.key == key
                )
            ).scalar_one_or_none()
            if segment_id is None:
                segment_id = conn.execute(
                    segments.insert()
                    .values(
                        workspace_id=self.ws,
                        key=key,
                        name=key,
                        spec={},
                        source="",
                        checksum="",
                        status="ready",
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(segments.c.id)
                ).scalar_one()
            conn.execute(
                segment_members.insert(),
                [
                    {
                        "segment_id": segment_id,
                        "profile_id": p,
                        "workspace_id": self.ws,
                        "entered_at": now,
                    }
                    for p in profile_ids
                ],
            )

    # -- broadcasts -----------------------------------------------------------------

    def create(self, **fields: Any) -> dict[str, Any]:
        data = {
            "broadcast": "promo",
            "audience": "all",
            "channel": "email",
            "template": "promo",
            "properties": {"deadline": "Sunday"},
            **fields,
        }
        if "ab_test" in fields and "template" not in fields:
            del data["template"]
        spec = load_broadcast_data(data)
        with transaction(self.engine) as conn:
            return create_broadcast(conn, self.ws, spec, source=str(data), now=self.clock.now())

    def tick(self, owner: str = "w1") -> int:
        """Advance every due broadcast until nothing more is due now."""
        total = 0
        while True:
            done = advance_broadcasts(self.engine, owner=owner, now=self.clock.now(), lease=LEASE)
            total += done
            if not done:
                return total

    def settle(self) -> int:
        """Let the broadcasts notice their messages have settled (they look every few seconds)."""
        self.clock.advance(SETTLE_EVERY)
        return self.tick()

    def dispatch(self) -> int:
        """Run the dispatcher until nothing is due now."""

        async def drive() -> int:
            total = 0
            while True:
                done = await self.dispatcher.run_once(self.clock.now())
                total += done
                if not done:
                    return total

        return asyncio.run(drive())

    def show(self, key: str = "promo") -> dict[str, Any]:
        with self.engine.connect() as conn:
            return get_broadcast(conn, self.ws, key)

    def row(self, key: str = "promo") -> Any:
        with self.engine.connect() as conn:
            return conn.execute(
                select(broadcasts).where(
                    broadcasts.c.workspace_id == self.ws, broadcasts.c.key == key
                )
            ).one()

    def messages(self, key: str = "promo") -> list[Any]:
        """The broadcast's outbox rows, in slot order."""
        row = self.row(key)
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(outbox)
                    .where(outbox.c.journey_id == row.journey_id)
                    .order_by(outbox.c.available_at, outbox.c.id)
                )
            )
