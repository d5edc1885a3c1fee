"""Applied journeys and their versions.

Applying a journey whose normalised content changed creates a new version
and makes it current; instances already running keep the version they
entered (``instances.version_id``). Applying an unchanged file is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from touchline.errors import NotFound
from touchline.journeys.loader import LoadedJourney, spec_checksum, spec_to_data
from touchline.journeys.spec import JourneySpec
from touchline.store.tables import journey_versions, journeys


@dataclass(frozen=True)
class AppliedJourney:
    key: str
    journey_id: int
    version: int
    version_id: int
    change: str  # created | updated | unchanged | paused | resumed

    def as_dict(self) -> dict[str, Any]:
        return {"journey": self.key, "version": self.version, "change": self.change}


def apply_journeys(
    conn: Connection, workspace_id: str, loaded: Sequence[LoadedJourney], *, now: datetime
) -> list[AppliedJourney]:
    """Store each journey; a changed one gets a new current version.

    A date or schedule trigger also gets its worker state (audience.time_triggers)
    in the same transaction: a backfill of every customer's date, or the next run.
    """
    from touchline.audience.time_triggers import sync_time_trigger  # it imports the store

    applied = [_apply_one(conn, workspace_id, item, now=now) for item in loaded]
    for item, done in zip(loaded, applied, strict=True):
        sync_time_trigger(conn, workspace_id, done.journey_id, item.spec, now=now)
    return applied


def _apply_one(
    conn: Connection, workspace_id: str, item: LoadedJourney, *, now: datetime
) -> AppliedJourney:
    spec = item.spec
    checksum = spec_checksum(spec)
    row = conn.execute(
        select(journeys).where(
            journeys.c.workspace_id == workspace_id, journeys.c.key == spec.journey
        )
    ).first()
    header = {
        "name": spec.name or spec.journey,
        "status": spec.status,
        "category": spec.category.value,
        "trigger_event": spec.trigger.event_name,
        "updated_at": now,
    }
    if row is None:
        journey_id = conn.execute(
            journeys.insert()
            .values(workspace_id=workspace_id, key=spec.journey, created_at=now, **header)
            .returning(journeys.c.id)
        ).scalar_one()
        change, version = "created", 1
    else:
        journey_id = row.id
        current = conn.execute(
            select(journey_versions.c.checksum, journey_versions.c.version).where(
                journey_versions.c.id == row.current_version_id
            )
        ).first()
        if current is not None and current.checksum == checksum:
            change = "unchanged"
            if row.status != spec.status:  # the file is the source of truth for status too
                conn.execute(
                    journeys.update().where(journeys.c.id == journey_id).values(status=spec.status)
                )
                change = "paused" if spec.status == "paused" else "resumed"
            return AppliedJourney(
                spec.journey, journey_id, current.version, row.current_version_id, change
            )
        version = (
            conn.execute(
                select(func.max(journey_versions.c.version)).where(
                    journey_versions.c.journey_id == journey_id
                )
            ).scalar_one()
            or 0
        ) + 1
        change = "updated"
    version_id = conn.execute(
        journey_versions.insert()
        .values(
            workspace_id=workspace_id,
            journey_id=journey_id,
            version=version,
            spec=_version_data(spec),
            source=item.source,
            checksum=checksum,
            created_at=now,
        )
        .returning(journey_versions.c.id)
    ).scalar_one()
    conn.execute(
        journeys.update()
        .where(journeys.c.id == journey_id)
        .values(current_version_id=version_id, **header)
    )
    return AppliedJourney(spec.journey, journey_id, version, version_id, change)


def _version_data(spec: JourneySpec) -> dict[str, Any]:
    """What a version stores: the spec without ``status``, which lives on the journey row
    so pausing and resuming apply to every version at once."""
    data = spec_to_data(spec)
    data.pop("status", None)
    return data


def set_status(
    conn: Connection, workspace_id: str, key: str, status: str, *, now: datetime
) -> None:
    """Pause or resume a journey. Paused journeys admit no one; those inside carry on."""
    result = conn.execute(
        journeys.update()
        .where(journeys.c.workspace_id == workspace_id, journeys.c.key == key)
        .values(status=status, updated_at=now)
    )
    if result.rowcount == 0:
        raise NotFound(f"no journey {key!r} in this workspace")


def list_journeys(conn: Connection, workspace_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(
            journeys.c.key,
            journeys.c.name,
            journeys.c.status,
            journeys.c.category,
            journeys.c.trigger_event,
            journey_versions.c.version,
            journeys.c.updated_at,
        )
        .join(journey_versions, journey_versions.c.id == journeys.c.current_version_id)
        .where(journeys.c.workspace_id == workspace_id)
        .order_by(journeys.c.key)
    ).all()
    return [
        {
            "journey": r.key,
            "name": r.name,
            "status": r.status,
            "category": r.category,
            "trigger": r.trigger_event,
            "version": r.version,
            "updated_at": r.updated_at.isoformat(),
        }
        for r in rows
    ]


def get_journey(conn: Connection, workspace_id: str, key: str) -> dict[str, Any]:
    row = conn.execute(
        select(
            journeys, journey_versions.c.version, journey_versions.c.spec, journey_versions.c.source
        )
        .join(journey_versions, journey_versions.c.id == journeys.c.current_version_id)
        .where(journeys.c.workspace_id == workspace_id, journeys.c.key == key)
    ).first()
    if row is None:
        raise NotFound(f"no journey {key!r} in this workspace")
    versions = conn.execute(
        select(journey_versions.c.version, journey_versions.c.created_at)
        .where(journey_versions.c.journey_id == row.id)
        .order_by(journey_versions.c.version)
    ).all()
    return {
        "journey": row.key,
        "name": row.name,
        "status": row.status,
        "category": row.category,
        "trigger": row.trigger_event,
        "version": row.version,
        "versions": [
            {"version": v.version, "created_at": v.created_at.isoformat()} for v in versions
        ],
        "spec": row.spec,
        "source": row.source,
    }


class SpecCache:
    """Parsed specs by version id. Versions never change, so entries never go stale."""

    def __init__(self) -> None:
        self._specs: dict[int, JourneySpec] = {}

    def get(self, conn: Connection, version_id: int) -> JourneySpec:
        spec = self._specs.get(version_id)
        if spec is None:
            data = conn.execute(
                select(journey_versions.c.spec).where(journey_versions.c.id == version_id)
            ).scalar_one()
            spec = JourneySpec.model_validate(data)
            self._specs[version_id] = spec
        return spec
