"""Delivery rules: may this message go to this customer now?

Pure decision logic for the dispatcher. It loads the facts (the consent ledger,
suppressions, recent sends, the workspace policy), reads the clock once, and
calls :func:`decide`; nothing here touches the database or the clock.

The rules run in a fixed order and the first that stops a message names it:

1. **suppression** -- a hard bounce or complaint for this channel and address
   blocks every message, transactional included; an unsubscribe or STOP reply
   blocks everything but transactional messages, until a later confirmed grant
   in the consent ledger lifts it (the customer opted in again).
2. **control group** -- a customer in the workspace-wide control group
   (``control_group`` percent, a stable hash of the customer) gets no marketing.
3. **consent** -- anything not ``transactional`` needs the latest counting
   record of the ledger for (channel, ``marketing``) to be a grant; grants with
   ``confirmed=False`` (pending double opt-in) do not count; a withdrawn topic
   (the journey's category) stops that topic only.
4. **frequency caps** -- marketing only; skip or defer per the candidate.
5. **quiet hours** -- in the customer's own time zone; always defer.

Every ``defer`` carries a ``not_before`` past all time-based rules: deciding
again at ``not_before`` with the same facts does not defer again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from touchline.errors import InputError
from touchline.journeys.durations import format_duration, parse_duration, parse_time_of_day
from touchline.journeys.localtime import local_to_utc, zone
from touchline.journeys.spec import Category

Outcome = Literal["send", "skip", "defer"]
SuppressionReason = Literal["hard_bounce", "complaint", "unsubscribe", "stop_reply", "erased"]

MARKETING = "marketing"
TRANSACTIONAL = "transactional"
PURPOSES = frozenset({MARKETING, TRANSACTIONAL})
CATEGORIES = frozenset(c.value for c in Category)

#: Suppressions that block every message; the others block all but transactional ones.
BLOCKS_EVERYTHING: frozenset[str] = frozenset({"hard_bounce", "complaint"})
#: Which suppression a decision names when several match: the most severe first.
SUPPRESSION_SEVERITY = ("hard_bounce", "complaint", "stop_reply", "unsubscribe")
#: Bound on pushing a release time past overlapping quiet windows; two suffice in practice.
_MAX_QUIET_HOPS = 8


@dataclass(frozen=True)
class ConsentRecord:
    """One row of the append-only consent ledger."""

    channel: str
    purpose: str
    granted: bool
    at: datetime
    source: str
    text_version: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    confirmed: bool = True  # False: a grant awaiting double opt-in, which does not count yet
    topic: str | None = None  # None: the whole channel; else one topic (a journey category)


@dataclass(frozen=True)
class Suppression:
    """An address the channel must not reach (any purpose, or marketing only; see module doc)."""

    channel: str
    address: str
    reason: SuppressionReason
    at: datetime


@dataclass(frozen=True)
class SentRecord:
    """A message already sent to this customer."""

    channel: str
    purpose: str
    category: str
    journey: str
    at: datetime


@dataclass(frozen=True)
class CapRule:
    """At most ``limit`` matching sends in any ``window``; ``None`` filters match everything."""

    limit: int
    window: timedelta
    channel: str | None = None
    category: str | None = None
    purpose: str = MARKETING

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("limit must be at least 1")
        if self.window <= timedelta():
            raise ValueError("window must be longer than zero")

    @property
    def label(self) -> str:
        """Stable text naming the rule, e.g. ``marketing email 1/1d``."""
        scope = [self.purpose, self.channel or "any channel"]
        if self.category:
            scope.append(self.category)
        return f"{' '.join(scope)} {self.limit}/{format_duration(self.window)}"

    def matches(self, channel: str, purpose: str, category: str) -> bool:
        """Whether a message (sent, or about to be) falls under this rule."""
        return (
            purpose == self.purpose
            and (self.channel is None or channel == self.channel)
            and (self.category is None or category == self.category)
        )


@dataclass(frozen=True)
class QuietHours:
    """Local wall-clock window ``[start, end)``; wraps midnight when ``end <= start``."""

    start: time = time(21, 0)
    end: time = time(9, 0)
    channels: frozenset[str] = frozenset({"sms"})
    purposes: frozenset[str] = frozenset({MARKETING})

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("start and end must differ")

    def applies_to(self, channel: str, purpose: str) -> bool:
        return channel in self.channels and purpose in self.purposes


@dataclass(frozen=True)
class Policy:
    """A workspace's caps and quiet hours, plus the zone for customers without one."""

    caps: tuple[CapRule, ...] = ()
    quiet_hours: tuple[QuietHours, ...] = ()
    default_timezone: str = "UTC"
    #: Percent of customers kept from all marketing, workspace-wide (see :func:`in_control_group`).
    control_group: float = 0.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Policy:
        """Build a policy from a workspace's JSON settings.

        Reads ``caps``, ``quiet_hours``, ``default_timezone`` and
        ``control_group`` (percent, 0-50); other top-level
        keys belong to other features and are ignored. A missing key keeps
        :data:`DEFAULT_POLICY`'s value; an empty list turns that rule off.
        Raise :class:`InputError` naming the field (``caps[1].window``) on bad input.
        """
        if not isinstance(settings, Mapping):
            raise InputError("settings: must be an object")
        caps = DEFAULT_POLICY.caps
        if "caps" in settings:
            caps = tuple(_cap(item, f"caps[{i}]") for i, item in enumerate(_list(settings, "caps")))
        quiet = DEFAULT_POLICY.quiet_hours
        if "quiet_hours" in settings:
            items = _list(settings, "quiet_hours")
            quiet = tuple(_quiet(item, f"quiet_hours[{i}]") for i, item in enumerate(items))
        tz = settings.get("default_timezone", DEFAULT_POLICY.default_timezone)
        if not isinstance(tz, str) or not _loadable(tz):
            raise InputError(
                f"default_timezone: {tz!r} is not an IANA time zone, e.g. Europe/Moscow"
            )
        control = settings.get("control_group", 0)
        if (
            isinstance(control, bool)
            or not isinstance(control, int | float)
            or not 0 <= control <= 50
        ):
            raise InputError(
                f"control_group: {control!r} must be a percent from 0 to 50 "
                "(customers kept from all marketing to measure it against)"
            )
        return cls(caps=caps, quiet_hours=quiet, default_timezone=tz, control_group=float(control))


#: The seeds' guidance on not wearing customers out, as concrete numbers.
DEFAULT_POLICY = Policy(
    caps=(
        CapRule(limit=1, window=timedelta(days=1), channel="email"),
        CapRule(limit=3, window=timedelta(days=7), channel="email"),
        CapRule(limit=1, window=timedelta(days=2), channel="sms"),
    ),
    quiet_hours=(QuietHours(),),
)


@dataclass(frozen=True)
class Candidate:
    """A message the dispatcher claimed from the outbox, with the customer's address and zone."""

    channel: str
    purpose: str
    category: str
    journey: str
    address: str
    timezone: str | None = None
    cap_exempt: bool = False
    when_capped: Literal["skip", "defer"] = "skip"
    topic: str | None = None  # the customer may opt out of one topic and keep the channel
    customer: str = ""  # stable key (user id) for the workspace control group


@dataclass(frozen=True)
class Decision:
    """What to do: ``reason`` is a stable code, ``detail`` a sentence for people."""

    outcome: Outcome
    reason: str
    not_before: datetime | None = None
    detail: str = ""


SEND = Decision("send", "ok", None, "every delivery rule allows this message now")


def decide(
    candidate: Candidate,
    *,
    consents: Sequence[ConsentRecord],
    suppressions: Sequence[Suppression],
    sent: Sequence[SentRecord],
    policy: Policy,
    now: datetime,
) -> Decision:
    """Apply the rules in order (see module doc) and say send, skip or defer.

    ``when_capped`` other than ``"defer"`` skips. ``now`` and every record
    time must be timezone-aware. ``sent`` should hold
    at least the last :func:`cap_window_start` of this customer's sends; sends
    dated after ``now`` count too. ``not_before`` of a defer is later than
    ``now`` and outside every quiet window that applies.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if candidate.purpose not in PURPOSES:  # fail safe: an unknown purpose gets marketing's rules
        candidate = replace(candidate, purpose=MARKETING)
    transactional = candidate.purpose == TRANSACTIONAL

    blocking = _suppression(candidate, suppressions, consents)
    if blocking is not None:
        what = "every message" if blocking.reason in BLOCKS_EVERYTHING else "marketing"
        return Decision(
            "skip",
            f"suppressed:{blocking.reason}",
            None,
            f"{candidate.channel} address is suppressed ({blocking.reason} at "
            f"{blocking.at.isoformat()}), which blocks {what}",
        )

    if (
        not transactional
        and policy.control_group
        and in_control_group(candidate.customer, policy.control_group)
    ):
        return Decision(
            "skip",
            "control_group",
            None,
            f"the customer is in the workspace control group ({policy.control_group:g}%), "
            "which receives no marketing",
        )

    if not transactional:
        granted, record = consent_state(consents, channel=candidate.channel, purpose=MARKETING)
        if not granted:
            return _no_consent(candidate.channel, record)
        if candidate.topic is not None:
            held, topic_record = consent_state(
                consents, channel=candidate.channel, purpose=MARKETING, topic=candidate.topic
            )
            if not held and topic_record is not None and not topic_record.granted:
                return Decision(
                    "skip",
                    "topic_withdrawn",
                    None,
                    f"the customer opted out of {candidate.topic} on {candidate.channel} at "
                    f"{topic_record.at.isoformat()} ({topic_record.source})",
                )

    tz = zone(candidate.timezone, policy.default_timezone)
    if not transactional and not candidate.cap_exempt:
        capped = _binding_cap(candidate, policy.caps, sent, now)
        if capped is not None:
            rule, release = capped
            reason = f"cap:{rule.label}"
            detail = f"frequency cap {rule.label} reached"
            if candidate.when_capped != "defer":
                return Decision("skip", reason, None, detail)
            not_before = _past_quiet(candidate, policy, tz, release)
            return Decision(
                "defer", reason, not_before, f"{detail}; retry at {not_before.isoformat()}"
            )

    quiet_end = _past_quiet(candidate, policy, tz, now)
    if quiet_end != now:
        return Decision(
            "defer",
            "quiet_hours",
            quiet_end,
            f"quiet hours for {candidate.purpose} {candidate.channel} in {tz.key}; "
            f"retry at {quiet_end.isoformat()}",
        )
    return SEND


def in_control_group(customer: str, percent: float) -> bool:
    """Whether a customer is in the workspace control group: a stable hash, the same every time."""
    if not customer or percent <= 0:
        return False
    digest = hashlib.sha256(f"workspace-control\x1f{customer}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100 < percent


def consent_state(
    consents: Iterable[ConsentRecord], *, channel: str, purpose: str, topic: str | None = None
) -> tuple[bool, ConsentRecord | None]:
    """Whether consent for (channel, purpose, topic) holds, and the record that decides it.

    ``topic=None`` reads the channel-wide records only; a topic reads that
    topic's records only (opting out of one topic keeps the channel).

    The latest counting record wins (ties: the later in ``consents``). Grants
    with ``confirmed=False`` never count, so a pending re-subscription neither
    grants nor revokes. With no counting record the answer is ``(False, r)``
    where ``r`` is the latest pending grant, or ``None`` if there is none; a
    pending grant newer than the latest withdrawal is returned the same way,
    so it can be confirmed.
    """
    latest: ConsentRecord | None = None
    pending: ConsentRecord | None = None
    for record in consents:
        if record.channel != channel or record.purpose != purpose or record.topic != topic:
            continue
        if record.granted and not record.confirmed:
            if pending is None or record.at >= pending.at:
                pending = record
        elif latest is None or record.at >= latest.at:
            latest = record
    if latest is None:
        return False, pending
    if not latest.granted and pending is not None and pending.at >= latest.at:
        return False, pending  # re-subscribing after a withdrawal: awaits confirmation
    return latest.granted, latest


def cap_window_start(rules: Iterable[CapRule]) -> timedelta:
    """The longest cap window: load sends from ``now - this`` (zero when there are no caps)."""
    return max((rule.window for rule in rules), default=timedelta())


def quiet_until(now: datetime, tz: ZoneInfo | str | None, quiet: QuietHours) -> datetime | None:
    """The UTC end of the quiet window ``now`` is in, or ``None`` when ``now`` is not quiet.

    Windows are built from local wall times on the local dates they start and
    end, so a night spanning a DST change is an hour shorter or longer. The
    window is half-open: at the returned instant it is no longer quiet.
    """
    tzinfo = tz if isinstance(tz, ZoneInfo) else zone(tz)
    today = now.astimezone(tzinfo).date()
    wraps = quiet.end <= quiet.start
    for day in (today - timedelta(days=1), today):
        start = local_to_utc(day, quiet.start, tzinfo)
        end = local_to_utc(day + timedelta(days=1) if wraps else day, quiet.end, tzinfo)
        if start <= now < end:
            return end
    return None


# -- rules ----------------------------------------------------------------------


def _suppression(
    candidate: Candidate, suppressions: Iterable[Suppression], consents: Sequence[ConsentRecord]
) -> Suppression | None:
    """The suppression that blocks this message, the most severe if several do."""
    address = _normal_address(candidate.address)
    regrant: ConsentRecord | None = None
    granted, record = consent_state(consents, channel=candidate.channel, purpose=MARKETING)
    if granted:
        regrant = record
    found: list[Suppression] = []
    for s in suppressions:
        if s.channel != candidate.channel or _normal_address(s.address) != address:
            continue
        if s.reason not in BLOCKS_EVERYTHING:
            if candidate.purpose == TRANSACTIONAL:
                continue
            if regrant is not None and regrant.at > s.at:
                continue  # opted in again after unsubscribing
        found.append(s)
    if not found:
        return None
    rank = {r: i for i, r in enumerate(SUPPRESSION_SEVERITY)}
    return min(found, key=lambda s: (rank.get(s.reason, len(rank)), -s.at.timestamp()))


def _no_consent(channel: str, record: ConsentRecord | None) -> Decision:
    if record is None:
        return Decision("skip", "no_consent", None, f"no marketing consent for {channel}")
    if record.granted:  # only a pending double opt-in
        return Decision(
            "skip",
            "consent_unconfirmed",
            None,
            f"{channel} marketing consent from {record.at.isoformat()} awaits confirmation",
        )
    return Decision(
        "skip",
        "consent_withdrawn",
        None,
        f"{channel} marketing consent withdrawn at {record.at.isoformat()} ({record.source})",
    )


def _binding_cap(
    candidate: Candidate, rules: Iterable[CapRule], sent: Sequence[SentRecord], now: datetime
) -> tuple[CapRule, datetime] | None:
    """The violated rule that stays violated longest, and when it stops; ``None`` if none is.

    A rule counts matching sends after ``now - window``. Over the limit, one
    more fits once all but ``limit - 1`` of them have left the window: the send
    at index ``count - limit`` (oldest first) leaves at ``its time + window``.
    With exactly ``limit`` sends that is the oldest.
    """
    worst: tuple[CapRule, datetime] | None = None
    for rule in rules:
        if not rule.matches(candidate.channel, candidate.purpose, candidate.category):
            continue
        since = now - rule.window
        times = sorted(
            s.at for s in sent if s.at > since and rule.matches(s.channel, s.purpose, s.category)
        )
        if len(times) < rule.limit:
            continue
        release = times[len(times) - rule.limit] + rule.window
        if worst is None or release > worst[1]:
            worst = (rule, release)
    return worst


def _past_quiet(candidate: Candidate, policy: Policy, tz: ZoneInfo, at: datetime) -> datetime:
    """The first instant at or after ``at`` outside every quiet window for this message."""
    rules = [q for q in policy.quiet_hours if q.applies_to(candidate.channel, candidate.purpose)]
    for _ in range(_MAX_QUIET_HOPS):
        ends = [end for q in rules if (end := quiet_until(at, tz, q)) is not None]
        if not ends:
            return at
        at = max(ends)
    return at


def _normal_address(address: str) -> str:
    """Addresses compare without surrounding space and case (emails are case-insensitive in practice)."""
    return address.strip().casefold()


# -- settings parsing -------------------------------------------------------------


def _list(settings: Mapping[str, Any], key: str) -> list[Any]:
    value = settings[key]
    if not isinstance(value, list):
        raise InputError(f"{key}: must be a list")
    return value


def _object(item: Any, where: str, allowed: set[str], required: set[str]) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise InputError(f"{where}: must be an object")
    for key in item:
        if key not in allowed:
            raise InputError(f"{where}.{key}: unknown field; expected one of {sorted(allowed)}")
    for key in sorted(required):
        if key not in item:
            raise InputError(f"{where}.{key}: required")
    return item


def _cap(item: Any, where: str) -> CapRule:
    data = _object(
        item, where, {"limit", "window", "channel", "category", "purpose"}, {"limit", "window"}
    )
    limit = data["limit"]
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"{where}.limit: {limit!r} must be a whole number of at least 1")
    try:
        window = parse_duration(data["window"])
    except ValueError as exc:
        raise InputError(f"{where}.window: {exc}") from exc
    channel = _optional_name(data.get("channel"), f"{where}.channel")
    category = data.get("category")
    if category is not None and category not in CATEGORIES:
        raise InputError(f"{where}.category: {category!r} is not one of {sorted(CATEGORIES)}")
    purpose = data.get("purpose", MARKETING)
    if purpose != MARKETING:
        raise InputError(
            f"{where}.purpose: {purpose!r} cannot be capped; only marketing messages are"
        )
    return CapRule(limit=limit, window=window, channel=channel, category=category, purpose=purpose)


def _quiet(item: Any, where: str) -> QuietHours:
    data = _object(item, where, {"start", "end", "channels", "purposes"}, {"start", "end"})
    bounds: dict[str, time] = {}
    for key in ("start", "end"):
        try:
            bounds[key] = parse_time_of_day(data[key])
        except ValueError as exc:
            raise InputError(f"{where}.{key}: {exc}") from exc
    if bounds["start"] == bounds["end"]:
        raise InputError(f"{where}.end: must differ from start")
    channels = _names(data.get("channels", ["sms"]), f"{where}.channels")
    purposes = _names(data.get("purposes", [MARKETING]), f"{where}.purposes")
    if not purposes <= PURPOSES:
        raise InputError(f"{where}.purposes: {sorted(purposes)} must be among {sorted(PURPOSES)}")
    return QuietHours(bounds["start"], bounds["end"], channels, purposes)


def _names(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: must be a non-empty list of names")
    return frozenset(_name(v, where) for v in value)


def _optional_name(value: Any, where: str) -> str | None:
    return None if value is None else _name(value, where)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: {value!r} must be a non-empty name")
    return value


def _loadable(name: str) -> bool:
    return bool(name) and zone(name, "").key == name


__all__ = [
    "DEFAULT_POLICY",
    "CapRule",
    "Candidate",
    "ConsentRecord",
    "Decision",
    "Policy",
    "QuietHours",
    "SentRecord",
    "Suppression",
    "cap_window_start",
    "consent_state",
    "decide",
    "in_control_group",
    "quiet_until",
]
