"""Log records as one line of text or JSON each, with secrets redacted.

:func:`configure_logging` installs one handler on the root logger, once, at
start-up (the CLI does it for every command; :func:`touchline.web.app.app_from_env`
for a server started by ``uvicorn --factory``). Its format is ``text``
(``time level logger message``) or ``json``: one object a line with ``time``
(UTC, ISO 8601), ``level``, ``logger``, ``message``, any ``extra={...}``
fields the call passed, and ``exception`` when there is a traceback.

Every record that handler sees first goes through :class:`RedactingFilter`,
which rewrites the message, string extras and the traceback text with
:func:`redact`:

* touchline keys (``tlw_...`` write keys, ``tla_...`` admin tokens) keep
  their prefix only;
* ``Authorization`` header values, and bare ``Bearer`` credentials;
* ``name=value`` and ``"name": "value"`` pairs whose name says password,
  secret, token, api key or write key (which covers ``?token=`` in
  delivery-report callback URLs);
* the signed part of unsubscribe, preference and confirmation links
  (``/u/``, ``/p/``, ``/c/``) and of tracking links (``/t/o/``, ``/t/c/``),
  and SMS short-link codes (``/s/``): each is a bearer credential for one
  customer or message;
* ``Secret(...)`` reprs, and the exact values of the secrets handed to
  :func:`configure_logging` (the SMTP password, the metrics token), wherever
  they appear.

Redaction is a safety net, not a licence: code never logs a key on purpose.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

from touchline.config import Secret

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
REDACTED = "[redacted]"
#: Prefixes of touchline's keys; a test pins these to ``store.workspaces.KEY_PREFIXES``.
KEY_PREFIXES = ("tlw_", "tla_")
#: Known secret values shorter than this are not scrubbed: they would match everywhere.
MIN_KNOWN_SECRET = 6

_VALUE = r"(?!\[redacted\])[^\s\"'&,;})\]]+"
# Order matters: whole header values and name=value pairs go first, so a key
# inside them is not cut in two by the narrower patterns after.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Secret\('[^']*'\)"), REDACTED),
    (
        re.compile(
            r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?" + _VALUE
        ),
        r"\g<1>" + REDACTED,
    ),
    (
        re.compile(
            r"(?i)\b([\w-]*(?:password|passwd|secret|token|api[_-]?key|write[_-]?key)[\w-]*"
            r"[\"']?\s*[=:]\s*[\"']?)" + _VALUE
        ),
        r"\g<1>" + REDACTED,
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\g<1>" + REDACTED),
    # Any tl?_ key, not just today's two prefixes: a future kind is covered too.
    (re.compile(r"\b(tl[a-z]?_)[A-Za-z0-9_-]{16,}"), r"\g<1>" + REDACTED),
    # Customer links (/u/, /p/, /c/) and tracking tokens (/t/o/, /t/c/): the workspace stays.
    (
        re.compile(r"(/(?:[upc]|t/[oc])/[A-Za-z0-9_-]{1,32}\.)[A-Za-z0-9_-]{8,}"),
        r"\g<1>" + REDACTED,
    ),
    # SMS short links: the code alone records a click and reveals the destination.
    (re.compile(r"(/s/)[A-Za-z0-9]{6,16}\b"), r"\g<1>" + REDACTED),
)
# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}
# Extras that are not worth a field: uvicorn's copy of the message with terminal colours.
_DROPPED = frozenset({"color_message"})
# Marks the handler configure_logging installed, so a second call replaces it.
_OURS = "_touchline_handler"


def redact(text: str, *, known: Iterable[str] = ()) -> str:
    """``text`` with everything that looks like a credential replaced (see the module doc)."""
    for value in known:
        if len(value) >= MIN_KNOWN_SECRET:
            text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record in place so no handler after it sees a credential.

    The message is rendered (``msg % args``) and redacted, string ``extra``
    fields are redacted, and the traceback is formatted here and redacted,
    so every formatter downstream prints the cleaned text. ``known`` are exact
    secret values to scrub as well.
    """

    def __init__(self, *, known: Iterable[str] = ()) -> None:
        super().__init__()
        self.known = tuple(v for v in known if len(v) >= MIN_KNOWN_SECRET)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the handler's to report
            return True
        record.msg = redact(message, known=self.known)
        record.args = None
        for name, value in list(vars(record).items()):
            if name not in _RECORD_FIELDS and isinstance(value, str):
                setattr(record, name, redact(value, known=self.known))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, known=self.known)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, known=self.known)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_FIELDS and name not in _DROPPED and not name.startswith("_"):
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # default=str: a datetime prints ISO-like, a Secret its masked repr.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    level: str,
    *,
    fmt: str = "text",
    secrets: Iterable[Secret | None] = (),
    stream: IO[str] | None = None,
) -> logging.Handler | None:
    """Install touchline's root handler (``fmt`` ``"text"`` or ``"json"``) at ``level``.

    Calling it again replaces the handler it installed before. When the root
    logger already has handlers touchline did not install (an application
    embedding touchline, or a test runner), nothing is changed and ``None`` is
    returned, as :func:`logging.basicConfig` would. ``secrets`` are scrubbed
    from every record by value. Returns the handler installed.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not getattr(h, _OURS, False)]
    if foreign:
        return None
    for handler in list(root.handlers):
        root.removeHandler(handler)
    installed = logging.StreamHandler(stream if stream is not None else sys.stderr)
    installed.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    installed.addFilter(RedactingFilter(known=[s.reveal() for s in secrets if s is not None]))
    setattr(installed, _OURS, True)
    root.addHandler(installed)
    root.setLevel(level.upper())
    return installed
