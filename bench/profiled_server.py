"""touchline's HTTP API under cProfile, for ``python -m bench.run --profile``.

cProfile sees one thread only, and ingest runs in two places: the event loop
(HTTP parsing, routing, reading the body, the JSON answer) on the main
thread, and the request's ``work()`` (decode, authenticate, parse, store) in
Starlette's threadpool. So the main thread runs under one profiler, and each
threadpool call under its own, merged at shutdown. Two files are written to
``--out``: ``<out>.loop.prof`` and ``<out>.work.prof``.

The ingest module's ``run_in_threadpool`` is wrapped in this process only;
nothing in ``src/`` changes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

import touchline.web.api.ingest as ingest_api

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()
_original = ingest_api.run_in_threadpool


def _profiled(func: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            return func(*args, **kwargs)
        finally:
            profiler.disable()
            with _lock:
                _profiles.append(profiler)

    return call


async def _run_in_threadpool(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await _original(_profiled(func), *args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ingest_api.run_in_threadpool = _run_in_threadpool  # type: ignore[assignment]
    loop = cProfile.Profile()
    loop.enable()
    try:
        uvicorn.run(
            "touchline.web.app:app_from_env",
            factory=True,
            host="127.0.0.1",
            port=args.port,
            access_log=False,
            log_level="warning",
        )
    finally:
        loop.disable()
        loop.dump_stats(f"{args.out}.loop.prof")
        with _lock:
            if _profiles:
                stats = pstats.Stats(_profiles[0])
                for profiler in _profiles[1:]:
                    stats.add(profiler)
                stats.dump_stats(f"{args.out}.work.prof")


if __name__ == "__main__":
    main()
