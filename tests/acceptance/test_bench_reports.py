"""The report benchmark runs at a tiny size: rollups and raw rows give the same report."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 20_000
FACTS = 10
ORDERS = 5


@pytest.fixture(autouse=True)
def _bench_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ lives beside src/, not in the package


def test_dataset_counts_first_opens_once_and_keeps_repeats_on_their_day() -> None:
    """Generated rollups add up to one sent per message, and repeat opens stay on the first's day."""
    from bench import reports

    # given
    dataset = reports.Dataset(EVENTS, seed=7)
    # when
    rows = [row for chunk in dataset.chunks() for row in chunk]
    # then
    assert len(rows) == dataset.events and abs(dataset.events - EVENTS) < EVENTS // 20
    sent = sum(totals[reports.COMPARED.index("sent")] for totals in dataset.stats.values())
    assert sent == dataset.messages == sum(1 for row in rows if row[4] == "sent")
    opens: dict[int, set[int]] = {}
    for row in rows:
        if row[4] == "opened" and not row[9]:
            opens.setdefault(row[0], set()).add(row[5] // reports.DAY)
    assert opens and all(len(days) == 1 for days in opens.values())
    opened = sum(totals[reports.COMPARED.index("opened")] for totals in dataset.stats.values())
    assert opened == len(opens)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_report_benchmark_agrees_with_raw_rows_and_prints_its_rows(
    kind: str, tmp_path: Path
) -> None:
    """20k events load, rollup and raw answers agree, the throughput sides count every fact
    and order (both checked inside the measurements), and the three rows print."""
    from bench import reports
    from bench.common import render

    # when
    figures = reports.measure_query(kind, tmp_path, events=EVENTS)
    query = reports.summarise_query(kind, figures)
    cost = reports.summarise_cost(kind, reports.measure_cost(kind, tmp_path, facts=FACTS))
    order = reports.summarise_orders(kind, reports.measure_orders(kind, tmp_path, orders=ORDERS))
    table = render([query, cost, order], [("workload", "test")], title="reports")
    # then
    assert figures.groups == reports.JOURNEYS * 2
    assert len(figures.rollup) == len(figures.raw) == reports.RUNS
    assert min(figures.rollup + figures.raw) > 0
    assert figures.sizes["message_events"][0] > figures.sizes["daily_stats"][0] > 0
    assert query.ratio == pytest.approx(
        statistics.median(figures.raw) / statistics.median(figures.rollup)
    )
    assert cost.unit == "facts/s" and cost.touchline > 0 and cost.baseline > 0
    assert f"{FACTS:,} sent facts per run" in cost.notes
    assert order.unit == "orders/s" and order.touchline > 0 and order.baseline > 0
    assert f"{ORDERS:,} Order Completed events per run" in order.notes
    assert all(
        name in table for name in (reports.QUERY_NAME, reports.COST_NAME, reports.ORDER_NAME)
    )
    assert "reports/h" in table and "daily_stats" in table
