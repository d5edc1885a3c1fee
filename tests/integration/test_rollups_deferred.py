"""Deferred rollups: a batch's bumps are summed per row and written just before it commits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from touchline.measure.rollups import bump, deferred
from touchline.store.db import transaction
from touchline.store.tables import daily_stats

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def rows(engine: Engine) -> list[tuple[int, str, int, int]]:
    with engine.connect() as conn:
        return [
            (r.journey_id, r.channel, r.entered, r.sent)
            for r in conn.execute(
                select(daily_stats).order_by(daily_stats.c.journey_id, daily_stats.c.channel)
            )
        ]


def test_bumps_are_summed_per_row_and_written_when_the_block_ends(engine: Engine) -> None:
    """Nothing is written inside the block; at its end each row gets one summed upsert."""
    with transaction(engine) as conn:
        with deferred(conn) as buffer:
            for _ in range(5):
                bump(conn, workspace_id="ws", at=T0, journey_id=7, entered=1)
            bump(conn, workspace_id="ws", at=T0, journey_id=7, channel="email", sent=2)
            bump(conn, workspace_id="ws", at=T0, journey_id=3, entered=1)
            assert conn.execute(select(daily_stats)).all() == []
            assert buffer.mark() == 7
        # after the block, bumps go straight to the table again
        bump(conn, workspace_id="ws", at=T0, journey_id=3, entered=1)
    assert rows(engine) == [(3, "", 2, 0), (7, "", 5, 0), (7, "email", 0, 2)]


def test_a_rolled_back_savepoint_drops_its_bumps(engine: Engine) -> None:
    """rollback_to(mark) forgets what was bumped since the mark, as the savepoint forgets rows."""
    with transaction(engine) as conn, deferred(conn) as buffer:
        bump(conn, workspace_id="ws", at=T0, journey_id=1, entered=1)
        savepoint, mark = conn.begin_nested(), buffer.mark()
        bump(conn, workspace_id="ws", at=T0, journey_id=1, entered=10)
        bump(conn, workspace_id="ws", at=T0, journey_id=2, entered=1)
        savepoint.rollback()
        buffer.rollback_to(mark)
    assert rows(engine) == [(1, "", 1, 0)]


def test_a_failed_block_writes_nothing_and_leaves_the_connection_unbuffered(
    engine: Engine,
) -> None:
    """An error inside the block discards the bumps; the next use of the connection bumps at once."""
    with pytest.raises(RuntimeError), transaction(engine) as conn, deferred(conn):
        bump(conn, workspace_id="ws", at=T0, journey_id=1, entered=1)
        raise RuntimeError("boom")
    assert rows(engine) == []
    with transaction(engine) as conn:
        bump(conn, workspace_id="ws", at=T0, journey_id=1, entered=1)
        assert conn.execute(select(daily_stats.c.entered)).scalar_one() == 1
