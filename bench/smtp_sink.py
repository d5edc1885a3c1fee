"""The end-to-end benchmark's mail server: an aiosmtpd sink in its own process.

It imports nothing of touchline, so it starts in a fraction of a second and
takes no CPU from the process being measured beyond answering SMTP.
Run as ``python -m bench.smtp_sink PORT``.
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
from typing import Any


class _Collector:
    """aiosmtpd handler: keeps each message's bytes and the time it was accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[bytes] = []
        self.last_at = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            self.messages.append(envelope.content)
            self.last_at = time.monotonic()
        return "250 OK"

    def take(self) -> tuple[list[bytes], float]:
        with self.lock:
            taken = (self.messages, self.last_at)
            self.messages, self.last_at = [], 0.0
        return taken


def serve_sink(port: int) -> None:
    """The sink process: SMTP on ``port``; ``take`` and ``stop`` lines on stdin.

    It writes ``ready`` once listening, and answers ``take`` with the pickled
    (messages, last_at) on stdout, starting again from nothing.
    """
    from aiosmtpd.controller import Controller

    handler = _Collector()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    out = sys.stdout.buffer
    try:
        out.write(b"ready\n")
        out.flush()
        for line in sys.stdin:
            if line.strip() == "stop":
                break
            if line.strip() == "take":
                pickle.dump(handler.take(), out)
                out.flush()
    finally:
        controller.stop()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.smtp_sink PORT  (the end-to-end benchmark's mail server)")
    serve_sink(int(sys.argv[1]))
