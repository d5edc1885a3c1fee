"""``touchline demo``: a synthetic shop replayed through the e-commerce pack.

The demo is the embedded default at its most honest: the real ingest, the
real engine and the real store, on a virtual clock. It

1. loads the journey pack from ``examples/ecommerce`` of the checkout;
2. invents a shop's customers and their events (:class:`~touchline.demo.shop.Shop`);
3. replays them with :class:`~touchline.simulation.Simulation` in a fresh
   SQLite store in ``touchline-demo/`` next to the configured SQLite file
   (the working directory when the store is not a SQLite file), kept
   afterwards for inspection; customers react to the messages they get;
4. prints a report (:mod:`touchline.demo.report`) read back from that store.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from touchline.audience.segments import load_segment_dir
from touchline.demo.report import DemoReport, collect, render
from touchline.demo.shop import Shop
from touchline.errors import ConfigError, InputError, SpecError
from touchline.journeys.loader import load_journey_dir
from touchline.simulation import SimulatedMessage, Simulation
from touchline.store.tables import instances, outbox, profiles

WORKDIR_NAME = "touchline-demo"
MARKER = "DEMO.txt"
"""A file the demo leaves in its folder; only folders holding it are ever deleted."""

WORKSPACE_TIMEZONE = "Europe/Moscow"

PACK_DIR = Path(__file__).resolve().parents[3] / "examples" / "ecommerce"
"""The pack in a source checkout (``src/touchline/demo/`` → repository root)."""


def pack_dir() -> Path:
    """The e-commerce journey pack, or a :class:`ConfigError` saying where to run from."""
    if (PACK_DIR / "journeys").is_dir():
        return PACK_DIR
    raise ConfigError(
        f"the example journeys are not at {PACK_DIR}; `touchline demo` runs from a source "
        "checkout of touchline (git clone, then `pip install -e .`)"
    )


def demo_dir(database_url: str) -> Path:
    """``touchline-demo/`` next to the SQLite file of ``database_url``, else in the cwd."""
    try:
        url = make_url(database_url)
    except ArgumentError:
        return Path.cwd() / WORKDIR_NAME
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).expanduser().resolve().parent / WORKDIR_NAME
    return Path.cwd() / WORKDIR_NAME


def _fresh(path: Path) -> None:
    """Empty ``path`` for a new run; refuse to delete a folder the demo did not make."""
    if path.exists():
        if not (path / MARKER).is_file():
            raise ConfigError(
                f"{path} exists and was not made by `touchline demo`; move it away and run again"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text(
        "Made by `touchline demo`: simulation.db is the SQLite store of the last demo run.\n"
        "The next run deletes and recreates this folder.\n",
        encoding="utf-8",
    )


def trigger_properties(engine: Engine, message: SimulatedMessage) -> Mapping[str, Any] | None:
    """Properties of the event that started the journey instance ``message`` came from."""
    with engine.connect() as conn:
        state = conn.execute(
            select(instances.c.state)
            .select_from(
                outbox.join(instances, instances.c.id == outbox.c.instance_id).join(
                    profiles, profiles.c.id == outbox.c.profile_id
                )
            )
            .where(
                profiles.c.user_id == message.user_id,
                outbox.c.step_id == message.step,
                outbox.c.template == message.template,
            )
            .order_by(outbox.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    properties = ((state or {}).get("trigger") or {}).get("properties")
    return properties if isinstance(properties, dict) else None


def run_demo(
    *,
    database_url: str,
    customers: int = 2000,
    days: int = 28,
    seed: int = 7,
    out: TextIO | None = None,
    progress: bool = True,
) -> DemoReport:
    """Simulate the shop, print the report to ``out`` (stdout) and return it.

    The progress bar goes to stderr (rich draws it only on a terminal).
    Raises :class:`ConfigError` when the pack cannot be found or the demo
    folder exists but was not made by the demo, :class:`InputError` for
    fewer than one customer or day.
    """
    if customers < 1 or days < 1:
        raise InputError("the demo needs at least one customer and one day")
    out = sys.stdout if out is None else out
    started = time.perf_counter()
    try:
        loaded = load_journey_dir(pack_dir())
        segments = load_segment_dir(pack_dir())
    except SpecError as exc:
        raise ConfigError(f"the example journeys do not load: {exc.message}") from None
    shop = Shop(seed=seed, customers=customers, days=days)
    workdir = demo_dir(database_url)
    _fresh(workdir)
    report = DemoReport(
        workdir=workdir, customers=customers, days=days, seed=seed, start=shop.start, end=shop.end
    )
    report.generate_seconds = time.perf_counter() - started

    span = (shop.end - shop.start).total_seconds()
    stderr = Console(stderr=True)
    bar = Progress(
        TextColumn("simulating {task.fields[day]}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%  {task.fields[messages]} messages"),
        TimeElapsedColumn(),
        console=stderr,
        disable=not (progress and stderr.is_terminal),
        transient=True,
    )
    reactions = 0

    def on_message(message: SimulatedMessage, sim: Simulation) -> None:
        nonlocal reactions
        answer = shop.react(message, trigger=lambda: trigger_properties(sim.engine, message))
        for raw in answer:
            sim.add(raw)
        reactions += len(answer)

    sim = Simulation(
        loaded,
        start=shop.start,
        timezone=WORKSPACE_TIMEZONE,
        workdir=workdir,
        segments=segments,
    )
    try:
        sim.add_all(shop.events)
        with bar:
            task = bar.add_task("simulate", total=span, day="", messages=0)
            messages = 0

            def on_progress(now: datetime) -> None:
                bar.update(
                    task,
                    completed=(now - shop.start).total_seconds(),
                    day=f"{now:%Y-%m-%d}",
                    messages=messages,
                )

            simulate_from = time.perf_counter()
            for _ in sim.run(until=shop.end, on_message=on_message, on_progress=on_progress):
                messages += 1
            report.simulate_seconds = time.perf_counter() - simulate_from
        report.reactions = reactions
        report.timers = sim.worker.totals.timers
        report.failures = sim.worker.totals.failed
        collect(sim.engine, report)
    finally:
        sim.close()
    report.total_seconds = time.perf_counter() - started
    render(report, out)
    return report
