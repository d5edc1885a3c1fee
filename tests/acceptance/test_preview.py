"""`touchline preview` renders a template for one stored customer, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from touchline.store.db import make_engine, migrate
from touchline.store.workspaces import create_workspace
from touchline.testing import identify, send_events, track

PACK = Path(__file__).resolve().parents[2] / "examples" / "ecommerce"


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOUCHLINE_DATABASE_URL": url, "TOUCHLINE_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "touchline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_preview_shows_the_sms_as_sent_with_encoding_parts_and_cost(tmp_path: Path) -> None:
    """An SMS template rendered for a customer shows its text, UCS-2, one part and the cost."""
    # given
    url = f"sqlite:///{tmp_path / 't.db'}"
    engine = make_engine(url)
    migrate(engine)
    ws = create_workspace(engine, "shop", now=datetime.now(UTC)).id
    assert _cli(url, "apply", str(PACK), "--workspace", ws).returncode == 0
    shipped = {"order_id": "A-77", "tracking_number": "RU123456789", "carrier": "СДЭК"}
    send_events(
        engine,
        ws,
        [
            identify("u1", firstName="Анна", phone="+79161234567"),
            track("u1", "Order Shipped", shipped),
        ],
        now=datetime.now(UTC),
    )
    engine.dispose()
    # when
    shown = _cli(url, "preview", "order-shipped-sms", "--profile", "u1", "--price-per-part", "3.50")
    missing = _cli(url, "preview", "no-such-template", "--profile", "u1")
    # then
    assert shown.returncode == 0, shown.stderr
    assert "RU123456789" in shown.stdout and "A-77" in shown.stdout
    assert "encoding: UCS-2" in shown.stdout and "parts: 1," in shown.stdout
    assert "cost: 3.50" in shown.stdout
    assert missing.returncode == 1 and "no template 'no-such-template'" in missing.stderr
