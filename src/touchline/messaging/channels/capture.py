"""A channel that keeps messages instead of sending them.

Used for previews, dry runs and tests: the rendered message is appended to
:attr:`CaptureChannel.messages` and handed to ``sink`` (the dispatcher passes
a database writer so captured messages show up in the UI).
"""

from __future__ import annotations

from collections.abc import Callable

from touchline.messaging.channels.base import OutgoingMessage, SendResult


class CaptureChannel:
    """Store messages in memory (and in ``sink``, if given); never deliver them."""

    name = "capture"

    def __init__(self, sink: Callable[[OutgoingMessage], None] | None = None) -> None:
        self.messages: list[OutgoingMessage] = []
        self._sink = sink

    async def send(self, message: OutgoingMessage) -> SendResult:
        # The sink runs first: if it fails, the message is not recorded as sent.
        if self._sink is not None:
            self._sink(message)
        self.messages.append(message)
        return SendResult(provider_id=f"capture:{message.idempotency_key}", status="delivered")

    async def aclose(self) -> None:
        """Nothing to release."""
