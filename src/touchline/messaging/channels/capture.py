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

    def __init__(
        self, sink: Callable[[OutgoingMessage], None] | None = None, *, keep: int | None = None
    ) -> None:
        """``keep`` bounds :attr:`messages` to about the latest ``keep`` (a long-running
        worker's memory stays flat; the rendered message is in the outbox anyway)."""
        self.messages: list[OutgoingMessage] = []
        self._sink = sink
        self._keep = keep

    async def send(self, message: OutgoingMessage) -> SendResult:
        # The sink runs first: if it fails, the message is not recorded as sent.
        if self._sink is not None:
            self._sink(message)
        self.messages.append(message)
        if self._keep is not None and len(self.messages) > 2 * self._keep:
            del self.messages[: -self._keep]
        return SendResult(provider_id=f"capture:{message.idempotency_key}", status="delivered")

    async def aclose(self) -> None:
        """Nothing to release."""
