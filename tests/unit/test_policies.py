"""Unit tests for the delivery rules the dispatcher asks before sending (touchline.messaging.policies)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from touchline.errors import InputError
from touchline.messaging.policies import (
    DEFAULT_POLICY,
    Candidate,
    CapRule,
    ConsentRecord,
    Policy,
    QuietHours,
    SentRecord,
    Suppression,
    cap_window_start,
    consent_state,
    decide,
    quiet_until,
)

NOW = datetime(2025, 6, 10, 12, 0, tzinfo=UTC)  # 15:00 in Moscow, 22:00 in Vladivostok
LONG_AGO = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
NO_CAPS_NO_QUIET = Policy()
EMAIL_DAILY = Policy(caps=(CapRule(limit=1, window=timedelta(days=1), channel="email"),))


def _candidate(**overrides: Any) -> Candidate:
    fields: dict[str, Any] = {
        "channel": "email",
        "purpose": "marketing",
        "category": "selling",
        "journey": "abandoned-cart",
        "address": "anna@example.com",
        "timezone": "Europe/Moscow",
    }
    fields.update(overrides)
    return Candidate(**fields)


def _consent(
    channel: str = "email", *, at: datetime = LONG_AGO, granted: bool = True, confirmed: bool = True
) -> ConsentRecord:
    return ConsentRecord(
        channel=channel,
        purpose="marketing",
        granted=granted,
        at=at,
        source="signup-form",
        text_version="v1",
        ip=None,
        user_agent=None,
        confirmed=confirmed,
    )


def _sent(
    at: datetime, channel: str = "email", *, category: str = "selling", purpose: str = "marketing"
) -> SentRecord:
    return SentRecord(channel=channel, purpose=purpose, category=category, journey="j", at=at)


def _decide(
    candidate: Candidate,
    *,
    consents: list[ConsentRecord] | None = None,
    suppressions: list[Suppression] | None = None,
    sent: list[SentRecord] | None = None,
    policy: Policy = NO_CAPS_NO_QUIET,
    now: datetime = NOW,
):
    if consents is None:
        consents = [_consent(candidate.channel)]
    return decide(
        candidate,
        consents=consents,
        suppressions=suppressions or [],
        sent=sent or [],
        policy=policy,
        now=now,
    )


def _suppressed(reason: str, channel: str = "email", address: str = "anna@example.com"):
    return Suppression(channel=channel, address=address, reason=reason, at=LONG_AGO)  # type: ignore[arg-type]


# -- happy path -----------------------------------------------------------------------


def test_a_consented_uncapped_message_in_daytime_is_sent() -> None:
    """With consent, no suppression, no sends and no quiet hours the answer is send/ok."""
    # given
    candidate = _candidate()

    # when
    decision = _decide(candidate, policy=DEFAULT_POLICY)

    # then
    assert (decision.outcome, decision.reason, decision.not_before) == ("send", "ok", None)


# -- suppression ----------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["marketing", "transactional"])
@pytest.mark.parametrize("reason", ["hard_bounce", "complaint"])
def test_hard_bounce_and_complaint_block_every_purpose(reason: str, purpose: str) -> None:
    """A hard bounce or complaint stops even transactional messages to that address."""
    # given
    candidate = _candidate(purpose=purpose, category="transactional")

    # when
    decision = _decide(candidate, suppressions=[_suppressed(reason)])

    # then
    assert (decision.outcome, decision.reason) == ("skip", f"suppressed:{reason}")


@pytest.mark.parametrize(
    ("reason", "channel"), [("unsubscribe", "email"), ("stop_reply", "sms")], ids=["unsub", "stop"]
)
def test_unsubscribe_and_stop_block_marketing(reason: str, channel: str) -> None:
    """An unsubscribe or STOP reply stops marketing on that channel, consent ledger or not."""
    # given
    candidate = _candidate(channel=channel, address="+79991234567")
    suppression = _suppressed(reason, channel, "+79991234567")

    # when
    decision = _decide(candidate, suppressions=[suppression])

    # then
    assert (decision.outcome, decision.reason) == ("skip", f"suppressed:{reason}")


@pytest.mark.parametrize("reason", ["unsubscribe", "stop_reply"])
def test_unsubscribe_and_stop_let_transactional_through(reason: str) -> None:
    """An order confirmation still reaches a customer who unsubscribed from marketing."""
    # given
    candidate = _candidate(purpose="transactional", category="transactional")

    # when
    decision = _decide(candidate, consents=[], suppressions=[_suppressed(reason)])

    # then
    assert decision.outcome == "send"


def test_a_suppression_on_another_channel_or_address_does_not_block() -> None:
    """Suppressions match on channel and address both."""
    # given
    suppressions = [
        _suppressed("hard_bounce", channel="sms"),
        _suppressed("hard_bounce", address="other@example.com"),
    ]

    # when
    decision = _decide(_candidate(), suppressions=suppressions)

    # then
    assert decision.outcome == "send"


def test_addresses_match_ignoring_case_and_surrounding_space() -> None:
    """A bounce recorded for ANNA@Example.com blocks anna@example.com."""
    # given
    suppression = _suppressed("hard_bounce", address=" ANNA@Example.com ")

    # when
    decision = _decide(_candidate(), suppressions=[suppression])

    # then
    assert decision.reason == "suppressed:hard_bounce"


@pytest.mark.parametrize(("reason", "outcome"), [("unsubscribe", "send"), ("hard_bounce", "skip")])
def test_a_later_confirmed_grant_lifts_an_unsubscribe_but_not_a_bounce(
    reason: str, outcome: str
) -> None:
    """Opting in again after an unsubscribe counts; a bounced address stays blocked."""
    # given
    regrant = _consent(at=datetime(2025, 3, 1, 9, 0, tzinfo=UTC))

    # when
    decision = _decide(_candidate(), consents=[regrant], suppressions=[_suppressed(reason)])

    # then
    assert decision.outcome == outcome


def test_the_most_severe_of_several_suppressions_is_named() -> None:
    """When an unsubscribe and a hard bounce both match, the decision names the bounce."""
    # given
    suppressions = [_suppressed("unsubscribe"), _suppressed("hard_bounce")]

    # when
    decision = _decide(_candidate(), suppressions=suppressions)

    # then
    assert decision.reason == "suppressed:hard_bounce"


# -- consent --------------------------------------------------------------------------


def test_marketing_without_any_consent_is_skipped() -> None:
    """No ledger record for (channel, marketing) means no consent."""
    # given / when
    decision = _decide(_candidate(), consents=[])

    # then
    assert (decision.outcome, decision.reason) == ("skip", "no_consent")


def test_consent_for_another_channel_does_not_count() -> None:
    """An email grant does not allow marketing SMS."""
    # given / when
    decision = _decide(_candidate(channel="sms"), consents=[_consent("email")])

    # then
    assert decision.reason == "no_consent"


def test_consent_withdrawn_after_it_was_granted_is_skipped() -> None:
    """The latest ledger record wins: a withdrawal after a grant stops marketing."""
    # given
    consents = [
        _consent(at=datetime(2025, 2, 1, 10, 0, tzinfo=UTC)),
        _consent(at=datetime(2025, 5, 1, 10, 0, tzinfo=UTC), granted=False),
    ]

    # when
    decision = _decide(_candidate(), consents=consents)

    # then
    assert (decision.outcome, decision.reason) == ("skip", "consent_withdrawn")


def test_the_ledger_order_does_not_matter_only_the_times() -> None:
    """A grant listed last but dated before the withdrawal does not win."""
    # given
    consents = [
        _consent(at=datetime(2025, 5, 1, 10, 0, tzinfo=UTC), granted=False),
        _consent(at=datetime(2025, 2, 1, 10, 0, tzinfo=UTC)),
    ]

    # when
    granted, record = consent_state(consents, channel="email", purpose="marketing")

    # then
    assert (granted, record) == (False, consents[0])


def test_a_grant_after_a_withdrawal_restores_consent() -> None:
    """Re-subscribing after withdrawing allows marketing again."""
    # given
    consents = [
        _consent(at=datetime(2025, 2, 1, 10, 0, tzinfo=UTC), granted=False),
        _consent(at=datetime(2025, 5, 1, 10, 0, tzinfo=UTC)),
    ]

    # when
    decision = _decide(_candidate(), consents=consents)

    # then
    assert decision.outcome == "send"


def test_an_unconfirmed_email_grant_is_not_consent() -> None:
    """Double opt-in: a grant awaiting confirmation does not allow marketing."""
    # given
    pending = _consent(confirmed=False)

    # when
    decision = _decide(_candidate(), consents=[pending])

    # then
    assert (decision.outcome, decision.reason) == ("skip", "consent_unconfirmed")


def test_the_confirmed_grant_after_a_pending_one_is_consent() -> None:
    """Once the confirmation link is clicked the ledger's confirmed grant allows marketing."""
    # given
    consents = [
        _consent(at=datetime(2025, 5, 1, 10, 0, tzinfo=UTC), confirmed=False),
        _consent(at=datetime(2025, 5, 1, 10, 5, tzinfo=UTC)),
    ]

    # when
    decision = _decide(_candidate(), consents=consents)

    # then
    assert decision.outcome == "send"


def test_a_pending_grant_does_not_revoke_an_earlier_confirmed_one() -> None:
    """Filling in the signup form again while subscribed keeps the existing consent."""
    # given
    consents = [
        _consent(at=datetime(2025, 2, 1, 10, 0, tzinfo=UTC)),
        _consent(at=datetime(2025, 5, 1, 10, 0, tzinfo=UTC), confirmed=False),
    ]

    # when
    granted, record = consent_state(consents, channel="email", purpose="marketing")

    # then
    assert (granted, record) == (True, consents[0])


def test_transactional_messages_need_no_consent() -> None:
    """An order confirmation goes out with an empty consent ledger."""
    # given
    candidate = _candidate(purpose="transactional", category="transactional")

    # when
    decision = _decide(candidate, consents=[])

    # then
    assert decision.outcome == "send"


# -- frequency caps -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ago", "outcome"),
    [(timedelta(hours=23), "skip"), (timedelta(days=1), "send"), (timedelta(hours=25), "send")],
    ids=["inside", "exactly-window", "outside"],
)
def test_one_marketing_email_per_day(ago: timedelta, outcome: str) -> None:
    """A send inside the last day blocks the next; one exactly a day old has left the window."""
    # given
    sent = [_sent(NOW - ago)]

    # when
    decision = _decide(_candidate(), sent=sent, policy=EMAIL_DAILY)

    # then
    assert decision.outcome == outcome
    if outcome == "skip":
        assert decision.reason == "cap:marketing email 1/1d"


def test_three_marketing_emails_per_week_is_the_default() -> None:
    """Three emails in the last seven days (none today) stop a fourth under the default policy."""
    # given
    sent = [_sent(NOW - timedelta(days=d)) for d in (2, 4, 6)]

    # when
    decision = _decide(_candidate(), sent=sent, policy=DEFAULT_POLICY)

    # then
    assert (decision.outcome, decision.reason) == ("skip", "cap:marketing email 3/7d")


def test_a_per_channel_cap_counts_only_that_channel() -> None:
    """An SMS yesterday does not count against the email cap."""
    # given
    sent = [_sent(NOW - timedelta(hours=2), "sms")]

    # when
    decision = _decide(_candidate(), sent=sent, policy=DEFAULT_POLICY)

    # then
    assert decision.outcome == "send"


def test_an_all_channel_cap_counts_every_channel() -> None:
    """A rule without a channel counts email and SMS together."""
    # given
    policy = Policy(caps=(CapRule(limit=2, window=timedelta(days=1)),))
    sent = [_sent(NOW - timedelta(hours=1), "sms"), _sent(NOW - timedelta(hours=2), "push")]

    # when
    decision = _decide(_candidate(), sent=sent, policy=policy)

    # then
    assert (decision.outcome, decision.reason) == ("skip", "cap:marketing any channel 2/1d")


def test_a_per_category_cap_counts_and_applies_to_that_category_only() -> None:
    """A cap on selling emails ignores engaging sends and does not stop engaging messages."""
    # given
    policy = Policy(caps=(CapRule(limit=1, window=timedelta(days=1), category="selling"),))
    sent = [_sent(NOW - timedelta(hours=1), category="selling")]

    # when
    selling = _decide(_candidate(category="selling"), sent=sent, policy=policy)
    engaging = _decide(_candidate(category="engaging"), sent=sent, policy=policy)
    after_engaging = _decide(
        _candidate(category="selling"),
        sent=[_sent(NOW - timedelta(hours=1), category="engaging")],
        policy=policy,
    )

    # then
    assert selling.reason == "cap:marketing any channel selling 1/1d"
    assert engaging.outcome == "send"
    assert after_engaging.outcome == "send"


def test_transactional_sends_do_not_count_against_marketing_caps() -> None:
    """A receipt sent an hour ago leaves room for today's marketing email."""
    # given
    sent = [_sent(NOW - timedelta(hours=1), purpose="transactional", category="transactional")]

    # when
    decision = _decide(_candidate(), sent=sent, policy=EMAIL_DAILY)

    # then
    assert decision.outcome == "send"


def test_transactional_messages_ignore_caps() -> None:
    """A password reset goes out however many emails were sent today."""
    # given
    candidate = _candidate(purpose="transactional", category="transactional")
    sent = [_sent(NOW - timedelta(hours=h)) for h in (1, 2, 3)]

    # when
    decision = _decide(candidate, consents=[], sent=sent, policy=DEFAULT_POLICY)

    # then
    assert decision.outcome == "send"


def test_a_cap_exempt_message_ignores_caps_but_not_consent() -> None:
    """cap_exempt skips the frequency caps only."""
    # given
    candidate = _candidate(cap_exempt=True)
    sent = [_sent(NOW - timedelta(hours=1))]

    # when
    exempt = _decide(candidate, sent=sent, policy=EMAIL_DAILY)
    without_consent = _decide(candidate, consents=[], sent=sent, policy=EMAIL_DAILY)

    # then
    assert exempt.outcome == "send"
    assert without_consent.reason == "no_consent"


def test_capped_with_defer_waits_until_the_oldest_send_leaves_the_window() -> None:
    """when_capped=defer defers to the counted send's time plus the window."""
    # given
    sent_at = datetime(2025, 6, 10, 8, 30, tzinfo=UTC)

    # when
    decision = _decide(_candidate(when_capped="defer"), sent=[_sent(sent_at)], policy=EMAIL_DAILY)

    # then
    assert decision.outcome == "defer"
    assert decision.reason == "cap:marketing email 1/1d"
    assert decision.not_before == datetime(2025, 6, 11, 8, 30, tzinfo=UTC)


def test_capped_with_skip_is_skipped_without_a_retry_time() -> None:
    """when_capped=skip (the default) drops the message."""
    # given / when
    decision = _decide(_candidate(), sent=[_sent(NOW - timedelta(hours=1))], policy=EMAIL_DAILY)

    # then
    assert (decision.outcome, decision.not_before) == ("skip", None)


def test_several_violated_caps_defer_to_the_latest_release() -> None:
    """Over both the daily and weekly caps, the message waits for the weekly one."""
    # given
    sent = [
        _sent(datetime(2025, 6, 4, 10, 0, tzinfo=UTC)),
        _sent(datetime(2025, 6, 7, 10, 0, tzinfo=UTC)),
        _sent(datetime(2025, 6, 10, 9, 0, tzinfo=UTC)),
    ]

    # when
    decision = _decide(_candidate(when_capped="defer"), sent=sent, policy=DEFAULT_POLICY)

    # then
    assert decision.reason == "cap:marketing email 3/7d"
    assert decision.not_before == datetime(2025, 6, 11, 10, 0, tzinfo=UTC)


def test_well_over_a_cap_waits_until_enough_sends_have_left() -> None:
    """With four sends against a limit of two, the second-newest send's exit frees a slot."""
    # given
    policy = Policy(caps=(CapRule(limit=2, window=timedelta(days=7), channel="email"),))
    sent = [_sent(datetime(2025, 6, d, 10, 0, tzinfo=UTC)) for d in (4, 5, 6, 7)]

    # when
    decision = _decide(_candidate(when_capped="defer"), sent=sent, policy=policy)

    # then
    assert decision.not_before == datetime(2025, 6, 13, 10, 0, tzinfo=UTC)


def test_a_cap_deferral_landing_in_quiet_hours_moves_to_their_end() -> None:
    """An SMS freed at 23:00 Moscow time waits for the 09:00 end of quiet hours."""
    # given
    candidate = _candidate(channel="sms", address="+79991234567", when_capped="defer")
    sent = [_sent(datetime(2025, 6, 8, 20, 0, tzinfo=UTC), "sms")]  # frees 2025-06-10 23:00 MSK

    # when
    decision = _decide(candidate, sent=sent, policy=DEFAULT_POLICY)

    # then
    assert decision.reason == "cap:marketing sms 1/2d"
    assert decision.not_before == datetime(2025, 6, 11, 6, 0, tzinfo=UTC)


def test_cap_window_start_is_the_longest_window() -> None:
    """The dispatcher loads sends back to the longest window, or none without caps."""
    # given / when / then
    assert cap_window_start(DEFAULT_POLICY.caps) == timedelta(days=7)
    assert cap_window_start(()) == timedelta()


# -- quiet hours ----------------------------------------------------------------------


def test_the_same_instant_is_quiet_in_vladivostok_but_not_in_moscow() -> None:
    """15:00 in Moscow sends; 22:00 in Vladivostok waits until 09:00 there."""
    # given
    moscow = _candidate(channel="sms", timezone="Europe/Moscow")
    vladivostok = _candidate(channel="sms", timezone="Asia/Vladivostok")

    # when
    in_moscow = _decide(moscow, policy=DEFAULT_POLICY)
    in_vladivostok = _decide(vladivostok, policy=DEFAULT_POLICY)

    # then
    assert in_moscow.outcome == "send"
    assert (in_vladivostok.outcome, in_vladivostok.reason) == ("defer", "quiet_hours")
    assert in_vladivostok.not_before == datetime(2025, 6, 10, 23, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "until"),
    [
        (datetime(2025, 6, 10, 18, 0, tzinfo=UTC), datetime(2025, 6, 11, 6, 0, tzinfo=UTC)),
        (datetime(2025, 6, 10, 21, 30, tzinfo=UTC), datetime(2025, 6, 11, 6, 0, tzinfo=UTC)),
        (datetime(2025, 6, 11, 2, 0, tzinfo=UTC), datetime(2025, 6, 11, 6, 0, tzinfo=UTC)),
        (datetime(2025, 6, 11, 6, 0, tzinfo=UTC), None),
        (datetime(2025, 6, 10, 17, 59, tzinfo=UTC), None),
    ],
    ids=["at-start", "before-midnight", "after-midnight", "at-end", "just-before-start"],
)
def test_quiet_hours_wrap_midnight(now: datetime, until: datetime | None) -> None:
    """21:00-09:00 Moscow is quiet from 21:00 inclusive to 09:00 exclusive across midnight."""
    # given
    quiet = QuietHours(start=time(21, 0), end=time(9, 0))

    # when / then
    assert quiet_until(now, "Europe/Moscow", quiet) == until


def test_a_window_not_wrapping_midnight_is_quiet_only_inside() -> None:
    """A 13:00-15:00 siesta window is quiet at 14:00 and not at 16:00."""
    # given
    quiet = QuietHours(start=time(13, 0), end=time(15, 0))

    # when
    inside = quiet_until(datetime(2025, 6, 10, 11, 0, tzinfo=UTC), "Europe/Moscow", quiet)
    outside = quiet_until(datetime(2025, 6, 10, 13, 0, tzinfo=UTC), "Europe/Moscow", quiet)

    # then
    assert inside == datetime(2025, 6, 10, 12, 0, tzinfo=UTC)
    assert outside is None


@pytest.mark.parametrize(
    ("tz", "now", "until"),
    [
        # Berlin springs forward 2025-03-30 02:00 CET: the night is an hour shorter.
        (
            "Europe/Berlin",
            datetime(2025, 3, 29, 23, 0, tzinfo=UTC),
            datetime(2025, 3, 30, 7, 0, tzinfo=UTC),
        ),
        # Berlin falls back 2025-10-26 03:00 CEST: 08:30 CET is still quiet.
        (
            "Europe/Berlin",
            datetime(2025, 10, 26, 7, 30, tzinfo=UTC),
            datetime(2025, 10, 26, 8, 0, tzinfo=UTC),
        ),
        # New York springs forward 2025-03-09 02:00 EST.
        (
            "America/New_York",
            datetime(2025, 3, 9, 2, 0, tzinfo=UTC),
            datetime(2025, 3, 9, 13, 0, tzinfo=UTC),
        ),
        # New York falls back 2025-11-02 02:00 EDT: 08:30 EST is still quiet.
        (
            "America/New_York",
            datetime(2025, 11, 2, 13, 30, tzinfo=UTC),
            datetime(2025, 11, 2, 14, 0, tzinfo=UTC),
        ),
    ],
    ids=["berlin-march", "berlin-october", "new-york-march", "new-york-november"],
)
def test_quiet_hours_end_at_local_nine_across_dst(tz: str, now: datetime, until: datetime) -> None:
    """The window ends at 09:00 local on the morning's own offset, not start + 12 hours."""
    # given
    candidate = _candidate(channel="sms", timezone=tz)

    # when
    decision = _decide(candidate, policy=DEFAULT_POLICY, now=now)

    # then
    assert (decision.outcome, decision.not_before) == ("defer", until)


def test_after_the_spring_forward_morning_nine_it_is_no_longer_quiet() -> None:
    """09:30 CEST on the March change day (07:30 UTC) is daytime, although 21:00 + 12h is not yet."""
    # given / when
    until = quiet_until(datetime(2025, 3, 30, 7, 30, tzinfo=UTC), "Europe/Berlin", QuietHours())

    # then
    assert until is None


@pytest.mark.parametrize("timezone", [None, "Mars/Olympus_Mons"], ids=["none", "unknown"])
def test_a_customer_without_a_usable_timezone_uses_the_default(timezone: str | None) -> None:
    """With no (or an unknown) zone the policy's default zone decides quiet hours."""
    # given
    policy = Policy(quiet_hours=(QuietHours(),), default_timezone="Asia/Vladivostok")
    candidate = _candidate(channel="sms", timezone=timezone)

    # when
    decision = _decide(candidate, policy=policy)

    # then
    assert decision.not_before == datetime(2025, 6, 10, 23, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("channel", "purpose"), [("email", "marketing"), ("sms", "transactional")], ids=["email", "otp"]
)
def test_default_quiet_hours_cover_only_marketing_sms(channel: str, purpose: str) -> None:
    """Marketing email and transactional SMS are not held back at night by default."""
    # given
    candidate = _candidate(channel=channel, purpose=purpose, timezone="Asia/Vladivostok")

    # when
    decision = _decide(candidate, policy=DEFAULT_POLICY)

    # then
    assert decision.outcome == "send"


def test_a_quiet_deferral_rechecked_at_its_time_is_sent() -> None:
    """Deciding again at not_before with the same facts sends."""
    # given
    candidate = _candidate(channel="sms", timezone="Asia/Vladivostok")
    first = _decide(candidate, policy=DEFAULT_POLICY)
    assert first.not_before is not None

    # when
    again = _decide(candidate, policy=DEFAULT_POLICY, now=first.not_before)

    # then
    assert again.outcome == "send"


# -- order of rules -------------------------------------------------------------------


def test_suppression_is_named_before_missing_consent() -> None:
    """A bounced address without consent is reported as suppressed."""
    # given / when
    decision = _decide(_candidate(), consents=[], suppressions=[_suppressed("hard_bounce")])

    # then
    assert decision.reason == "suppressed:hard_bounce"


def test_missing_consent_is_named_before_a_cap() -> None:
    """A capped message without consent is reported as lacking consent (never deferred)."""
    # given
    candidate = _candidate(when_capped="defer")

    # when
    decision = _decide(
        candidate, consents=[], sent=[_sent(NOW - timedelta(hours=1))], policy=EMAIL_DAILY
    )

    # then
    assert (decision.outcome, decision.reason) == ("skip", "no_consent")


def test_a_skipping_cap_is_named_before_quiet_hours() -> None:
    """A capped SMS at night is skipped, not deferred for quiet hours."""
    # given
    candidate = _candidate(channel="sms", timezone="Asia/Vladivostok")
    sent = [_sent(NOW - timedelta(hours=3), "sms")]

    # when
    decision = _decide(candidate, sent=sent, policy=DEFAULT_POLICY)

    # then
    assert (decision.outcome, decision.reason) == ("skip", "cap:marketing sms 1/2d")


# -- settings -------------------------------------------------------------------------


def test_default_policy_matches_the_documented_numbers() -> None:
    """1 email/day, 3 emails/7 days, 1 SMS/2 days, quiet 21:00-09:00 for marketing SMS."""
    # given / when
    labels = [rule.label for rule in DEFAULT_POLICY.caps]

    # then
    assert labels == ["marketing email 1/1d", "marketing email 3/7d", "marketing sms 1/2d"]
    assert DEFAULT_POLICY.quiet_hours == (
        QuietHours(time(21, 0), time(9, 0), frozenset({"sms"}), frozenset({"marketing"})),
    )


def test_from_settings_reads_caps_quiet_hours_and_zone() -> None:
    """Durations, times, filters and the default zone are read from JSON values."""
    # given
    settings_json = {
        "caps": [{"limit": 2, "window": "1d12h", "channel": "push", "category": "engaging"}],
        "quiet_hours": [
            {
                "start": "22:30",
                "end": "08:00",
                "channels": ["sms", "push"],
                "purposes": ["marketing"],
            }
        ],
        "default_timezone": "Europe/Moscow",
        "branding": {"color": "red"},
    }

    # when
    policy = Policy.from_settings(settings_json)

    # then
    assert policy == Policy(
        caps=(CapRule(2, timedelta(days=1, hours=12), channel="push", category="engaging"),),
        quiet_hours=(QuietHours(time(22, 30), time(8, 0), frozenset({"sms", "push"})),),
        default_timezone="Europe/Moscow",
    )


def test_from_settings_keeps_defaults_for_missing_keys_and_empties_for_empty_lists() -> None:
    """A missing key means the default rules; an empty list turns them off."""
    # given / when
    defaults = Policy.from_settings({})
    no_rules = Policy.from_settings({"caps": [], "quiet_hours": []})

    # then
    assert defaults == DEFAULT_POLICY
    assert (no_rules.caps, no_rules.quiet_hours) == ((), ())


@pytest.mark.parametrize(
    ("settings_json", "field"),
    [
        ({"caps": {"limit": 1}}, "caps:"),
        ({"caps": [{"window": "1d"}]}, "caps[0].limit"),
        ({"caps": [{"limit": 0, "window": "1d"}]}, "caps[0].limit"),
        ({"caps": [{"limit": True, "window": "1d"}]}, "caps[0].limit"),
        ({"caps": [{"limit": 1, "window": "1d"}, {"limit": 1, "window": "7x"}]}, "caps[1].window"),
        ({"caps": [{"limit": 1, "window": "1d", "category": "spam"}]}, "caps[0].category"),
        ({"caps": [{"limit": 1, "window": "1d", "purpose": "transactional"}]}, "caps[0].purpose"),
        ({"caps": [{"limit": 1, "window": "1d", "channel": ""}]}, "caps[0].channel"),
        ({"caps": [{"limit": 1, "window": "1d", "chanel": "sms"}]}, "caps[0].chanel"),
        ({"quiet_hours": [{"start": "25:00", "end": "09:00"}]}, "quiet_hours[0].start"),
        ({"quiet_hours": [{"start": "21:00", "end": "21:00"}]}, "quiet_hours[0].end"),
        ({"quiet_hours": [{"start": "21:00", "end": "9"}]}, "quiet_hours[0].end"),
        (
            {"quiet_hours": [{"start": "21:00", "end": "09:00", "channels": []}]},
            "quiet_hours[0].channels",
        ),
        (
            {"quiet_hours": [{"start": "21:00", "end": "09:00", "purposes": ["promo"]}]},
            "quiet_hours[0].purposes",
        ),
        ({"default_timezone": "Mars/Olympus_Mons"}, "default_timezone"),
        ({"default_timezone": 3}, "default_timezone"),
    ],
)
def test_from_settings_errors_name_the_field(settings_json: dict[str, Any], field: str) -> None:
    """Bad settings raise InputError whose message starts with the offending field."""
    # given / when
    with pytest.raises(InputError) as caught:
        Policy.from_settings(settings_json)

    # then
    assert caught.value.message.startswith(field)


# -- properties -----------------------------------------------------------------------

ZONES = ["Europe/Moscow", "Asia/Vladivostok", "Europe/Berlin", "America/New_York", None]
START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 1, tzinfo=UTC)

cap_rules = st.builds(
    CapRule,
    limit=st.integers(1, 4),
    window=st.integers(1, 10 * 24).map(lambda h: timedelta(hours=h)),
    channel=st.sampled_from([None, "email", "sms"]),
    category=st.sampled_from([None, "engaging", "selling"]),
)
sends = st.builds(
    lambda minutes, channel, category, purpose: (minutes, channel, category, purpose),
    st.integers(-24 * 60, 12 * 24 * 60),  # minutes before now; negative is a clock-skewed future
    st.sampled_from(["email", "sms"]),
    st.sampled_from(["engaging", "selling"]),
    st.sampled_from(["marketing", "marketing", "transactional"]),
)


@settings(max_examples=300, deadline=None)
@given(
    now=st.datetimes(min_value=START.replace(tzinfo=None), max_value=END.replace(tzinfo=None)).map(
        lambda d: d.replace(second=0, microsecond=0, tzinfo=UTC)
    ),
    history=st.lists(sends, max_size=12),
    caps=st.one_of(st.just(DEFAULT_POLICY.caps), st.lists(cap_rules, max_size=4).map(tuple)),
    channel=st.sampled_from(["email", "sms"]),
    category=st.sampled_from(["engaging", "selling"]),
    tz=st.sampled_from(ZONES),
)
def test_a_deferred_message_is_sendable_at_its_not_before(
    now: datetime,
    history: list[tuple[int, str, str, str]],
    caps: tuple[CapRule, ...],
    channel: str,
    category: str,
    tz: str | None,
) -> None:
    """For random histories and times a defer's not_before is later and re-deciding there sends."""
    # given
    policy = Policy(caps=caps, quiet_hours=DEFAULT_POLICY.quiet_hours)
    candidate = _candidate(channel=channel, category=category, timezone=tz, when_capped="defer")
    sent = [
        SentRecord(ch, purpose, cat, "j", now - timedelta(minutes=m))
        for m, ch, cat, purpose in history
    ]

    # when
    first = _decide(candidate, sent=sent, policy=policy, now=now)

    # then
    event(f"{first.outcome}:{first.reason.partition(':')[0]}")
    if first.outcome != "defer":
        return
    assert first.not_before is not None and first.not_before > now
    again = _decide(candidate, sent=sent, policy=policy, now=first.not_before)
    assert again.outcome == "send", (first, again)


def test_an_unknown_purpose_gets_the_marketing_rules() -> None:
    """A purpose that is neither marketing nor transactional needs consent and is capped."""
    # given
    candidate = _candidate(purpose="promo")

    # when
    without_consent = _decide(candidate, consents=[])
    capped = _decide(candidate, sent=[_sent(NOW - timedelta(hours=1))], policy=EMAIL_DAILY)

    # then
    assert without_consent.reason == "no_consent"
    assert capped.reason == "cap:marketing email 1/1d"


def test_a_pending_regrant_after_a_withdrawal_is_what_awaits_confirmation() -> None:
    """Unsubscribed, then subscribed again unconfirmed: not granted, and the pending grant decides."""
    from datetime import UTC, datetime

    from touchline.messaging.policies import ConsentRecord, consent_state

    t = datetime(2026, 3, 1, tzinfo=UTC)
    records = [
        ConsentRecord("email", "marketing", True, t, "signup"),
        ConsentRecord("email", "marketing", False, t.replace(day=2), "one-click"),
        ConsentRecord("email", "marketing", True, t.replace(day=3), "signup", confirmed=False),
    ]
    granted, record = consent_state(records, channel="email", purpose="marketing")
    assert (granted, record) == (False, records[2])


def test_the_workspace_control_group_gets_no_marketing_but_gets_receipts() -> None:
    """control_group: 20 skips marketing for a stable ~20% of customers; transactional still goes."""
    from datetime import UTC, datetime

    from touchline.messaging.policies import (
        Candidate,
        ConsentRecord,
        Policy,
        decide,
        in_control_group,
    )

    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    policy = Policy.from_settings({"control_group": 20, "caps": [], "quiet_hours": []})
    customers = [f"c{i}" for i in range(1000)]
    held = [c for c in customers if in_control_group(c, 20)]
    assert 150 <= len(held) <= 250
    granted = [ConsentRecord("email", "marketing", True, now, "signup")]
    for customer, purpose in ((held[0], "marketing"), (held[0], "transactional")):
        candidate = Candidate("email", purpose, "selling", "j", "a@b.ru", customer=customer)
        outcome = decide(
            candidate, consents=granted, suppressions=[], sent=[], policy=policy, now=now
        )
        assert outcome.reason == ("control_group" if purpose == "marketing" else "ok")
    free = next(c for c in customers if c not in held)
    candidate = Candidate("email", "marketing", "selling", "j", "a@b.ru", customer=free)
    assert (
        decide(
            candidate, consents=granted, suppressions=[], sent=[], policy=policy, now=now
        ).outcome
        == "send"
    )


@pytest.mark.parametrize("value", [-1, 51, "10", True])
def test_control_group_must_be_a_sane_percent(value: object) -> None:
    """A control group outside 0-50% (or not a number) is refused, naming the field."""
    from touchline.errors import InputError
    from touchline.messaging.policies import Policy

    with pytest.raises(InputError, match="control_group"):
        Policy.from_settings({"control_group": value})
