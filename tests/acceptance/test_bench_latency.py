"""The single-event latency benchmark runs at a tiny size: every event stored, two sane rows."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_latency_benchmark_stores_every_event_and_reports_p50_and_p99(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """60 single events at 20/s to touchline and to the bare endpoint: both store all of them
    (the run checks), and the rows give p50 no higher than p99 on each side."""
    # given
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ lives beside src/, not in the package
    from bench import latency

    # when
    p50, p99 = latency.run(kind, tmp_path, scale=latency.Scale(rate=20, seconds=3.0, users=40))
    # then
    assert (p50.store, p99.store) == (kind, kind)
    assert p50.name.startswith("single POST p50") and p99.name.startswith("single POST p99")
    assert 0 < p50.touchline <= p99.touchline and 0 < p50.baseline <= p99.baseline
    assert p50.unit == p99.unit == "ms"
    assert "60 events at 20/s" in p99.notes
