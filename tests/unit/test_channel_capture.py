"""CaptureChannel keeps messages instead of delivering them."""

from __future__ import annotations

import asyncio

import pytest

from touchline.messaging.channels.base import Channel, OutgoingMessage, SendResult
from touchline.messaging.channels.capture import CaptureChannel


def message(key: str) -> OutgoingMessage:
    return OutgoingMessage(idempotency_key=key, channel="email", to="a@example.org", text="hi")


def test_send_records_message_and_returns_capture_id() -> None:
    """Each send is kept in order and answered with provider id capture:<key>."""
    channel = CaptureChannel()
    results = asyncio.run(_send(channel, message("k1"), message("k2")))
    assert [m.idempotency_key for m in channel.messages] == ["k1", "k2"]
    assert [r.provider_id for r in results] == ["capture:k1", "capture:k2"]


def test_a_bounded_channel_keeps_the_latest_messages_only() -> None:
    """keep=3 holds memory flat: never more than twice that, always the latest ones."""
    channel = CaptureChannel(keep=3)
    asyncio.run(_send(channel, *(message(f"k{i}") for i in range(20))))
    assert 3 <= len(channel.messages) <= 6
    assert channel.messages[-1].idempotency_key == "k19"
    keys = [m.idempotency_key for m in channel.messages]
    assert keys == [f"k{i}" for i in range(20 - len(keys), 20)]


def test_sink_receives_each_message() -> None:
    """A sink is called with every message, in send order."""
    seen: list[OutgoingMessage] = []
    channel = CaptureChannel(sink=seen.append)
    asyncio.run(_send(channel, message("k1"), message("k2")))
    assert seen == channel.messages == [message("k1"), message("k2")]


def test_failing_sink_fails_the_send_and_records_nothing() -> None:
    """If the sink raises, the error propagates and the message is not kept."""

    def sink(m: OutgoingMessage) -> None:
        raise RuntimeError("db down")

    channel = CaptureChannel(sink=sink)
    with pytest.raises(RuntimeError):
        asyncio.run(_send(channel, message("k1")))
    assert channel.messages == []


def test_capture_channel_satisfies_the_channel_protocol() -> None:
    """CaptureChannel type-checks and behaves as a Channel."""
    channel: Channel = CaptureChannel()
    assert channel.name == "capture"


async def _send(channel: CaptureChannel, *messages: OutgoingMessage) -> list[SendResult]:
    try:
        return [await channel.send(m) for m in messages]
    finally:
        await channel.aclose()
