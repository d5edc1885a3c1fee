"""Errors raised by touchline.

::

    TouchlineError
    ├── ConfigError                 bad settings in the environment
    ├── InputError                  a caller sent something we refuse (HTTP 4xx)
    │   ├── AuthError               missing or wrong key / token (401)
    │   ├── NotFound                no such object in this workspace (404)
    │   ├── Conflict                the object's state forbids the change, e.g. taken (409)
    │   ├── PayloadTooLarge         over a size limit (413)
    │   └── NestedTooDeep           JSON nested past the depth limit (400)
    ├── SpecError                   a journey file is invalid; carries every problem found
    ├── ConditionError              a condition expression does not parse or type-check
    ├── StoreError                  the database refused or is unreachable (503)
    │   ├── StoreBusy               another writer held the lock past the timeout (503)
    │   └── StoreFull               the disk or the database is full (507)
    └── DeliveryError               sending a message failed
        ├── TransientDeliveryError  worth retrying (timeouts, 4xx SMTP, provider 5xx)
        └── PermanentDeliveryError  never worth retrying (invalid number, 5xx SMTP)

Every error has a stable ``code`` used by the HTTP API's ``{code, message}``
answers, so clients can branch on it without parsing prose.
"""

from __future__ import annotations

from dataclasses import dataclass


class TouchlineError(Exception):
    """Root of every error touchline raises on purpose."""

    code = "error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(TouchlineError):
    code = "config_error"


class InputError(TouchlineError):
    code = "invalid_input"
    status = 400


class AuthError(InputError):
    code = "unauthorized"
    status = 401


class NotFound(InputError):
    code = "not_found"
    status = 404


class Conflict(InputError):
    """The request is well formed but the object's current state refuses it."""

    code = "conflict"
    status = 409


class PayloadTooLarge(InputError):
    code = "payload_too_large"
    status = 413


class NestedTooDeep(InputError):
    """A JSON body nests arrays and objects deeper than touchline walks safely."""

    code = "nested_too_deep"
    status = 400


@dataclass(frozen=True)
class SpecProblem:
    """One problem in a journey file: where it is and what is wrong."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}"


class SpecError(TouchlineError):
    """A journey (or a folder of them) is invalid. ``problems`` lists them all."""

    code = "invalid_journey"
    status = 400

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid journey")


class ConditionError(TouchlineError):
    """A condition expression is invalid; ``column`` is 1-based when known."""

    code = "invalid_condition"
    status = 400

    def __init__(self, message: str, *, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


class StoreError(TouchlineError):
    code = "store_error"
    status = 503
    #: Seconds a client should wait before trying again (the ``Retry-After`` header).
    retry_after: int | None = None


class StoreBusy(StoreError):
    """The store's write lock stayed taken past the busy timeout; nothing was written."""

    code = "store_busy"
    status = 503
    retry_after = 1


class StoreFull(StoreError):
    """The store ran out of space; the transaction was rolled back whole."""

    code = "store_full"
    status = 507


class DeliveryError(TouchlineError):
    code = "delivery_failed"


class TransientDeliveryError(DeliveryError):
    code = "delivery_transient"


class PermanentDeliveryError(DeliveryError):
    code = "delivery_permanent"
