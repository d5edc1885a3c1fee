"""Replies customers send to the shop's SMS number: an event, and STOP as an unsubscribe.

A provider forwards each reply (see the ``/callbacks/{workspace}/{provider}/inbound``
routes in :mod:`touchline.web.api.callbacks`) as an :class:`InboundSms`.
:func:`record_reply` then, in one transaction:

1. finds the customer by the sender's number: ``profiles.phone`` (E.164) in
   this workspace, skipping merged profiles; of several, the one seen most
   recently. An unknown number stores nothing and answers ``matched: false``;
2. records an ordinary ``SMS Received`` track event for them, properties
   ``text``, ``from``, ``to``, ``provider``, ``provider_id``, with the message id
   ``sms-in:{provider}:{provider message id}``, so a provider's retry is a
   duplicate and journeys can trigger on, wait for or exit on the reply;
3. on a STOP reply (:func:`stop_keyword`, or the provider itself calling it an
   opt-out), withdraws SMS marketing consent with the reply as provenance,
   suppresses the number with reason ``stop_reply``, and counts an
   ``unsubscribed`` on the customer's latest sent SMS.

A retried callback changes nothing: its event is a duplicate, so the rest is
skipped; and for a customer with no id to record an event under, the
unsubscribe itself is idempotent.

START-like replies (``START``, ``СТАРТ``, ``YES``) are stored as events and do
nothing else: a subscription needs provenance of what the customer agreed to
(which wording, where), and a one-word text proves none of it. The customer
subscribes again where the wording is shown (the shop's form through
``identify``, or the preference page).
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from touchline.ingest.segment import IncomingEvent
from touchline.ingest.traits import normalize_phone
from touchline.measure.engagement import record_message_event
from touchline.measure.rollups import bump_message
from touchline.store.consent import Provenance, suppress, unsubscribe
from touchline.store.db import run_in_transaction
from touchline.store.ingest import ingest_events
from touchline.store.tables import identities, outbox, profiles

log = logging.getLogger("touchline.replies")

#: The event every reply becomes.
SMS_RECEIVED = "SMS Received"
#: Whole replies (see :func:`reply_keyword`) that withdraw SMS marketing consent.
#:
#: The English words are the opt-out keywords US carriers and Twilio already
#: honour (Twilio refuses further sends after them), so the ledger agrees with
#: what the carrier does. Russian has no such carrier list, so only words that
#: can mean nothing but "unsubscribe" are in. Left out on purpose: ``НЕТ`` (the
#: answer to any question a message asks), ``ОТМЕНА`` / ``ОТМЕНИТЬ`` (what
#: customers write to cancel an order or a booking), ``ХВАТИТ``, and anything
#: where the word is only part of the reply ("stop sending me the wrong size").
STOP_WORDS = frozenset(
    {
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "OPTOUT",
        "REVOKE",
        "СТОП",
        "ОТПИСАТЬСЯ",
        "ОТПИСКА",
        "ОТПИШИТЕ",
    }
)
#: Longest id a provider may give a reply: the event's message id (200) holds a prefix too.
MAX_PROVIDER_ID = 160
#: How much of a reply that is not a listed word (a provider's own opt-out) names the source.
MAX_QUOTED = 40
#: The consent channel STOP replies withdraw.
SMS = "sms"


@dataclass(frozen=True)
class InboundSms:
    """One reply as a provider forwarded it.

    ``sender`` is the customer's number as the provider wrote it (E.164, or
    bare digits); ``recipient`` the shop's number or sender name, if given.
    ``opt_out`` is True when the provider itself classified the reply as an
    opt-out (Twilio's ``OptOutType=STOP``), whatever the words.
    """

    provider_id: str
    sender: str
    recipient: str | None
    text: str
    opt_out: bool = False


def reply_keyword(text: str) -> str:
    """``text`` reduced for comparison with keywords: letters and digits only, upper case.

    Spaces, punctuation and emoji go, so ``" Stop! "``, ``"«СТОП»"`` and
    ``"stop all"`` compare as ``STOP``, ``СТОП`` and ``STOPALL``.
    """
    folded = unicodedata.normalize("NFKC", text).upper()
    return "".join(ch for ch in folded if ch.isalnum())


def stop_keyword(text: str) -> str | None:
    """The :data:`STOP_WORDS` entry the whole reply is, or None.

    Only a reply that is nothing but the keyword counts: "please stop by the
    shop" or "Стоп, я перепутал размер" stay ordinary replies.
    """
    keyword = reply_keyword(text)
    return keyword if keyword in STOP_WORDS else None


def sender_number(raw: str, *, region: str) -> str | None:
    """The customer's number in E.164, or None when it is not a valid phone number.

    ``region`` reads national forms (``8 916 ...`` in ``RU``); bare digits that
    make no number there are read as international without the ``+``, as
    gateways such as SMS Aero write them.
    """
    number, valid = normalize_phone(raw, region=region)
    if valid:
        return number
    digits = raw.strip()
    if digits.isdigit():
        number, valid = normalize_phone("+" + digits, region=region)
        if valid:
            return number
    return None


def event_message_id(provider: str, provider_id: str) -> str:
    """The deterministic message id of a reply's event: a retry of it is a duplicate."""
    return f"sms-in:{provider}:{provider_id}"


def record_reply(
    engine: Engine,
    workspace_id: str,
    *,
    provider: str,
    sms: InboundSms,
    region: str,
    now: datetime,
) -> dict[str, Any]:
    """Store a reply for its customer, and act on STOP (see the module docstring).

    Answers ``{"matched": false}`` for a number no customer of the workspace
    has, else ``{"matched": true, "duplicate", "stop", "unsubscribed"}``:
    ``duplicate`` when the reply was recorded before, ``stop`` when it is an
    opt-out, ``unsubscribed`` when this reply unsubscribed a customer who was
    not unsubscribed from SMS before.
    """
    number = sender_number(sms.sender, region=region)
    if number is None:
        log.warning(
            "%s reply %s for workspace %s: the sender is not a phone number",
            provider,
            sms.provider_id,
            workspace_id,
        )
        return {"matched": False}
    result = run_in_transaction(
        engine,
        lambda conn: _record(
            conn, workspace_id, provider=provider, sms=sms, number=number, now=now
        ),
    )
    if not result["matched"]:
        log.warning(
            "%s reply %s for workspace %s: no customer has the number %s",
            provider,
            sms.provider_id,
            workspace_id,
            masked_number(number),
        )
    return result


def masked_number(number: str) -> str:
    """A number as logs show it: enough to recognise, not enough to call."""
    return number[:4] + "…" + number[-2:] if len(number) > 8 else "…"


def _record(
    conn: Connection,
    workspace_id: str,
    *,
    provider: str,
    sms: InboundSms,
    number: str,
    now: datetime,
) -> dict[str, Any]:
    customer = conn.execute(
        select(profiles.c.id, profiles.c.user_id)
        .where(
            profiles.c.workspace_id == workspace_id,
            profiles.c.phone == number,
            profiles.c.merged_into.is_(None),
        )
        .order_by(profiles.c.last_seen_at.desc().nulls_last(), profiles.c.id.desc())
        .limit(1)
    ).first()
    if customer is None:
        return {"matched": False}
    keyword = stop_keyword(sms.text)
    stop = keyword is not None or sms.opt_out
    event = _event(conn, workspace_id, customer, provider=provider, sms=sms, number=number, now=now)
    if event is not None and ingest_events(conn, workspace_id, [event], now=now).accepted == 0:
        return {"matched": True, "duplicate": True, "stop": stop, "unsubscribed": False}
    unsubscribed = False
    if stop:
        said = keyword or sms.text.strip()[:MAX_QUOTED] or "opt-out"
        source = f"SMS reply {said} ({provider} message {sms.provider_id})"
        unsubscribed = _stop(conn, workspace_id, customer.id, number=number, source=source, now=now)
    return {"matched": True, "duplicate": False, "stop": stop, "unsubscribed": unsubscribed}


def _event(
    conn: Connection,
    workspace_id: str,
    customer: Any,
    *,
    provider: str,
    sms: InboundSms,
    number: str,
    now: datetime,
) -> IncomingEvent | None:
    """The reply as a track event under the customer's user id (else an anonymous id).

    None, and logged, for a customer with neither: an event needs an id.
    """
    anonymous_id = None
    if customer.user_id is None:
        anonymous_id = conn.execute(
            select(identities.c.value)
            .where(
                identities.c.workspace_id == workspace_id,
                identities.c.profile_id == customer.id,
                identities.c.kind == "anonymous_id",
            )
            .order_by(identities.c.value)
            .limit(1)
        ).scalar_one_or_none()
        if anonymous_id is None:
            log.warning(
                "reply %s: its customer has no id to record an event under", sms.provider_id
            )
            return None
    return IncomingEvent(
        type="track",
        message_id=event_message_id(provider, sms.provider_id),
        user_id=customer.user_id,
        anonymous_id=anonymous_id,
        name=SMS_RECEIVED,
        properties={
            "text": sms.text,
            "from": number,
            "to": sms.recipient,
            "provider": provider,
            "provider_id": sms.provider_id,
        },
        traits=None,
        context={},
        timestamp=now,
        sent_at=None,
        received_at=now,
    )


def _stop(
    conn: Connection, workspace_id: str, profile_id: int, *, number: str, source: str, now: datetime
) -> bool:
    """Withdraw SMS marketing consent and suppress the number; True if not withdrawn before."""
    changed = unsubscribe(
        conn,
        workspace_id=workspace_id,
        profile_id=profile_id,
        channel=SMS,
        address=number,
        at=now,
        provenance=Provenance(source=source),
    )
    suppress(
        conn,
        workspace_id=workspace_id,
        channel=SMS,
        address=number,
        reason="stop_reply",
        at=now,
        profile_id=profile_id,
        detail=source,
    )
    if not changed:
        return False
    latest = conn.execute(
        select(outbox.c.id)
        .where(
            outbox.c.workspace_id == workspace_id,
            outbox.c.profile_id == profile_id,
            outbox.c.channel == SMS,
            outbox.c.status == "sent",
        )
        .order_by(outbox.c.sent_at.desc().nulls_last(), outbox.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if latest is not None and record_message_event(
        conn,
        workspace_id=workspace_id,
        outbox_id=latest,
        kind="unsubscribed",
        at=now,
        detail=source,
    ):
        bump_message(conn, latest, at=now, unsubscribed=1)
    return True


__all__ = [
    "MAX_PROVIDER_ID",
    "SMS_RECEIVED",
    "STOP_WORDS",
    "InboundSms",
    "event_message_id",
    "masked_number",
    "record_reply",
    "reply_keyword",
    "sender_number",
    "stop_keyword",
]
