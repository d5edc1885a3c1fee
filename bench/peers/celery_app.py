"""The Celery side of the peer benchmark: an app on Redis and its reminder task.

Set up as Celery's documentation describes for Redis: the broker URL, no
result backend (the task returns nothing anyone reads), the Redis
transport's ``visibility_timeout`` left at its one-hour default, which is
longer than any ETA here (an ETA beyond it would be delivered twice). Run by
``celery -A bench.peers.celery_app worker``; the broker and the sink's port
come from ``PEERS_BROKER_URL`` and ``PEERS_SMTP_PORT``.

Cancellation, chosen by ``PEERS_CANCEL`` (see docs/benchmarks.md):

* ``revoke`` (default): the shop calls ``app.control.revoke(task_id)``,
  Celery's documented way to cancel a task that has not run. Workers keep
  revoked ids in memory (at most 50,000 by default) and drop the task when
  its ETA comes.
* ``check``: the shop adds the reminder to a Redis set and the task looks
  it up before sending: the cancellation survives a restart of every worker,
  which the in-memory revoke list does not unless workers run with
  ``--statedb``.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

from bench.peers.mailer import send_reminder

BROKER_URL = os.environ.get("PEERS_BROKER_URL", "redis://127.0.0.1:6379/13")
CANCEL_MODE = os.environ.get("PEERS_CANCEL", "revoke")
CANCELLED_SET = "peers:cancelled"

app = Celery("peers", broker=BROKER_URL)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_redis: redis.Redis | None = None


def _cancelled(n: int) -> bool:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(BROKER_URL)
    return bool(_redis.sismember(CANCELLED_SET, str(n)))


@app.task(name="peers.remind")
def remind(n: int) -> None:
    """Send reminder ``n`` unless its cart was ordered (``check`` mode)."""
    if CANCEL_MODE == "check" and _cancelled(n):
        return
    send_reminder(n)
