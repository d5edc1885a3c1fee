"""``touchline worker`` with a stopwatch: what the scale-out and 1M-timer benchmarks run.

``python -m bench.worker_probe OUT.json`` runs the real ``touchline worker``
command (settings from the same ``TOUCHLINE_*`` variables, a worker and a
dispatcher thread) after wrapping three functions the worker loop calls:

* ``claim_events`` / ``claim_timers``: how long each claim took and how many
  rows it leased (the *claim latency*: one ``UPDATE ... RETURNING`` with
  ``FOR UPDATE SKIP LOCKED`` in its own transaction);
* ``process_timers``: each fired timer's lateness measured when its batch
  has committed (wall clock minus due time), which is later than the
  worker's own lateness metric (taken at the start of the round).

On SIGTERM the worker finishes its round, stops, and the figures are
written to OUT.json. The wrappers add two clock reads per call and change
nothing else.

``--journeys-only`` runs the journey loop alone, without the dispatcher
thread: the :class:`~touchline.worker.loop.Worker` that ``touchline worker``
runs in its main thread, built from the same settings. Outbox rows then stay
pending. The timer benchmarks use it to measure firing apart from delivery,
which the end-to-end, peer and scale-out benchmarks measure.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import touchline.worker.loop as loop

_figures: dict[str, Any] = {
    "claims": {"events": [], "timers": []},  # [started (time.time()), seconds, rows]
    "lateness": array("d"),  # seconds, one per fired timer (8 bytes each: RSS stays flat)
    "fired_at": [],  # time.time() of each committed timer batch, with its size
}


def _timed_claim(kind: str, claim: Callable[..., list[int]]) -> Callable[..., list[int]]:
    def wrapper(*args: Any, **kwargs: Any) -> list[int]:
        started = time.time()
        t0 = time.perf_counter()
        ids = claim(*args, **kwargs)
        _figures["claims"][kind].append((started, time.perf_counter() - t0, len(ids)))
        return ids

    return wrapper


def _timed_process(process: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = process(*args, **kwargs)
        committed = time.time()
        behind = committed - kwargs["now"].timestamp()
        _figures["lateness"].extend(x + behind for x in result.lateness)
        _figures["fired_at"].append((committed, result.processed))
        return result

    return wrapper


def _journeys_only() -> None:
    """The worker loop of ``touchline worker`` without its dispatcher, until SIGTERM."""
    from touchline.clock import SystemClock
    from touchline.config import Settings
    from touchline.store.db import make_engine, migrate

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    migrate(engine)
    worker = loop.Worker(
        engine,
        clock=SystemClock(),
        owner=settings.worker_id,
        batch=settings.claim_batch,
        lease_seconds=settings.lease_seconds,
        poll_ms=settings.poll_ms,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.run(stop)


def main(out: Path, *, journeys_only: bool = False) -> None:
    loop.claim_events = _timed_claim("events", loop.claim_events)  # type: ignore[assignment]
    loop.claim_timers = _timed_claim("timers", loop.claim_timers)  # type: ignore[assignment]
    loop.process_timers = _timed_process(loop.process_timers)  # type: ignore[assignment]
    try:
        if journeys_only:
            _journeys_only()
        else:
            from touchline.cli import main as cli

            cli(["worker"], standalone_mode=False)
    finally:
        out.write_text(json.dumps({**_figures, "lateness": _figures["lateness"].tolist()}))


if __name__ == "__main__":
    args = sys.argv[1:]
    only = "--journeys-only" in args
    paths = [a for a in args if a != "--journeys-only"]
    if len(paths) != 1:
        sys.exit("usage: python -m bench.worker_probe [--journeys-only] OUT.json")
    main(Path(paths[0]), journeys_only=only)
