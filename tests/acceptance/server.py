"""Run ``touchline serve`` and other ``touchline`` commands as real processes.

Acceptance tests start the real command (the ``touchline`` entry point next to
the interpreter running the tests, else ``python -m touchline.cli``) on a
store they choose: a temporary SQLite file, or a PostgreSQL database cloned
from the migrated template of ``tests/conftest.py``. :func:`serve` starts the
server on a free port, waits for ``/healthz``, and on the way out sends
SIGTERM, then SIGKILL if it lingers. Everything the server prints goes to a
log file that :meth:`Served.explain` appends to assertion messages, so a
server that died says why.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import Engine, text

# How long `touchline serve` may take to answer /healthz (it migrates the store first).
STARTUP_SECONDS = 30
# How long the server has to exit after SIGTERM before it gets SIGKILL.
STOP_SECONDS = 10
# How long any other `touchline` command may run.
COMMAND_SECONDS = 60
# Worker idle poll: short, so a 1-second timer fires close to on time.
POLL_MS = 50
# Characters of the server log quoted in an assertion message.
LOG_TAIL = 4000
# Attempts to start on a fresh port when another process took the one picked.
PORT_ATTEMPTS = 3

T = TypeVar("T")


def touchline_command() -> list[str]:
    """The installed ``touchline`` script beside ``sys.executable``, else the module."""
    script = Path(sys.executable).with_name("touchline")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "touchline.cli"]


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a ``touchline`` process on ``database_url``.

    ``TOUCHLINE_*`` variables of the calling shell are dropped so that a
    developer's own settings (a port, a workspace, a quiet log) never leak in.
    """
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")}
    return {
        **inherited,
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "1",
        "TOUCHLINE_DATABASE_URL": database_url,
        "TOUCHLINE_POLL_MS": str(POLL_MS),
        "TOUCHLINE_LOG_LEVEL": "INFO",
        **extra,
    }


def run_command(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    """Run ``touchline ARGS`` to completion; the caller checks the exit code."""
    return subprocess.run(
        [*touchline_command(), *args],
        env=command_env(database_url),
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=COMMAND_SECONDS,
        check=False,
    )


def run_ok(*args: str, database_url: str) -> str:
    """Run ``touchline ARGS``, assert it succeeded, and return its standard output."""
    done = run_command(*args, database_url=database_url)
    assert done.returncode == 0, (
        f"touchline {' '.join(args)} exited with {done.returncode}\n"
        f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done.stdout


@dataclass(frozen=True)
class Keys:
    """What ``touchline workspace create`` printed."""

    workspace: str
    write_key: str
    admin_token: str


_KEY_LINE = re.compile(r"^(workspace|write key|admin token):\s+(\S+)\s*$", re.MULTILINE)


def create_workspace(database_url: str, name: str) -> Keys:
    """``touchline workspace create NAME``, its keys parsed from standard output."""
    out = run_ok("workspace", "create", name, database_url=database_url)
    found = dict(_KEY_LINE.findall(out))
    assert set(found) == {"workspace", "write key", "admin token"}, out
    return Keys(found["workspace"], found["write key"], found["admin token"])


@dataclass
class Served:
    """A running ``touchline serve`` and an HTTP client pointed at it."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    http: httpx.Client

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:]

    def explain(self, response: httpx.Response | None = None) -> str:
        """An assertion message: the response, whether the server still runs, its log."""
        state = self.process.poll()
        lines = []
        if response is not None:
            request = response.request
            lines.append(
                f"{request.method} {request.url.path} -> {response.status_code} "
                f"{response.text[:1000]}"
            )
        lines.append("server is running" if state is None else f"server exited with {state}")
        lines.append(f"--- server log (last {LOG_TAIL} characters) ---\n{self.log_text()}")
        return "\n".join(lines)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """``http.request``; a connection failure fails the test with the server log."""
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise AssertionError(f"{method} {path} failed: {exc!r}\n{self.explain()}") from exc

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def stop(self, *, timeout: float = STOP_SECONDS) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def start_serve(database_url: str, folder: Path, *, env: dict[str, str] | None = None) -> Served:
    """Start ``touchline serve`` on a free port and wait until ``/healthz`` answers 200."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"serve-{uuid.uuid4().hex[:8]}.log"
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*touchline_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=command_env(database_url, **(env or {})),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        served = Served(process, url, log, httpx.Client(base_url=url, trust_env=False, timeout=10))
        if _wait_until_healthy(served):
            return served
        served.stop()
        if "address already in use" not in served.log_text().lower():
            break
    raise AssertionError(f"touchline serve did not become healthy\n{served.explain()}")


def _wait_until_healthy(served: Served) -> bool:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            return False
        try:
            if served.http.get("/healthz", timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


@contextmanager
def serve(
    database_url: str, folder: Path, *, env: dict[str, str] | None = None
) -> Iterator[Served]:
    """A running ``touchline serve`` for the ``with`` block; stopped (TERM, then KILL) after."""
    served = start_serve(database_url, folder, env=env)
    try:
        yield served
    finally:
        served.stop()


@contextmanager
def postgres_database(admin: Engine, template: str) -> Iterator[str]:
    """A fresh PostgreSQL database cloned from the migrated ``template``; dropped after.

    For fixtures wider than one test (``pg_admin`` and ``pg_template`` are
    session-wide); the per-test ``pg_url`` of ``tests/conftest.py`` empties
    one database per test process instead.
    """
    name = f"tl_{uuid.uuid4().hex[:16]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def wait_for(
    probe: Callable[[], T], *, timeout: float, what: str, served: Served, every: float = 0.1
) -> T:
    """Call ``probe()`` until it returns something truthy; fail with the server log after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        if served.process.poll() is not None:
            break
        time.sleep(every)
    raise AssertionError(
        f"gave up waiting {timeout}s for {what}; last seen: {last!r}\n{served.explain()}"
    )
