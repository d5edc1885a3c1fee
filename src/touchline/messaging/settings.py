"""A workspace's settings document: parsed, validated, masked for display.

The document is the JSON stored in ``workspaces.settings`` and edited through
``PUT /admin/v1/settings``::

    {
      "caps": [...], "quiet_hours": [...], "default_timezone": "Europe/Moscow",
      "double_opt_in": ["email"],
      "topics": {"promo": "Sales and offers"},
      "sender": {"email_from": "Shop <shop@example.ru>", "reply_to": "care@example.ru",
                 "sms_sender": "Shop", "unsubscribe_mailto": "unsubscribe@example.ru"},
      "channels": {
        "email": {"provider": "smtp", "host": "smtp.example.ru", "username": "...",
                  "password": "...", "callback_secret": "..."},
        "sms": {"provider": "smsaero", "email": "...", "api_key": "...",
                "callback_secret": "..."},
        "telegram": {"provider": "telegram", "bot_token": "..."},
        "webhook": {"provider": "webhook", "url": "https://...", "secret": "..."}
      }
    }

:meth:`WorkspaceSettings.parse` checks all of it and raises
:class:`~touchline.errors.InputError` whose message starts with the path of
the first bad field (``channels.sms.provider: ...``); an unknown key is an
error too, with a suggestion when one is close. ``caps``, ``quiet_hours`` and
``default_timezone`` are :meth:`Policy.from_settings`'s business.

Each channel names a ``provider`` and that provider's options (see
:data:`PROVIDERS`). ``provider: "capture"`` keeps messages instead of sending
them; for email, ``provider: "default"`` uses the server's own SMTP settings
(``TOUCHLINE_SMTP_*``) and exists to carry a ``callback_secret``.

Secrets (:data:`SECRET_KEYS`) are never shown back: :func:`masked` turns them
into ``"••••"`` plus their last four characters, and :func:`merge_secrets`
puts the stored secret back where a client returns such a masked value
unchanged, so a document can be read, edited and written back whole.

Parsing is pure: nothing here reads the store, the clock or the network.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parseaddr
from typing import Any
from urllib.parse import urlsplit

import phonenumbers

from touchline.config import Secret
from touchline.errors import InputError
from touchline.messaging.policies import Policy
from touchline.store.consent import CONSENT_CHANNELS

#: Keys whose values are secrets, wherever they appear in the document.
SECRET_KEYS = frozenset(
    {
        "password",
        "api_key",
        "auth_token",
        "bot_token",
        "secret",
        "token",
        "callback_secret",
        "private_key",
    }
)
MASK = "••••"
#: Secrets shorter than this are masked whole: four characters of a short secret give too much away.
MASK_MIN_LENGTH = 12
#: GSM alphanumeric originators are at most 11 characters.
MAX_ALPHA_SENDER = 11
#: Longest ordinary text value; keys and labels are much shorter in practice.
MAX_TEXT = 500
#: Longest secret; PEM private keys are the long ones.
MAX_SECRET = 16_384
#: Longest a provider may take to answer, in seconds; anything longer holds up the dispatcher.
MAX_TIMEOUT = 120

TOP_LEVEL_KEYS = (
    "caps",
    "quiet_hours",
    "default_timezone",
    "double_opt_in",
    "topics",
    "sender",
    "channels",
    "control_group",
    "attribution",
    "catalog",
)
SENDER_KEYS = ("email_from", "reply_to", "sms_sender", "unsubscribe_mailto")
CHANNEL_NAMES = ("email", "sms", "telegram", "webhook")

_TOPIC = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ALPHA_SENDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._&-]*$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

Check = Callable[[Any, str], Any]


# -- the parsed document ------------------------------------------------------------------


@dataclass(frozen=True)
class Sender:
    """Who messages come from, unless a channel's own options say otherwise."""

    email_from: str | None = None  # bare address
    email_from_name: str | None = None  # display name, from "Shop <shop@example.ru>"
    reply_to: str | None = None
    sms_sender: str | None = None  # alphanumeric (<= 11) or E.164
    unsubscribe_mailto: str | None = None  # bare address, without "mailto:"


@dataclass(frozen=True)
class ChannelSettings:
    """One channel's provider and its validated options (secrets included, never in ``repr``).

    ``checksum`` changes whenever anything the adapter is built from changes
    (these options or the workspace's :class:`Sender`), so a cache keyed by
    it rebuilds exactly the adapters whose configuration moved.
    """

    name: str
    provider: str
    options: Mapping[str, Any] = field(repr=False)
    checksum: str

    def secret(self, key: str) -> Secret | None:
        """The secret option ``key``, wrapped so it never prints; None when unset."""
        value = self.options.get(key)
        return Secret(value) if isinstance(value, str) and value else None

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    @property
    def path(self) -> str:
        """Where these settings sit in the document, for error messages."""
        return f"channels.{self.name}"


@dataclass(frozen=True)
class WorkspaceSettings:
    """A whole settings document, checked. ``document`` is what was stored."""

    policy: Policy
    double_opt_in: frozenset[str]
    topics: Mapping[str, str]
    sender: Sender
    channels: Mapping[str, ChannelSettings]
    document: Mapping[str, Any] = field(repr=False)
    checksum: str

    @classmethod
    def parse(cls, document: Any, *, timezone: str | None = None) -> WorkspaceSettings:
        """Check ``document`` whole; InputError naming the first bad field's path.

        ``timezone`` (the workspace's own zone) stands in for a missing
        ``default_timezone``, as delivery rules expect.
        """
        if document is None:
            document = {}
        if not isinstance(document, Mapping):
            raise InputError("settings: must be a JSON object")
        _known_keys(document, TOP_LEVEL_KEYS, "")
        policy_doc: Mapping[str, Any] = document
        if timezone and "default_timezone" not in document:
            policy_doc = {**document, "default_timezone": timezone}
        policy = Policy.from_settings(policy_doc)
        from touchline.measure.attribution import AttributionRules  # measure builds on messaging

        AttributionRules.from_settings(document)
        from touchline.audience.catalog import CatalogRules  # the audience builds on messaging

        CatalogRules.from_settings(document)
        sender = parse_sender(document.get("sender"))
        return cls(
            policy=policy,
            double_opt_in=_double_opt_in(document.get("double_opt_in", [])),
            topics=_topics(document.get("topics", {})),
            sender=sender,
            channels=parse_channels(document.get("channels"), sender=sender),
            document=document,
            checksum=checksum(document),
        )

    def channel(self, name: str) -> ChannelSettings | None:
        """The workspace's own settings for channel ``name``, if it has any."""
        return self.channels.get(name)


def checksum(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value``: equal documents, equal checksums."""
    canonical = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_sender(value: Any, where: str = "sender") -> Sender:
    """The ``sender`` section (missing: all None)."""
    if value is None:
        return Sender()
    data = _mapping(value, where)
    _known_keys(data, SENDER_KEYS, where)
    name: str | None = None
    address: str | None = None
    if data.get("email_from") is not None:
        name, address = _mailbox(data["email_from"], f"{where}.email_from")
    reply_to = _optional(data, "reply_to", _email, where)
    sms_sender = _optional(data, "sms_sender", _sms_sender, where)
    mailto = data.get("unsubscribe_mailto")
    if mailto is not None:
        if isinstance(mailto, str) and mailto.lower().startswith("mailto:"):
            mailto = mailto[len("mailto:") :]
        mailto = _email(mailto, f"{where}.unsubscribe_mailto")
    return Sender(
        email_from=address,
        email_from_name=name,
        reply_to=reply_to,
        sms_sender=sms_sender,
        unsubscribe_mailto=mailto,
    )


def parse_channels(value: Any, *, sender: Sender) -> dict[str, ChannelSettings]:
    """The ``channels`` section: channel name -> :class:`ChannelSettings` (missing: empty)."""
    if value is None:
        return {}
    data = _mapping(value, "channels")
    _known_keys(data, CHANNEL_NAMES, "channels")
    return {
        name: parse_channel(name, entry, sender=sender)
        for name, entry in data.items()
        if entry is not None
    }


def parse_channel(name: str, value: Any, *, sender: Sender) -> ChannelSettings:
    """One channel's entry: ``{"provider": ..., ...options}`` checked against :data:`PROVIDERS`."""
    where = f"channels.{name}"
    providers = PROVIDERS.get(name)
    if providers is None:
        raise InputError(f"{where}: unknown channel{_suggestion(name, CHANNEL_NAMES)}")
    data = _mapping(value, where)
    provider = data.get("provider")
    if provider is None:
        raise InputError(f"{where}.provider: required; one of {', '.join(providers)}")
    if not isinstance(provider, str) or provider not in providers:
        raise InputError(
            f"{where}.provider: {provider!r} is not one of {', '.join(providers)}"
            + (_suggestion(provider, providers) if isinstance(provider, str) else "")
        )
    schema = providers[provider]
    options = {key: item for key, item in data.items() if key != "provider"}
    _known_keys(options, ("provider", *schema.fields), where)
    for key in sorted(schema.required):
        if options.get(key) is None:
            raise InputError(f"{where}.{key}: required for provider {provider!r}")
    checked = {
        key: schema.fields[key](item, f"{where}.{key}")
        for key, item in options.items()
        if item is not None
    }
    if schema.finish is not None:
        schema.finish(checked, sender, where)
    return ChannelSettings(
        name=name,
        provider=provider,
        options=checked,
        checksum=checksum({"channel": dict(data), "sender": dataclasses.asdict(sender)}),
    )


# -- masking secrets ----------------------------------------------------------------------


def mask(secret: str) -> str:
    """How a secret is shown: ``"••••"`` and its last four characters (short ones: nothing)."""
    if len(secret) < MASK_MIN_LENGTH:
        return MASK
    return MASK + secret[-4:]


def masked(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the document with every secret (:data:`SECRET_KEYS`) masked."""
    result = _masked(settings)
    assert isinstance(result, dict)
    return result


def merge_secrets(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` with masked secrets replaced by the stored ones they stand for.

    A client that read the document (masked) and sends it back keeps the
    stored secrets without knowing them. A masked value that does not match
    the secret stored at the same path is refused: it would otherwise become
    the secret itself.
    """
    result = _merged(old, new, "")
    assert isinstance(result, dict)
    return result


def _masked(value: Any, key: str | None = None) -> Any:
    if isinstance(value, Mapping):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if key in SECRET_KEYS and isinstance(value, str) and value:
        return mask(value)
    return value


def _merged(old: Any, new: Any, path: str, key: str | None = None) -> Any:
    if isinstance(new, Mapping):
        previous = old if isinstance(old, Mapping) else {}
        return {
            k: _merged(previous.get(k), v, f"{path}.{k}" if path else str(k), k)
            for k, v in new.items()
        }
    if isinstance(new, list):
        previous_items = old if isinstance(old, list) else []
        return [
            _merged(previous_items[i] if i < len(previous_items) else None, item, f"{path}[{i}]")
            for i, item in enumerate(new)
        ]
    if key in SECRET_KEYS and isinstance(new, str) and new.startswith(MASK):
        if isinstance(old, str) and old and mask(old) == new:
            return old
        raise InputError(
            f"{path}: {new!r} is a masked value that does not match the stored secret; "
            "send the secret itself"
        )
    return new


# -- providers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderSchema:
    """The options one provider takes: a check per key, the required ones, cross-field rules."""

    fields: Mapping[str, Check]
    required: frozenset[str] = frozenset()
    finish: Callable[[dict[str, Any], Sender, str], None] | None = None


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise InputError(f"{where}: longer than {MAX_TEXT} characters")
    return value


def _secret(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: must be a non-empty string")
    if len(value) > MAX_SECRET:
        raise InputError(f"{where}: longer than {MAX_SECRET} characters")
    if value.startswith(MASK):
        raise InputError(f"{where}: a masked value, not a secret; send the secret itself")
    return value


def _host(value: Any, where: str) -> str:
    text = _text(value, where)
    if any(ch.isspace() for ch in text) or "/" in text:
        raise InputError(f"{where}: {text!r} is not a host name")
    return text


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InputError(f"{where}: {value!r} is not a port number (1-65535)")
    return value


def _timeout(value: Any, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= MAX_TIMEOUT
    ):
        raise InputError(f"{where}: must be a number of seconds above 0 and at most {MAX_TIMEOUT}")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{where}: must be true or false")
    return value


def _choice(*allowed: str) -> Check:
    def check(value: Any, where: str) -> str:
        if value not in allowed:
            hint = _suggestion(value, allowed) if isinstance(value, str) else ""
            raise InputError(f"{where}: {value!r} is not one of {', '.join(allowed)}{hint}")
        return str(value)

    return check


def _url(value: Any, where: str) -> str:
    text = _text(value, where)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{where}: {text!r} is not an http(s) URL")
    return text


def _email(value: Any, where: str) -> str:
    text = _text(value, where).strip()
    local, _, domain = text.rpartition("@")
    if not local or "." not in domain or any(ch.isspace() or ch in "<>" for ch in text):
        raise InputError(f"{where}: {text!r} is not an email address")
    return text


def _mailbox(value: Any, where: str) -> tuple[str | None, str]:
    """``"Shop <shop@example.ru>"`` or a bare address -> (display name, address)."""
    text = _text(value, where)
    name, address = parseaddr(text)
    return (name or None), _email(address or text, where)


def _sms_sender(value: Any, where: str) -> str:
    text = _text(value, where)
    if _E164.match(text):
        return text
    if len(text) > MAX_ALPHA_SENDER or not _ALPHA_SENDER.match(text) or text != text.strip():
        raise InputError(
            f"{where}: {text!r} must be an alphanumeric name of at most "
            f"{MAX_ALPHA_SENDER} characters or an E.164 number like +79161234567"
        )
    return text


def _e164(value: Any, where: str) -> str:
    text = _text(value, where)
    if not _E164.match(text):
        raise InputError(f"{where}: {text!r} is not an E.164 number like +79161234567")
    return text


def _region(value: Any, where: str) -> str:
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise InputError(f"{where}: {value!r} is not a two-letter region code like RU")
    return str(value)


def _path(value: Any, where: str) -> str:
    text = _text(value, where)
    if not _PATH.match(text):
        raise InputError(f"{where}: {text!r} is not a dotted path like data.0.id")
    return text


def _words(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise InputError(f"{where}: must be a list of status words")
    return [str(v) for v in value]


def _headers(value: Any, where: str) -> dict[str, str]:
    data = _mapping(value, where)
    for key, item in data.items():
        if not _HEADER_NAME.match(str(key)):
            raise InputError(f"{where}.{key}: not a header name")
        if not isinstance(item, str) or "\n" in item or "\r" in item:
            raise InputError(f"{where}.{key}: must be a one-line string")
    return dict(data)


def _status_map(value: Any, where: str) -> dict[str, str]:
    data = _mapping(value, where)
    for key, item in data.items():
        if item not in ("delivered", "failed", "sent"):
            raise InputError(f"{where}.{key}: {item!r} must be delivered, failed or sent")
    return {str(k): str(v) for k, v in data.items()}


def _body_template(value: Any, where: str) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InputError(f"{where}: not JSON: {exc}") from None
    if not isinstance(value, Mapping | list):
        raise InputError(f"{where}: must be a JSON object (or a string holding one)")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _dkim(value: Any, where: str) -> dict[str, str]:
    data = _mapping(value, where)
    _known_keys(data, ("selector", "domain", "private_key"), where)
    for key in ("selector", "domain", "private_key"):
        if data.get(key) is None:
            raise InputError(f"{where}.{key}: required")
    private_key = _secret(data["private_key"], f"{where}.private_key")
    if "PRIVATE KEY-----" not in private_key:
        raise InputError(f"{where}.private_key: must be a PEM private key")
    return {
        "selector": _host(data["selector"], f"{where}.selector"),
        "domain": _host(data["domain"], f"{where}.domain"),
        "private_key": private_key,
    }


def _finish_smtp(options: dict[str, Any], sender: Sender, where: str) -> None:
    if "from" not in options and sender.email_from is None:
        raise InputError(f"{where}.from: required (or set sender.email_from)")
    if ("username" in options) != ("password" in options):
        missing = "password" if "username" in options else "username"
        raise InputError(f"{where}.{missing}: required with the other SMTP credential")


def _finish_http(options: dict[str, Any], sender: Sender, where: str) -> None:
    auth = options.get("auth", "none")
    if auth == "bearer" and "token" not in options:
        raise InputError(f"{where}.token: required with auth 'bearer'")
    if auth == "basic":
        for key in ("username", "password"):
            if key not in options:
                raise InputError(f"{where}.{key}: required with auth 'basic'")
    flat = options.get("method", "POST") == "GET" or options.get("body_format") == "form"
    if flat and not isinstance(options.get("body_template", {}), Mapping):
        raise InputError(f"{where}.body_template: a form or GET body must be a JSON object")


def _finish_twilio(options: dict[str, Any], sender: Sender, where: str) -> None:
    if not ({"from_number", "messaging_service_sid"} & options.keys() or sender.sms_sender):
        raise InputError(
            f"{where}.from_number: required (or set messaging_service_sid, or sender.sms_sender)"
        )


_CALLBACK: dict[str, Check] = {"callback_secret": _secret}


def _price(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(f"{where}: must be a number, e.g. 3.45")
    try:
        price = Decimal(str(value))
    except ArithmeticError:
        raise InputError(f"{where}: must be a number, e.g. 3.45") from None
    if not price.is_finite() or price < 0:
        raise InputError(f"{where}: must be zero or more")
    return price


#: What one SMS part costs (in the workspace's reporting currency): reports show the cost.
_SMS_COMMON: dict[str, Check] = {"region": _region, "timeout": _timeout, "price_per_part": _price}
_CAPTURE = ProviderSchema({})

#: Every channel's providers and their options. Options left out take the adapter's defaults.
PROVIDERS: Mapping[str, Mapping[str, ProviderSchema]] = {
    "email": {
        "smtp": ProviderSchema(
            {
                "host": _host,
                "port": _port,
                "security": _choice("starttls", "tls", "none"),
                "username": _text,
                "password": _secret,
                "from": _email,
                "from_name": _text,
                "reply_to": _email,
                "return_path": _email,
                "helo_name": _host,
                "timeout": _timeout,
                "dkim": _dkim,
                **_CALLBACK,
            },
            required=frozenset({"host"}),
            finish=_finish_smtp,
        ),
        "capture": ProviderSchema(_CALLBACK),
        "default": ProviderSchema(_CALLBACK),
    },
    "sms": {
        "http": ProviderSchema(
            {
                "url": _url,
                "method": _choice("POST", "GET"),
                "body_format": _choice("json", "form"),
                "body_template": _body_template,
                "auth": _choice("none", "bearer", "basic"),
                "token": _secret,
                "username": _text,
                "password": _secret,
                "headers": _headers,
                "sender": _sms_sender,
                "response_id_path": _path,
                "response_status_path": _path,
                "status_map": _status_map,
                "callback_id_path": _path,
                "callback_status_path": _path,
                "callback_error_path": _path,
                "permanent_statuses": _words,
                "idempotency_header": _optional_text,
                **_SMS_COMMON,
                **_CALLBACK,
            },
            required=frozenset({"url"}),
            finish=_finish_http,
        ),
        "smsaero": ProviderSchema(
            {
                "email": _email,
                "api_key": _secret,
                "sign": _sms_sender,
                "base_url": _url,
                "callback_url": _url,
                "permanent_statuses": _words,
                **_SMS_COMMON,
                **_CALLBACK,
            },
            required=frozenset({"email", "api_key"}),
        ),
        "twilio": ProviderSchema(
            {
                "account_sid": _text,
                "auth_token": _secret,
                "from_number": _sms_sender,
                "messaging_service_sid": _text,
                "status_callback": _url,
                "base_url": _url,
                **_SMS_COMMON,
            },
            required=frozenset({"account_sid", "auth_token"}),
            finish=_finish_twilio,
        ),
        "smpp": ProviderSchema(
            {
                "host": _host,
                "port": _port,
                "system_id": _text,
                "password": _secret,
                "system_type": _text,
                "source_addr": _sms_sender,
                "bind": _choice("transmitter", "transceiver"),
                "registered_delivery": _bool,
                **_SMS_COMMON,
            },
            required=frozenset({"host", "port", "system_id", "password"}),
        ),
        "capture": ProviderSchema({"price_per_part": _price}),
    },
    "telegram": {
        "telegram": ProviderSchema(
            {"bot_token": _secret, "base_url": _url, "timeout": _timeout},
            required=frozenset({"bot_token"}),
        ),
        "capture": _CAPTURE,
    },
    "webhook": {
        "webhook": ProviderSchema(
            {"url": _url, "secret": _secret, "timeout": _timeout},
            required=frozenset({"secret"}),
        ),
        "capture": _CAPTURE,
    },
}


# -- small helpers ------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: must be an object")
    return value


def _optional(data: Mapping[str, Any], key: str, check: Check, where: str) -> Any:
    value = data.get(key)
    return None if value is None else check(value, f"{where}.{key}")


def _known_keys(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    known = tuple(allowed)
    for key in data:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            raise InputError(f"{path}: unknown key{_suggestion(str(key), known)}")


def _suggestion(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _double_opt_in(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        raise InputError('double_opt_in: must be a list of channels, e.g. ["email"]')
    for i, item in enumerate(value):
        if item not in CONSENT_CHANNELS:
            hint = _suggestion(item, CONSENT_CHANNELS) if isinstance(item, str) else ""
            raise InputError(
                f"double_opt_in[{i}]: {item!r} is not one of "
                f"{', '.join(sorted(CONSENT_CHANNELS))}{hint}"
            )
    return frozenset(value)


def _topics(value: Any) -> dict[str, str]:
    data = _mapping(value, "topics")
    for key, label in data.items():
        if not _TOPIC.match(str(key)):
            raise InputError(
                f"topics.{key}: a topic is 1-64 lower-case letters, digits, '-' or '_'"
            )
        _text(label, f"topics.{key}")
    return dict(data)


__all__ = [
    "CHANNEL_NAMES",
    "MASK",
    "PROVIDERS",
    "SECRET_KEYS",
    "TOP_LEVEL_KEYS",
    "ChannelSettings",
    "ProviderSchema",
    "Sender",
    "WorkspaceSettings",
    "checksum",
    "mask",
    "masked",
    "merge_secrets",
    "parse_channel",
    "parse_channels",
    "parse_sender",
]
