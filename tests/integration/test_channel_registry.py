"""ChannelRegistry on SQLite and PostgreSQL: settings to adapters, caching, rebuilds, bad settings."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import socket
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, update

from touchline.messaging.channels.base import Channel, OutgoingMessage
from touchline.messaging.channels.capture import CaptureChannel
from touchline.messaging.channels.smtp import SmtpChannel
from touchline.messaging.channels.telegram import TelegramChannel
from touchline.messaging.policies import DEFAULT_POLICY
from touchline.messaging.registry import ChannelRegistry, FixedUrlWebhook, WorkspaceSettingsError
from touchline.store.db import transaction
from touchline.store.tables import workspaces
from touchline.store.workspaces import create_workspace
from touchline.testing import FrozenClock

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
TTL = 30.0
PUBLIC = "https://touchline.example"

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def wrap() -> T:
        return await coro

    return asyncio.run(wrap())


def store(engine: Engine, workspace_id: str, settings: Any) -> None:
    """Write settings straight into the store, as an older version or a hand edit might."""
    with transaction(engine) as conn:
        conn.execute(
            update(workspaces).where(workspaces.c.id == workspace_id).values(settings=settings)
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Inbox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope.original_content)
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


class Shops:
    """Two workspaces, a frozen clock and a registry with capture defaults."""

    def __init__(self, engine: Engine, *, client: httpx.AsyncClient | None = None) -> None:
        self.engine = engine
        self.clock = FrozenClock(T0)
        self.a = create_workspace(engine, "Shop A", now=T0, timezone="Europe/Moscow").id
        self.b = create_workspace(engine, "Shop B", now=T0).id
        self.fallback = CaptureChannel()
        self.registry = ChannelRegistry(
            engine,
            defaults={"*": self.fallback},
            clock=self.clock,
            ttl=TTL,
            public_url=PUBLIC,
            client=client,
        )


def email_settings(port: int, **sender: str) -> dict[str, Any]:
    return {
        "sender": {"email_from": "Shop A <shop@a.example>", **sender},
        "channels": {
            "email": {"provider": "smtp", "host": "127.0.0.1", "port": port, "security": "none"}
        },
    }


def message(to: str = "anna@example.ru", **fields: Any) -> OutgoingMessage:
    return OutgoingMessage(idempotency_key="1:s:1", channel="email", to=to, text="Hi", **fields)


def test_a_workspace_without_settings_uses_the_defaults(engine: Engine) -> None:
    """No channels in the settings: the defaults answer, the fallback for unknown channels."""
    # given
    smtp = CaptureChannel()
    registry = ChannelRegistry(
        engine, defaults={"*": CaptureChannel(), "email": smtp}, clock=FrozenClock(T0)
    )
    ws = create_workspace(engine, "Shop", now=T0).id

    async def scenario() -> tuple[Channel | None, Channel | None]:
        try:
            return await registry.get(ws, "email"), await registry.get(ws, "telegram")
        finally:
            await registry.aclose()

    # when
    email_channel, telegram = run(scenario())
    # then
    assert email_channel is smtp
    assert isinstance(telegram, CaptureChannel) and telegram is not smtp
    empty = ChannelRegistry(engine, defaults={}, clock=FrozenClock(T0))
    assert run(empty.get(ws, "sms")) is None


def test_workspace_smtp_settings_win_and_carry_the_sender(
    engine: Engine, smtp_server: tuple[int, Inbox]
) -> None:
    """A workspace's SMTP settings replace the default; mail leaves From the workspace's sender."""
    # given
    port, inbox = smtp_server
    shops = Shops(engine)
    store(engine, shops.a, email_settings(port, reply_to="care@a.example"))

    async def scenario() -> tuple[Channel | None, Channel | None]:
        try:
            channel = await shops.registry.get(shops.a, "email")
            assert channel is not None
            await channel.send(message())
            return channel, await shops.registry.get(shops.b, "email")
        finally:
            await shops.registry.aclose()

    # when
    a_channel, b_channel = run(scenario())
    # then
    assert isinstance(a_channel, SmtpChannel)
    assert b_channel is shops.fallback
    received = email.message_from_bytes(inbox.received[0], policy=email.policy.default)
    assert received["From"] == "Shop A <shop@a.example>"
    assert received["Reply-To"] == "care@a.example"


def test_a_changed_setting_builds_a_new_adapter_after_the_ttl_and_closes_the_old(
    engine: Engine, smtp_server: tuple[int, Inbox]
) -> None:
    """Within the TTL the cached adapter serves; after it, a new one is built and the old closed."""
    # given
    port, inbox = smtp_server
    shops = Shops(engine)
    store(engine, shops.a, email_settings(port))

    async def scenario() -> tuple[Any, Any, Any, bool]:
        try:
            first = await shops.registry.get(shops.a, "email")
            assert isinstance(first, SmtpChannel)
            await first.send(message())  # opens the SMTP connection
            store(engine, shops.a, email_settings(port, reply_to="new@a.example"))
            shops.clock.advance(timedelta(seconds=TTL - 1))
            cached = await shops.registry.get(shops.a, "email")
            shops.clock.advance(timedelta(seconds=1))
            rebuilt = await shops.registry.get(shops.a, "email")
            old_connected = first._smtp is not None and first._smtp.is_connected
            return first, cached, rebuilt, old_connected
        finally:
            await shops.registry.aclose()

    # when
    first, cached, rebuilt, old_connected = run(scenario())
    # then
    assert cached is first
    assert isinstance(rebuilt, SmtpChannel) and rebuilt is not first
    assert rebuilt.settings.reply_to == "new@a.example"
    assert not old_connected


def test_unchanged_settings_keep_the_same_adapter_across_reloads(engine: Engine) -> None:
    """Re-reading identical settings after the TTL does not rebuild the adapter."""
    shops = Shops(engine)
    store(engine, shops.a, {"channels": {"telegram": {"provider": "telegram", "bot_token": "1:x"}}})

    async def scenario() -> tuple[Channel | None, Channel | None]:
        first = await shops.registry.get(shops.a, "telegram")
        shops.clock.advance(timedelta(seconds=TTL * 3))
        return first, await shops.registry.get(shops.a, "telegram")

    first, again = run(scenario())
    assert isinstance(first, TelegramChannel)
    assert again is first


def test_capture_provider_keeps_messages_even_when_a_default_would_send(engine: Engine) -> None:
    """provider "capture" answers the capture channel, not the default SMTP one."""
    shops = Shops(engine)
    smtp_like = CaptureChannel()
    registry = ChannelRegistry(
        engine, defaults={"*": shops.fallback, "email": smtp_like}, clock=shops.clock
    )
    store(engine, shops.a, {"channels": {"email": {"provider": "capture"}}})
    assert run(registry.get(shops.a, "email")) is shops.fallback
    assert run(registry.get(shops.b, "email")) is smtp_like


def test_bad_channel_settings_fail_that_workspace_only(engine: Engine) -> None:
    """A broken sms entry raises a clear error for its workspace; others and its policy carry on."""
    # given
    shops = Shops(engine)
    store(engine, shops.a, {"caps": [], "channels": {"sms": {"provider": "twillio"}}})
    # when
    with pytest.raises(WorkspaceSettingsError) as caught:
        run(shops.registry.get(shops.a, "sms"))
    # then
    assert shops.a in caught.value.message
    assert "channels.sms.provider" in caught.value.message
    assert caught.value.code == "settings_unusable"
    assert run(shops.registry.get(shops.b, "sms")) is shops.fallback
    assert shops.registry.policy(shops.a).caps == ()
    assert shops.registry.settings(shops.b).channels == {}
    with pytest.raises(WorkspaceSettingsError):
        shops.registry.settings(shops.a)


def test_a_misspelled_section_stops_everything_for_that_workspace(engine: Engine) -> None:
    """An unknown top-level key may be a misspelled channels section: no default is guessed."""
    shops = Shops(engine)
    store(engine, shops.a, {"chanels": {"sms": {"provider": "capture"}}})
    with pytest.raises(WorkspaceSettingsError) as caught:
        run(shops.registry.get(shops.a, "sms"))
    assert "did you mean 'channels'?" in caught.value.message
    with pytest.raises(WorkspaceSettingsError):
        shops.registry.policy(shops.a)
    assert run(shops.registry.get(shops.b, "sms")) is shops.fallback


def test_bad_caps_fail_the_policy_but_not_the_channels(engine: Engine) -> None:
    """A broken caps entry stops policy() with the field named; get() still answers."""
    shops = Shops(engine)
    store(
        engine,
        shops.a,
        {"caps": [{"limit": 0, "window": "1d"}], "channels": {"sms": {"provider": "capture"}}},
    )
    with pytest.raises(WorkspaceSettingsError) as caught:
        shops.registry.policy(shops.a)
    assert "caps[0].limit" in caught.value.message
    assert run(shops.registry.get(shops.a, "sms")) is shops.fallback
    assert shops.registry.policy(shops.b) == DEFAULT_POLICY


def test_fixed_settings_are_picked_up_after_the_ttl(engine: Engine) -> None:
    """Once the stored settings are fixed, the error clears when the cache expires."""
    shops = Shops(engine)
    store(engine, shops.a, {"channels": {"sms": {"provider": "twillio"}}})
    with pytest.raises(WorkspaceSettingsError):
        run(shops.registry.get(shops.a, "sms"))
    store(engine, shops.a, {"channels": {"sms": {"provider": "capture"}}})
    shops.clock.advance(timedelta(seconds=TTL))
    assert run(shops.registry.get(shops.a, "sms")) is shops.fallback


def test_policy_uses_the_workspace_zone_unless_settings_name_one(engine: Engine) -> None:
    """The workspace's time zone is the policy's default zone when settings give none."""
    shops = Shops(engine)
    assert shops.registry.policy(shops.a).default_timezone == "Europe/Moscow"
    store(engine, shops.b, {"default_timezone": "Asia/Tokyo", "double_opt_in": ["email"]})
    assert shops.registry.policy(shops.b).default_timezone == "Asia/Tokyo"
    assert shops.registry.settings(shops.b).double_opt_in == frozenset({"email"})


def test_smsaero_is_told_the_callback_url_with_its_token(engine: Engine) -> None:
    """An SMS Aero adapter sends callbackUrl pointing at this workspace's authenticated callback."""
    # given
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"success": True, "data": {"id": 7, "status": 8}})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    shops = Shops(engine, client=client)
    store(
        engine,
        shops.a,
        {
            "sender": {"sms_sender": "ShopA"},
            "channels": {
                "sms": {
                    "provider": "smsaero",
                    "email": "owner@a.example",
                    "api_key": "key",
                    "callback_secret": "s3cret/+",
                }
            },
        },
    )

    async def scenario() -> None:
        channel = await shops.registry.get(shops.a, "sms")
        assert channel is not None
        await channel.send(
            OutgoingMessage(idempotency_key="k", channel="sms", to="+79161234567", text="Hi")
        )
        await client.aclose()

    # when
    run(scenario())
    # then
    body = json.loads(requests[0].content)
    assert body["callbackUrl"] == f"{PUBLIC}/callbacks/{shops.a}/smsaero?token=s3cret%2F%2B"
    assert body["sign"] == "ShopA"


def test_a_webhook_with_a_url_posts_every_message_there(engine: Engine) -> None:
    """webhook.url sends all messages to that URL, the customer's address in metadata.recipient."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "r1"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    shops = Shops(engine, client=client)
    store(
        engine,
        shops.a,
        {
            "channels": {
                "webhook": {
                    "provider": "webhook",
                    "url": "https://hooks.a.example/in",
                    "secret": "k",
                }
            }
        },
    )

    async def scenario() -> Channel | None:
        channel = await shops.registry.get(shops.a, "webhook")
        assert channel is not None
        await channel.send(message(to="user-42"))
        await client.aclose()
        return channel

    channel = run(scenario())
    assert isinstance(channel, FixedUrlWebhook)
    assert str(seen[0].url) == "https://hooks.a.example/in"
    assert json.loads(seen[0].content)["metadata"]["recipient"] == "user-42"
    assert seen[0].headers["X-Touchline-Signature"].startswith("v1=")


def test_unusable_provider_options_are_a_settings_error(engine: Engine) -> None:
    """Options that parse but cannot build an adapter (a bad DKIM key) fail with the field path."""
    shops = Shops(engine)
    store(
        engine,
        shops.a,
        {
            "channels": {
                "email": {
                    "provider": "smtp",
                    "host": "127.0.0.1",
                    "from": "shop@a.example",
                    "dkim": {
                        "selector": "s1",
                        "domain": "a.example",
                        "private_key": "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----",
                    },
                }
            }
        },
    )
    with pytest.raises(WorkspaceSettingsError) as caught:
        run(shops.registry.get(shops.a, "email"))
    assert "channels.email" in caught.value.message


def test_aclose_closes_built_adapters_and_defaults(engine: Engine) -> None:
    """Closing the registry closes what it built and the defaults it was given."""
    closed: list[str] = []

    class Tracked(CaptureChannel):
        async def aclose(self) -> None:
            closed.append("default")

    shops = Shops(engine)
    registry = ChannelRegistry(engine, defaults={"*": Tracked()}, clock=shops.clock)
    store(engine, shops.a, {"channels": {"telegram": {"provider": "telegram", "bot_token": "1:x"}}})

    async def scenario() -> None:
        await registry.get(shops.a, "telegram")
        await registry.aclose()

    run(scenario())
    assert closed == ["default"]
