"""The peer, scale-out and 1M-timer benchmarks run at tiny sizes and judge what they measured.

Each runs the real worker processes (touchline, Celery, procrastinate) for a
few seconds, so these tests keep the benchmark code working; the figures
themselves come from ``python -m bench.run`` at full size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REMINDERS = 40
WINDOW = 3.0


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # bench/ lives beside src/, not in the package


@pytest.fixture
def short_plans(bench_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plans that start 3 s after their origin and settle 2 s after the last due time."""
    from bench.peers import plan, systems

    monkeypatch.setattr(plan, "START", 3.0)
    monkeypatch.setattr(systems, "SETTLE", 2.0)
    monkeypatch.setattr(systems, "QUEUE_LEAD_MIN", 1.0)


def _redis_or_skip() -> None:
    import redis
    from bench.peers.systems import REDIS_URL

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()


@pytest.mark.parametrize("system", ["touchline", "celery", "procrastinate"])
def test_peer_benchmark_sends_each_live_reminder_once_and_no_cancelled_one(
    system: str, short_plans: None, tmp_path: Path
) -> None:
    """40 reminders due over 3 s, 4 cancelled: the sink gets the other 36 once each, on time
    within the system's polling, and the workers' memory was sampled."""
    from bench import peers

    if system == "celery":
        _redis_or_skip()
    # when
    (figures,) = peers.measure(tmp_path, count=REMINDERS, window=WINDOW, systems=(system,))
    # then
    assert figures.system == system and figures.count == REMINDERS
    assert (figures.duplicates, figures.cancelled_sent, figures.missing) == (0, 0, 0)
    assert figures.scheduled_late == 0 and figures.cancels_late == 0
    assert 0 <= figures.p50 <= figures.p99 <= figures.worst < 15.0
    assert figures.rss_peak_mb > 10
    assert figures.wall_seconds >= WINDOW


def test_plan_cancels_a_tenth_of_the_reminders_ahead_of_their_due_time(bench_path: None) -> None:
    """Due times fill the window after the start; each order comes at least the margin early;
    the same seed draws the same plan."""
    from bench.peers import plan

    # when
    drawn = plan.draw(1000, 60.0)
    # then
    assert drawn == plan.draw(1000, 60.0)
    assert all(plan.START <= r.due < plan.START + 60.0 for r in drawn.reminders)
    cancelled = drawn.cancellations()
    assert len(cancelled) == 100 == len(drawn.cancelled)
    assert all(0 <= (r.cancel or 0) <= r.due - plan.CANCEL_MARGIN for r in cancelled)
    assert [r.cancel for r in cancelled] == sorted(r.cancel or 0 for r in cancelled)
    assert len(drawn.expected) == 900 and not drawn.expected & drawn.cancelled


def test_peer_rows_compare_touchline_with_each_peer(bench_path: None) -> None:
    """The report gets a lateness row and a memory row per peer, touchline first."""
    from bench.peers import Figures, rows

    def figures(system: str, p99: float, rss: float) -> Figures:
        return Figures(system, "setup", 10, p99 / 2, p99, p99, 0, 0, 0, 0, 0, rss, 1.0, 60.0)

    # when
    found = rows([figures("touchline", 0.4, 200), figures("celery", 0.02, 400)])
    # then
    assert [(r.name.split(" (")[0], r.store) for r in found] == [
        ("reminders p99 lateness", "vs celery"),
        ("reminders peak worker RSS", "vs celery"),
    ]
    assert found[0].ratio == pytest.approx(20.0) and found[1].ratio == pytest.approx(0.5)
    assert "touchline: p50 200 ms" in found[0].notes and "celery:" in found[0].notes


def test_scaleout_drains_the_backlog_faster_or_not_with_two_workers_than_one(
    bench_path: None, tmp_path: Path
) -> None:
    """60 orders drain with 1 and with 2 workers; each drain timed its claims, and the row
    compares 2 workers with 1."""
    from bench import scaleout

    # when
    drains = scaleout.measure(tmp_path, count=60, worker_counts=(1, 2), snapshots=(False,))
    found = scaleout.rows(drains)
    # then
    assert [(d.workers, d.held_snapshot) for d in drains] == [(1, False), (2, False)]
    for d in drains:
        assert d.count == 60 and d.seconds > 0 and d.claims >= 1
        assert 0 < d.claim_p50_ms <= d.claim_p99_ms
    assert [r.name for r in found] == ["scale-out drain, 2 workers vs 1"]
    assert found[0].touchline == pytest.approx(drains[1].rate)


def test_scaleout_drains_the_backlog_beside_a_held_snapshot(
    bench_path: None, tmp_path: Path
) -> None:
    """With a REPEATABLE READ reader holding its snapshot, the backlog still drains and its
    dead rows stay; the row compares the held drain with the plain one."""
    from bench import scaleout

    # when
    drains = scaleout.measure(tmp_path, count=60, worker_counts=(1,))
    found = scaleout.rows(drains)
    # then
    assert [(d.workers, d.held_snapshot) for d in drains] == [(1, False), (1, True)]
    assert drains[1].count == 60 and drains[1].dead_tuples > 0
    assert [r.name for r in found] == ["scale-out drain, 1 workers, held snapshot vs none"]
    assert found[0].touchline == pytest.approx(drains[1].rate)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_timers_1m_benchmark_measures_every_level_and_its_baselines(
    kind: str, bench_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two levels of waits (300, 600): each band fires in full with its lateness, disk and memory
    measured; the backlog fires at depth; the bare table gives the baselines."""
    from bench import timers_1m

    monkeypatch.setattr(timers_1m, "BAND_LEAD", 1.0)
    scale = timers_1m.Scale(levels=(300, 600), rate=100, seconds=1, backlog=100)
    # when
    levels, extra = timers_1m.measure(kind, tmp_path, scale=scale)
    found = timers_1m.rows(kind, levels, extra, scale=scale)
    # then
    assert [(lv.pending, lv.timer_rows) for lv in levels] == [(300, 300), (600, 600)]
    for lv in levels:
        assert lv.fired == lv.band == 100
        assert len(lv.lateness) == 100 and lv.p99 < 30.0
        assert lv.rss_peak > 0 and lv.disk["timers"] > 0 and lv.disk["instances"] > 0
    assert extra["fired"] == 100 and extra["fire_seconds"] > 0
    assert extra["raw_disk"] > 0 and len(extra["raw_lateness"]) == 100
    assert [r.unit for r in found] == ["MB", "MB", "timers/s", "ms"]
    assert all(r.touchline > 0 and r.baseline > 0 for r in found)
