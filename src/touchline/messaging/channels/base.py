"""The channel protocol every delivery adapter implements.

A channel takes one rendered :class:`OutgoingMessage` and either returns a
:class:`SendResult` (the provider accepted it) or raises
:class:`~touchline.errors.TransientDeliveryError` (worth retrying: timeouts,
SMTP 4xx, provider 5xx) or :class:`~touchline.errors.PermanentDeliveryError`
(never worth retrying: SMTP 5xx, invalid number). Vendor exceptions are
translated inside the adapter; nothing else leaks out.

Every message carries its ``idempotency_key``; adapters pass it to providers
that accept one (an HTTP header, the SMTP Message-ID) so a resend after a
crash can be dropped by the receiver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered message, ready for one channel."""

    idempotency_key: str
    channel: str
    to: str  # email address, E.164 number, chat id, or URL, by channel
    text: str
    subject: str | None = None
    html: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    """What the provider said when it took the message."""

    provider_id: str | None
    status: str = "accepted"  # accepted | queued | delivered
    detail: Mapping[str, Any] = field(default_factory=dict)


class Channel(Protocol):
    """One way of delivering messages."""

    name: str

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Deliver ``message`` or raise a Transient/PermanentDeliveryError."""
        ...

    async def aclose(self) -> None:
        """Release connections and clients."""
        ...
