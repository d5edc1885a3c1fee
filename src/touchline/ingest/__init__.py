"""Getting customer events in: Segment-spec parsing and trait normalisation.

Everything in this package is pure (no database, no HTTP): :mod:`.segment`
turns request bodies into :class:`IncomingEvent` values and :mod:`.traits`
turns identify traits into profile columns. ``touchline.store.ingest`` stores
them; ``touchline.web.api.ingest`` is the HTTP front.
"""

from touchline.ingest.segment import (
    EVENT_TYPES,
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    IncomingEvent,
    ParsedRequest,
    decode_body,
    parse_payload,
    parse_request,
    write_key_of,
)
from touchline.ingest.traits import NormalizedTraits, normalize_traits

__all__ = [
    "EVENT_TYPES",
    "MAX_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "IncomingEvent",
    "NormalizedTraits",
    "ParsedRequest",
    "decode_body",
    "normalize_traits",
    "parse_payload",
    "parse_request",
    "write_key_of",
]
