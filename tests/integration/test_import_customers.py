"""Importing and exporting customers, on SQLite and PostgreSQL (the `engine` fixture).

An import stores good rows as identify events through the ingest path, reports
bad rows by line and field, resumes after a crash from its last committed
chunk, never stores a row twice, and writes consent columns to the ledger.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from touchline.audience.customer_export import export_customers, export_segment, header
from touchline.audience.customer_import import (
    ImportFileError,
    ImportProgress,
    file_summary,
    import_customers,
)
from touchline.audience.customer_rows import CustomerRow, parse_row
from touchline.cli import main
from touchline.errors import NotFound
from touchline.store.consent import Provenance, ledger, unsubscribe
from touchline.store.db import transaction
from touchline.store.ingest import get_profile
from touchline.store.tables import (
    EVENT_DONE,
    consents,
    events,
    import_jobs,
    profiles,
    segment_members,
    segments,
)
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock, identify, run_until_idle, send_events
from touchline.worker.loop import Worker

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

HEADER = (
    "user_id,email,phone,first_name,last_name,timezone,locale,birthday,"
    "email_consent,sms_consent,consent_source,consent_at,city\n"
)
GOOD = [
    "c-1,Anna@Example.RU,8 916 123-45-67,Анна,Петрова,Europe/Moscow,ru_RU,1990-05-01,"
    "yes,no,signup form,2025-01-02T10:00:00+03:00,Москва",
    "c-2,boris@example.ru,+79161112233,Борис,,,,15.07.1985,да,,,,Казань",
    "c-3,,,,,,,,,,,,",
]
BAD = [
    "c-4,not-an-email,+7 000,Вера,,Mars/Base,xx-yy-zz,32.13.2020,maybe,,,,",
    ",lost@example.ru,,,,,,,,,,,",
    "c-6,c6@example.ru,,,,,,2999-01-01,,,,2999-01-01T00:00:00Z,",
]


@pytest.fixture
def ws(engine: Engine) -> str:
    return create_workspace(engine, "Shop", now=T0).id


def write_csv(tmp_path: Path, lines: list[str], name: str = "customers.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def profile(engine: Engine, ws: str, ref: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return get_profile(conn, ws, ref)


def read_report(path: Path) -> list[tuple[int, str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [(int(r["line"]), r["field"], r["reason"]) for r in csv.DictReader(f)]


# -- import ----------------------------------------------------------------------------------


def test_good_rows_go_in_and_bad_rows_are_reported_by_line_and_field(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """Valid rows become profiles with normalised columns and custom traits; each bad
    field of a bad row is reported with its line, and the good rows are not held back."""
    # given
    path = write_csv(tmp_path, GOOD + BAD)
    # when
    result = import_customers(engine, ws, path, clock=FrozenClock(T0))
    # then
    assert (result.rows, result.imported, result.rejected) == (6, 3, 3)
    anna = profile(engine, ws, "c-1")
    assert anna["email"] == "anna@example.ru"
    assert anna["phone"] == "+79161234567" and anna["phone_valid"] is True
    assert (anna["first_name"], anna["last_name"]) == ("Анна", "Петрова")
    assert (anna["timezone"], anna["locale"], anna["birthday"]) == (
        "Europe/Moscow",
        "ru-RU",
        "1990-05-01",
    )
    assert anna["traits"] == {"city": "Москва"}
    assert profile(engine, ws, "c-2")["birthday"] == "1985-07-15"
    assert profile(engine, ws, "c-3")["email"] is None
    with pytest.raises(NotFound):
        profile(engine, ws, "c-4")
    assert result.report == tmp_path / "customers.rejected.csv"
    report = read_report(result.report)
    fields_of_line_5 = {field for line, field, _ in report if line == 5}
    assert fields_of_line_5 == {
        "email",
        "phone",
        "timezone",
        "locale",
        "birthday",
        "email_consent",
    }
    assert (6, "user_id") in {(line, field) for line, field, _ in report}
    assert {(line, field) for line, field, _ in report if line == 7} == {
        (7, "birthday"),
        (7, "consent_at"),
    }
    assert all("not-an-email" not in reason for _, _, reason in report)


def test_imported_rows_take_the_ingest_path_and_the_worker_processes_them(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """An import row updates the customer the API already knows (same identity rules),
    stores a deterministic message id per line, and its events are processed as any other."""
    # given: the site already identified c-1 with an anonymous id
    send_events(
        engine,
        ws,
        [{"type": "identify", "userId": "c-1", "anonymousId": "a-9", "traits": {"plan": "pro"}}],
        now=T0,
    )
    before = profile(engine, ws, "c-1")
    path = write_csv(tmp_path, GOOD[:1])
    # when
    import_customers(engine, ws, path, clock=FrozenClock(T0))
    clock = FrozenClock(T0)
    run_until_idle(Worker(engine, clock=clock, owner="w"), clock)
    # then
    after = profile(engine, ws, "c-1")
    assert after["id"] == before["id"]
    assert after["traits"] == {"plan": "pro", "city": "Москва"}
    assert {"kind": "anonymous_id", "value": "a-9"} in after["identities"]
    checksum, _ = file_summary(path)
    with engine.connect() as conn:
        stored = conn.execute(
            select(events.c.message_id, events.c.status).where(events.c.message_id.like("import:%"))
        ).all()
    assert [(m, s) for m, s in stored] == [(f"import:{checksum}:2", EVENT_DONE)]


def test_an_interrupted_import_resumes_after_its_last_committed_chunk(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """A crash after chunk 2 keeps the first two chunks; the next run starts at the
    third, and the end result equals one uninterrupted import: no row twice."""
    # given: 7 good rows in chunks of 2
    rows = [f"u-{i},u{i}@example.ru,,,,,,,yes,,,," for i in range(1, 8)]
    path = write_csv(tmp_path, rows)
    seen: list[ImportProgress] = []

    def crash_after_two(p: ImportProgress) -> None:
        seen.append(p)
        if len(seen) == 2:
            raise KeyboardInterrupt

    # when
    with pytest.raises(KeyboardInterrupt):
        import_customers(
            engine, ws, path, clock=FrozenClock(T0), chunk_size=2, on_chunk=crash_after_two
        )
    # then: two chunks committed, the job still running at line 5
    with engine.connect() as conn:
        job = conn.execute(select(import_jobs)).one()
    assert (job.status, job.last_line, job.imported) == ("running", 5, 4)
    assert count(engine, profiles) == 4
    # when: run again
    later: list[ImportProgress] = []
    result = import_customers(
        engine,
        ws,
        path,
        clock=FrozenClock(T0 + timedelta(minutes=5)),
        chunk_size=2,
        on_chunk=later.append,
    )
    # then
    assert result.resumed_after == 5
    assert [p.line for p in later] == [7, 8]
    assert (result.status, result.rows, result.imported, result.duplicates) == ("done", 7, 7, 0)
    assert count(engine, profiles) == 7
    assert count(engine, events, events.c.message_id.like("import:%")) == 7
    assert count(engine, consents) == 7


def test_importing_a_file_again_changes_nothing(engine: Engine, ws: str, tmp_path: Path) -> None:
    """A finished file is not read again; read again on purpose (restart), every row is a
    duplicate: no event, profile or consent row is added."""
    # given
    path = write_csv(tmp_path, GOOD + BAD)
    first = import_customers(engine, ws, path, clock=FrozenClock(T0))
    counts = [count(engine, t) for t in (events, profiles, consents)]
    # when
    again = import_customers(engine, ws, path, clock=FrozenClock(T0))
    restarted = import_customers(engine, ws, path, clock=FrozenClock(T0), restart=True)
    # then
    assert again.already_done and again.imported == first.imported
    assert (restarted.imported, restarted.duplicates, restarted.rejected) == (0, 3, 3)
    assert restarted.consents == 0
    assert [count(engine, t) for t in (events, profiles, consents)] == counts
    assert count(engine, import_jobs) == 1
    assert len(read_report(restarted.report or Path())) == len(read_report(first.report or Path()))


def test_consent_columns_land_in_the_ledger_with_their_provenance(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """yes/да grants are recorded with the file's source and time (or the import's), a no
    for a consent never given writes nothing, and a consent already held is not repeated."""
    # given: c-2 already granted email consent through the API
    send_events(
        engine,
        ws,
        [identify("c-2", email="boris@example.ru", consent={"email": True})],
        now=T0 - timedelta(days=3),
    )
    clock = FrozenClock(T0)
    run_until_idle(Worker(engine, clock=clock, owner="w"), clock)
    path = write_csv(tmp_path, GOOD)
    # when
    result = import_customers(engine, ws, path, clock=FrozenClock(T0))
    # then
    with engine.connect() as conn:
        anna = ledger(conn, ws, profile(engine, ws, "c-1")["id"])
        boris = ledger(conn, ws, profile(engine, ws, "c-2")["id"])
    assert result.consents == 1
    assert [(r["channel"], r["granted"], r["source"]) for r in anna] == [
        ("email", True, "signup form")
    ]
    assert anna[0]["at"] == "2025-01-02T07:00:00+00:00"
    assert anna[0]["address"] == "anna@example.ru" and anna[0]["confirmed"] is True
    assert [(r["channel"], r["granted"]) for r in boris] == [("email", True)]  # the API's only


def test_an_old_file_does_not_regrant_a_consent_withdrawn_since(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """A withdrawal made after the file's consent time wins over the file's yes, and a
    withdrawal in a newer file is recorded."""
    # given: the file grants at 2025-01-02; the customer unsubscribed later
    path = write_csv(tmp_path, GOOD[:1])
    send_events(engine, ws, [identify("c-1", email="anna@example.ru")], now=T0)
    pid = profile(engine, ws, "c-1")["id"]
    with transaction(engine) as conn:
        unsubscribe(
            conn,
            workspace_id=ws,
            profile_id=pid,
            channel="email",
            address="anna@example.ru",
            at=T0 - timedelta(days=1),
            provenance=Provenance(source="unsubscribe page"),
        )
    # when
    import_customers(engine, ws, path, clock=FrozenClock(T0))
    newer = write_csv(tmp_path, ["c-1,,,,,,,,no,,crm,2026-03-01T00:00:00Z,"], name="newer.csv")
    import_customers(engine, ws, newer, clock=FrozenClock(T0))
    # then
    with engine.connect() as conn:
        rows = ledger(conn, ws, pid)
    assert [(r["granted"], r["source"]) for r in rows] == [(False, "unsubscribe page")]


def test_json_lines_keep_value_types_and_refuse_broken_lines(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """A JSONL file's numbers, booleans and objects stay typed traits; a line that is not
    JSON, or not an object, is reported and the rest imported."""
    # given
    path = tmp_path / "customers.jsonl"
    lines = [
        json.dumps(
            {
                "user_id": "j-1",
                "email": "j1@example.ru",
                "orders": 3,
                "vip": True,
                "address": {"city": "Тверь"},
                "sms_consent": True,
                "phone": "+79165550101",
            },
            ensure_ascii=False,
        ),
        "",
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"user_id": 42, "email": "x"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # when
    result = import_customers(engine, ws, path, clock=FrozenClock(T0))
    # then
    assert (result.rows, result.imported, result.rejected) == (4, 1, 3)
    j1 = profile(engine, ws, "j-1")
    assert j1["traits"] == {"orders": 3, "vip": True, "address": {"city": "Тверь"}}
    report = read_report(result.report or Path())
    assert [(line, field) for line, field, _ in report] == [(3, ""), (4, ""), (5, "email")]
    with engine.connect() as conn:
        assert [(r["channel"], r["address"]) for r in ledger(conn, ws, j1["id"])] == [
            ("sms", "+79165550101")
        ]


def test_a_file_without_an_identity_column_is_refused_whole(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """The header must name user_id or anonymous_id; the error names the file and line 1."""
    path = tmp_path / "bad.csv"
    path.write_text("email,email\nx@example.ru,y@example.ru\n", encoding="utf-8")
    with pytest.raises(ImportFileError) as caught:
        import_customers(engine, ws, path, clock=FrozenClock(T0))
    assert f"{path}:1:" in caught.value.message
    assert "appears twice" in caught.value.message and "user_id" in caught.value.message
    assert count(engine, events) == 0


def test_semicolons_a_byte_order_mark_and_broken_bytes(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """A spreadsheet's ;-separated UTF-8 file with a BOM reads right, and a row with bytes
    that are not UTF-8 (or a NUL) is refused alone."""
    path = tmp_path / "excel.csv"
    path.write_bytes(
        "\ufeffuser_id;first_name;note\n".encode()
        + "s-1;Софья;ok\n".encode()
        + b"s-2;\xff\xfe;bad\n"
        + b"s-3;Nul\x00l;bad\n"
    )
    result = import_customers(engine, ws, path, clock=FrozenClock(T0))
    assert (result.imported, result.rejected) == (1, 2)
    assert profile(engine, ws, "s-1")["first_name"] == "Софья"
    assert {line for line, _, _ in read_report(result.report or Path())} == {3, 4}


# -- export ----------------------------------------------------------------------------------


def test_exported_customers_import_into_another_workspace_unchanged(
    engine: Engine, ws: str, tmp_path: Path
) -> None:
    """`export customers` writes profile columns, consent state and chosen traits; the file
    imports into a fresh workspace giving the same profiles and consent states."""
    # given
    import_customers(engine, ws, write_csv(tmp_path, GOOD), clock=FrozenClock(T0))
    out = io.StringIO()
    # when
    result = export_customers(engine, ws, out, traits=["city"])
    # then
    assert result.rows == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == header(("email", "sms"), ["city"])
    anna = next(r for r in rows if r["user_id"] == "c-1")
    assert (anna["email_consent"], anna["sms_consent"], anna["city"]) == ("yes", "", "Москва")
    assert anna["phone"] == "+79161234567"  # no formula guard on E.164 numbers
    # when: imported elsewhere
    copy = tmp_path / "copy.csv"
    copy.write_text(out.getvalue(), encoding="utf-8")
    other = create_workspace(engine, "Other", now=T0).id
    imported = import_customers(engine, other, copy, clock=FrozenClock(T0))
    # then
    assert (imported.imported, imported.rejected) == (3, 0)
    again = io.StringIO()
    export_customers(engine, other, again, traits=["city"])
    assert again.getvalue() == out.getvalue()


def test_a_segment_export_lists_its_members_only(engine: Engine, ws: str, tmp_path: Path) -> None:
    """`export segment KEY` writes the current members of the segment; an unknown key is
    segment_unknown."""
    # given
    import_customers(engine, ws, write_csv(tmp_path, GOOD), clock=FrozenClock(T0))
    ids = {ref: profile(engine, ws, ref)["id"] for ref in ("c-1", "c-2", "c-3")}
    with transaction(engine) as conn:
        segment_id = conn.execute(
            segments.insert().values(
                workspace_id=ws,
                key="moscow",
                name="Moscow",
                spec={},
                source="",
                checksum="x",
                status="ready",
                created_at=T0,
                updated_at=T0,
            )
        ).inserted_primary_key[0]
        conn.execute(
            segment_members.insert(),
            [
                {
                    "segment_id": segment_id,
                    "profile_id": ids[r],
                    "workspace_id": ws,
                    "entered_at": T0,
                }
                for r in ("c-1", "c-3")
            ],
        )
    out = io.StringIO()
    # when
    result = export_segment(engine, ws, "moscow", out)
    # then
    assert result.rows == 2
    assert [r["user_id"] for r in csv.DictReader(io.StringIO(out.getvalue()))] == ["c-1", "c-3"]
    with pytest.raises(NotFound) as caught:
        export_segment(engine, ws, "nope", io.StringIO())
    assert caught.value.code == "segment_unknown"


def test_the_cli_imports_and_exports(
    engine: Engine, ws: str, database_url: str, tmp_path: Path
) -> None:
    """`touchline import customers` reports its counts and the report file;
    `touchline export customers --out` writes the CSV."""
    runner = CliRunner()
    path = write_csv(tmp_path, GOOD + BAD)

    def run(*args: str) -> Any:
        return runner.invoke(
            main,
            [*args, "--workspace", ws],
            obj={"engine": engine},
            env={"TOUCHLINE_DATABASE_URL": database_url},
        )

    imported = run("import", "customers", str(path))
    again = run("import", "customers", str(path))
    out = tmp_path / "out.csv"
    exported = run("export", "customers", "--out", str(out), "--trait", "city")
    assert imported.exit_code == 0, imported.output
    assert "6 rows: 3 imported, 0 already stored, 3 rejected" in imported.output
    assert "customers.rejected.csv" in imported.output
    assert "imported already" in again.output
    assert exported.exit_code == 0, exported.output
    assert out.read_text(encoding="utf-8-sig").startswith("user_id,email,phone")
    bad = run("export", "segment", "nope")
    assert bad.exit_code == 1 and "no segment 'nope'" in bad.output


# -- one row (pure) --------------------------------------------------------------------------


def test_a_channel_s_own_provenance_wins_over_the_row_s() -> None:
    """`sms_consent_source` and `_at` apply to SMS alone; other channels take the row's."""
    row = parse_row(
        2,
        {
            "User_ID ": "c-1",
            "email_consent": "Да",
            "sms_consent": "0",
            "consent_source": "form",
            "sms_consent_source": "shop till",
            "sms_consent_at": "2025-02-01",
            "consent_text": "v3",
        },
        now=T0,
    )
    assert isinstance(row, CustomerRow)
    by_channel = {c.channel: c for c in row.consents}
    assert (by_channel["email"].granted, by_channel["email"].source) == (True, "form")
    assert by_channel["email"].at is None and by_channel["email"].text_version == "v3"
    assert (by_channel["sms"].granted, by_channel["sms"].source) == (False, "shop till")
    assert by_channel["sms"].at == datetime(2025, 2, 1, tzinfo=UTC)


def test_a_consent_column_and_an_overlong_id_are_refused() -> None:
    """A raw `consent` column is refused (the ledger takes per-channel columns), as is a
    user id longer than the store's column."""
    problems = parse_row(9, {"user_id": "x" * 201, "consent": "yes"}, now=T0)
    assert isinstance(problems, list)
    assert {(p.line, p.field) for p in problems} == {(9, "user_id"), (9, "consent")}
