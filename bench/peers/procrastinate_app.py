"""The procrastinate side of the peer benchmark: an app on PostgreSQL and its task.

Set up as procrastinate's documentation describes: a ``PsycopgConnector``
on the database named by ``PEERS_PROCRASTINATE_DSN``, the schema applied
with ``apply_schema``, jobs deferred with ``configure(schedule_at=...)``,
a reminder cancelled with ``job_manager.cancel_job_by_id`` (a job still
``todo`` becomes ``cancelled`` and no worker takes it). Run by
``procrastinate --app bench.peers.procrastinate_app.app worker``.
"""

from __future__ import annotations

import os

import procrastinate

from bench.peers.mailer import send_reminder

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get("PEERS_PROCRASTINATE_DSN", ""))
)


@app.task(name="peers.remind")
def remind(n: int) -> None:
    """Send reminder ``n``."""
    send_reminder(n)
