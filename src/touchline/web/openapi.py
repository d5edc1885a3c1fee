"""touchline's OpenAPI document: what each route answers, errors included.

FastAPI derives the document from the routes. Two things it cannot know are
added here:

* the error contract: every route may answer ``{code, message}``
  (:class:`ErrorBody`) — ``400`` for input it refuses, and any other 4xx or
  5xx (``401``, ``404``, ``409``, ``413``, ``429``, ``503``, ``507``) as the
  ``default`` response. FastAPI's own ``422`` entry is dropped: touchline
  answers validation failures with ``400 invalid_input``
  (:func:`touchline.web.app.create_app`), never 422;
* the bodies of the Segment routes, which read their body themselves (any
  Content-Type, gzip) and so declare it with :func:`segment_body`.

The document is served nowhere (``create_app`` turns the docs routes off);
``app.openapi()`` builds it, for clients and for the contract tests.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

# FastAPI's validation-error schemas, unused once its 422 answers are gone.
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")


class ErrorBody(BaseModel):
    """Every error answer: a stable ``code`` to branch on and a ``message`` for people."""

    code: str
    message: str


#: ``responses=`` for every route: the error shapes FastAPI does not infer.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Refused input: `{code, message}`."},
    "default": {
        "model": ErrorBody,
        "description": "Any other error (401, 404, 409, 413, 429, 503, 507): `{code, message}`.",
    },
}

#: ``responses=`` for a route that answers JSON, or CSV with ``?format=csv``.
JSON_OR_CSV: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or CSV with `?format=csv`.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built once and kept on the app (FastAPI's habit)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        description="touchline: events in, journeys as code, messages out.",
        routes=app.routes,
    )
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_422:
        schemas.pop(name, None)
    app.openapi_schema = document
    return document


# -- Segment bodies -----------------------------------------------------------------------

_ID = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\x00]*\\S[^\\x00]*$"}
_TIME = {"type": "string", "format": "date-time"}
_VALUE: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "maxLength": 200, "pattern": "^[^\\x00]*$"},
        {"type": "integer"},
        {"type": "boolean"},
        {"type": "null"},
    ]
}
# Few, short values: a message stays far under the 32 KB limit whatever is generated.
_OBJECT = {
    "type": "object",
    "maxProperties": 10,
    "propertyNames": {"pattern": "^[^\\x00]*$"},
    "additionalProperties": _VALUE,
}
# Ids may be numbers too; they are stored as their decimal text.
_ANY_ID = {"anyOf": [_ID, {"type": "integer"}]}
_COMMON: dict[str, Any] = {
    "userId": _ANY_ID,
    "anonymousId": _ANY_ID,
    "messageId": _ID,
    "timestamp": _TIME,
    "context": _OBJECT,
    "writeKey": {"type": "string", "description": "The write key, when no header carries it."},
}
# What each message type adds to the common fields, and what it requires.
_KINDS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "identify": ({"traits": _OBJECT}, []),
    "track": ({"event": _ID, "properties": _OBJECT}, ["event"]),
    "page": ({"name": _ID, "category": _ID, "properties": _OBJECT}, []),
    "screen": ({"name": _ID, "category": _ID, "properties": _OBJECT}, []),
    "group": ({"groupId": _ID, "traits": _OBJECT}, ["groupId"]),
    "alias": ({"previousId": _ANY_ID}, ["previousId", "userId"]),
}
# Who the message is about: a user id, an anonymous id, or both.
_IDENTIFIED = [{"required": ["userId"]}, {"required": ["anonymousId"]}]


def _message(kind: str, *, typed: bool) -> dict[str, Any]:
    extra, required = _KINDS[kind]
    properties = {**_COMMON, **extra}
    if typed:
        properties["type"] = {"type": "string", "enum": [kind]}
        required = [*required, "type"]
    schema: dict[str, Any] = {
        "type": "object",
        "title": f"{kind.capitalize()}Message",
        "properties": properties,
        "required": sorted(required),
    }
    if "userId" not in required:
        schema["anyOf"] = _IDENTIFIED
    return schema


def segment_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of a body for the ``kind`` endpoint (an event type or ``batch``).

    It describes bodies that are always accepted (given a valid key). Like
    Segment's own API, the parser accepts more than a schema says (unknown
    fields, nested properties, ``sentAt`` for clock-skew correction, any
    ISO-8601 time) and says why it refuses anything else
    (:mod:`touchline.ingest.segment`).
    """
    if kind != "batch":
        return _message(kind, typed=False)
    return {
        "type": "object",
        "title": "Batch",
        "properties": {
            "batch": {
                "type": "array",
                "maxItems": 10,
                "items": {"oneOf": [_message(k, typed=True) for k in _KINDS]},
            },
            "context": _OBJECT,
            "writeKey": _COMMON["writeKey"],
        },
        "required": ["batch"],
    }


def segment_body(kind: str) -> dict[str, Any]:
    """``openapi_extra`` for a Segment route: its JSON request body."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": segment_schema(kind)}},
        }
    }


__all__ = [
    "ERROR_RESPONSES",
    "JSON_OR_CSV",
    "ErrorBody",
    "openapi_document",
    "segment_body",
    "segment_schema",
]
