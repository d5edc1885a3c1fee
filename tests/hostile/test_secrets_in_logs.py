"""No key or customer token reaches the log of a real `touchline serve`.

The server runs as a process with INFO logs (uvicorn's access lines
included) and is driven with real requests carrying a write key, an admin
token and a metrics token in headers, a callback secret in a query string,
and unsubscribe, preference, tracking and short-link tokens in paths — good
and bad ones, so that errors are logged too. Its whole log is then searched
for each secret: none may appear, while the requests themselves are logged.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from touchline.store.db import make_engine, migrate
from touchline.store.workspaces import CreatedWorkspace, create_workspace

STARTUP_SECONDS = 30


@dataclass
class Server:
    url: str
    log: Path
    workspace: CreatedWorkspace
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    url = f"sqlite:///{tmp_path / 'touchline.db'}"
    engine = make_engine(url)
    migrate(engine)
    from datetime import UTC, datetime

    workspace = create_workspace(engine, "Shop", now=datetime.now(UTC))
    engine.dispose()
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOUCHLINE_")},
        "TOUCHLINE_DATABASE_URL": url,
        "TOUCHLINE_LOG_LEVEL": "DEBUG",
        "TOUCHLINE_METRICS_TOKEN": METRICS_TOKEN,
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "touchline.cli", "serve", "--port", str(port), "--no-worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    try:
        yield Server(base, log, workspace, process)
    finally:
        process.terminate()
        process.wait(timeout=20)


METRICS_TOKEN = "metrics-" + secrets.token_urlsafe(16)


def test_keys_and_tokens_never_reach_the_log(server: Server) -> None:
    """Write key, admin token, metrics token, callback secret and link tokens stay out of the log."""
    ws = server.workspace
    wrong_key = "tlw_" + secrets.token_urlsafe(24)
    wrong_admin = "tla_" + secrets.token_urlsafe(24)
    link_token = secrets.token_urlsafe(24)
    click_token = secrets.token_urlsafe(30)
    short_code = "Ab3dE9xZ"
    callback_secret = "cb-" + secrets.token_urlsafe(16)
    basic = base64.b64encode(f"{ws.write_key}:".encode()).decode()
    track = {"userId": "u1", "event": "Order Completed"}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        requests = [
            http.post("/v1/track", json=track, headers={"Authorization": f"Basic {basic}"}),
            http.post("/v1/track", json=track, headers={"Authorization": f"Bearer {wrong_key}"}),
            http.post("/v1/track", json={**track, "writeKey": ws.write_key}),
            http.post("/v1/track", content=f'{{"writeKey": "{ws.write_key}", bad json'),
            http.get("/admin/v1/journeys", headers={"Authorization": f"Bearer {ws.admin_token}"}),
            http.get("/admin/v1/journeys", headers={"Authorization": f"Bearer {wrong_admin}"}),
            http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}),
            http.get(f"/u/{ws.id}.{link_token}"),
            http.get(f"/p/{ws.id}.{link_token}"),
            http.get(f"/c/{ws.id}.{link_token}"),
            http.get(f"/t/o/{ws.id}.{click_token}.gif"),
            http.get(f"/t/c/{ws.id}.{click_token}"),
            http.get(f"/s/{short_code}"),
            http.post(f"/callbacks/{ws.id}/http?token={callback_secret}", json={"id": "x"}),
        ]
    assert all(r.status_code < 500 for r in requests), [(r.url, r.status_code) for r in requests]
    server.process.terminate()
    server.process.wait(timeout=20)
    text = server.log.read_text(encoding="utf-8", errors="replace")
    # the requests were logged (uvicorn's access lines) ...
    for path in ("/v1/track", "/admin/v1/journeys", "/t/o/", "/t/c/", "/s/", "/u/", "/callbacks/"):
        assert path in text, f"no log line for {path}:\n{text[-3000:]}"
    # ... and nothing secret with them
    for name, value in {
        "write key": ws.write_key,
        "Basic credentials": basic,
        "admin token": ws.admin_token,
        "unknown write key": wrong_key,
        "unknown admin token": wrong_admin,
        "metrics token": METRICS_TOKEN,
        "link token": link_token,
        "tracking token": click_token,
        "short code": short_code,
        "callback secret": callback_secret,
    }.items():
        assert value not in text, f"the {name} is in the log:\n{text[-3000:]}"
