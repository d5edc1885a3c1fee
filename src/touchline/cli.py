"""The ``touchline`` command."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click

from touchline.clock import SystemClock, utc
from touchline.config import Settings
from touchline.errors import InputError, SpecError, TouchlineError

# How far past the last event `simulate` keeps the clock running without --until.
SIMULATE_TAIL = timedelta(days=30)


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]  # type: ignore[no-any-return]


def _engine(ctx: click.Context) -> Any:
    """The store, migrated to the newest schema (done on every start)."""
    if "engine" not in ctx.obj:
        from touchline.store.db import make_engine, migrate

        engine = make_engine(_settings(ctx).database_url)
        migrate(engine)
        ctx.obj["engine"] = engine
    return ctx.obj["engine"]


def _workspace(ctx: click.Context, given: str | None) -> str:
    """The workspace named, or the only one in the store."""
    from sqlalchemy import select

    from touchline.store.tables import workspaces

    with _engine(ctx).connect() as conn:
        if given:
            found = conn.execute(select(workspaces.c.id).where(workspaces.c.id == given)).first()
            if found is None:
                raise click.BadParameter(
                    f"no workspace {given!r} in this store", param_hint="--workspace"
                )
            return given
        ids = conn.execute(select(workspaces.c.id).limit(2)).scalars().all()
    if len(ids) == 1:
        return ids[0]
    raise click.UsageError(
        "name the workspace with --workspace (or TOUCHLINE_WORKSPACE); "
        + (
            "there is none yet: run `touchline workspace create NAME`"
            if not ids
            else "there are several"
        )
    )


def store_failure(exc: BaseException) -> str | None:
    """One line saying what a store failure means and what to do, or None if it is not one."""
    from sqlalchemy.exc import DBAPIError

    from touchline.errors import StoreBusy, StoreError, StoreFull
    from touchline.store.db import store_error

    if isinstance(exc, DBAPIError):
        exc = store_error(exc)
    if isinstance(exc, StoreBusy):
        return f"{exc.message}; nothing was written, try again in a moment"
    if isinstance(exc, StoreFull):
        return f"{exc.message}; nothing was written, free disk space and try again"
    if isinstance(exc, StoreError):
        return exc.message
    return None


class TouchlineGroup(click.Group):
    """The command group: a store failure ends any command with one clear line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = store_failure(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=TouchlineGroup)
@click.version_option(package_name="touchline")
@click.pass_context
def main(ctx: click.Context) -> None:
    """touchline: trigger communications — events in, journeys as code, messages out."""
    ctx.ensure_object(dict)
    try:
        ctx.obj["settings"] = Settings.from_env()
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    from touchline.ops.logs import configure_logging

    s = ctx.obj["settings"]
    configure_logging(s.log_level, fmt=s.log_format, secrets=(s.smtp_password, s.metrics_token))
    logging.getLogger("alembic").setLevel(logging.WARNING)


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the store's schema (also done on every start)."""
    _engine(ctx)
    click.echo("schema is up to date")


# -- workspaces ------------------------------------------------------------------


@main.group()
def workspace() -> None:
    """Workspaces and their keys."""


@workspace.command("create")
@click.argument("name")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone for schedules")
@click.pass_context
def workspace_create(ctx: click.Context, name: str, timezone: str) -> None:
    """Create a workspace and print its write key and admin token (shown once)."""
    from touchline.journeys.localtime import zone
    from touchline.store.workspaces import create_workspace

    if zone(timezone, "").key != timezone and timezone != "UTC":
        raise click.BadParameter(f"{timezone!r} is not an IANA time zone", param_hint="--timezone")
    created = create_workspace(_engine(ctx), name, now=SystemClock().now(), timezone=timezone)
    click.echo(f"workspace:   {created.id}")
    click.echo(f"write key:   {created.write_key}")
    click.echo(f"admin token: {created.admin_token}")


# -- journeys --------------------------------------------------------------------


def _load_dir(directory: str) -> list[Any]:
    from touchline.journeys.loader import load_journey_dir

    try:
        return load_journey_dir(directory)
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{len(exc.problems)} problem(s) found", err=True)
        sys.exit(1)


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def validate(directory: str) -> None:
    """Check every journey file in DIRECTORY; report each error with file, line and field."""
    loaded = _load_dir(directory)
    templates = _load_templates(directory)
    found = _load_segments(directory)
    click.echo(f"{len(loaded)} journey(s) valid, {len(templates)} template(s) valid")
    if found:
        click.echo(f"{len(found)} segment(s) valid")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def apply(ctx: click.Context, directory: str, workspace: str | None) -> None:
    """Validate and apply the journeys in DIRECTORY; changed ones get a new version."""
    from touchline.audience.segment_store import save_segments
    from touchline.store.db import transaction
    from touchline.store.journeys import apply_journeys
    from touchline.store.templates import apply_templates

    loaded = _load_dir(directory)
    templates = _load_templates(directory)
    found = _load_segments(directory)
    ws = _workspace(ctx, workspace)
    now = SystemClock().now()
    with transaction(_engine(ctx)) as conn:
        saved = save_segments(conn, ws, found, now=now)
        _check_segment_triggers(conn, ws, loaded)
        results = apply_journeys(conn, ws, loaded, now=now)
        applied_templates = apply_templates(conn, ws, templates, now=now)
    for r in results:
        click.echo(f"{r.key}: v{r.version} {r.change}")
    for t in applied_templates:
        click.echo(f"template {t['template']}: {t['change']}")
    for item in saved:
        click.echo(f"segment {item.key}: {item.change}")
        if item.needs_build:
            _build_with_progress(ctx, ws, item.key, announce=None)


# -- segments --------------------------------------------------------------------


def _load_segments(directory: str) -> list[Any]:
    """The segments of a pack's ``segments/`` folder (none when it has no such folder)."""
    from touchline.audience.segment_store import load_segment_dir

    try:
        return load_segment_dir(directory)
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{len(exc.problems)} problem(s) found", err=True)
        sys.exit(1)


def _check_segment_triggers(conn: Any, workspace_id: str, loaded: list[Any]) -> None:
    """Journeys triggered by a segment must name one the workspace has (or the pack adds)."""
    from sqlalchemy import select

    from touchline.store.tables import segments

    wanted = {j.spec.trigger.segment: j.path for j in loaded if j.spec.trigger.segment}
    if not wanted:
        return
    known = set(
        conn.execute(
            select(segments.c.key).where(segments.c.workspace_id == workspace_id)
        ).scalars()
    )
    missing = sorted(k for k in wanted if k not in known)
    if missing:
        for key in missing:
            click.echo(
                f"{wanted[key]}: trigger.segment: no segment {key!r} (add segments/{key}.yaml)",
                err=True,
            )
        click.echo(f"{len(missing)} problem(s) found", err=True)
        sys.exit(1)


def _build_with_progress(
    ctx: click.Context, workspace_id: str, key: str, *, announce: bool | None
) -> None:
    """Build one segment with a progress bar over the workspace's profiles."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from touchline.audience.segment_runtime import build_segment

    with Progress(
        TextColumn(f"building {key}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task(key, total=None)

        def moved(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = build_segment(
                _engine(ctx),
                workspace_id,
                key,
                now=SystemClock().now(),
                announce=announce,
                progress=moved,
            )
        except TouchlineError as exc:
            raise click.ClickException(exc.message) from None
    told = "announced" if result.announced else "not announced"
    click.echo(
        f"segment {key}: {result.members} member(s), {result.entered} entered, "
        f"{result.exited} exited ({told}), {result.timers} timer(s)"
    )


@main.group()
def segments() -> None:
    """Segments: list them, look at one, build them."""


@segments.command("list")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def segments_list(ctx: click.Context, workspace: str | None) -> None:
    """Every segment with its status and size."""
    from touchline.audience.segment_store import list_segments

    ws = _workspace(ctx, workspace)
    with _engine(ctx).connect() as conn:
        rows = list_segments(conn, ws)
    if not rows:
        click.echo("no segments; add DIR/segments/*.yaml and run `touchline apply DIR`")
    for row in rows:
        click.echo(f"{row['segment']:<32} {row['size']:>10}  {row['status']}")


@segments.command("show")
@click.argument("key")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def segments_show(ctx: click.Context, key: str, workspace: str | None) -> None:
    """One segment: size, status, members sample and its definition."""
    from touchline.audience.segment_store import get_segment, member_sample

    ws = _workspace(ctx, workspace)
    try:
        with _engine(ctx).connect() as conn:
            found = get_segment(conn, ws, key)
            sample = member_sample(conn, ws, key, limit=10)
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"segment: {found['segment']} ({found['name']})")
    click.echo(f"status:  {found['status']}, built {found['built_at'] or 'never'}")
    click.echo(f"size:    {found['size']}")
    for member in sample:
        click.echo(
            f"  {member['user_id'] or '#' + str(member['profile_id'])}  since {member['entered_at']}"
        )
    click.echo("")
    click.echo(found["source"].rstrip())


@segments.command("build")
@click.argument("key", required=False)
@click.option("--all", "build_all", is_flag=True, help="build every segment of the workspace")
@click.option(
    "--announce/--quiet",
    default=None,
    help="make entries and exits Segment Entered/Exited events (default: unless first build)",
)
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def segments_build(
    ctx: click.Context,
    key: str | None,
    build_all: bool,
    announce: bool | None,
    workspace: str | None,
) -> None:
    """Recompute KEY's members from the events (or every segment with --all)."""
    from touchline.audience.segment_store import list_segments

    if bool(key) == build_all:
        raise click.UsageError("name one segment KEY, or pass --all")
    ws = _workspace(ctx, workspace)
    keys = [key] if key else []
    if build_all:
        with _engine(ctx).connect() as conn:
            keys = [row["segment"] for row in list_segments(conn, ws)]
    for one in keys:
        assert one is not None
        _build_with_progress(ctx, ws, one, announce=announce)


@segments.command("lifecycle")
@click.option("--new-days", default=14, show_default=True, help="registered within, and no order")
@click.option("--active-days", default=30, show_default=True, help="ordered or visited within")
@click.option(
    "--sleeping-days", default=90, show_default=True, help="silent since --active-days, up to this"
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="write the files into this pack folder"
)
def segments_lifecycle(
    new_days: int, active_days: int, sleeping_days: int, out: str | None
) -> None:
    """Lifecycle stages, RFM scores and email engagement as segment files to start from."""
    from touchline.audience.segment_templates import lifecycle_segments

    try:
        files = lifecycle_segments(
            new_days=new_days, active_days=active_days, sleeping_days=sleeping_days
        )
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    if out is None:
        for name, text in files.items():
            click.echo(f"# --- segments/{name}")
            click.echo(text)
        return
    folder = Path(out) / "segments"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
        click.echo(f"wrote {folder / name}")


def _load_templates(directory: str) -> list[Any]:
    """The templates of a pack's ``templates/`` folder (none when it has no such folder)."""
    from touchline.messaging.template_files import load_template_dir

    folder = Path(directory) / "templates"
    if not folder.is_dir():
        return []
    try:
        return load_template_dir(folder)
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{len(exc.problems)} problem(s) found", err=True)
        sys.exit(1)


@main.command()
def schema() -> None:
    """Print the JSON Schema of journey files (for editor completion)."""
    from touchline.journeys.schema import journey_json_schema

    click.echo(json.dumps(journey_json_schema(), indent=2, ensure_ascii=False))


@main.command()
@click.argument("template")
@click.option("--profile", "profile_ref", required=True, help="user id, or #internal-id")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.option(
    "--event",
    "event_file",
    type=click.File("r", encoding="utf-8"),
    help="JSON file of a Segment event to render as the trigger (default: the customer's latest)",
)
@click.option(
    "--price-per-part", default="0", show_default=True, help="SMS price of one part, for the cost"
)
@click.pass_context
def preview(
    ctx: click.Context,
    template: str,
    profile_ref: str,
    workspace: str | None,
    event_file: Any,
    price_per_part: str,
) -> None:
    """Render TEMPLATE for one customer, as they would receive it; SMS shows encoding and parts."""
    from decimal import Decimal, InvalidOperation

    from sqlalchemy import select

    from touchline.audience.recommendations import Recommender
    from touchline.messaging import sms
    from touchline.messaging.dispatcher import profile_scope
    from touchline.messaging.links import links_for_message
    from touchline.messaging.templates import RenderContext
    from touchline.store.ingest import get_profile
    from touchline.store.tables import events, profiles
    from touchline.store.templates import TemplateCache

    try:
        price = Decimal(price_per_part)
    except InvalidOperation:
        raise click.BadParameter("not a number", param_hint="--price-per-part") from None
    ws = _workspace(ctx, workspace)
    try:
        with _engine(ctx).connect() as conn:
            found = get_profile(conn, ws, profile_ref)
            row = conn.execute(select(profiles).where(profiles.c.id == found["id"])).one()
            if event_file is not None:
                event = json.load(event_file)
            else:
                last = conn.execute(
                    select(events.c.name, events.c.properties, events.c.timestamp)
                    .where(events.c.profile_id == row.id, events.c.type == "track")
                    .order_by(events.c.id.desc())
                    .limit(1)
                ).first()
                event = (
                    {
                        "name": last.name,
                        "properties": last.properties,
                        "timestamp": last.timestamp.isoformat(),
                    }
                    if last
                    else {}
                )
            compiled = TemplateCache().get(conn, ws, template)
            links = links_for_message(
                conn,
                public_url=_settings(ctx).public_url,
                workspace_id=ws,
                profile_id=row.id,
                channel=compiled.template.channel,
                message_id=None,
                now=SystemClock().now(),
            )
        rendered = compiled.render(
            RenderContext(
                profile=profile_scope(row),
                now=SystemClock().now(),
                event=event,
                locale=(row.locale or "ru_RU").replace("-", "_"),
                timezone=row.timezone,
                links=links,
                recommend=Recommender(_engine(ctx), workspace_id=ws, profile_id=row.id),
            )
        )
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    channel = compiled.template.channel
    click.echo(f"template: {template} ({channel})")
    if rendered.subject:
        click.echo(f"subject:  {rendered.subject}")
    click.echo("")
    click.echo(rendered.text or "")
    if channel == "sms":
        info = sms.analyse(rendered.text or "")
        click.echo("")
        click.echo(
            f"encoding: {info.encoding}, characters: {info.characters}, "
            f"parts: {info.parts}, cost: {sms.cost(info, price_per_part=price)}"
        )


# -- promo codes -----------------------------------------------------------------


@main.group()
def promo() -> None:
    """Promo code pools: create them, fill them, watch them."""


def _in_transaction(ctx: click.Context, work: Any) -> Any:
    """Run ``work(conn)`` in one write transaction; touchline errors become `Error: ...`."""
    from touchline.store.db import transaction

    try:
        with transaction(_engine(ctx)) as conn:
            return work(conn)
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None


@promo.command("create")
@click.argument("key")
@click.option("--name", default="", help="what the pool is for (default: the key)")
@click.option("--valid-from", type=click.DateTime(), help="codes are issued from then (UTC)")
@click.option("--valid-until", type=click.DateTime(), help="codes are issued until then (UTC)")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def promo_create(
    ctx: click.Context,
    key: str,
    name: str,
    valid_from: datetime | None,
    valid_until: datetime | None,
    workspace: str | None,
) -> None:
    """Create the empty promo pool KEY; templates take codes with promo_code("KEY")."""
    from touchline.store.promo import create_pool

    ws = _workspace(ctx, workspace)
    now = SystemClock().now()
    pool = _in_transaction(
        ctx,
        lambda conn: create_pool(
            conn, ws, key=key, name=name, valid_from=valid_from, valid_until=valid_until, now=now
        ),
    )
    click.echo(f"promo pool {pool.key} created")


@promo.command("import")
@click.argument("pool")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def promo_import(ctx: click.Context, pool: str, file: Any, workspace: str | None) -> None:
    """Add the codes in FILE to POOL: a CSV (its `code` column, else the first) or one a line."""
    from touchline.store.promo import import_codes, parse_codes_csv

    ws = _workspace(ctx, workspace)
    codes = parse_codes_csv(file.read())
    result = _in_transaction(ctx, lambda conn: import_codes(conn, ws, pool, codes))
    click.echo(f"{result.added} added, {result.duplicates} duplicates, {result.invalid} invalid")
    for sample in result.invalid_samples:
        click.echo(f"  invalid: {sample!r}", err=True)


@promo.command("generate")
@click.argument("pool")
@click.option("--count", type=click.IntRange(min=1), required=True, help="codes to make")
@click.option("--prefix", default="", help="fixed start of every code, e.g. CART-")
@click.option("--length", type=int, help="random symbols after the prefix (default 11)")
@click.option(
    "--out", type=click.File("w", encoding="utf-8"), default="-", help="file for the codes"
)
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def promo_generate(
    ctx: click.Context,
    pool: str,
    count: int,
    prefix: str,
    length: int | None,
    out: Any,
    workspace: str | None,
) -> None:
    """Make COUNT new codes in POOL and print them, one a line, for the shop's checkout."""
    from touchline.store.promo import DEFAULT_LENGTH, generate_codes

    ws = _workspace(ctx, workspace)
    size = length or DEFAULT_LENGTH
    codes = _in_transaction(
        ctx, lambda conn: generate_codes(conn, ws, pool, count=count, prefix=prefix, length=size)
    )
    for code in codes:
        out.write(code + "\n")
    click.echo(f"{len(codes)} codes generated in {pool}", err=True)


@promo.command("list")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def promo_list(ctx: click.Context, workspace: str | None) -> None:
    """Every promo pool: validity, codes in all, issued, redeemed and left."""
    from touchline.store.promo import pool_stats

    ws = _workspace(ctx, workspace)
    with _engine(ctx).connect() as conn:
        pools = pool_stats(conn, ws, now=SystemClock().now())
    if not pools:
        click.echo("no promo pools yet: run `touchline promo create KEY`")
        return
    click.echo(
        f"{'POOL':<20} {'STATUS':<9} {'TOTAL':>8} {'ISSUED':>8} {'REDEEMED':>8} {'LEFT':>8}  UNTIL"
    )
    for p in pools:
        click.echo(
            f"{p['key']:<20} {p['status']:<9} {p['total']:>8} {p['issued']:>8} "
            f"{p['redeemed']:>8} {p['left']:>8}  {p['valid_until'] or '-'}"
        )


# -- catalog ---------------------------------------------------------------------

# Rejected rows printed one by one; the rest are counted.
SHOWN_REJECTIONS = 50


@main.group()
def catalog() -> None:
    """The product catalog: restocks and price drops reach the customers who showed interest."""


@catalog.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--batch",
    default=500,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="rows per transaction",
)
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def catalog_import(ctx: click.Context, file: str, batch: int, workspace: str | None) -> None:
    """Create or update the products of FILE, a CSV whose first line names the columns.

    Columns: id (or product_id), name, url, image, price, currency, category,
    in_stock; any other column is a custom attribute. Only the columns present
    change. Bad rows are reported with their line and skipped; the exit status
    is 1 when there were any.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from touchline.audience.catalog import import_rows, read_catalog_csv

    ws = _workspace(ctx, workspace)
    with open(file, "rb") as raw:
        total = max(sum(1 for _ in raw) - 1, 0)
    now = SystemClock().now()
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn())
    with (
        open(file, encoding="utf-8-sig", newline="") as text,
        Progress(*columns, console=Console(stderr=True), transient=True) as bar,
    ):
        task = bar.add_task("rows", total=total)
        try:
            result = import_rows(
                _engine(ctx),
                ws,
                read_catalog_csv(text),
                now=now,
                batch=batch,
                progress=lambda line: bar.update(task, completed=max(line - 1, 0)),
            )
        except UnicodeDecodeError as exc:
            raise click.ClickException(f"{file}: not UTF-8 text ({exc.reason})") from None
        except TouchlineError as exc:
            raise click.ClickException(f"{file}: {exc.message}") from None
    click.echo(
        f"{result.created} created, {result.updated} updated, {result.unchanged} unchanged, "
        f"{len(result.rejected)} rejected; {result.restocks} back in stock, "
        f"{result.price_drops} price drops to announce"
    )
    for row in result.rejected[:SHOWN_REJECTIONS]:
        click.echo(f"{file}:{row['at']}: {row['message']}", err=True)
    if len(result.rejected) > SHOWN_REJECTIONS:
        click.echo(
            f"... and {len(result.rejected) - SHOWN_REJECTIONS} more rejected rows", err=True
        )
    if result.rejected:
        ctx.exit(1)


# -- simulation ------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO-8601 time", param_hint="--until"
        ) from None


@main.command()
@click.option(
    "--journeys", "journeys_dir", required=True, type=click.Path(exists=True, file_okay=False)
)
@click.option("--events", "events_file", required=True, type=click.File("r", encoding="utf-8"))
@click.option("--until", help="keep the virtual clock running up to this ISO-8601 time")
@click.option("--timezone", default="UTC", show_default=True, help="workspace time zone")
@click.option(
    "--settings",
    "settings_file",
    type=click.Path(exists=True, dir_okay=False),
    help="workspace settings (YAML or JSON: caps, quiet_hours, double_opt_in...) to simulate with",
)
def simulate(
    journeys_dir: str,
    events_file: Any,
    until: str | None,
    timezone: str,
    settings_file: str | None,
) -> None:
    """Replay Segment-format events (NDJSON) through the journeys on a virtual clock.

    Prints one JSON object per message with its "outcome" under the delivery
    rules (sent, deferred or skipped), the "reason" and "at", the time it
    would really go out. Nothing is delivered.
    """
    from touchline.journeys.localtime import zone
    from touchline.simulation import Simulation, event_time, read_ndjson

    if zone(timezone, "").key != timezone and timezone != "UTC":
        raise click.BadParameter(f"{timezone!r} is not an IANA time zone", param_hint="--timezone")
    loaded = _load_dir(journeys_dir)
    try:
        raws = read_ndjson(events_file, source=getattr(events_file, "name", "events"))
    except InputError as exc:
        raise click.ClickException(exc.message) from None
    if not raws:
        raise click.ClickException("the events file holds no events")
    times = [event_time(r) for r in raws]
    end = _parse_time(until) or (max(times) + SIMULATE_TAIL)
    settings = _settings_file(settings_file) if settings_file else None
    counts: dict[tuple[str, str], int] = {}
    with Simulation(
        loaded,
        start=min(times),
        timezone=timezone,
        settings=settings,
        segments=_load_segments(journeys_dir),
    ) as sim:
        sim.add_all(raws)
        try:
            for message in sim.run(until=end):
                click.echo(message.to_json())
                key = (message.journey, message.channel)
                counts[key] = counts.get(key, 0) + 1
        except TouchlineError as exc:
            raise click.ClickException(exc.message) from None
        totals = sim.worker.totals
    click.echo(
        f"simulated {sim.events_ingested} events up to {end.isoformat()}: "
        f"{totals.stats.entered} entries, {sum(counts.values())} messages, "
        f"{totals.stats.exited} exits, {totals.stats.conversions} goals, {totals.failed} failures",
        err=True,
    )
    for (journey_key, channel), n in sorted(counts.items()):
        click.echo(f"  {journey_key} / {channel}: {n}", err=True)
    outcomes = sim.outcomes
    held = ", ".join(
        f"{rule}: {n}"
        for rule, n in sorted(outcomes.items())
        if ":" in rule or rule not in ("sent", "deferred")
    )
    click.echo(
        f"delivery rules: {outcomes['sent']} sent at once, {outcomes['deferred']} deferred"
        + (f"; {held}" if held else ""),
        err=True,
    )


def _settings_file(path: str) -> dict[str, Any]:
    """Workspace settings from a YAML/JSON file, checked as the admin API checks them."""
    from touchline.journeys.loader import read_yaml
    from touchline.messaging.settings import WorkspaceSettings

    try:
        data, _, problems = read_yaml(Path(path).read_text(encoding="utf-8"), file=path)
        if problems:
            raise SpecError(problems)
        if not isinstance(data, dict):
            raise InputError("workspace settings must be a mapping")
        WorkspaceSettings.parse(data)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None
    except InputError as exc:
        raise click.ClickException(f"{path}: {exc.message}") from None
    return data


@main.command()
@click.option("--customers", default=2000, show_default=True, help="synthetic customers")
@click.option("--days", default=28, show_default=True, help="days of shop activity")
@click.option("--seed", default=7, show_default=True, help="random seed")
@click.pass_context
def demo(ctx: click.Context, customers: int, days: int, seed: int) -> None:
    """Run a synthetic shop through the e-commerce journeys and print a report."""
    from touchline.demo import run_demo

    try:
        run_demo(
            database_url=_settings(ctx).database_url,
            customers=customers,
            days=days,
            seed=seed,
            out=sys.stdout,
        )
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None


# -- processes -------------------------------------------------------------------


def _worker(ctx: click.Context, *, metrics: Any = None) -> Any:
    from touchline.worker.loop import Worker

    s = _settings(ctx)
    return Worker(
        _engine(ctx),
        clock=SystemClock(),
        owner=s.worker_id,
        batch=s.claim_batch,
        lease_seconds=s.lease_seconds,
        poll_ms=s.poll_ms,
        metrics=metrics,
    )


@main.command()
@click.option("--host", help="bind address (default TOUCHLINE_HOST or 127.0.0.1)")
@click.option("--port", type=int, help="port (default TOUCHLINE_PORT or 8000)")
@click.option("--no-worker", is_flag=True, help="serve the API only")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, no_worker: bool) -> None:
    """Run the HTTP API and a worker in one process."""
    import uvicorn

    from touchline.web.app import create_app

    s = _settings(ctx)
    app = create_app(s, engine=_engine(ctx), clock=SystemClock())
    if not no_worker:
        # The threads count into the app's metrics, so /metrics shows their work too.
        metrics = app.state.metrics
        app.router.lifespan_context = _worker_lifespan(
            _worker(ctx, metrics=metrics), _dispatcher(ctx, metrics=metrics)
        )
    # log_config=None: uvicorn's own records go through touchline's handler (JSON, redacted).
    uvicorn.run(
        app,
        host=host or s.host,
        port=port or s.port,
        log_level=s.log_level.lower(),
        log_config=None,
    )


#: Captured messages a long-running dispatcher keeps in memory (each is in the outbox too).
CAPTURE_KEEP = 1000


def _dispatcher(ctx: click.Context, *, metrics: Any = None) -> Any:
    """A dispatcher: email over SMTP when TOUCHLINE_SMTP_HOST is set, call-centre
    tasks into the operator queue; everything else through the capture channel
    (messages are rendered and kept, not sent)."""
    from touchline.messaging.channels.callcentre import CallCentreChannel
    from touchline.messaging.channels.capture import CaptureChannel
    from touchline.messaging.dispatcher import DEFAULT_CHANNEL, Dispatcher

    s = _settings(ctx)
    channels: dict[str, Any] = {
        DEFAULT_CHANNEL: CaptureChannel(keep=CAPTURE_KEEP),
        "call": CallCentreChannel(_engine(ctx), clock=SystemClock()),
    }
    if s.smtp_host:
        from touchline.messaging.channels.smtp import SmtpChannel, SmtpSettings

        channels["email"] = SmtpChannel(
            SmtpSettings(
                host=s.smtp_host,
                port=s.smtp_port,
                from_address=s.smtp_from,
                security=s.smtp_security,  # type: ignore[arg-type]
                username=s.smtp_username,
                password=s.smtp_password,
            )
        )
    from touchline.messaging.registry import ChannelRegistry

    registry = ChannelRegistry(
        _engine(ctx), defaults=channels, clock=SystemClock(), public_url=s.public_url
    )
    return Dispatcher(
        _engine(ctx),
        clock=SystemClock(),
        owner=s.worker_id,
        channels=channels,
        registry=registry,
        public_url=s.public_url,
        batch=s.claim_batch,
        lease_seconds=s.lease_seconds,
        metrics=metrics,
    )


def _start(*loops: Any) -> tuple[threading.Event, list[threading.Thread]]:
    stop = threading.Event()
    threads = [
        threading.Thread(target=loop.run, args=(stop,), name=type(loop).__name__, daemon=True)
        for loop in loops
    ]
    for thread in threads:
        thread.start()
    return stop, threads


def _worker_lifespan(*loops: Any) -> Any:
    """Run the worker and dispatcher in threads for the app's lifetime; stop them on shutdown.

    Tied to the lifespan so that SIGTERM, which uvicorn turns into a graceful
    shutdown, also lets the worker finish its batch instead of being cut off.
    """
    from contextlib import asynccontextmanager

    from starlette.concurrency import run_in_threadpool

    @asynccontextmanager
    async def lifespan(_app: Any) -> Any:
        stop, threads = _start(*loops)
        try:
            yield
        finally:
            stop.set()
            for thread in threads:
                await run_in_threadpool(thread.join, 30)

    return lifespan


@main.command()
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="serve Prometheus metrics on this port (0: any free port; the log says which)",
)
@click.option(
    "--metrics-host",
    help="address for --metrics-port (default TOUCHLINE_HOST or 127.0.0.1)",
)
@click.pass_context
def worker(ctx: click.Context, metrics_port: int | None, metrics_host: str | None) -> None:
    """Run a worker and a dispatcher alone; start any number against one PostgreSQL."""
    import signal

    metrics, server = None, None
    if metrics_port is not None:
        from touchline.ops.metrics import Metrics, serve_metrics

        s = _settings(ctx)
        metrics = Metrics()
        metrics.watch_queues(_engine(ctx), clock=SystemClock())
        server = serve_metrics(
            metrics, host=metrics_host or s.host, port=metrics_port, token=s.metrics_token
        )
        click.echo(f"metrics on http://{server.host}:{server.port}/metrics", err=True)
    w = _worker(ctx, metrics=metrics)
    stop, threads = _start(_dispatcher(ctx, metrics=metrics))
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"worker {w.owner} started", err=True)
    try:
        w.run(stop)
    except KeyboardInterrupt:
        stop.set()
    for thread in threads:
        thread.join(timeout=30)
    if server is not None:
        server.close()


# -- reports ---------------------------------------------------------------------


@main.group()
def report() -> None:
    """Reports over the stored events."""


@report.command("funnel")
@click.option(
    "--steps",
    required=True,
    help='event names in order, comma-separated, e.g. "Product Viewed,Order Completed"',
)
@click.option(
    "--where",
    "conditions",
    multiple=True,
    metavar="N=CONDITION",
    help="a condition step N's event must meet, e.g. '2=event.properties.total > 100'",
)
@click.option("--window", default="7d", show_default=True, help="time allowed after step 1")
@click.option("--since", type=click.DateTime(), help="period start, UTC (default: until - 30d)")
@click.option("--until", type=click.DateTime(), help="period end, exclusive, UTC (default: now)")
@click.option("--split-by-journey", "journey", metavar="KEY", help="split by this journey")
@click.option(
    "--split-by-segment",
    "segment",
    metavar="KEY",
    help="split by membership of this segment when each customer started",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def report_funnel(
    ctx: click.Context,
    steps: str,
    conditions: tuple[str, ...],
    window: str,
    since: datetime | None,
    until: datetime | None,
    journey: str | None,
    segment: str | None,
    fmt: str,
    workspace: str | None,
) -> None:
    """Customers reaching each of a sequence of events within a window: where they drop."""
    from touchline.measure.funnels import (
        build_funnel,
        compute_funnel,
        parse_steps,
        render_table,
        resolve_period,
    )

    try:
        funnel = build_funnel(parse_steps(steps, conditions), window=window)
        start, end = resolve_period(since, until, now=SystemClock().now())
    except TouchlineError as exc:
        raise click.UsageError(exc.message) from None
    ws = _workspace(ctx, workspace)
    try:
        with _engine(ctx).connect() as conn:
            found = compute_funnel(
                conn,
                ws,
                funnel,
                since=start,
                until=end,
                split_by_journey=journey,
                split_by_segment=segment,
            )
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    if fmt == "json":
        click.echo(json.dumps(found.as_dict(), indent=2, ensure_ascii=False))
    elif fmt == "csv":
        click.echo(found.to_csv(), nl=False)
    else:
        render_table(found, sys.stdout)


_DAY = click.DateTime(formats=["%Y-%m-%d"])
_SINCE = click.option("--since", type=_DAY, help="first UTC day (default: 30 days up to --until)")
_UNTIL = click.option("--until", type=_DAY, help="last UTC day, included (default: today)")
_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
_WORKSPACE = click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")


def _rollup_report(
    ctx: click.Context, workspace: str | None, fmt: str, since: Any, until: Any, work: Any
) -> None:
    """Print ``work(conn, ws, first_day, last_day)``, a report of :mod:`touchline.measure.reports`."""
    from touchline.measure.reports import resolve_days, write_report

    try:
        days = resolve_days(
            since and since.date(), until and until.date(), today=SystemClock().now().date()
        )
    except TouchlineError as exc:
        raise click.UsageError(exc.message) from None
    ws = _workspace(ctx, workspace)
    try:
        with _engine(ctx).connect() as conn:
            found = work(conn, ws, *days)
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    write_report(found, fmt, sys.stdout)


@report.command("messages")
@_SINCE
@_UNTIL
@click.option("--by", default="", help="any of journey,step,variant,channel,day, comma-separated")
@_FORMAT
@_WORKSPACE
@click.pass_context
def report_messages(
    ctx: click.Context, since: Any, until: Any, by: str, fmt: str, workspace: str | None
) -> None:
    """Messages sent, delivered, opened, clicked... and their rates, per group."""
    from touchline.measure.reports import parse_by, report

    try:
        groups = parse_by(by)
    except TouchlineError as exc:
        raise click.UsageError(exc.message) from None
    _rollup_report(
        ctx,
        workspace,
        fmt,
        since,
        until,
        lambda conn, ws, start, end: report(conn, ws, since=start, until=end, by=groups),
    )


@report.command("journeys")
@_SINCE
@_UNTIL
@_FORMAT
@_WORKSPACE
@click.pass_context
def report_journeys(
    ctx: click.Context, since: Any, until: Any, fmt: str, workspace: str | None
) -> None:
    """Entries, goal conversions and revenue per journey, and its uplift over the holdout."""
    from touchline.measure.reports import JourneyReport, journey_summary

    _rollup_report(
        ctx,
        workspace,
        fmt,
        since,
        until,
        lambda conn, ws, start, end: JourneyReport(
            start, end, journey_summary(conn, ws, since=start, until=end)
        ),
    )


@report.command("variants")
@click.argument("journey")
@click.option("--step", required=True, help="the split step of JOURNEY whose variants to compare")
@click.option(
    "--metric",
    type=click.Choice(["conversion", "click", "open", "revenue"]),
    default="conversion",
    show_default=True,
)
@click.option(
    "--min-sample",
    type=click.IntRange(min=1),
    help="entries (messages for click, open) each variant needs; default: the split's own, else 1000",
)
@_SINCE
@_UNTIL
@_FORMAT
@_WORKSPACE
@click.pass_context
def report_variants(
    ctx: click.Context,
    journey: str,
    step: str,
    metric: Any,
    min_sample: int | None,
    since: Any,
    until: Any,
    fmt: str,
    workspace: str | None,
) -> None:
    """Compare the variants of a split of JOURNEY; name a winner only when the data say so."""
    from touchline.measure.reports import variant_report

    _rollup_report(
        ctx,
        workspace,
        fmt,
        since,
        until,
        lambda conn, ws, start, end: variant_report(
            conn,
            ws,
            journey,
            step,
            metric=metric,
            since=start,
            until=end,
            min_sample=min_sample,
        ),
    )


# -- broadcasts ------------------------------------------------------------------


@main.group()
def broadcast() -> None:
    """One-off and scheduled sends to a segment: create, schedule, show, cancel."""


@broadcast.command("create")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def broadcast_create(ctx: click.Context, file: str, workspace: str | None) -> None:
    """Create the broadcast in FILE (YAML); it is scheduled if it names send_at, else a draft."""
    from touchline.audience.broadcast_spec import load_broadcast_text
    from touchline.audience.broadcasts import create_broadcast

    source = Path(file).read_text(encoding="utf-8-sig")
    try:
        spec = load_broadcast_text(source, file=file)
    except SpecError as exc:
        raise click.ClickException(exc.message) from None
    ws = _workspace(ctx, workspace)
    now = SystemClock().now()
    found = _in_transaction(
        ctx, lambda conn: create_broadcast(conn, ws, spec, source=source, now=now)
    )
    when = f" for {found['send_at']}" if found["send_at"] else "; schedule it to send"
    click.echo(f"broadcast {found['broadcast']} created: {found['status']}{when}")


@broadcast.command("schedule")
@click.argument("key")
@click.option("--at", "at", help="ISO-8601 time to start (default: now)")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def broadcast_schedule(ctx: click.Context, key: str, at: str | None, workspace: str | None) -> None:
    """Schedule the draft KEY to start at --at (or now)."""
    from touchline.audience.broadcasts import schedule_broadcast

    ws = _workspace(ctx, workspace)
    now = SystemClock().now()
    send_at = _parse_time(at) or now
    found = _in_transaction(
        ctx, lambda conn: schedule_broadcast(conn, ws, key, send_at=send_at, now=now)
    )
    click.echo(f"broadcast {key} scheduled for {found['send_at']}")


@broadcast.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="print the whole record as JSON")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def broadcast_show(ctx: click.Context, key: str, as_json: bool, workspace: str | None) -> None:
    """Status, progress and the A/B decision of broadcast KEY."""
    from touchline.audience.broadcasts import get_broadcast

    ws = _workspace(ctx, workspace)
    try:
        with _engine(ctx).connect() as conn:
            found = get_broadcast(conn, ws, key)
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))
        return
    p = found["progress"]
    click.echo(f"{found['broadcast']}: {found['name']} [{found['status']}]")
    click.echo(
        f"  audience {found['audience_segment']} via {found['channel']}, "
        f"send at {found['send_at'] or '-'}"
    )
    click.echo(
        f"  customers {p['audience']} (unreachable {p['unreachable']}), queued {p['queued']}, "
        f"pending {p['pending']}"
    )
    click.echo(
        f"  sent {p['sent']}, delivered {p['delivered']}, opened {p['opened']}, "
        f"clicked {p['clicked']}, failed {p['failed']}, skipped {p['skipped']}"
    )
    for reason, n in p["skipped_by_reason"].items():
        click.echo(f"    skipped {reason or '(no reason)'}: {n}")
    for name, v in p["variants"].items():
        click.echo(
            f"  variant {name}: sent {v['sent']}, opened {v['opened']}, clicked {v['clicked']}"
        )
    decision = found["decision"]
    if decision:
        click.echo(f"  winner {decision['winner']} ({decision['chosen_by']}): {decision['reason']}")


@broadcast.command("cancel")
@click.argument("key")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def broadcast_cancel(ctx: click.Context, key: str, workspace: str | None) -> None:
    """Cancel broadcast KEY: nobody else is queued, pending messages are skipped."""
    from touchline.audience.broadcasts import cancel_broadcast

    ws = _workspace(ctx, workspace)
    now = SystemClock().now()
    found = _in_transaction(ctx, lambda conn: cancel_broadcast(conn, ws, key, now=now))
    click.echo(f"broadcast {key} cancelled; {found['cancelled_messages']} pending messages skipped")


@broadcast.command("list")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def broadcast_list(ctx: click.Context, workspace: str | None) -> None:
    """Every broadcast, newest first: status, when, audience and messages queued."""
    from touchline.audience.broadcasts import list_broadcasts

    ws = _workspace(ctx, workspace)
    with _engine(ctx).connect() as conn:
        found = list_broadcasts(conn, ws)
    if not found:
        click.echo("no broadcasts yet: run `touchline broadcast create FILE.yaml`")
        return
    click.echo(f"{'BROADCAST':<24} {'STATUS':<10} {'AUDIENCE':>9} {'QUEUED':>9}  SEND AT")
    for b in found:
        click.echo(
            f"{b['broadcast']:<24} {b['status']:<10} {b['audience']:>9} {b['queued']:>9}  "
            f"{b['send_at'] or '-'}"
        )


# -- experiments -----------------------------------------------------------------


@main.group()
def experiments() -> None:
    """Split tests with `winner:`: their verdicts and winners."""


@experiments.command("evaluate")
@click.pass_context
def experiments_evaluate(ctx: click.Context) -> None:
    """Judge every undecided split test now, as workers do each minute; record winners (final)."""
    from touchline.measure.winners import evaluate_experiments
    from touchline.store.db import transaction

    with transaction(_engine(ctx)) as conn:
        decisions = evaluate_experiments(conn, now=SystemClock().now())
    if not decisions:
        click.echo("no split test with winner: awaits a decision")
    for d in decisions:
        e = d.experiment
        if d.recorded:
            outcome = f"winner {d.winner} recorded"
        else:
            outcome = "another process recorded a winner first" if d.winner else "no winner yet"
        click.echo(f"{e.workspace_id} {e.journey}/{e.step_id}: {outcome} ({d.verdict.reason})")


# -- customers: import, export, personal data ------------------------------------


@main.group("import")
def import_group() -> None:
    """Load customers from files."""


@import_group.command("customers")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    help="CSV of rejected rows (default: FILE's name + .rejected.csv)",
)
@click.option(
    "--region", default="RU", show_default=True, help="country of phone numbers written without +"
)
@click.option(
    "--restart", is_flag=True, help="read a finished file again (stored rows count as duplicates)"
)
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="rows per transaction",
)
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def import_customers_cmd(
    ctx: click.Context,
    file: str,
    report: str | None,
    region: str,
    restart: bool,
    chunk: int,
    workspace: str | None,
) -> None:
    """Import the customers in FILE (.csv or .jsonl): good rows go in, bad ones to a report.

    An interrupted import of the same file resumes after its last committed chunk.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from touchline.audience.customer_import import ImportProgress, import_customers

    ws = _workspace(ctx, workspace)
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("lines"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = progress.add_task("import", total=None)

    def advance(p: ImportProgress) -> None:
        progress.update(task, total=p.total_lines, completed=p.line)

    try:
        with progress:
            result = import_customers(
                _engine(ctx),
                ws,
                file,
                clock=SystemClock(),
                report=report,
                chunk_size=chunk,
                region=region.upper(),
                restart=restart,
                on_chunk=advance,
            )
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    if result.already_done:
        click.echo(f"{file} was imported already (use --restart to read it again)")
    elif result.resumed_after:
        click.echo(f"resumed after line {result.resumed_after}")
    click.echo(
        f"{result.rows} rows: {result.imported} imported, {result.duplicates} already stored, "
        f"{result.rejected} rejected; {result.consents} consent changes recorded"
    )
    if result.report is not None:
        click.echo(f"rejected rows: {result.report}")


@main.group("export")
def export_group() -> None:
    """Write customers to CSV files."""


_OUT = click.option(
    "--out",
    type=click.File("w", encoding="utf-8-sig", lazy=True),
    default="-",
    help="CSV file (default: standard output)",
)
_TRAITS = click.option(
    "--trait",
    "traits",
    multiple=True,
    metavar="NAME",
    help="add a custom trait's column (repeatable)",
)
_CHANNELS = click.option(
    "--channels", default="email,sms", show_default=True, help="consent channels to add columns for"
)


def _export_run(ctx: click.Context, workspace: str | None, work: Any) -> None:
    ws = _workspace(ctx, workspace)
    try:
        result = work(_engine(ctx), ws)
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"{result.rows} customers exported", err=True)


def _channel_list(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


@export_group.command("customers")
@_OUT
@_TRAITS
@_CHANNELS
@_WORKSPACE
@click.pass_context
def export_customers_cmd(
    ctx: click.Context, out: Any, traits: tuple[str, ...], channels: str, workspace: str | None
) -> None:
    """Every customer with profile columns and consent state (importable again)."""
    from touchline.audience.customer_export import export_customers

    _export_run(
        ctx,
        workspace,
        lambda engine, ws: export_customers(
            engine, ws, out, channels=_channel_list(channels), traits=traits
        ),
    )


@export_group.command("segment")
@click.argument("key")
@_OUT
@_TRAITS
@_CHANNELS
@_WORKSPACE
@click.pass_context
def export_segment_cmd(
    ctx: click.Context,
    key: str,
    out: Any,
    traits: tuple[str, ...],
    channels: str,
    workspace: str | None,
) -> None:
    """The current members of segment KEY, with profile columns and consent state."""
    from touchline.audience.customer_export import export_segment

    _export_run(
        ctx,
        workspace,
        lambda engine, ws: export_segment(
            engine, ws, key, out, channels=_channel_list(channels), traits=traits
        ),
    )


@main.group()
def customer() -> None:
    """One customer's personal data: export all of it, or erase it."""


@customer.command("export")
@click.argument("ref")
@click.option(
    "--out",
    type=click.File("w", encoding="utf-8"),
    default="-",
    help="JSON file (default: standard output)",
)
@_WORKSPACE
@click.pass_context
def customer_export(ctx: click.Context, ref: str, out: Any, workspace: str | None) -> None:
    """Everything touchline holds about REF (a user id, or #profile-id) as JSON."""
    from touchline.store.privacy import export_customer

    ws = _workspace(ctx, workspace)
    try:
        with _engine(ctx).connect() as conn:
            data = export_customer(conn, ws, ref)
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    json.dump(data, out, ensure_ascii=False, indent=2)
    out.write("\n")


@customer.command("erase")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option(
    "--by",
    "requested_by",
    default="command line",
    show_default=True,
    help="who asked for it (logged)",
)
@_WORKSPACE
@click.pass_context
def customer_erase(
    ctx: click.Context, ref: str, yes: bool, requested_by: str, workspace: str | None
) -> None:
    """Erase REF's personal data; only the consent record and the erasure log remain."""
    from touchline.store.db import run_in_transaction
    from touchline.store.privacy import erase_customer

    ws = _workspace(ctx, workspace)
    if not yes:
        click.confirm(f"Erase customer {ref} of {ws}? This cannot be undone", abort=True)
    now = SystemClock().now()
    try:
        erasure = run_in_transaction(
            _engine(ctx),
            lambda conn: erase_customer(conn, ws, ref, requested_by=requested_by, now=now),
        )
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    changed = ", ".join(f"{k} {v}" for k, v in sorted(erasure.counts.items()) if v)
    click.echo(
        f"customer #{erasure.profile_id} erased (erasure {erasure.id}): {changed or 'nothing left to change'}"
    )


# -- console users ---------------------------------------------------------------


@main.group("console-user")
def console_user() -> None:
    """People who sign in to the web console (/console)."""


def _new_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@console_user.command("add")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice(["admin", "marketer", "operator"]),
    required=True,
    help="admin: everything; marketer: journeys, templates, reports; operator: the call queue",
)
@click.option("--name", default="", help="shown in the console instead of the email")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="workspace id")
@click.pass_context
def console_user_add(
    ctx: click.Context,
    email: str,
    role: str,
    name: str,
    password_stdin: bool,
    workspace: str | None,
) -> None:
    """Let EMAIL sign in to the console of one workspace (asks for a password)."""
    from touchline.store.db import transaction
    from touchline.web.console.users import create_user

    ws = _workspace(ctx, workspace)
    password = _new_password(password_stdin)
    try:
        with transaction(_engine(ctx)) as conn:
            user_id = create_user(
                conn,
                ws,
                email=email,
                password=password,
                role=role,
                name=name,
                now=SystemClock().now(),
            )
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"console user {user_id}: {email.strip().lower()} ({role}) in {ws}")


@console_user.command("password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@click.pass_context
def console_user_password(ctx: click.Context, email: str, password_stdin: bool) -> None:
    """Set EMAIL's password; their browsers are signed out."""
    from touchline.store.db import transaction
    from touchline.web.console.users import set_password

    password = _new_password(password_stdin)
    try:
        with transaction(_engine(ctx)) as conn:
            set_password(conn, email, password, now=SystemClock().now())
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"password of {email} changed")


@console_user.command("disable")
@click.argument("email")
@click.pass_context
def console_user_disable(ctx: click.Context, email: str) -> None:
    """Stop EMAIL signing in; their browsers are signed out."""
    from touchline.store.db import transaction
    from touchline.web.console.users import disable_user

    try:
        with transaction(_engine(ctx)) as conn:
            disable_user(conn, email, now=SystemClock().now())
    except TouchlineError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"{email} can no longer sign in")


@console_user.command("list")
@click.option("--workspace", envvar="TOUCHLINE_WORKSPACE", help="only this workspace")
@click.pass_context
def console_user_list(ctx: click.Context, workspace: str | None) -> None:
    """Console users: workspace, email, role, last sign-in."""
    from touchline.web.console.users import list_users

    with _engine(ctx).connect() as conn:
        users = list_users(conn, workspace)
    for u in users:
        state = "disabled" if u["disabled_at"] else "active"
        seen = u["last_signed_in_at"].isoformat() if u["last_signed_in_at"] else "never"
        click.echo(f"{u['workspace_id']}  {u['email']}  {u['role']}  {state}  last sign-in: {seen}")


if __name__ == "__main__":  # pragma: no cover
    main()
