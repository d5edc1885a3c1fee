"""Running journeys against the store: load state, call the pure engine, apply commands.

Everything here runs inside a transaction the caller opened (see
:mod:`touchline.worker.claims`), so an input's effects — instance state,
timers, listeners, outbox rows, profile traits, conversions — commit together
or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, case, delete, func, literal, select, update

from touchline.errors import TouchlineError
from touchline.journeys import engine as eng
from touchline.journeys.localtime import zone
from touchline.journeys.spec import JourneySpec
from touchline.measure.rollups import bump, conversion_counters
from touchline.measure.winners import WinnerCache
from touchline.messaging.policies import in_control_group
from touchline.messaging.rules import PolicyCache
from touchline.store.consent import (
    Provenance,
    consent_from_identify,
    request_confirmation,
    unsubscribe,
)
from touchline.store.db import insert_ignore
from touchline.store.journeys import SpecCache
from touchline.store.tables import (
    conversions,
    instances,
    journeys,
    listeners,
    outbox,
    profiles,
    step_log,
    timers,
    workspaces,
)
from touchline.store.workspaces import workspace_settings

KNOWN_TRAITS = ("email", "phone", "timezone", "locale", "first_name", "last_name", "birthday")


def profile_traits(row: Any) -> dict[str, Any]:
    """Every trait of a ``profiles`` row: the custom ones, then the known columns set."""
    traits = dict(row.traits or {})
    for name in KNOWN_TRAITS:
        value = getattr(row, name)
        if value is not None:
            traits[name] = value.isoformat() if isinstance(value, date) else value
    return traits


def _segment_keys(conn: Connection, workspace_id: str, profile_id: int) -> frozenset[str]:
    """The customer's current segments, for ``"vip" in profile.segments`` in conditions."""
    from touchline.audience.segments import segment_keys_for  # audience imports the store

    return frozenset(segment_keys_for(conn, workspace_id, profile_id))


@dataclass
class RunStats:
    """What one batch of work did; summed by the worker for logs and metrics."""

    entered: int = 0
    sends: int = 0
    timers: int = 0
    exited: int = 0
    completed: int = 0
    conversions: int = 0
    unsubscribed: int = 0
    skipped_entries: dict[str, int] = field(default_factory=dict)

    def add(self, other: RunStats) -> None:
        self.entered += other.entered
        self.sends += other.sends
        self.timers += other.timers
        self.exited += other.exited
        self.completed += other.completed
        self.conversions += other.conversions
        self.unsubscribed += other.unsubscribed
        for k, v in other.skipped_entries.items():
            self.skipped_entries[k] = self.skipped_entries.get(k, 0) + v


# Hot-path statements built once; rows are passed as parameters.
_INSERT_TIMER = timers.insert()
_INSERT_LISTENER = listeners.insert()
_INSERT_STEP_LOG = step_log.insert()
_PROFILE = select(profiles).where(profiles.c.id == bindparam("pid"))
_PROFILE_FOR_UPDATE = _PROFILE.with_for_update()
_INSTANCE = (
    select(instances, journeys.c.key)
    .join(journeys, journeys.c.id == instances.c.journey_id)
    .where(instances.c.id == bindparam("iid"))
)
_DELETE_TIMERS_OF = delete(timers).where(timers.c.instance_id == bindparam("iid"))
_DELETE_LISTENERS_OF = delete(listeners).where(listeners.c.instance_id == bindparam("iid"))
_DELETE_LISTENERS_BUT_GOALS = delete(listeners).where(
    listeners.c.instance_id == bindparam("iid"), listeners.c.kind != "goal"
)
_DELETE_LISTENERS_OF_KIND = delete(listeners).where(
    listeners.c.instance_id == bindparam("iid"), listeners.c.kind == bindparam("kind")
)
# The new state goes in as parameters named after the columns they set.
_UPDATE_INSTANCE = update(instances).where(instances.c.id == bindparam("iid"))


class Runtime:
    """Applies engine decisions to the store. One per worker; holds caches only."""

    def __init__(self) -> None:
        self.specs = SpecCache()
        self.winners = WinnerCache()
        self.policies = PolicyCache()
        self._workspace_tz: dict[str, str] = {}

    # -- loading ---------------------------------------------------------------------

    def spec(self, conn: Connection, version_id: int, *, journey_id: int) -> JourneySpec:
        """The version's spec, its splits with a declared winner sending everyone to it."""
        spec = self.specs.get(conn, version_id)
        return self.winners.route(conn, spec, journey_id=journey_id, version_id=version_id)

    def workspace_timezone(self, conn: Connection, workspace_id: str) -> str:
        tz = self._workspace_tz.get(workspace_id)
        if tz is None:
            tz = (
                conn.execute(
                    select(workspaces.c.timezone).where(workspaces.c.id == workspace_id)
                ).scalar_one_or_none()
                or "UTC"
            )
            self._workspace_tz[workspace_id] = tz
        return tz

    def load_profile(self, conn: Connection, profile_id: int, *, lock: bool) -> eng.ProfileView:
        locking = lock and conn.dialect.name == "postgresql"
        row = conn.execute(_PROFILE_FOR_UPDATE if locking else _PROFILE, {"pid": profile_id}).one()
        return eng.ProfileView(
            id=row.id,
            user_id=row.user_id,
            timezone=row.timezone,
            traits=profile_traits(row),
            segments=_segment_keys(conn, row.workspace_id, row.id),
        )

    def load_instance(
        self, conn: Connection, instance_id: int
    ) -> tuple[eng.InstanceState, Any] | None:
        row = conn.execute(_INSTANCE, {"iid": instance_id}).first()
        if row is None:
            return None
        state = row.state or {}
        instance = eng.InstanceState(
            id=row.id,
            journey=row.key,
            profile_id=row.profile_id,
            entered_at=row.entered_at,
            trigger=state.get("trigger", {}),
            entry_key=row.entry_key,
            status=row.status,
            step_id=row.step_id,
            context=state.get("context", {}),
            visits=state.get("visits", {}),
            goal_reached_at=row.goal_reached_at,
            exit_reason=row.exit_reason,
        )
        return instance, row

    # -- inputs ----------------------------------------------------------------------

    def handle_event(self, conn: Connection, event_row: Any, *, now: datetime) -> RunStats:
        """Deliver one stored event to the instances listening for it, then to triggers."""
        stats = RunStats()
        workspace_id = event_row.workspace_id
        tz = self.workspace_timezone(conn, workspace_id)
        profile = self.load_profile(conn, event_row.profile_id, lock=True)
        if event_row.type == "identify" and "consent" in (event_row.traits or {}):
            self._record_consent(conn, event_row, profile, now=now)
            # Segments reading consent saw this event before the ledger changed.
            from touchline.audience.segments import refresh_consent_segments

            refresh_consent_segments(conn, workspace_id, profile.id, now=now)
            profile.segments = _segment_keys(conn, workspace_id, profile.id)
        event = eng.EventView(
            name=event_row.name,
            properties=event_row.properties or {},
            timestamp=event_row.timestamp,
            id=event_row.id,
            type=event_row.type,
        )
        if not event.name:
            return stats
        rows = conn.execute(
            select(listeners)
            .where(
                listeners.c.workspace_id == workspace_id,
                listeners.c.profile_id == profile.id,
                listeners.c.event_name == event.name,
            )
            .order_by(listeners.c.instance_id, listeners.c.id)
        ).all()
        expired = [r.id for r in rows if r.expires_at is not None and r.expires_at < now]
        if expired:
            conn.execute(delete(listeners).where(listeners.c.id.in_(expired)))
        # exit and goal listeners first, so an order that ends a journey is not also
        # taken as the awaited event of the step it was waiting at.
        order = {"goal": 0, "exit": 1, "wait": 2}
        live = sorted(
            (r for r in rows if r.id not in set(expired)),
            key=lambda r: (r.instance_id, order.get(r.kind, 3)),
        )
        for row in live:
            loaded = self.load_instance(conn, row.instance_id)
            if loaded is None:
                conn.execute(delete(listeners).where(listeners.c.id == row.id))
                continue
            instance, inst_row = loaded
            spec = self.spec(conn, inst_row.version_id, journey_id=inst_row.journey_id)
            outcome = eng.on_event(
                spec,
                instance,
                kind=row.kind,
                step_id=row.step_id,
                profile=profile,
                event=event,
                now=now,
                workspace_timezone=tz,
            )
            self.apply(conn, spec, inst_row, outcome, profile=profile, now=now, stats=stats)
        self._enter_journeys(conn, workspace_id, profile, event, now=now, tz=tz, stats=stats)
        if "coupon" in event.properties:  # promo codes used; most events carry none, so no query
            from touchline.store.promo import redeem_from_event  # promo imports this module

            redeem_from_event(conn, workspace_id, event_row)
        if event_row.type == "track":
            self._attribute(conn, event_row, profile)
        return stats

    def _attribute(self, conn: Connection, event_row: Any, profile: eng.ProfileView) -> None:
        """A conversion event goes to the customer's last qualifying message touch."""
        from touchline.measure.attribution import AttributionRules, attribute
        from touchline.store.promo import order_value

        try:
            rules = AttributionRules.from_settings(workspace_settings(conn, event_row.workspace_id))
        except TouchlineError:
            rules = AttributionRules()  # the settings API refuses such documents anyway
        if event_row.name not in rules.events:
            return
        attribute(
            conn,
            workspace_id=event_row.workspace_id,
            profile_id=profile.id,
            event_id=event_row.id,
            at=event_row.timestamp,
            value=order_value(event_row.properties or {}),
            rules=rules,
        )

    def _record_consent(
        self, conn: Connection, event_row: Any, profile: eng.ProfileView, *, now: datetime
    ) -> None:
        """Consent given in an identify call goes to the ledger, dated when it was given."""
        settings = workspace_settings(conn, event_row.workspace_id)
        confirm = settings.get("double_opt_in")
        awaiting = consent_from_identify(
            conn,
            workspace_id=event_row.workspace_id,
            profile_id=profile.id,
            traits=event_row.traits,
            context=event_row.context,
            at=event_row.timestamp,
            double_opt_in=frozenset(confirm) if isinstance(confirm, list) else frozenset(),
            addresses={"email": profile.traits.get("email"), "sms": profile.traits.get("phone")},
        )
        if awaiting:
            request_confirmation(conn, event_row, channels=awaiting, now=now)

    def _enter_journeys(
        self,
        conn: Connection,
        workspace_id: str,
        profile: eng.ProfileView,
        event: eng.EventView,
        *,
        now: datetime,
        tz: str,
        stats: RunStats,
    ) -> None:
        candidates = conn.execute(
            select(journeys.c.id, journeys.c.current_version_id).where(
                journeys.c.workspace_id == workspace_id,
                journeys.c.trigger_event == event.name,
                journeys.c.status == "active",
            )
        ).all()
        for journey_id, version_id in candidates:
            spec = self.spec(conn, version_id, journey_id=journey_id)
            key = eng.entry_key(spec, event)
            history = self._history(conn, journey_id, profile.id, key)
            decision = eng.decide_entry(
                spec, profile=profile, event=event, history=history, now=now
            )
            if not decision.enter:
                stats.skipped_entries[decision.reason] = (
                    stats.skipped_entries.get(decision.reason, 0) + 1
                )
                continue
            trigger = event.scope()
            trigger["timestamp"] = event.timestamp.isoformat()
            instance_id = conn.execute(
                instances.insert()
                .values(
                    workspace_id=workspace_id,
                    journey_id=journey_id,
                    version_id=version_id,
                    profile_id=profile.id,
                    entry_key=decision.entry_key,
                    status="active",
                    state={"trigger": trigger},
                    entered_at=now,
                    updated_at=now,
                )
                .returning(instances.c.id)
            ).scalar_one()
            instance = eng.InstanceState(
                id=instance_id,
                journey=spec.journey,
                profile_id=profile.id,
                entered_at=now,
                trigger=trigger,
                entry_key=decision.entry_key,
            )
            stats.entered += 1
            outcome = eng.enter(
                spec,
                instance,
                profile=profile,
                event=event,
                now=now,
                workspace_timezone=tz,
                control_group=in_control_group(
                    profile.key, self.policies.get(conn, workspace_id).control_group
                ),
            )
            held = bool(outcome.instance.context.get("holdout"))
            bump(
                conn,
                workspace_id=workspace_id,
                at=now,
                journey_id=journey_id,
                entered=0 if held else 1,
                holdout_entered=1 if held else 0,
            )
            inst_row = _InstanceRow(instance_id, workspace_id, journey_id, version_id, profile.id)
            self.apply(conn, spec, inst_row, outcome, profile=profile, now=now, stats=stats)

    def _history(
        self, conn: Connection, journey_id: int, profile_id: int, key: str | None
    ) -> eng.EntryHistory:
        # One indexed read (journey_id, profile_id) answers all three questions.
        row = conn.execute(
            select(
                func.max(instances.c.entered_at),
                func.max(case((instances.c.status == "active", 1), else_=0)),
                func.max(case((instances.c.entry_key == key, 1), else_=0))
                if key is not None
                else literal(0),
            ).where(instances.c.journey_id == journey_id, instances.c.profile_id == profile_id)
        ).one()
        if row[0] is None:
            return eng.EntryHistory()
        return eng.EntryHistory(last_entered_at=row[0], active=row[1] == 1, key_seen=row[2] == 1)

    def handle_timer(self, conn: Connection, timer_row: Any, *, now: datetime) -> RunStats:
        """A due timer: resume or time out the instance it belongs to."""
        stats = RunStats()
        profile = self.load_profile(conn, timer_row.profile_id, lock=True)
        loaded = self.load_instance(conn, timer_row.instance_id)
        if loaded is None:
            return stats
        instance, inst_row = loaded
        spec = self.spec(conn, inst_row.version_id, journey_id=inst_row.journey_id)
        tz = self.workspace_timezone(conn, inst_row.workspace_id)
        outcome = eng.on_timer(
            spec,
            instance,
            kind=timer_row.kind,
            step_id=timer_row.step_id,
            profile=profile,
            now=now,
            workspace_timezone=tz,
        )
        self.apply(conn, spec, inst_row, outcome, profile=profile, now=now, stats=stats)
        return stats

    # -- applying commands ------------------------------------------------------------

    def apply(
        self,
        conn: Connection,
        spec: JourneySpec,
        inst_row: Any,
        outcome: eng.Outcome,
        *,
        profile: eng.ProfileView,
        now: datetime,
        stats: RunStats,
    ) -> None:
        """Write an outcome's commands and the instance's new state."""
        if not outcome.commands:
            return
        inst = outcome.instance
        ws = inst_row.workspace_id
        common = {"workspace_id": ws, "instance_id": inst.id}
        logs: list[dict[str, Any]] = []
        ending = any(isinstance(cmd, eng.End) for cmd in outcome.commands)
        for cmd in outcome.commands:
            if isinstance(cmd, eng.Send):
                added = insert_ignore(
                    conn,
                    outbox,
                    {
                        **common,
                        "idempotency_key": cmd.idempotency_key,
                        "journey_id": inst_row.journey_id,
                        "version_id": inst_row.version_id,
                        "step_id": cmd.step_id,
                        "profile_id": inst.profile_id,
                        "channel": cmd.channel,
                        "template": cmd.template,
                        "purpose": cmd.purpose,
                        "category": cmd.category,
                        "variant": cmd.variant,
                        "payload": {"when_capped": cmd.when_capped, "cap_exempt": cmd.cap_exempt},
                        # A control-group customer's message is kept, never sent.
                        "status": "skipped" if cmd.held_out else "pending",
                        "reason": _held_reason(inst) if cmd.held_out else None,
                        "created_at": now,
                        "available_at": now,
                    },
                    key=["idempotency_key"],
                )
                stats.sends += added
            elif isinstance(cmd, eng.ScheduleTimer):
                conn.execute(
                    _INSERT_TIMER,
                    {
                        **common,
                        "profile_id": inst.profile_id,
                        "step_id": cmd.step_id,
                        "kind": cmd.kind,
                        "due_at": cmd.due_at,
                        "attempts": 0,
                    },
                )
                stats.timers += 1
            elif isinstance(cmd, eng.Listen):
                conn.execute(
                    _INSERT_LISTENER,
                    {
                        **common,
                        "profile_id": inst.profile_id,
                        "event_name": cmd.event_name,
                        "kind": cmd.kind,
                        "step_id": cmd.step_id,
                        "match_value": cmd.match_value,
                        "expires_at": cmd.expires_at,
                    },
                )
            elif isinstance(cmd, eng.ClearWait):
                if ending:
                    continue  # End below deletes the same rows and more
                conn.execute(_DELETE_TIMERS_OF, {"iid": inst.id})
                conn.execute(_DELETE_LISTENERS_OF_KIND, {"iid": inst.id, "kind": "wait"})
            elif isinstance(cmd, eng.StopListening):
                conn.execute(_DELETE_LISTENERS_OF_KIND, {"iid": inst.id, "kind": cmd.kind})
            elif isinstance(cmd, eng.SetTraits):
                self._set_traits(conn, profile, cmd, now=now)
            elif isinstance(cmd, eng.Unsubscribe):
                stats.unsubscribed += self._unsubscribe(conn, spec, ws, profile, cmd, now=now)
            elif isinstance(cmd, eng.Log):
                # The split step's row: who got which variant (the holdout, who get no
                # messages, would only dilute the variants' rates).
                if cmd.action == "variant" and not inst.context.get("holdout"):
                    bump(
                        conn,
                        workspace_id=ws,
                        at=now,
                        journey_id=inst_row.journey_id,
                        step_id=cmd.step_id,
                        variant=cmd.detail,
                        entered=1,
                    )
                logs.append(
                    {
                        "workspace_id": ws,
                        "journey_id": inst_row.journey_id,
                        "instance_id": inst.id,
                        "step_id": cmd.step_id,
                        "action": cmd.action,
                        "detail": (cmd.detail or None) and cmd.detail[:200],
                        "at": now,
                    }
                )
            elif isinstance(cmd, eng.Convert):
                converted = insert_ignore(
                    conn,
                    conversions,
                    {
                        "workspace_id": ws,
                        "journey_id": inst_row.journey_id,
                        "instance_id": inst.id,
                        "profile_id": inst.profile_id,
                        "event_id": cmd.event_id or 0,
                        "event_name": cmd.event_name,
                        "value": cmd.value,
                        "at": cmd.at,
                    },
                    key=["instance_id"],
                )
                stats.conversions += converted
                if converted:
                    held = bool(inst.context.get("holdout"))
                    counters = conversion_counters(cmd.value, holdout=held)
                    bump(
                        conn, workspace_id=ws, at=cmd.at, journey_id=inst_row.journey_id, **counters
                    )
                    # ...and on each split step's row, under the variant this customer got
                    variants = {} if held else inst.context.get("variants") or {}
                    for split_step, variant in variants.items():
                        bump(
                            conn,
                            workspace_id=ws,
                            at=cmd.at,
                            journey_id=inst_row.journey_id,
                            step_id=split_step,
                            variant=variant,
                            **counters,
                        )
            elif isinstance(cmd, eng.End):
                conn.execute(_DELETE_TIMERS_OF, {"iid": inst.id})
                conn.execute(
                    _DELETE_LISTENERS_BUT_GOALS if cmd.keep_goal else _DELETE_LISTENERS_OF,
                    {"iid": inst.id},
                )
                if cmd.status == "exited":
                    stats.exited += 1
                else:
                    stats.completed += 1
        if logs:
            conn.execute(_INSERT_STEP_LOG, logs)
        conn.execute(
            _UPDATE_INSTANCE,
            {
                "iid": inst.id,
                "status": inst.status,
                "step_id": inst.step_id,
                "state": inst.to_state(),
                "updated_at": now,
                "ended_at": now
                if inst.status != "active" and inst_row.status == "active"
                else inst_row.ended_at,
                "exit_reason": inst.exit_reason,
                "goal_reached_at": inst.goal_reached_at,
            },
        )

    def _unsubscribe(
        self,
        conn: Connection,
        spec: JourneySpec,
        workspace_id: str,
        profile: eng.ProfileView,
        cmd: eng.Unsubscribe,
        *,
        now: datetime,
    ) -> int:
        """A journey's ``unsubscribe`` step: a withdrawal in the consent ledger, once.

        Like the unsubscribe page, a channel-wide withdrawal also suppresses the
        customer's address on that channel; the ledger row names the journey,
        step and reason as its source.
        """
        address = {"email": profile.traits.get("email"), "sms": profile.traits.get("phone")}.get(
            cmd.channel
        )
        return int(
            unsubscribe(
                conn,
                workspace_id=workspace_id,
                profile_id=profile.id,
                channel=cmd.channel,
                address=address if isinstance(address, str) and address else None,
                at=now,
                provenance=Provenance(
                    source=f"journey {spec.journey}, step {cmd.step_id}: {cmd.reason}"
                ),
                topic=cmd.topic,
            )
        )

    def _set_traits(
        self, conn: Connection, profile: eng.ProfileView, cmd: eng.SetTraits, *, now: datetime
    ) -> None:
        row = conn.execute(select(profiles.c.traits).where(profiles.c.id == profile.id)).one()
        custom = dict(row.traits or {})
        columns: dict[str, Any] = {}
        for name, value in cmd.set.items():
            if name in ("first_name", "last_name", "locale"):
                columns[name] = None if value is None else str(value)[:200]
            elif name == "timezone" and isinstance(value, str) and zone(value, "").key == value:
                columns[name] = value
            else:
                custom[name] = value
        for name in cmd.unset:
            custom.pop(name, None)
        conn.execute(
            update(profiles)
            .where(profiles.c.id == profile.id)
            .values(traits=custom, updated_at=now, **columns)
        )
        for name, value in cmd.set.items():
            profile.traits[name] = value
        for name in cmd.unset:
            profile.traits.pop(name, None)


@dataclass(frozen=True)
class _InstanceRow:
    """The columns :meth:`Runtime.apply` needs, for an instance created this turn."""

    id: int
    workspace_id: str
    journey_id: int
    version_id: int
    profile_id: int
    status: str = "active"
    ended_at: datetime | None = None


def _held_reason(inst: eng.InstanceState) -> str:
    """Why a held-out customer's message is kept: the workspace's control group or the journey's."""
    return "control_group" if inst.context.get("control_group") else "holdout"


def sweep_expired_listeners(conn: Connection, *, now: datetime, limit: int = 1000) -> int:
    """Delete listeners whose window has passed (goal windows of finished instances)."""
    ids = (
        select(listeners.c.id)
        .where(listeners.c.expires_at.is_not(None), listeners.c.expires_at < now)
        .limit(limit)
    )
    return conn.execute(delete(listeners).where(listeners.c.id.in_(ids))).rowcount or 0


__all__ = ["Runtime", "RunStats", "insert_ignore", "sweep_expired_listeners"]
