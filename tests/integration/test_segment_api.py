"""The segments admin API and the `touchline segments` / `apply` commands."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from touchline.cli import main
from touchline.config import Settings
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.testing import FrozenClock, run_until_idle, send_events, track
from touchline.web.app import create_app
from touchline.worker.loop import Worker

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BUYERS = """\
segment: buyers
name: Buyers
match:
  event: Order Completed
  count: {at_least: 1}
"""


@pytest.fixture
def shop(engine: Engine) -> Iterator[tuple[TestClient, CreatedWorkspace, FrozenClock]]:
    clock = FrozenClock(T0)
    created = create_workspace(engine, "shop", now=T0)
    app = create_app(Settings.from_env({}), engine=engine, clock=clock)
    with TestClient(app) as client:
        yield client, created, clock


def _auth(created: CreatedWorkspace) -> dict[str, str]:
    return {"Authorization": f"Bearer {created.admin_token}"}


def _orders(engine: Engine, ws: str, clock: FrozenClock, *users: str) -> None:
    send_events(
        engine,
        ws,
        [track(u, "Order Completed", {"order_id": f"{u}-{clock.now():%j%H}"}) for u in users],
        now=clock.now(),
    )
    run_until_idle(Worker(engine, clock=clock, owner="w"), clock)


def test_put_validates_stores_and_builds_then_lists_sizes(
    engine: Engine, shop: tuple[TestClient, CreatedWorkspace, FrozenClock]
) -> None:
    """PUT builds a new segment at once; list, get, members and sizes read it back."""
    client, created, clock = shop
    _orders(engine, created.id, clock, "u1", "u2")
    # when
    put = client.put("/admin/v1/segments/buyers", content=BUYERS, headers=_auth(created))
    # then
    assert put.status_code == 200, put.text
    assert put.json()["change"] == "created"
    assert put.json()["build"]["members"] == 2
    assert put.json()["build"]["announced"] is False
    listed = client.get("/admin/v1/segments", headers=_auth(created)).json()["segments"]
    assert [(s["segment"], s["size"], s["status"]) for s in listed] == [("buyers", 2, "ready")]
    detail = client.get("/admin/v1/segments/buyers", headers=_auth(created)).json()
    assert detail["source"] == BUYERS and detail["spec"]["match"]["event"] == "Order Completed"
    members = client.get("/admin/v1/segments/buyers/members?limit=1", headers=_auth(created))
    assert len(members.json()["members"]) == 1
    # and a third buyer a day later shows in the sizes per day
    clock.advance(timedelta(days=1))
    _orders(engine, created.id, clock, "u3")
    sizes = client.get("/admin/v1/segments/buyers/sizes?days=2", headers=_auth(created)).json()
    assert sizes["days"] == [
        {"day": "2026-03-02", "entered": 2, "exited": 0, "size": 2},
        {"day": "2026-03-03", "entered": 1, "exited": 0, "size": 3},
    ]
    unchanged = client.put("/admin/v1/segments/buyers", content=BUYERS, headers=_auth(created))
    assert unchanged.json() == {"segment": "buyers", "change": "unchanged", "needs_build": False}


def test_invalid_segment_answers_400_naming_line_and_field(
    shop: tuple[TestClient, CreatedWorkspace, FrozenClock],
) -> None:
    """A broken file is refused with code invalid_segment and its file:line: field."""
    client, created, _ = shop
    broken = BUYERS.replace("count: {at_least: 1}", "cuont: {at_least: 1}")
    response = client.put("/admin/v1/segments/buyers", content=broken, headers=_auth(created))
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == "invalid_segment"
    assert (
        "buyers.yaml:5: match.cuont: unknown field 'cuont'; did you mean 'count'?"
        in body["message"]
    )
    other = client.put("/admin/v1/segments/sellers", content=BUYERS, headers=_auth(created))
    assert other.status_code == 400 and "names 'sellers'" in other.json()["message"]
    missing = client.get("/admin/v1/segments/nope", headers=_auth(created))
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_rebuild_route_and_other_workspaces(
    engine: Engine, shop: tuple[TestClient, CreatedWorkspace, FrozenClock]
) -> None:
    """POST rebuild recomputes; another workspace's token sees none of it."""
    client, created, clock = shop
    client.put("/admin/v1/segments/buyers?build=false", content=BUYERS, headers=_auth(created))
    _orders(engine, created.id, clock, "u1")
    rebuilt = client.post("/admin/v1/segments/buyers/rebuild", headers=_auth(created))
    assert rebuilt.status_code == 200, rebuilt.text
    assert rebuilt.json()["members"] == 1
    other = create_workspace(engine, "other", now=T0)
    assert client.get("/admin/v1/segments", headers=_auth(other)).json() == {"segments": []}


def _cli(database_url: str, engine: Engine, *args: str) -> Any:
    return CliRunner().invoke(
        main, list(args), obj={"engine": engine}, env={"TOUCHLINE_DATABASE_URL": database_url}
    )


def test_apply_loads_segments_checks_triggers_and_builds(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """`apply DIR` stores DIR/segments, builds them, and refuses a trigger on an unknown segment."""
    ws = create_workspace(engine, "cli", now=T0).id
    clock = FrozenClock(T0)
    _orders(engine, ws, clock, "u1")
    (tmp_path / "journeys").mkdir()
    (tmp_path / "segments").mkdir()
    (tmp_path / "journeys" / "thanks.yaml").write_text(
        "journey: thanks\ntrigger: {segment: buyers}\nsteps:\n"
        "  - send: {channel: email, template: thanks}\n"
    )
    # when the segment is missing
    refused = _cli(database_url, engine, "apply", str(tmp_path), "--workspace", ws)
    assert refused.exit_code == 1
    assert "trigger.segment: no segment 'buyers'" in refused.output
    # when it is there
    (tmp_path / "segments" / "buyers.yaml").write_text(BUYERS)
    validated = _cli(database_url, engine, "validate", str(tmp_path))
    applied = _cli(database_url, engine, "apply", str(tmp_path), "--workspace", ws)
    # then
    assert "1 segment(s) valid" in validated.output
    assert applied.exit_code == 0, applied.output
    assert "segment buyers: created" in applied.output
    assert "segment buyers: 1 member(s), 1 entered" in applied.output
    listed = _cli(database_url, engine, "segments", "list", "--workspace", ws)
    assert "buyers" in listed.output and " 1  ready" in listed.output
    shown = _cli(database_url, engine, "segments", "show", "buyers", "--workspace", ws)
    assert "size:    1" in shown.output and "u1" in shown.output
    built = _cli(database_url, engine, "segments", "build", "--all", "--workspace", ws)
    assert "segment buyers: 1 member(s), 0 entered, 0 exited (announced)" in built.output


def test_lifecycle_command_writes_the_ready_made_segments(tmp_path: Path) -> None:
    """`segments lifecycle --out DIR` writes files that `validate` accepts."""
    runner = CliRunner()
    written = runner.invoke(
        main, ["segments", "lifecycle", "--new-days", "7", "--out", str(tmp_path)]
    )
    assert written.exit_code == 0, written.output
    assert "within: 7d" in (tmp_path / "segments" / "lifecycle-new.yaml").read_text()
    printed = runner.invoke(main, ["segments", "lifecycle"])
    assert "# --- segments/rfm-m3.yaml" in printed.output
