"""An SMTP server on loopback that keeps every message it accepts, for tests that mail."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiosmtpd.controller import Controller


class Sink:
    """An aiosmtpd handler keeping every message it accepts; ``up = False`` refuses with 421."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.up = True
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if not self.up:
            return "421 4.3.2 service not available, try later"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    def received(self) -> int:
        with self.lock:
            return len(self.messages)

    def snapshot(self) -> list[email.message.EmailMessage]:
        with self.lock:
            return list(self.messages)


@contextmanager
def running_sink() -> Iterator[tuple[Sink, int]]:
    """A started sink and its port, stopped on exit."""
    handler = Sink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()
