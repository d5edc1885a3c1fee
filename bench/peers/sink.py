"""The peers' mail server: an aiosmtpd sink that notes who got a message and when.

Every system sends its reminders here, so a send is timed at the same place
for all of them: when the server accepts the message (``250`` after DATA),
by the wall clock (``time.time()``), which is the clock the due times are
set in. Only the recipient and the time are kept, never the message, so
100,000 sends cost a few megabytes. It imports nothing of touchline, Celery
or procrastinate. Run as ``python -m bench.peers.sink PORT``; it answers
``count``, ``recipients`` and ``take`` lines on stdin (one JSON line each) until ``stop``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class _Recorder:
    """aiosmtpd handler: one (accepted at, recipient) pair per recipient of each message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sends: list[tuple[float, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        at = time.time()
        with self.lock:
            self.sends.extend((at, rcpt.lower()) for rcpt in envelope.rcpt_tos)
        return "250 OK"


def serve(port: int) -> None:
    from aiosmtpd.controller import Controller

    recorder = _Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    out = sys.stdout
    try:
        out.write("ready\n")
        out.flush()
        for line in sys.stdin:
            command = line.strip()
            if command == "stop":
                break
            with recorder.lock:
                if command == "count":
                    out.write(json.dumps(len(recorder.sends)) + "\n")
                elif command == "recipients":
                    out.write(json.dumps(sorted({rcpt for _, rcpt in recorder.sends})) + "\n")
                elif command == "take":
                    out.write(json.dumps(recorder.sends) + "\n")
                    recorder.sends = []
            out.flush()
    finally:
        controller.stop()


class Sink:
    """The parent's handle on the sink process."""

    def __init__(self, port: int, process: subprocess.Popen[str], errors: Path) -> None:
        self.port = port
        self._process = process
        self._errors = errors

    def _ask(self, command: str) -> Any:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(command + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the SMTP sink died:\n{self._errors.read_text()}")
        return json.loads(line)

    def count(self) -> int:
        """Messages accepted since the last :meth:`take`."""
        return int(self._ask("count"))

    def recipients(self) -> set[str]:
        """Everyone who got at least one message since the last :meth:`take`."""
        return {str(rcpt) for rcpt in self._ask("recipients")}

    def take(self) -> list[tuple[float, str]]:
        """(accepted at, recipient) of everything since the last take; starts again empty."""
        return [(float(at), str(rcpt)) for at, rcpt in self._ask("take")]


@contextmanager
def sink(folder: Path) -> Iterator[Sink]:
    """A recording SMTP server in its own process on a free local port."""
    from bench.common import free_port  # here: the sink process itself needs none of it

    port = free_port()
    errors = folder / f"peers-sink-{port}.log"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.peers.sink", str(port)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdin is not None and process.stdout is not None
    try:
        if process.stdout.readline() != "ready\n":
            raise RuntimeError(f"the SMTP sink did not start:\n{errors.read_text()}")
        yield Sink(port, process, errors)
    finally:
        try:
            process.stdin.write("stop\n")
            process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        process.stdout.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.peers.sink PORT")
    serve(int(sys.argv[1]))
