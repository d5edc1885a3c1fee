"""The admin API for split tests with ``winner:``.

* ``GET /admin/v1/experiments`` — the workspace's recorded winners (final, with
  the verdict and figures they were decided on) and the live verdict of every
  split test still running.

Nothing is decided here: workers judge the tests (see
:mod:`touchline.measure.winners`). Reading a live verdict as often as one likes
is harmless because the ``min_sample`` set in the journey file, not the moment
of looking, decides when a winner may be named.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from touchline.measure.winners import assess_experiments, declared_winners
from touchline.web.api.admin import Workspace

router = APIRouter(prefix="/admin/v1/experiments", tags=["experiments"])


@router.get("")
async def list_experiments(request: Request, workspace: Workspace) -> dict[str, Any]:
    """``{"winners": [...], "running": [...]}``: decided splits, then undecided ones."""

    def read() -> dict[str, Any]:
        with request.app.state.engine.connect() as conn:
            winners = declared_winners(conn, workspace_id=workspace)
            running = assess_experiments(conn, workspace_id=workspace)
        return {
            "winners": [w.as_dict() for w in winners],
            "running": [d.as_dict() for d in running],
        }

    return await run_in_threadpool(read)
