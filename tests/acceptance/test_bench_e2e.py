"""The end-to-end benchmark runs at a tiny size and its mail server gets every message once."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 20


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_e2e_benchmark_delivers_every_order_once_and_reports_a_row(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 orders go from ingest to the SMTP sink, each as one parsed message to its own customer,
    and the row reports positive rates with the phase split."""
    # given
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ lives beside src/, not in the package
    from bench import e2e_smtp

    # when
    figures, raw_runs = e2e_smtp.measure(kind, tmp_path, count=ORDERS)
    row = e2e_smtp.summarise(kind, figures, raw_runs)
    # then
    assert (figures.received, figures.unique_ids, figures.recipients) == (ORDERS, ORDERS, ORDERS)
    assert min(figures.ingest, figures.engine, figures.dispatch) > 0
    assert len(raw_runs) == e2e_smtp.RAW_REPEATS and min(raw_runs) > 0
    assert row.store == kind and row.unit == "msgs/s"
    assert row.touchline == pytest.approx(ORDERS / figures.total)
    assert f"{ORDERS:,} orders" in row.notes and "dispatch" in row.notes
