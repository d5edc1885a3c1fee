"""Applied message templates, one current copy per key and workspace."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from touchline.errors import NotFound
from touchline.messaging.templates import CompiledTemplate, Template, compile_template
from touchline.store.tables import templates


def template_data(template: Template) -> dict[str, Any]:
    """The JSON-safe form a template is stored in."""
    data = asdict(template)
    data["defaults"] = dict(template.defaults)
    data["utm"] = dict(template.utm) if template.utm is not None else None
    return data


def apply_templates(
    conn: Connection, workspace_id: str, items: Sequence[Template], *, now: datetime
) -> list[dict[str, str]]:
    """Store templates (already validated); returns ``{template, change}`` per item."""
    out = []
    for template in items:
        compile_template(template)  # raises TemplateError naming template, part and line
        data = template_data(template)
        checksum = hashlib.sha256(
            json.dumps(data, sort_keys=True, ensure_ascii=False).encode()
        ).hexdigest()
        row = conn.execute(
            select(templates.c.id, templates.c.checksum).where(
                templates.c.workspace_id == workspace_id, templates.c.key == template.name
            )
        ).first()
        values = {
            "channel": template.channel,
            "spec": data,
            "source": json.dumps(data, ensure_ascii=False),
            "checksum": checksum,
            "updated_at": now,
        }
        if row is None:
            conn.execute(
                templates.insert().values(workspace_id=workspace_id, key=template.name, **values)
            )
            change = "created"
        elif row.checksum != checksum:
            conn.execute(templates.update().where(templates.c.id == row.id).values(**values))
            change = "updated"
        else:
            change = "unchanged"
        out.append({"template": template.name, "change": change})
    return out


# Read for every message sent: the checksum alone, the spec only when it changed.
_WHERE = (templates.c.workspace_id == bindparam("ws"), templates.c.key == bindparam("key"))
_CHECKSUM = select(templates.c.checksum).where(*_WHERE)
_SPEC = select(templates.c.checksum, templates.c.spec).where(*_WHERE)


class TemplateCache:
    """Compiled templates by (workspace, key), refreshed when their checksum changes."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, str], tuple[str, CompiledTemplate]] = {}

    def get(self, conn: Connection, workspace_id: str, key: str) -> CompiledTemplate:
        params = {"ws": workspace_id, "key": key}
        checksum = conn.execute(_CHECKSUM, params).scalar_one_or_none()
        if checksum is None:
            raise NotFound(f"no template {key!r} in this workspace")
        cached = self._compiled.get((workspace_id, key))
        if cached is not None and cached[0] == checksum:
            return cached[1]
        row = conn.execute(_SPEC, params).first()
        if row is None:  # deleted between the two reads
            raise NotFound(f"no template {key!r} in this workspace")
        spec = dict(row.spec)
        compiled = compile_template(
            Template(
                name=spec["name"],
                channel=spec["channel"],
                subject=spec.get("subject"),
                html=spec.get("html"),
                text=spec.get("text"),
                defaults=spec.get("defaults") or {},
                utm=spec.get("utm"),
            )
        )
        self._compiled[(workspace_id, key)] = (row.checksum, compiled)
        return compiled
