"""Log redaction, the JSON line format, and installing the root handler once."""

from __future__ import annotations

import io
import json
import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from touchline.config import Secret
from touchline.ops.logs import (
    KEY_PREFIXES,
    REDACTED,
    JsonFormatter,
    RedactingFilter,
    configure_logging,
    redact,
)
from touchline.store.workspaces import KEY_PREFIXES as STORE_KEY_PREFIXES

# Shaped like real keys (prefix + token_urlsafe(24)); fixed so test ids are stable.
WRITE_KEY = "tlw_p9UYTwOoJZs1On1xeHPPKzPL3k9gtFDc"
ADMIN_TOKEN = "tla_ARLG_uzpeInl1Lrgw4pP3iip3h2QjZ01"


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("touchline.test", logging.WARNING, __file__, 1, msg, args, None)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


# -- redact -----------------------------------------------------------------------------


def test_redaction_knows_every_key_prefix_the_store_issues() -> None:
    """The prefixes the redactor is documented for are the ones keys are made with."""
    assert set(KEY_PREFIXES) == set(STORE_KEY_PREFIXES.values())
    for prefix in STORE_KEY_PREFIXES.values():
        key = prefix + secrets.token_urlsafe(24)
        assert key not in redact(f"refused {key} at the door")


def test_keys_keep_only_their_prefix() -> None:
    """A write key and an admin token in prose become ``tlw_[redacted]``/``tla_[redacted]``."""
    out = redact(f"keys {WRITE_KEY} and {ADMIN_TOKEN}.")
    assert out == f"keys tlw_{REDACTED} and tla_{REDACTED}."


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {ADMIN_TOKEN}",
        "authorization=Basic dGx3X3NvbWV0aGluZzo=",
        '{"Authorization": "Bearer abc.def.ghi"}',
        "headers {'authorization': 'Token 0123456789abcdef'}",
    ],
)
def test_authorization_header_values_are_redacted(text: str) -> None:
    """Whatever the scheme and quoting, an Authorization value is gone, the name stays."""
    out = redact(text)
    assert REDACTED in out
    assert out.lower().startswith(text.lower()[: text.lower().index("authorization") + 13])
    for secret in (ADMIN_TOKEN, "dGx3X3NvbWV0aGluZzo=", "abc.def.ghi", "0123456789abcdef"):
        assert secret not in out


def test_bare_bearer_credentials_are_redacted() -> None:
    """A ``Bearer <token>`` outside a header name is cleaned as well."""
    assert redact("sent Bearer abcdefgh12345678 upstream") == f"sent Bearer {REDACTED} upstream"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login user=anna password=hunter22&x=1", f"login user=anna password={REDACTED}&x=1"),
        ('{"api_key": "k-123456", "n": 2}', f'{{"api_key": "{REDACTED}", "n": 2}}'),
        (
            "POST /callbacks/ws_1/http?token=cb-secret-9",
            f"POST /callbacks/ws_1/http?token={REDACTED}",
        ),
        ("settings callback_secret: abcdef", f"settings callback_secret: {REDACTED}"),
        ("writeKey='tlw_short'", f"writeKey='{REDACTED}'"),
        ("smtp_password=Secret('**********')", f"smtp_password={REDACTED}"),
    ],
)
def test_secret_looking_pairs_lose_their_value(text: str, expected: str) -> None:
    """``name=value`` and ``"name": "value"`` pairs named like secrets keep the name only."""
    assert redact(text) == expected


def test_customer_link_tokens_are_redacted_but_not_the_workspace() -> None:
    """The signed part of /u/, /p/ and /c/ links goes; the workspace id stays for debugging."""
    line = '127.0.0.1:5000 - "GET /u/ws_ab12cd34ef56.AQIDBAUGBwgJCgsMDQ4PEBES HTTP/1.1" 200'
    assert redact(line) == f'127.0.0.1:5000 - "GET /u/ws_ab12cd34ef56.{REDACTED} HTTP/1.1" 200'


def test_known_secret_values_are_scrubbed_anywhere() -> None:
    """A configured secret is removed even where no pattern would recognise it."""
    assert redact("smtp said: 535 bad auth for pa55-w0rd!", known=["pa55-w0rd!"]) == (
        f"smtp said: 535 bad auth for {REDACTED}"
    )


def test_ordinary_messages_are_left_alone() -> None:
    """Text without credentials comes out unchanged."""
    text = "event 42 failed: KeyError: 'cart_id' (basic plan, 3 timers, user u_77)"
    assert redact(text) == text


# -- the filter and the JSON format -------------------------------------------------------


def test_filter_rewrites_message_args_extras_and_traceback() -> None:
    """After the filter, nothing downstream can print the key: not from args, extras or a traceback."""
    try:
        raise ValueError(f"bad key {WRITE_KEY}")
    except ValueError:
        exc_info = sys.exc_info()
    record = _record("auth with %s failed", WRITE_KEY, header=f"Bearer {ADMIN_TOKEN}")
    record.exc_info = exc_info

    assert RedactingFilter().filter(record) is True

    formatted = logging.Formatter("%(message)s %(header)s").format(record)
    assert WRITE_KEY not in formatted and ADMIN_TOKEN not in formatted
    assert record.getMessage() == f"auth with tlw_{REDACTED} failed"
    assert "ValueError: bad key tlw_[redacted]" in formatted


def test_a_secret_passed_as_an_argument_prints_masked() -> None:
    """A Secret as a log argument renders as its masked repr, which is redacted too."""
    record = _record("connecting with %s", Secret("hunter2-hunter2"))
    RedactingFilter(known=["hunter2-hunter2"]).filter(record)
    assert record.getMessage() == f"connecting with {REDACTED}"


def test_json_lines_carry_time_level_logger_message_and_extras() -> None:
    """One JSON object per record with the fixed fields and the caller's extra fields."""
    record = _record("sent %d messages", 3, channel="email", at=Secret("x" * 8))
    record.created = 1_772_442_000.5  # 2026-03-02T09:00:00.500Z

    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry == {
        "time": "2026-03-02T09:00:00.500+00:00",
        "level": "WARNING",
        "logger": "touchline.test",
        "message": "sent 3 messages",
        "channel": "email",
        "at": "Secret('**********')",
    }


def test_json_lines_include_the_exception() -> None:
    """A record with a traceback carries it in ``exception``, still on one line."""
    try:
        1 / 0  # noqa: B018 - the point is the exception
    except ZeroDivisionError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exception"].endswith("ZeroDivisionError: division by zero")


# -- configure_logging --------------------------------------------------------------------


@contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without the test runner's handlers, restored on the way out.

    Not a fixture: pytest attaches its capture handlers after fixtures run.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        yield root
    finally:
        root.handlers = handlers
        root.setLevel(level)


def test_configure_logging_writes_redacted_json_lines() -> None:
    """With ``json`` every record is one redacted JSON line on the given stream."""
    stream = io.StringIO()
    with bare_root() as root:
        configure_logging(
            "info", fmt="json", secrets=[Secret("metrics-token-1"), None], stream=stream
        )
        log = logging.getLogger("touchline.web")
        log.info("token %s", "metrics-token-1", extra={"k": WRITE_KEY})
        log.debug("not at info level")
        level = root.level

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == f"token {REDACTED}"
    assert entry["k"] == f"tlw_{REDACTED}"
    assert level == logging.INFO


def test_configure_logging_twice_keeps_one_handler() -> None:
    """A second call replaces the handler the first installed, so nothing prints twice."""
    stream = io.StringIO()
    with bare_root() as root:
        first = configure_logging("INFO", fmt="json", stream=io.StringIO())
        second = configure_logging("INFO", fmt="text", stream=stream)
        logging.getLogger("touchline").warning("once")
        installed = root.handlers[:]

    assert installed == [second] and first is not second
    assert stream.getvalue().count("once") == 1
    assert " WARNING touchline once" in stream.getvalue()


def test_configure_logging_leaves_an_embedding_applications_handlers_alone() -> None:
    """Like basicConfig, it does nothing when someone else configured the root logger."""
    theirs = logging.StreamHandler(io.StringIO())
    with bare_root() as root:
        root.addHandler(theirs)
        result = configure_logging("DEBUG", fmt="json")
        installed = root.handlers[:]
    assert result is None
    assert installed == [theirs]


def test_configure_logging_refuses_an_unknown_format() -> None:
    """A format other than text or json is a programming error, reported at once."""
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("INFO", fmt="xml")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '"GET /t/o/ws_ab12cd34ef56.AQIDBAUGBwgJCgsMDQ4P.gif HTTP/1.1" 200',
            f'"GET /t/o/ws_ab12cd34ef56.{REDACTED}.gif HTTP/1.1" 200',
        ),
        (
            '"GET /t/c/ws_ab12cd34ef56.AQIDBAUGBwgJCgsMDQ4PEBES HTTP/1.1" 302',
            f'"GET /t/c/ws_ab12cd34ef56.{REDACTED} HTTP/1.1" 302',
        ),
        ('"GET /s/Ab3dE9xZ HTTP/1.1" 302', f'"GET /s/{REDACTED} HTTP/1.1" 302'),
    ],
)
def test_tracking_tokens_and_short_codes_are_redacted(line: str, expected: str) -> None:
    """Open-pixel and click tokens keep their workspace only; SMS short codes go entirely."""
    assert redact(line) == expected
