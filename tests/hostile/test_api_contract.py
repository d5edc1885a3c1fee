"""The HTTP API against its own OpenAPI document, with generated requests (schemathesis).

Every operation of the ingest and admin APIs is called in-process with
requests schemathesis derives from ``app.openapi()`` — valid ones and
deliberately broken ones — carrying a valid write key or admin token. Each
answer must be no 5xx, carry a status the document lists, and a body of the
documented shape (errors: ``{code, message}``).

The default run keeps to :data:`EXAMPLES` cases an operation (about a
minute in all); ``--run-slow`` runs :data:`SLOW_EXAMPLES`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from sqlalchemy import Engine, create_engine

from touchline.config import Settings
from touchline.store.db import make_engine
from touchline.store.workspaces import CreatedWorkspace, create_workspace
from touchline.web.app import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi import FastAPI

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
EXAMPLES = 15
SLOW_EXAMPLES = 400
# The rate limits are tested on their own; here every generated request must reach its route.
UNLIMITED = {
    "rate_limit_ingest_key": None,
    "rate_limit_ingest_ip": None,
    "rate_limit_tracking": None,
    "rate_limit_pages": None,
    "rate_limit_callbacks": None,
}


def _document() -> dict[str, Any]:
    """The app's OpenAPI document; building it touches no store."""
    app = create_app(Settings(), engine=create_engine("sqlite://"))
    return app.openapi()


# Checks and their settings. A refusal may be 413 (a body over the size limit). Two checks
# are off, for reasons of contract rather than of fault:
# * positive_data_acceptance: routes check more than a JSON Schema states (a channel the
#   workspace knows, an address valid for its channel), so a schema-valid request may get
#   a documented 400;
# * negative_data_rejection: pydantic's lax mode takes 0 for a date-time (the Unix epoch)
#   and "1" for 1, and Segment's API keeps unknown fields; both are accepted by design.
CONFIG = SchemathesisConfig.from_str(
    """
[checks.positive_data_acceptance]
enabled = false
[checks.negative_data_rejection]
enabled = false
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx"]
"""
)
SCHEMA = schemathesis.openapi.from_dict(_document(), config=CONFIG)


@dataclasses.dataclass
class Api:
    app: FastAPI
    engine: Engine
    workspace: CreatedWorkspace

    def auth(self, path: str) -> dict[str, str]:
        """The credential a route of ``path`` expects: the write key or the admin token."""
        if path.startswith("/v1/"):
            return {"Authorization": f"Bearer {self.workspace.write_key}"}
        if path.startswith("/admin/"):
            return {"Authorization": f"Bearer {self.workspace.admin_token}"}
        return {}


@pytest.fixture
def api(sqlite_url: str) -> Iterator[Api]:
    engine = make_engine(sqlite_url)
    workspace = create_workspace(engine, "Contract shop", now=NOW)
    app = create_app(dataclasses.replace(Settings(), **UNLIMITED), engine=engine)
    yield Api(app, engine, workspace)
    engine.dispose()


def _call(api: Api, case: Any) -> None:
    response = case.call(app=api.app, headers=api.auth(case.path))
    assert response.status_code < 500, (
        f"{case.method} {case.path} answered {response.status_code}: {response.text[:500]}"
    )
    case.validate_response(response)


HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much]


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=HEALTH)
def test_every_operation_answers_as_documented(api: Api, case: Any) -> None:
    """Generated requests, valid and invalid, never get a 5xx or an undocumented answer."""
    _call(api, case)


@pytest.mark.slow
@SCHEMA.parametrize()
@settings(max_examples=SLOW_EXAMPLES, deadline=None, suppress_health_check=HEALTH)
def test_every_operation_answers_as_documented_at_length(api: Api, case: Any) -> None:
    """The same contract over many more generated requests an operation."""
    _call(api, case)
