"""Which channel adapter delivers a workspace's messages, built from its settings.

A workspace's ``channels`` settings (see :mod:`touchline.messaging.settings`)
name a provider per channel; :class:`ChannelRegistry` turns them into adapters
and keeps each one for as long as its settings stay the same. Where a
workspace configures nothing, the process defaults apply: the SMTP server
from ``TOUCHLINE_SMTP_*`` for email and the capture channel for everything
else, under the :data:`FALLBACK` key, exactly as without a registry.

Call contract (the dispatcher's side)::

    registry = ChannelRegistry(engine, defaults={"*": CaptureChannel(), "email": smtp},
                               clock=clock, public_url=settings.public_url)
    # on the dispatcher's event loop:
    channel = await registry.get(workspace_id, "sms")   # Channel | None
    # in a worker thread (e.g. inside asyncio.to_thread), or anywhere blocking is fine:
    policy = registry.policy(workspace_id)               # caps, quiet hours, default zone
    ws_settings = registry.settings(workspace_id)        # double opt-in, topics, sender...
    # when the dispatcher stops, on the same loop:
    await registry.aclose()

* ``get`` is a coroutine. It reads the store (in a thread) only when the
  workspace's cached settings are older than ``ttl`` seconds of ``clock``
  time, so most calls touch no database. It answers ``None`` only when the
  workspace configures nothing for the channel and ``defaults`` holds neither
  the channel nor :data:`FALLBACK`.
* ``policy`` and ``settings`` are plain methods; on a cache miss they block
  on one query, so call them from a thread, not from the event loop itself.
* Every method raises :class:`WorkspaceSettingsError` when the stored
  settings of *that* workspace are unusable, naming the field
  (``workspace ws_1 has invalid settings: channels.sms.provider: ...``).
  Other workspaces are unaffected, and so are the parts of the document that
  are fine: a bad ``caps`` entry does not stop ``get`` for a well-formed
  ``channels`` section, nor the reverse. It is a
  :class:`~touchline.errors.TransientDeliveryError`, so a message that meets
  it is retried and goes out once the settings are fixed.
* One registry serves one event loop (the adapters' HTTP client and SMTP
  connections belong to it). It owns ``defaults`` from then on: ``aclose``
  closes them, every adapter it built and its HTTP client.

An adapter is built once per (workspace, channel, settings checksum). When
the settings change, the next ``get`` after the cache expires builds a new one
and closes the one it replaces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from touchline.clock import Clock
from touchline.config import Secret
from touchline.errors import ConfigError, InputError, StoreError, TransientDeliveryError
from touchline.messaging.channels.base import Channel, OutgoingMessage, SendResult
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.channels.smpp import SmppChannel, SmppConfig
from touchline.messaging.channels.sms_http import HttpSmsChannel, HttpSmsConfig, ReportStatus
from touchline.messaging.channels.smsaero import SmsAeroChannel, SmsAeroConfig
from touchline.messaging.channels.smtp import DkimSettings, SmtpChannel, SmtpSettings
from touchline.messaging.channels.telegram import TelegramChannel
from touchline.messaging.channels.twilio import TwilioChannel, TwilioConfig
from touchline.messaging.channels.webhook import WebhookChannel
from touchline.messaging.policies import Policy
from touchline.messaging.settings import (
    TOP_LEVEL_KEYS,
    ChannelSettings,
    Sender,
    WorkspaceSettings,
    parse_channels,
    parse_sender,
)
from touchline.store.tables import workspaces

log = logging.getLogger("touchline.registry")

#: The defaults key used for any channel without its own entry (the dispatcher's DEFAULT_CHANNEL).
FALLBACK = "*"
#: Seconds a workspace's settings are trusted before the store is asked again.
SETTINGS_TTL = 30.0
#: SMTP port per security mode when the settings name none (submission, SMTPS, plain).
SMTP_PORTS = {"starttls": 587, "tls": 465, "none": 25}
#: The body a generic HTTP gateway gets when its settings give no ``body_template``.
DEFAULT_HTTP_BODY = {"to": "{to}", "text": "{text}", "from": "{sender}"}
#: Status words most gateways use, for HTTP gateways whose settings give no ``status_map``.
DEFAULT_HTTP_STATUS_MAP: Mapping[str, ReportStatus] = {
    "delivered": "delivered",
    "sent": "sent",
    "queued": "sent",
    "accepted": "sent",
    "failed": "failed",
    "undelivered": "failed",
    "rejected": "failed",
    "expired": "failed",
    "invalid_number": "failed",
}


class WorkspaceSettingsError(TransientDeliveryError):
    """One workspace's stored settings cannot be used; the message names the field.

    Transient on purpose: the messages wait (with backoff) for the settings to
    be fixed instead of failing for good. Answered as 503 over HTTP.
    """

    code = "settings_unusable"
    status = 503


@dataclass(frozen=True)
class _Loaded:
    """One workspace's settings as last read, with each part's verdict."""

    at: datetime
    settings: WorkspaceSettings | None
    problem: str | None  # the whole document's first problem
    policy: Policy | None
    policy_problem: str | None
    channels: Mapping[str, ChannelSettings]
    sender: Sender
    channels_problem: str | None


class ChannelRegistry:
    """Adapters per workspace and channel, built from settings and rebuilt when they change."""

    def __init__(
        self,
        engine: Engine,
        *,
        defaults: Mapping[str, Channel],
        clock: Clock,
        ttl: float = SETTINGS_TTL,
        public_url: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._engine = engine
        self._defaults = dict(defaults)
        self._clock = clock
        self._ttl = ttl
        self._public_url = public_url.rstrip("/") if public_url else None
        self._client = client
        self._owns_client = client is None
        fallback = self._defaults.get(FALLBACK)
        self._capture: Channel = (
            fallback if isinstance(fallback, CaptureChannel) else CaptureChannel()
        )
        self._lock = threading.Lock()
        self._loaded: dict[str, _Loaded] = {}
        self._built: dict[tuple[str, str], tuple[str, Channel]] = {}

    # -- the contract -------------------------------------------------------------------

    async def get(self, workspace_id: str, channel: str) -> Channel | None:
        """The adapter for ``channel`` in this workspace (see the module docstring)."""
        loaded = self._fresh(workspace_id)
        if loaded is None:
            loaded = await asyncio.to_thread(self._reload, workspace_id)
        if loaded.channels_problem is not None:
            raise self._error(workspace_id, loaded.channels_problem)
        spec = loaded.channels.get(channel)
        key = (workspace_id, channel)
        if spec is None or spec.provider == "default":
            await self._retire(key)
            default = self._defaults.get(channel)
            return default if default is not None else self._defaults.get(FALLBACK)
        if spec.provider == "capture":
            await self._retire(key)
            return self._capture
        held = self._built.get(key)
        if held is not None and held[0] == spec.checksum:
            return held[1]
        try:
            adapter = self._build(workspace_id, spec, loaded.sender)
        except (ConfigError, InputError) as exc:
            raise self._error(workspace_id, f"{spec.path}: {exc.message}") from exc
        # No await between the lookup above and this assignment: concurrent
        # gets on one loop cannot both build.
        self._built[key] = (spec.checksum, adapter)
        if held is not None:
            log.info("workspace %s: %s settings changed; adapter rebuilt", workspace_id, channel)
            await held[1].aclose()
        return adapter

    def policy(self, workspace_id: str) -> Policy:
        """The workspace's caps and quiet hours; blocks on a cache miss."""
        loaded = self._entry(workspace_id)
        if loaded.policy is None:
            raise self._error(workspace_id, loaded.policy_problem or "unusable")
        return loaded.policy

    def settings(self, workspace_id: str) -> WorkspaceSettings:
        """The workspace's whole settings, checked; blocks on a cache miss."""
        loaded = self._entry(workspace_id)
        if loaded.settings is None:
            raise self._error(workspace_id, loaded.problem or "unusable")
        return loaded.settings

    def invalidate(self, workspace_id: str | None = None) -> None:
        """Forget cached settings (of one workspace, or all) so the next call reads the store."""
        with self._lock:
            if workspace_id is None:
                self._loaded.clear()
            else:
                self._loaded.pop(workspace_id, None)

    def built(self) -> list[tuple[str, str, Channel]]:
        """Every adapter built from workspace settings, as (workspace id, channel, adapter)."""
        return [(ws, name, adapter) for (ws, name), (_, adapter) in list(self._built.items())]

    async def aclose(self) -> None:
        """Close every adapter built, the defaults, and the HTTP client if the registry made it."""
        built = [adapter for _, adapter in self._built.values()]
        self._built.clear()
        channels = {id(c): c for c in [*built, *self._defaults.values(), self._capture]}
        for channel in channels.values():
            try:
                await channel.aclose()
            except Exception:  # noqa: BLE001 - one adapter failing to close must not leak the rest
                log.exception("closing %r failed", channel)
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    # -- settings cache -----------------------------------------------------------------

    def _fresh(self, workspace_id: str) -> _Loaded | None:
        with self._lock:
            loaded = self._loaded.get(workspace_id)
        if loaded is None:
            return None
        age = (self._clock.now() - loaded.at).total_seconds()
        return loaded if 0 <= age < self._ttl else None

    def _entry(self, workspace_id: str) -> _Loaded:
        return self._fresh(workspace_id) or self._reload(workspace_id)

    def _reload(self, workspace_id: str) -> _Loaded:
        now = self._clock.now()
        try:
            with self._engine.connect() as conn:
                row = conn.execute(
                    select(workspaces.c.settings, workspaces.c.timezone).where(
                        workspaces.c.id == workspace_id
                    )
                ).first()
        except OperationalError as exc:
            raise StoreError(f"the store is unreachable: {exc.orig}") from exc
        document = row.settings if row is not None else None
        loaded = _analyse(document, timezone=row.timezone if row is not None else None, at=now)
        if loaded.problem is not None:
            log.warning("workspace %s has invalid settings: %s", workspace_id, loaded.problem)
        with self._lock:
            self._loaded[workspace_id] = loaded
        return loaded

    def _error(self, workspace_id: str, problem: str) -> WorkspaceSettingsError:
        return WorkspaceSettingsError(f"workspace {workspace_id} has invalid settings: {problem}")

    async def _retire(self, key: tuple[str, str]) -> None:
        held = self._built.pop(key, None)
        if held is not None:
            await held[1].aclose()

    # -- building adapters --------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient()
        return self._client

    def _build(self, workspace_id: str, spec: ChannelSettings, sender: Sender) -> Channel:
        provider = spec.provider
        if provider == "smtp":
            smtp, dkim = smtp_settings(spec, sender)
            return SmtpChannel(smtp, dkim=dkim, clock=self._clock.now)
        if provider == "http":
            return HttpSmsChannel(self._http(), config=http_sms_config(spec, sender))
        if provider == "smsaero":
            url = None
            secret = spec.option("callback_secret")
            if self._public_url and secret:
                url = callback_url(self._public_url, workspace_id, "smsaero", token=secret)
            return SmsAeroChannel(self._http(), config=smsaero_config(spec, sender, callback=url))
        if provider == "twilio":
            url = None
            if self._public_url:
                url = callback_url(self._public_url, workspace_id, "twilio")
            return TwilioChannel(self._http(), config=twilio_config(spec, sender, callback=url))
        if provider == "smpp":
            return SmppChannel(smpp_config(spec, sender))
        if provider == "telegram":
            return TelegramChannel(
                self._http(),
                token=Secret(spec.options["bot_token"]),
                **_present(spec, base_url="base_url", timeout="timeout"),
            )
        if provider == "webhook":
            clock = self._clock
            hook = WebhookChannel(
                self._http(),
                secret=Secret(spec.options["secret"]),
                clock=lambda: clock.now().timestamp(),
                **_present(spec, timeout="timeout"),
            )
            url = spec.option("url")
            return FixedUrlWebhook(hook, url=url) if url else hook
        raise ConfigError(f"provider {provider!r} cannot be built")


class FixedUrlWebhook:
    """A webhook channel that posts every message to one URL.

    The customer's address (``message.to``) travels as ``metadata.recipient``.
    """

    name = "webhook"

    def __init__(self, inner: WebhookChannel, *, url: str) -> None:
        self._inner = inner
        self.url = url

    async def send(self, message: OutgoingMessage) -> SendResult:
        metadata = {**message.metadata, "recipient": message.to}
        return await self._inner.send(dataclasses.replace(message, to=self.url, metadata=metadata))

    async def aclose(self) -> None:
        await self._inner.aclose()


def _analyse(document: Any, *, timezone: str | None, at: datetime) -> _Loaded:
    """Judge a stored document whole, and when it fails, its policy and channels apart.

    A document that is not an object, or has a top-level key nobody knows (any
    section misspelled, perhaps ``channels``), has no part worth trusting.
    """
    try:
        settings = WorkspaceSettings.parse(document, timezone=timezone)
    except InputError as exc:
        problem = exc.message
    else:
        return _Loaded(
            at, settings, None, settings.policy, None, settings.channels, settings.sender, None
        )
    if not isinstance(document, Mapping) or set(document) - set(TOP_LEVEL_KEYS):
        return _Loaded(at, None, problem, None, problem, {}, Sender(), problem)
    policy: Policy | None = None
    policy_problem = channels_problem = None
    try:
        with_zone = {"default_timezone": timezone, **document} if timezone else document
        policy = Policy.from_settings(with_zone)
    except InputError as exc:
        policy_problem = exc.message
    sender = Sender()
    channels: Mapping[str, ChannelSettings] = {}
    try:
        sender = parse_sender(document.get("sender"))
        channels = parse_channels(document.get("channels"), sender=sender)
    except InputError as exc:
        channels_problem = exc.message
    return _Loaded(at, None, problem, policy, policy_problem, channels, sender, channels_problem)


def callback_url(
    public_url: str, workspace_id: str, provider: str, *, token: str | None = None
) -> str:
    """Where a provider posts delivery reports for this workspace (``?token=`` when given)."""
    url = f"{public_url.rstrip('/')}/callbacks/{quote(workspace_id, safe='')}/{provider}"
    return f"{url}?token={quote(token, safe='')}" if token else url


def smtp_settings(
    spec: ChannelSettings, sender: Sender
) -> tuple[SmtpSettings, DkimSettings | None]:
    """SMTP settings for a workspace's ``smtp`` email channel; sender fills what it leaves out."""
    o = spec.options
    security = o.get("security", "starttls")
    password = spec.secret("password")
    dkim = None
    if "dkim" in o:
        dkim = DkimSettings(
            selector=o["dkim"]["selector"],
            domain=o["dkim"]["domain"],
            private_key=Secret(o["dkim"]["private_key"]),
        )
    from_address = o.get("from") or sender.email_from
    if not from_address:
        raise InputError("from: required (or set sender.email_from)")
    settings = SmtpSettings(
        host=o["host"],
        port=o.get("port", SMTP_PORTS[security]),
        from_address=from_address,
        security=security,
        username=o.get("username"),
        password=password,
        from_name=o.get("from_name") or sender.email_from_name,
        reply_to=o.get("reply_to") or sender.reply_to,
        return_path=o.get("return_path"),
        **_present(spec, timeout="timeout", helo_name="helo_name"),
    )
    return settings, dkim


def http_sms_config(spec: ChannelSettings, sender: Sender) -> HttpSmsConfig:
    """The gateway description of a workspace's ``http`` SMS channel."""
    o = spec.options
    return HttpSmsConfig(
        url=o["url"],
        body_template=o.get("body_template", DEFAULT_HTTP_BODY),
        auth=o.get("auth", "none"),
        token=spec.secret("token"),
        username=o.get("username"),
        password=spec.secret("password"),
        headers=o.get("headers", {}),
        sender=o.get("sender") or sender.sms_sender or "",
        status_map=o.get("status_map") or DEFAULT_HTTP_STATUS_MAP,
        **_present(
            spec,
            method="method",
            body_format="body_format",
            response_id_path="response_id_path",
            response_status_path="response_status_path",
            callback_id_path="callback_id_path",
            callback_status_path="callback_status_path",
            callback_error_path="callback_error_path",
            region="region",
            timeout="timeout",
        ),
        **({"idempotency_header": o["idempotency_header"]} if "idempotency_header" in o else {}),
    )


def smsaero_config(spec: ChannelSettings, sender: Sender, *, callback: str | None) -> SmsAeroConfig:
    """The SMS Aero account of a workspace's ``smsaero`` SMS channel."""
    o = spec.options
    return SmsAeroConfig(
        email=o["email"],
        api_key=Secret(o["api_key"]),
        sign=o.get("sign") or sender.sms_sender or SmsAeroConfig.sign,
        callback_url=o.get("callback_url") or callback,
        **_present(spec, base_url="base_url", region="region", timeout="timeout"),
    )


def twilio_config(spec: ChannelSettings, sender: Sender, *, callback: str | None) -> TwilioConfig:
    """The Twilio account of a workspace's ``twilio`` SMS channel."""
    o = spec.options
    service = o.get("messaging_service_sid")
    return TwilioConfig(
        account_sid=o["account_sid"],
        auth_token=Secret(o["auth_token"]),
        from_number=o.get("from_number") or (None if service else sender.sms_sender),
        messaging_service_sid=service,
        status_callback=o.get("status_callback") or callback,
        **_present(spec, base_url="base_url", region="region", timeout="timeout"),
    )


def smpp_config(spec: ChannelSettings, sender: Sender) -> SmppConfig:
    """The SMSC account of a workspace's ``smpp`` SMS channel."""
    o = spec.options
    return SmppConfig(
        host=o["host"],
        port=o["port"],
        system_id=o["system_id"],
        password=Secret(o["password"]),
        source_addr=o.get("source_addr") or sender.sms_sender or "",
        **_present(
            spec,
            system_type="system_type",
            bind="bind",
            registered_delivery="registered_delivery",
            region="region",
            timeout="timeout",
        ),
    )


def _present(spec: ChannelSettings, **names: str) -> dict[str, Any]:
    """Keyword arguments for the options that are set (``argument=option`` pairs)."""
    return {arg: spec.options[key] for arg, key in names.items() if key in spec.options}


__all__ = [
    "DEFAULT_HTTP_STATUS_MAP",
    "FALLBACK",
    "SETTINGS_TTL",
    "ChannelRegistry",
    "FixedUrlWebhook",
    "WorkspaceSettingsError",
    "callback_url",
    "http_sms_config",
    "smpp_config",
    "smsaero_config",
    "smtp_settings",
    "twilio_config",
]
