"""Every table touchline keeps. Every row carries ``workspace_id``.

Hot paths and the indexes that serve them:

* an event finds the journeys it triggers: ``journeys (workspace_id, trigger_event)``
* an event finds the instances waiting for it: ``listeners (workspace_id, profile_id, event_name)``
* workers find due work: ``timers (due_at)``, ``events (status, id)``, ``outbox (status, available_at)``
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from touchline.store.types import BigId, Json, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

WS = 32  # workspace ids are short random slugs

workspaces = Table(
    "workspaces",
    metadata,
    Column("id", String(WS), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False, server_default="UTC"),
    Column("created_at", UTCDateTime(), nullable=False),
    # Caps, quiet hours, channel providers, sender names: see messaging.settings.
    Column("settings", Json),
    # Signs unsubscribe and preference links; never shown by the API.
    Column("link_secret", String(64)),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), ForeignKey("workspaces.id"), nullable=False),
    Column("kind", String(8), nullable=False),  # write | admin
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
)

profiles = Table(
    "profiles",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("user_id", String(200)),
    Column("email", String(320)),
    Column("phone", String(64)),
    Column("phone_valid", Boolean),
    Column("timezone", String(64)),
    Column("locale", String(35)),
    Column("birthday", Date),
    Column("first_name", String(200)),
    Column("last_name", String(200)),
    Column("traits", Json, nullable=False, default=dict),
    Column("merged_into", BigId),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime()),
    # Set when the customer was erased (store.privacy): the row stays, empty, so ids
    # are never reused and the consent ledger keeps pointing at it.
    Column("erased_at", UTCDateTime()),
    Index("ix_profiles_ws_user", "workspace_id", "user_id"),
    Index("ix_profiles_ws_email", "workspace_id", "email"),
    Index("ix_profiles_ws_phone", "workspace_id", "phone"),
)

identities = Table(
    "identities",
    metadata,
    Column("workspace_id", String(WS), primary_key=True),
    Column("kind", String(16), primary_key=True),  # user_id | anonymous_id
    Column("value", String(200), primary_key=True),
    Column("profile_id", BigId, nullable=False),
    Index("ix_identities_profile", "profile_id"),
)

EVENT_PENDING, EVENT_DONE, EVENT_FAILED = 0, 1, 2

events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("message_id", String(200), nullable=False),
    Column("type", String(16), nullable=False),  # track | identify | page | screen | group | alias
    Column("name", String(200)),
    Column("profile_id", BigId, nullable=False),
    Column("user_id", String(200)),
    Column("anonymous_id", String(200)),
    Column("properties", Json, nullable=False, default=dict),
    Column("traits", Json),
    Column("context", Json),
    Column("timestamp", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("status", SmallInteger, nullable=False, default=EVENT_PENDING),
    Column("lease_owner", String(128)),
    Column("lease_until", UTCDateTime()),
    Column("attempts", SmallInteger, nullable=False, default=0),
    Column("error", Text),
    UniqueConstraint("workspace_id", "message_id", name="uq_events_ws_message"),
    Index("ix_events_status_id", "status", "id"),
    Index("ix_events_profile_status_id", "profile_id", "status", "id"),
    Index("ix_events_ws_profile_ts", "workspace_id", "profile_id", "timestamp"),
    Index("ix_events_ws_name_ts", "workspace_id", "name", "timestamp"),
)

journeys = Table(
    "journeys",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("key", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # active | paused | archived
    Column("category", String(16), nullable=False),
    Column("trigger_event", String(200), nullable=False),
    Column("current_version_id", BigId),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("workspace_id", "key", name="uq_journeys_ws_key"),
    Index("ix_journeys_ws_trigger", "workspace_id", "trigger_event", "status"),
)

journey_versions = Table(
    "journey_versions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("journey_id", BigId, ForeignKey("journeys.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("spec", Json, nullable=False),
    Column("source", Text, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("journey_id", "version", name="uq_journey_versions_journey_version"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("journey_id", BigId, nullable=False),
    Column("version_id", BigId, nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("entry_key", String(200)),
    Column("status", String(12), nullable=False),  # active | completed | exited | failed
    Column("step_id", String(64)),
    Column("state", Json, nullable=False, default=dict),
    Column("entered_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime()),
    Column("exit_reason", String(200)),
    Column("goal_reached_at", UTCDateTime()),
    Index("ix_instances_journey_profile", "journey_id", "profile_id", "entered_at"),
    Index("ix_instances_profile_status", "profile_id", "status"),
    Index("ix_instances_journey_status_step", "journey_id", "status", "step_id"),
)

listeners = Table(
    "listeners",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("event_name", String(200), nullable=False),
    Column("instance_id", BigId, nullable=False),
    Column("kind", String(8), nullable=False),  # wait | exit | goal
    Column("step_id", String(64)),
    Column("match_value", String(200)),
    Column("expires_at", UTCDateTime()),
    Index("ix_listeners_lookup", "workspace_id", "profile_id", "event_name"),
    Index("ix_listeners_instance", "instance_id"),
    Index("ix_listeners_expires", "expires_at"),
)

timers = Table(
    "timers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("instance_id", BigId, nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("kind", String(8), nullable=False),  # resume | timeout | goal
    Column("due_at", UTCDateTime(), nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_until", UTCDateTime()),
    Column("attempts", SmallInteger, nullable=False, default=0),
    Index("ix_timers_due", "due_at"),
    Index("ix_timers_instance", "instance_id"),
    Index("ix_timers_profile", "profile_id"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("instance_id", BigId, nullable=False),
    Column("journey_id", BigId, nullable=False),
    Column("version_id", BigId, nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("channel", String(64), nullable=False),
    Column("template", String(200), nullable=False),
    Column("purpose", String(16), nullable=False),  # marketing | transactional
    Column("category", String(16), nullable=False),
    Column("variant", String(64)),
    Column("payload", Json, nullable=False, default=dict),
    # pending -> sending (leased) -> sent | failed | skipped; retries go back to pending
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("available_at", UTCDateTime(), nullable=False),
    Column("attempts", SmallInteger, nullable=False, server_default="0"),
    Column("lease_owner", String(128)),
    Column("lease_until", UTCDateTime()),
    Column("address", String(320)),
    Column("rendered", Json),
    Column("provider_id", String(200)),
    Column("reason", String(200)),
    Column("error", Text),
    Column("sent_at", UTCDateTime()),
    # The last delivery rule that held the message back (quiet hours, a cap), if any.
    Column("deferred_reason", String(200)),
    Column("deferrals", SmallInteger, nullable=False, server_default="0"),
    # What the provider reported later: delivered | undelivered | bounced | complained.
    Column("delivery_status", String(16)),
    Column("delivery_at", UTCDateTime()),
    Index("ix_outbox_status_available", "status", "available_at"),
    Index("ix_outbox_ws_profile", "workspace_id", "profile_id"),
    Index("ix_outbox_provider_id", "provider_id"),
)

templates = Table(
    "templates",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("key", String(200), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("spec", Json, nullable=False),
    Column("source", Text, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("workspace_id", "key", name="uq_templates_ws_key"),
)

step_log = Table(
    "step_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("journey_id", BigId, nullable=False),
    Column("instance_id", BigId, nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("action", String(16), nullable=False),  # entered | variant | exited | completed | ...
    Column("detail", String(200)),
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_step_log_journey_step", "journey_id", "step_id", "action"),
    Index("ix_step_log_instance", "instance_id"),
)

conversions = Table(
    "conversions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("journey_id", BigId, nullable=False),
    Column("instance_id", BigId, nullable=False, unique=True),
    Column("profile_id", BigId, nullable=False),
    Column("event_id", BigId, nullable=False),
    Column("event_name", String(200), nullable=False),
    Column("value", Numeric(18, 2)),
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_conversions_journey", "journey_id", "at"),
    Index("ix_conversions_profile", "profile_id"),
)

consents = Table(
    "consents",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("channel", String(64), nullable=False),
    Column("purpose", String(16), nullable=False),  # marketing
    Column("topic", String(64)),  # None: the whole channel; else a journey category
    Column("granted", Boolean, nullable=False),
    Column("confirmed", Boolean, nullable=False),  # False: a grant awaiting double opt-in
    Column("at", UTCDateTime(), nullable=False),
    Column("source", String(500), nullable=False),
    Column("text_version", String(200)),
    Column("address", String(320)),
    Column("ip", String(64)),
    Column("user_agent", String(500)),
    Index("ix_consents_ws_profile", "workspace_id", "profile_id", "at"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("address", String(320), nullable=False),  # stripped and case-folded
    Column(
        "reason", String(16), nullable=False
    ),  # hard_bounce | complaint | unsubscribe | stop_reply
    Column("profile_id", BigId),
    Column("detail", Text),
    Column("at", UTCDateTime(), nullable=False),
    UniqueConstraint("workspace_id", "channel", "address", "reason"),
)

promo_pools = Table(
    "promo_pools",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("key", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("valid_from", UTCDateTime()),
    Column("valid_until", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("workspace_id", "key"),
)

promo_codes = Table(
    "promo_codes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("pool_id", BigId, nullable=False),
    Column("code", String(64), nullable=False),
    Column("valid_until", UTCDateTime()),  # this code's own end, within the pool's
    Column("profile_id", BigId),  # None until issued
    Column("offer_key", String(200)),  # what it was issued for: one code per offer
    Column("instance_id", BigId),  # the journey instance it was issued for, if any
    Column("issued_at", UTCDateTime()),
    Column("redeemed_at", UTCDateTime()),
    Column("redeemed_event_id", BigId),
    # Who used it; differs from profile_id when a customer passed the code on.
    Column("redeemed_profile_id", BigId),
    UniqueConstraint("workspace_id", "code"),
    UniqueConstraint("pool_id", "offer_key"),
    Index("ix_promo_codes_pool_profile", "pool_id", "profile_id"),
    Index("ix_promo_codes_ws_profile", "workspace_id", "profile_id"),
)

tasks = Table(
    "tasks",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("profile_id", BigId, nullable=False),
    Column("journey_id", BigId),
    Column("instance_id", BigId),
    Column("step_id", String(64)),
    # The task this one follows up (a ``call_back`` outcome opens a new task).
    Column("previous_id", BigId),
    Column("reason", String(200), nullable=False),
    Column("script", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default="0"),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("status", String(12), nullable=False),  # open | claimed | closed
    Column("assignee", String(200)),
    Column("claimed_at", UTCDateTime()),
    Column("outcome", String(32)),  # reached | no_answer | call_back | sold | ...
    Column("note", Text),
    Column("call_back_at", UTCDateTime()),
    Column("closed_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_tasks_ws_status_due", "workspace_id", "status", "priority", "due_at"),
    Index("ix_tasks_ws_profile", "workspace_id", "profile_id"),
)

message_events = Table(
    "message_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("outbox_id", BigId, nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("journey_id", BigId),
    Column("channel", String(64), nullable=False),
    # sent | delivered | opened | clicked | bounced | complained | unsubscribed | failed
    Column("kind", String(16), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("url", Text),  # the destination of a click
    Column("ip", String(64)),
    Column("user_agent", String(500)),
    # A privacy-proxy prefetch or a link scanner, not a person: left out of rates.
    Column("machine", Boolean, nullable=False, default=False),
    Column("detail", Text),
    Index("ix_message_events_ws_outbox_kind", "workspace_id", "outbox_id", "kind"),
    Index("ix_message_events_ws_at", "workspace_id", "at"),
    # attribution: a customer's latest touches before a conversion
    Index("ix_message_events_ws_profile_at", "workspace_id", "profile_id", "at"),
)

short_links = Table(
    "short_links",
    metadata,
    # Random base62: unique across workspaces, since /s/{code} names no workspace.
    Column("code", String(16), primary_key=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("outbox_id", BigId, nullable=False),
    Column("url", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_short_links_ws_outbox", "workspace_id", "outbox_id"),
)

daily_stats = Table(
    "daily_stats",
    metadata,
    # One row per (workspace, UTC day, journey, step, variant, channel); see measure.rollups.
    Column("workspace_id", String(WS), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("journey_id", BigInteger, primary_key=True),  # 0: no journey
    Column("step_id", String(64), primary_key=True),  # "": the journey as a whole
    Column("variant", String(64), primary_key=True),  # "": no split
    Column("channel", String(64), primary_key=True),  # "": not a message fact
    Column("entered", BigInteger, nullable=False, server_default="0"),
    Column("holdout_entered", BigInteger, nullable=False, server_default="0"),
    Column("sent", BigInteger, nullable=False, server_default="0"),
    Column("delivered", BigInteger, nullable=False, server_default="0"),
    Column("undelivered", BigInteger, nullable=False, server_default="0"),
    Column("bounced", BigInteger, nullable=False, server_default="0"),
    Column("complained", BigInteger, nullable=False, server_default="0"),
    Column("failed", BigInteger, nullable=False, server_default="0"),
    Column("skipped", BigInteger, nullable=False, server_default="0"),
    Column("opened", BigInteger, nullable=False, server_default="0"),
    Column("clicked", BigInteger, nullable=False, server_default="0"),
    Column("machine_opened", BigInteger, nullable=False, server_default="0"),
    Column("machine_clicked", BigInteger, nullable=False, server_default="0"),
    Column("unsubscribed", BigInteger, nullable=False, server_default="0"),
    Column("converted", BigInteger, nullable=False, server_default="0"),
    Column("holdout_converted", BigInteger, nullable=False, server_default="0"),
    Column("attributed", BigInteger, nullable=False, server_default="0"),
    Column("sms_parts", BigInteger, nullable=False, server_default="0"),
    Column("revenue", Numeric(24, 2), nullable=False, server_default="0"),
    Column("revenue_sq", Numeric(24, 2), nullable=False, server_default="0"),
    Column("holdout_revenue", Numeric(24, 2), nullable=False, server_default="0"),
    Column("holdout_revenue_sq", Numeric(24, 2), nullable=False, server_default="0"),
    Column("attributed_revenue", Numeric(24, 2), nullable=False, server_default="0"),
    Column("sms_cost", Numeric(24, 2), nullable=False, server_default="0"),
)

attributions = Table(
    "attributions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("event_id", BigId, nullable=False, unique=True),  # an order is attributed once
    Column("outbox_id", BigId, nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("journey_id", BigId, nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("variant", String(64)),
    Column("channel", String(64), nullable=False),
    Column("touch", String(16), nullable=False),  # clicked | opened | delivered
    Column("touched_at", UTCDateTime(), nullable=False),
    Column("value", Numeric(18, 2)),
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_attributions_ws_outbox", "workspace_id", "outbox_id"),
)

experiment_winners = Table(
    "experiment_winners",
    metadata,
    # A split's automatic winner (see measure.winners): recorded once, never changed.
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("journey_id", BigId, nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("winner", String(64), nullable=False),
    Column("metric", String(16), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=False),
    Column("detail", Json, nullable=False),  # the verdict and the figures it rested on
    UniqueConstraint("journey_id", "step_id", name="uq_experiment_winners_journey_step"),
)

# -- audience: segments -------------------------------------------------------------

segments = Table(
    "segments",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("key", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", Text),
    Column("spec", Json, nullable=False),
    Column("source", Text, nullable=False),
    Column("checksum", String(64), nullable=False),
    # building (a full rebuild is filling segment_members) | ready | archived
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("built_at", UTCDateTime()),
    UniqueConstraint("workspace_id", "key", name="uq_segments_ws_key"),
)

# Current members only; who entered and left when is in segment_changes.
segment_members = Table(
    "segment_members",
    metadata,
    Column("segment_id", BigId, primary_key=True),
    Column("profile_id", BigId, primary_key=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("entered_at", UTCDateTime(), nullable=False),
    Index("ix_segment_members_ws_profile", "workspace_id", "profile_id"),
)

segment_changes = Table(
    "segment_changes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("segment_id", BigId, nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("change", String(8), nullable=False),  # entered | exited
    Column("at", UTCDateTime(), nullable=False),
    Index("ix_segment_changes_segment_at", "segment_id", "at"),
    Index("ix_segment_changes_profile", "profile_id"),
)

# When a member's or non-member's answer may next flip with the passage of time
# ("no order for 30 days"); one row per (segment, profile), claimed with leases.
segment_timers = Table(
    "segment_timers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("segment_id", BigId, nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("due_at", UTCDateTime(), nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_until", UTCDateTime()),
    Column("attempts", SmallInteger, nullable=False, default=0),
    UniqueConstraint("segment_id", "profile_id", name="uq_segment_timers_segment_profile"),
    Index("ix_segment_timers_due", "due_at"),
    Index("ix_segment_timers_ws_profile", "workspace_id", "profile_id"),
)

# -- audience: date triggers and schedules ---------------------------------------------

# One row per journey whose trigger is a date or a schedule: the trigger as applied and
# the work the worker owes it as a whole (a date's backfill over every customer, a
# schedule's runs), claimed with a lease when next_run_at is due.
time_triggers = Table(
    "time_triggers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("journey_id", BigId, nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # date | schedule
    Column("rule", Json, nullable=False),  # the trigger's date: or schedule: part, as applied
    Column("next_run_at", UTCDateTime()),  # work is due (NULL: none until the next sweep)
    Column("run_at", UTCDateTime()),  # schedule: the instant of the run in progress
    Column("done_through", BigId, nullable=False, default=0),  # last profile id done
    Column("run_size", Integer, nullable=False, default=0),  # customers reached so far this run
    Column("last_run_at", UTCDateTime()),
    Column("last_run_size", Integer),
    Column("note", String(500)),  # why the last run did not happen, if it did not
    Column("lease_owner", String(128)),
    Column("lease_until", UTCDateTime()),
    Column("attempts", SmallInteger, nullable=False, default=0),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_time_triggers_next_run", "next_run_at"),
    Index("ix_time_triggers_ws_kind", "workspace_id", "kind"),
)

# One row per (date-triggered journey, customer): the next occurrence due and what
# became of the last one, claimed with a lease when due_at has passed.
date_timers = Table(
    "date_timers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("journey_id", BigId, nullable=False),
    Column("profile_id", BigId, nullable=False),
    Column("occurrence", Date),  # the date due_at celebrates (the birthday that year)
    Column("due_at", UTCDateTime()),  # NULL: nothing left to fire
    Column("handled", Date),  # the last occurrence fired or passed over
    Column("outcome", String(8)),  # of `handled`: fired | late | paused | failed
    Column("handled_at", UTCDateTime()),
    Column("error", String(500)),
    Column("lease_owner", String(128)),
    Column("lease_until", UTCDateTime()),
    Column("attempts", SmallInteger, nullable=False, default=0),
    UniqueConstraint("journey_id", "profile_id", name="uq_date_timers_journey_profile"),
    Index("ix_date_timers_due", "due_at"),
    Index("ix_date_timers_ws_profile", "workspace_id", "profile_id"),
)

# -- audience: broadcasts -------------------------------------------------------------

# One-off or scheduled sends to a segment (see touchline.audience.broadcasts). Each is
# registered as a journey (status "broadcast", never triggered) so its messages, rollups,
# reports, attribution and experiment winners use the journey machinery unchanged.
broadcasts = Table(
    "broadcasts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("key", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("journey_id", BigId, nullable=False),
    Column("version_id", BigId, nullable=False),
    Column("spec", Json, nullable=False),  # the validated definition, normalised
    Column("source", Text, nullable=False),
    # draft | scheduled | testing | waiting | sending | sent | cancelled
    Column("status", String(16), nullable=False),
    Column("send_at", UTCDateTime()),
    # When a worker next has something to do for it (start, next chunk, the A/B decision).
    Column("next_at", UTCDateTime()),
    # The worker's bookmark: stage, phase, time-zone groups, last recipient, last slot.
    Column("cursor", Json, nullable=False, default=dict),
    Column("audience", BigInteger, nullable=False, server_default="0"),
    Column("unreachable", BigInteger, nullable=False, server_default="0"),
    Column("queued", BigInteger, nullable=False, server_default="0"),
    Column("test_ends_at", UTCDateTime()),
    Column("winner", String(64)),
    Column("decided_at", UTCDateTime()),
    Column("decision", Json),  # the verdict, its figures and any fallback used
    Column("lease_owner", String(128)),
    Column("lease_until", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    UniqueConstraint("workspace_id", "key", name="uq_broadcasts_ws_key"),
    Index("ix_broadcasts_status_next", "status", "next_at"),
)

# The audience as it was when sending started: one row per customer, with the A/B phase
# and variant drawn for them and the journey instance and outbox row made for them.
broadcast_recipients = Table(
    "broadcast_recipients",
    metadata,
    Column("broadcast_id", BigId, primary_key=True),
    Column("profile_id", BigId, primary_key=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("phase", String(8), nullable=False),  # test | main
    Column("variant", String(64)),  # None in the main phase of an A/B test until decided
    Column("zone", String(64), nullable=False),  # IANA zone with local_time, else ""
    Column("status", String(8), nullable=False),  # pending | queued
    Column("instance_id", BigId),
    Column("outbox_id", BigId),
    Index("ix_broadcast_recipients_order", "broadcast_id", "phase", "zone", "profile_id"),
)

# -- audience: catalog ------------------------------------------------------------------

# The shop's products, keyed by the shop's own id (see audience.catalog).
products = Table(
    "products",
    metadata,
    Column("workspace_id", String(WS), primary_key=True),
    Column("product_id", String(200), primary_key=True),
    Column("name", String(500), nullable=False),
    Column("url", Text),
    Column("image", Text),
    Column("price", Numeric(18, 2)),
    Column("currency", String(3)),
    Column("category", String(200)),
    Column("in_stock", Boolean, nullable=False),
    Column("attributes", Json, nullable=False, default=dict),
    # The price a drop is measured from: the last price that rose or was announced.
    Column("price_basis", Numeric(18, 2)),
    # Out-of-stock -> in-stock transitions and announced drops so far: each is one occurrence.
    Column("restocks", Integer, nullable=False, server_default="0"),
    Column("price_drops", Integer, nullable=False, server_default="0"),
    Column("archived_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_products_ws_category", "workspace_id", "category"),
)

# Who showed interest in which product, kept from events by the catalog observer, so a
# restock reads its audience here instead of scanning events.
product_interest = Table(
    "product_interest",
    metadata,
    Column("workspace_id", String(WS), primary_key=True),
    Column("product_id", String(200), primary_key=True),
    Column("profile_id", BigId, primary_key=True),
    Column("viewed_at", UTCDateTime()),  # latest Product Viewed
    Column("requested_at", UTCDateTime()),  # latest Back In Stock Requested
    Column("purchased_at", UTCDateTime()),  # latest order holding it
    Column("restock_notified_at", UTCDateTime()),
    Column("price_notified_at", UTCDateTime()),
    Index("ix_product_interest_ws_profile", "workspace_id", "profile_id"),
)

# Orders holding both products, both ways round: (a, b) and (b, a).
product_pairs = Table(
    "product_pairs",
    metadata,
    Column("workspace_id", String(WS), primary_key=True),
    Column("product_id", String(200), primary_key=True),
    Column("other_id", String(200), primary_key=True),
    Column("orders", BigInteger, nullable=False),
)

# Orders holding each product: its popularity.
product_stats = Table(
    "product_stats",
    metadata,
    Column("workspace_id", String(WS), primary_key=True),
    Column("product_id", String(200), primary_key=True),
    Column("orders", BigInteger, nullable=False),
    Index("ix_product_stats_ws_orders", "workspace_id", "orders"),
)

# One restock or price drop to announce, fired in chunks of recipients (resumable).
catalog_alerts = Table(
    "catalog_alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("product_id", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # back_in_stock | price_drop
    Column("occurrence", Integer, nullable=False),  # products.restocks / price_drops
    Column("status", String(12), nullable=False),  # pending | done | stopped
    Column("at", UTCDateTime(), nullable=False),  # when the change was recorded
    Column("viewed_since", UTCDateTime(), nullable=False),
    Column("requested_since", UTCDateTime()),  # back_in_stock only
    Column("properties", Json, nullable=False),  # of the events it stores
    Column("cursor", BigInteger, nullable=False, server_default="0"),  # last profile id done
    Column("fired", Integer, nullable=False, server_default="0"),
    Column("detail", Text),  # why it stopped
    Column("finished_at", UTCDateTime()),
    UniqueConstraint("workspace_id", "product_id", "kind", "occurrence"),
    Index("ix_catalog_alerts_status_id", "status", "id"),
)

# -- customer import, export and erasure --------------------------------------------------

# One import of a customer file, keyed by the file's SHA-256: an interrupted
# import resumes after ``last_line``, the last line of its last committed chunk.
import_jobs = Table(
    "import_jobs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("kind", String(16), nullable=False),  # customers
    Column("checksum", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("format", String(8), nullable=False),  # csv | jsonl
    Column("status", String(12), nullable=False),  # running | done
    Column("last_line", Integer, nullable=False, server_default="0"),
    Column("rows", Integer, nullable=False, server_default="0"),
    Column("imported", Integer, nullable=False, server_default="0"),
    Column("duplicates", Integer, nullable=False, server_default="0"),
    Column("rejected", Integer, nullable=False, server_default="0"),
    Column("consents", Integer, nullable=False, server_default="0"),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    UniqueConstraint("workspace_id", "kind", "checksum", name="uq_import_jobs_ws_kind_checksum"),
)

# Rows an import refused: where and why, never the refused value (no personal data).
import_rejections = Table(
    "import_rejections",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("job_id", BigId, nullable=False),
    Column("line", Integer, nullable=False),
    Column("field", String(200), nullable=False),
    Column("reason", String(500), nullable=False),
    Index("ix_import_rejections_job_line", "job_id", "line"),
)

# Each erasure of a customer: who asked, when, and how many rows of each kind it touched.
erasures = Table(
    "erasures",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("profile_id", BigId, nullable=False),
    # A salted SHA-256 of the user id, so "was this customer erased?" can be answered.
    Column("user_hash", String(80)),
    Column("requested_by", String(200), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("counts", Json, nullable=False),
    Index("ix_erasures_ws_profile", "workspace_id", "profile_id"),
    Index("ix_erasures_ws_user_hash", "workspace_id", "user_hash"),
)

# -- console ----------------------------------------------------------------------------

# People who sign in to the console; each belongs to one workspace and sees only it.
console_users = Table(
    "console_users",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("email", String(320), nullable=False),  # case-folded; signs in with it
    Column("name", String(200)),
    Column("role", String(16), nullable=False),  # admin | marketer | operator
    Column("password_hash", String(200), nullable=False),  # argon2id, with its parameters
    Column("created_at", UTCDateTime(), nullable=False),
    Column("password_changed_at", UTCDateTime(), nullable=False),
    Column("last_signed_in_at", UTCDateTime()),
    Column("disabled_at", UTCDateTime()),
    UniqueConstraint("email", name="uq_console_users_email"),
)

# Signed-in browsers: only the SHA-256 of the cookie's token is kept.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("workspace_id", String(WS), nullable=False),
    Column("user_id", BigId, nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("ip", String(64)),
    Column("user_agent", String(500)),
    UniqueConstraint("token_hash", name="uq_console_sessions_token_hash"),
    Index("ix_console_sessions_user", "user_id"),
    Index("ix_console_sessions_expires", "expires_at"),
)

__all__ = [
    "metadata",
    "workspaces",
    "api_keys",
    "profiles",
    "identities",
    "events",
    "journeys",
    "journey_versions",
    "instances",
    "listeners",
    "timers",
    "outbox",
    "templates",
    "step_log",
    "conversions",
    "consents",
    "suppressions",
    "promo_pools",
    "promo_codes",
    "tasks",
    "message_events",
    "short_links",
    "EVENT_PENDING",
    "EVENT_DONE",
    "EVENT_FAILED",
]
