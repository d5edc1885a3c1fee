"""The segment benchmark runs at a tiny size: builds agree with hand-written queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = 600
EVENTS = 6_000
SAMPLE = 300


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ lives beside src/, not in the package


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_segment_benchmark_builds_match_hand_queries_and_prints_its_rows(
    kind: str, tmp_path: Path
) -> None:
    """Each build's members equal its hand query's answer (asserted inside the run), the
    per-event side processes the whole sample both ways, and every row prints."""
    from bench import segments
    from bench.common import render

    # given
    scale = segments.Scale(customers=CUSTOMERS, events=EVENTS, sample=SAMPLE)
    # when
    results = segments.run(kind, tmp_path, scale=scale)
    table = render(results, [("workload", "test")], title="segments")
    # then
    expected = [
        f"{name} {key} (lower better)"
        for key in segments.MEASURED
        for name in (segments.BUILD_NAME, segments.REBUILD_NAME)
    ] + [
        f"{segments.EVENT_NAME}: p50 (lower better)",
        f"{segments.EVENT_NAME}: p99 (lower better)",
        f"{segments.EVENT_NAME}: worker rate",
    ]
    assert [r.name for r in results] == expected
    assert all(r.store == kind and r.touchline > 0 and r.baseline > 0 for r in results)
    assert f"{EVENTS:,} events" in results[0].notes and "members" in results[0].notes
    assert f"{SAMPLE:,} events for " in results[-3].notes
    assert all(name in table for name in expected)


def test_both_stores_generate_the_same_audience(tmp_path: Path) -> None:
    """Rows are integer hashes of their number, so SQLite and PostgreSQL hold the same data
    and every hand query answers the same ids on both."""
    from bench import segments
    from bench.common import scratch_store

    from touchline.store.workspaces import create_workspace

    # given
    scale = segments.Scale(customers=CUSTOMERS, events=EVENTS, sample=0)
    answers: dict[str, dict[str, Any]] = {}
    for kind in ("sqlite", "postgresql"):
        with scratch_store(kind, "same", tmp_path) as store:
            engine = store.engine()
            try:
                workspace_id = create_workspace(engine, "bench", now=segments.NOW).id
                # when
                generated = segments.generate(store, engine, workspace_id, scale=scale)
                found = {"rows": generated.rows}
                with engine.connect() as conn:
                    for key in segments.HAND_QUERIES:
                        stmt = segments.hand_query(key, kind)
                        found[key] = set(
                            conn.execute(stmt, segments.hand_params(workspace_id)).scalars()
                        )
                answers[kind] = found
            finally:
                engine.dispose()
    # then
    lite, pg = answers["sqlite"], answers["postgresql"]
    assert lite["rows"]["profiles"] == CUSTOMERS and lite["rows"]["events"] == EVENTS
    assert lite == pg
    assert all(0 < len(lite[key]) < CUSTOMERS for key in segments.HAND_QUERIES)
