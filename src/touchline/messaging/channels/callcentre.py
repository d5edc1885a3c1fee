"""The ``call`` channel: hands a customer to a live operator as a task.

"Sending" a message on this channel opens a task in the operator queue (see
:mod:`touchline.store.tasks`) instead of delivering anything. The template's
``subject`` is the task's reason (the template key when there is none) and its
``text`` the call script. The dispatcher's message metadata says who and
where from:

* ``workspace_id``, ``profile_id`` (required);
* ``journey_id``, ``instance_id``, ``step``, ``template`` (optional);
* ``priority`` (optional, an integer, higher first; default 0);
* ``due_in`` (optional, seconds or a duration such as ``2h``; default: due now).

The task is keyed by the message's idempotency key, so a message sent again
after a crash finds the task it opened the first time instead of opening a
second one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from touchline.clock import Clock
from touchline.errors import InputError, PermanentDeliveryError, StoreError, TransientDeliveryError
from touchline.journeys.durations import parse_duration
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.store.db import transaction
from touchline.store.tasks import MAX_REASON_CHARS, create_task

# Reason of a task whose template has neither a subject nor a known key.
DEFAULT_REASON = "call"
DEFAULT_PRIORITY = 0


class CallCentreChannel:
    """Open operator tasks in the store instead of delivering messages."""

    name = "call"

    def __init__(self, engine: Engine, *, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Open (or find) the task for ``message``; its id is the provider id."""
        task_id = await asyncio.to_thread(self._open_task, message)
        return SendResult(provider_id=f"task:{task_id}", status="queued")

    async def aclose(self) -> None:
        """Nothing to release: the engine belongs to the caller."""

    def _open_task(self, message: OutgoingMessage) -> int:
        meta = message.metadata
        workspace_id = meta.get("workspace_id")
        profile_id = _int(meta, "profile_id")
        if not isinstance(workspace_id, str) or profile_id is None:
            raise PermanentDeliveryError(
                "a call task needs workspace_id and profile_id in the message metadata",
                code="task_without_customer",
            )
        now = self._clock.now()
        reason = message.subject or meta.get("template") or DEFAULT_REASON
        try:
            priority = _int(meta, "priority")
            due_in = _due_in(meta.get("due_in"))
            with transaction(self._engine) as conn:
                return create_task(
                    conn,
                    workspace_id,
                    idempotency_key=message.idempotency_key,
                    profile_id=profile_id,
                    reason=str(reason).strip()[:MAX_REASON_CHARS] or DEFAULT_REASON,
                    script=message.text,
                    priority=DEFAULT_PRIORITY if priority is None else priority,
                    due_at=now + due_in,
                    now=now,
                    journey_id=_int(meta, "journey_id"),
                    instance_id=_int(meta, "instance_id"),
                    step_id=_str(meta, "step"),
                )
        except InputError as exc:
            raise PermanentDeliveryError(exc.message, code="invalid_task") from exc
        except StoreError as exc:
            raise TransientDeliveryError(exc.message, code="store_busy") from exc


def _int(meta: Mapping[str, Any], key: str) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PermanentDeliveryError(f"metadata {key} must be an integer", code="invalid_task")
    try:
        return int(value)
    except ValueError:
        raise PermanentDeliveryError(
            f"metadata {key} must be an integer, not {value!r}", code="invalid_task"
        ) from None


def _str(meta: Mapping[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return None if value is None else str(value)


def _due_in(value: Any) -> timedelta:
    """``due_in`` as a delay: seconds (a number) or duration text; nothing means now."""
    if value is None:
        return timedelta()
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise PermanentDeliveryError(f"metadata due_in: {exc}", code="invalid_task") from None
    raise PermanentDeliveryError(
        f"metadata due_in must be seconds or a duration such as 2h, not {value!r}",
        code="invalid_task",
    )
