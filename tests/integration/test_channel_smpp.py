"""SmppChannel against a small SMPP 3.4 peer written here, plus receipt parsing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from touchline.config import Secret
from touchline.errors import InputError, PermanentDeliveryError, TransientDeliveryError
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.channels.smpp import SmppChannel, SmppConfig, parse_receipt
from touchline.messaging.channels.sms_http import DeliveryReport

BIND_TRANSMITTER = 0x00000002
BIND_TRANSCEIVER = 0x00000009
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
ENQUIRE_LINK = 0x00000015
RESPONSE = 0x80000000

ESME_RINVPASWD = 0x0E
ESME_RINVDSTADR = 0x0B
ESME_RTHROTTLED = 0x58

CYRILLIC_200 = ("Привет, это длинное сообщение на русском языке для проверки склейки. " * 3)[:200]


@dataclass
class Submit:
    """The submit_sm fields the tests look at."""

    source_addr_ton: int
    source_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    esm_class: int
    registered_delivery: int
    data_coding: int
    short_message: bytes


def _cstring(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\0", pos)
    return body[pos:end].decode("latin-1"), end + 1


def parse_submit(body: bytes) -> Submit:
    _service_type, pos = _cstring(body, 0)
    source_ton, _source_npi = body[pos], body[pos + 1]
    source, pos = _cstring(body, pos + 2)
    dest_ton, dest_npi = body[pos], body[pos + 1]
    destination, pos = _cstring(body, pos + 2)
    esm_class = body[pos]
    _schedule, pos = _cstring(body, pos + 3)  # after protocol_id and priority_flag
    _validity, pos = _cstring(body, pos)
    registered_delivery, data_coding = body[pos], body[pos + 2]  # replace_if_present between
    sm_length = body[pos + 4]  # after sm_default_msg_id
    short_message = body[pos + 5 : pos + 5 + sm_length]
    return Submit(
        source_ton,
        source,
        dest_ton,
        dest_npi,
        destination,
        esm_class,
        registered_delivery,
        data_coding,
        short_message,
    )


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class SmppPeer:
    """An SMSC stand-in: binds, answers submit_sm with ids, records fields, sends receipts."""

    def __init__(self) -> None:
        self.binds: list[tuple[int, str, str, str]] = []
        self.submits: list[Submit] = []
        self.deliver_sm_resps: list[int] = []
        self.submit_statuses: list[int] = []  # statuses for the next submit_sm_resps, in order
        self.bind_status = 0
        self.silent = False  # never answer submit_sm
        self.close_after_submit = False
        self.connections: list[socket.socket] = []
        self.closed = threading.Event()  # set when the peer has closed a connection
        self._ids = itertools.count(1)
        self._write_lock = threading.Lock()
        peer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                peer.serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def write(self, sock: socket.socket, command: int, status: int, seq: int, body: bytes) -> None:
        with self._write_lock:
            sock.sendall(struct.pack(">IIII", 16 + len(body), command, status, seq) + body)

    def serve(self, sock: socket.socket) -> None:
        self.connections.append(sock)
        try:
            while header := _recv_exact(sock, 16):
                length, command, _status, seq = struct.unpack(">IIII", header)
                body = _recv_exact(sock, length - 16) or b"" if length > 16 else b""
                if command in (BIND_TRANSMITTER, BIND_TRANSCEIVER):
                    system_id, pos = _cstring(body, 0)
                    password, pos = _cstring(body, pos)
                    system_type, _ = _cstring(body, pos)
                    self.binds.append((command, system_id, password, system_type))
                    self.write(sock, command | RESPONSE, self.bind_status, seq, b"peer\0")
                elif command == SUBMIT_SM:
                    self.submits.append(parse_submit(body))
                    if self.silent:
                        continue
                    status = self.submit_statuses.pop(0) if self.submit_statuses else 0
                    reply = f"m-{next(self._ids)}\0".encode() if status == 0 else b""
                    self.write(sock, SUBMIT_SM | RESPONSE, status, seq, reply)
                    if self.close_after_submit:
                        self.close_after_submit = False
                        return
                elif command == UNBIND:
                    self.write(sock, UNBIND | RESPONSE, 0, seq, b"")
                    return
                elif command == ENQUIRE_LINK:
                    self.write(sock, ENQUIRE_LINK | RESPONSE, 0, seq, b"")
                elif command == DELIVER_SM | RESPONSE:
                    self.deliver_sm_resps.append(_status)
        except OSError:
            return
        finally:
            sock.close()
            self.closed.set()

    def send_receipt(self, message_id: str, stat: str = "DELIVRD", err: str = "000") -> None:
        text = (
            f"id:{message_id} sub:001 dlvrd:001 submit date:2403011200 "
            f"done date:2403011201 stat:{stat} err:{err} text:Hello"
        ).encode()
        body = (
            b"\0"  # service_type
            + b"\x01\x0179161234567\0"  # source: the handset
            + b"\x05\x00Shop\0"  # destination: our sender
            + bytes((0x04, 0, 0))  # esm_class: SMSC delivery receipt; protocol_id; priority
            + b"\0\0"  # schedule_delivery_time, validity_period
            + bytes((0, 0, 0, 0, len(text)))  # registered, replace, data_coding, default id, len
            + text
        )
        self.write(self.connections[-1], DELIVER_SM, 0, 77, body)


@pytest.fixture
def peer() -> Iterator[SmppPeer]:
    peer = SmppPeer()
    peer.thread.start()
    yield peer
    peer.server.shutdown()
    for sock in peer.connections:
        with contextlib.suppress(OSError):  # already closed by its handler
            sock.shutdown(socket.SHUT_RDWR)
    peer.server.server_close()
    peer.thread.join()


def config(peer: SmppPeer, **overrides: Any) -> SmppConfig:
    fields: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": peer.port,
        "system_id": "shop",
        "password": Secret("s3cret"),
        "system_type": "tl",
        "source_addr": "Shop",
        "timeout": 2.0,
    }
    fields.update(overrides)
    return SmppConfig(**fields)


def outgoing(text: str, *, key: str = "msg-1", to: str = "+7 916 123-45-67") -> OutgoingMessage:
    return OutgoingMessage(idempotency_key=key, channel="sms", to=to, text=text)


def send_all(channel: SmppChannel, *messages: OutgoingMessage) -> list[SendResult | Exception]:
    """Send each message in turn, collecting results or errors, then close the channel."""

    async def run() -> list[SendResult | Exception]:
        outcomes: list[SendResult | Exception] = []
        try:
            for message in messages:
                try:
                    outcomes.append(await channel.send(message))
                except (TransientDeliveryError, PermanentDeliveryError) as exc:
                    outcomes.append(exc)
        finally:
            await channel.aclose()
        return outcomes

    return asyncio.run(run())


def test_two_sends_bind_once_and_pick_data_coding(peer: SmppPeer) -> None:
    """Two sends share one bind; Latin goes as GSM-7 (data_coding 0), Cyrillic as UCS-2 (8)."""
    # when
    latin, cyrillic = send_all(
        SmppChannel(config(peer)), outgoing("Hi @{", key="a"), outgoing("Привет", key="b")
    )
    # then
    assert peer.binds == [(BIND_TRANSMITTER, "shop", "s3cret", "tl")]
    first, second = peer.submits
    assert (first.data_coding, first.esm_class) == (0, 0)
    assert first.short_message == b"Hi \x00\x1b\x28"  # '@' is 0x00, '{' is ESC 0x28
    assert (second.data_coding, second.esm_class) == (8, 0)
    assert second.short_message == "Привет".encode("utf-16-be")
    assert (first.dest_addr_ton, first.dest_addr_npi, first.destination_addr) == (
        1,
        1,
        "79161234567",
    )
    assert (first.source_addr_ton, first.source_addr) == (5, "Shop")
    assert first.registered_delivery == 1
    assert isinstance(latin, SendResult) and latin.provider_id == "m-1"
    assert isinstance(cyrillic, SendResult) and cyrillic.provider_id == "m-2"
    assert cyrillic.detail["sms"]["encoding"] == "UCS-2"


def test_long_cyrillic_text_goes_as_three_parts_with_udh(peer: SmppPeer) -> None:
    """A 200-character Cyrillic text is three UDH parts (esm_class 0x40) that reassemble."""
    [result] = send_all(SmppChannel(config(peer)), outgoing(CYRILLIC_200))
    assert len(peer.submits) == 3
    references = set()
    chunks = []
    for seq, submit in enumerate(peer.submits, start=1):
        assert (submit.esm_class, submit.data_coding) == (0x40, 8)
        udh, payload = submit.short_message[:6], submit.short_message[6:]
        assert udh[:3] == b"\x05\x00\x03" and udh[4:] == bytes((3, seq))
        references.add(udh[3])
        chunks.append(payload.decode("utf-16-be"))
    assert len(references) == 1
    assert "".join(chunks) == CYRILLIC_200
    assert isinstance(result, SendResult)
    assert result.provider_id == "m-1"
    assert result.detail["message_ids"] == ["m-1", "m-2", "m-3"]
    assert result.detail["sms"]["parts"] == 3


def test_receipt_from_the_peer_parses_to_delivered(peer: SmppPeer) -> None:
    """On a transceiver session a deliver_sm receipt is acknowledged and reported delivered."""
    channel = SmppChannel(config(peer, bind="transceiver"))

    async def run() -> tuple[SendResult, list[DeliveryReport]]:
        try:
            result = await channel.send(outgoing("Hello"))
            assert result.provider_id is not None
            peer.send_receipt(result.provider_id)
            return result, await channel.poll_receipts(timeout=5)
        finally:
            await channel.aclose()

    result, reports = asyncio.run(run())
    assert peer.binds[0][0] == BIND_TRANSCEIVER
    assert reports == [DeliveryReport("m-1", "delivered", None, "DELIVRD")]
    deadline = time.monotonic() + 2
    while not peer.deliver_sm_resps and time.monotonic() < deadline:
        time.sleep(0.01)
    assert peer.deliver_sm_resps == [0]


def test_throttling_is_transient_and_invalid_destination_permanent(peer: SmppPeer) -> None:
    """ESME_RTHROTTLED is transient, ESME_RINVDSTADR permanent invalid_number; the session stays."""
    peer.submit_statuses = [ESME_RTHROTTLED, ESME_RINVDSTADR]
    throttled, invalid, ok = send_all(
        SmppChannel(config(peer)), outgoing("a", key="1"), outgoing("b", key="2"), outgoing("c")
    )
    assert isinstance(throttled, TransientDeliveryError) and throttled.code == "smpp_throttled"
    assert isinstance(invalid, PermanentDeliveryError) and invalid.code == "invalid_number"
    assert isinstance(ok, SendResult)
    assert len(peer.binds) == 1


def test_dropped_connection_is_rebound_on_next_send(peer: SmppPeer) -> None:
    """When the SMSC closes the session between sends, the next send binds again and succeeds."""
    peer.close_after_submit = True
    channel = SmppChannel(config(peer))

    async def run() -> tuple[SendResult, SendResult]:
        try:
            first = await channel.send(outgoing("a"))
            assert await asyncio.to_thread(peer.closed.wait, 5)
            return first, await channel.send(outgoing("b"))
        finally:
            await channel.aclose()

    first, second = asyncio.run(run())
    assert (first.provider_id, second.provider_id) == ("m-1", "m-2")
    assert len(peer.binds) == 2


def test_silent_smsc_times_out_as_transient_and_reconnects(peer: SmppPeer) -> None:
    """No submit_sm_resp within the timeout is transient, and the next send uses a new session."""
    peer.silent = True
    channel = SmppChannel(config(peer, timeout=0.3))

    async def run() -> tuple[Exception | None, SendResult]:
        try:
            try:
                await channel.send(outgoing("a"))
                error = None
            except TransientDeliveryError as exc:
                error = exc
            peer.silent = False
            return error, await channel.send(outgoing("b"))
        finally:
            await channel.aclose()

    error, result = asyncio.run(run())
    assert isinstance(error, TransientDeliveryError) and error.code == "smpp_unavailable"
    assert result.provider_id == "m-1"
    assert len(peer.binds) == 2


def test_refused_bind_is_transient(peer: SmppPeer) -> None:
    """A bind answered ESME_RINVPASWD raises a transient smpp_bind_failed."""
    peer.bind_status = ESME_RINVPASWD
    [error] = send_all(SmppChannel(config(peer)), outgoing("a"))
    assert isinstance(error, TransientDeliveryError) and error.code == "smpp_bind_failed"
    assert peer.submits == []


def test_nothing_listening_is_transient() -> None:
    """A closed port is a transient smpp_unavailable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = SmppChannel(
        SmppConfig(host="127.0.0.1", port=port, system_id="x", password=Secret("y"), timeout=1)
    )
    [error] = send_all(channel, outgoing("a"))
    assert isinstance(error, TransientDeliveryError) and error.code == "smpp_unavailable"


def test_invalid_number_fails_before_connecting(peer: SmppPeer) -> None:
    """A bad number raises invalid_number without binding to the SMSC."""
    [error] = send_all(SmppChannel(config(peer)), outgoing("a", to="12"))
    assert isinstance(error, PermanentDeliveryError) and error.code == "invalid_number"
    assert peer.binds == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            b"id:abc123 sub:001 dlvrd:001 submit date:2403011200 done date:2403011201"
            b" stat:DELIVRD err:000 text:Hi",
            DeliveryReport("abc123", "delivered", None, "DELIVRD"),
        ),
        (
            b"id:7 sub:001 dlvrd:000 submit date:2403011200 done date:2403011201"
            b" stat:UNDELIV err:001 text:",
            DeliveryReport("7", "failed", "001", "UNDELIV"),
        ),
        (b"id:8 stat:EXPIRED err:000", DeliveryReport("8", "failed", "EXPIRED", "EXPIRED")),
        (b"id:9 stat:ENROUTE err:0", DeliveryReport("9", "sent", None, "ENROUTE")),
    ],
)
def test_parse_receipt(text: bytes, expected: DeliveryReport) -> None:
    """Receipt texts map stat to delivered/failed/sent and keep a non-zero err."""
    assert parse_receipt(text) == expected


def test_parse_receipt_refuses_ordinary_text() -> None:
    """A mobile-originated text without id and stat is not a receipt."""
    with pytest.raises(InputError):
        parse_receipt("Спасибо".encode())


SMS_JOURNEY = """
journey: shipped
category: transactional
trigger: {event: Order Shipped}
steps:
  - send: {channel: sms, template: shipped}
"""


def test_a_receipt_marks_the_message_delivered_and_becomes_an_event(
    peer: SmppPeer, engine: Engine
) -> None:
    """A workspace on SMPP: the SMSC's receipt sets delivery_status and records Message Delivered."""
    from sqlalchemy import select, update

    from touchline.journeys.loader import LoadedJourney, load_journey_text
    from touchline.messaging.channels.capture import CaptureChannel
    from touchline.messaging.dispatcher import Dispatcher
    from touchline.messaging.registry import ChannelRegistry
    from touchline.messaging.template_files import load_template_text
    from touchline.store.db import transaction
    from touchline.store.journeys import apply_journeys
    from touchline.store.tables import events, outbox, workspaces
    from touchline.store.templates import apply_templates
    from touchline.store.workspaces import create_workspace
    from touchline.testing import FrozenClock, identify, run_until_idle, send_events, track
    from touchline.worker.loop import Worker

    # given: a workspace whose SMS go over SMPP to the peer, on a transceiver session
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    clock = FrozenClock(t0)
    ws = create_workspace(engine, "shop", now=t0).id
    sms = {
        "provider": "smpp",
        "host": "127.0.0.1",
        "port": peer.port,
        "system_id": "shop",
        "password": "s3cret",
        "bind": "transceiver",
    }
    with transaction(engine) as conn:
        conn.execute(
            update(workspaces)
            .where(workspaces.c.id == ws)
            .values(settings={"channels": {"sms": sms}})
        )
        apply_journeys(
            conn,
            ws,
            [LoadedJourney("j.yaml", load_journey_text(SMS_JOURNEY, file="j.yaml"), "")],
            now=t0,
        )
        apply_templates(
            conn,
            ws,
            [
                load_template_text(
                    "template: shipped\nchannel: sms\ntext: Заказ в пути\n", file="t.yaml"
                )
            ],
            now=t0,
        )
    send_events(
        engine, ws, [identify("u1", phone="+79161234567"), track("u1", "Order Shipped")], now=t0
    )
    run_until_idle(Worker(engine, clock=clock, owner="w"), clock)
    registry = ChannelRegistry(engine, defaults={"*": CaptureChannel()}, clock=clock)
    dispatcher = Dispatcher(engine, clock=clock, owner="d", channels={}, registry=registry)

    async def run() -> int:
        try:
            await dispatcher.run_once(t0)
            with engine.connect() as conn:
                provider_id = conn.execute(select(outbox.c.provider_id)).scalar_one()
            peer.send_receipt(provider_id)
            applied = 0
            deadline = time.monotonic() + 5
            while not applied and time.monotonic() < deadline:
                applied = await dispatcher.collect_receipts()
                await asyncio.sleep(0.02)
            return applied
        finally:
            await registry.aclose()

    # when
    applied = asyncio.run(run())
    # then
    assert applied == 1
    with engine.connect() as conn:
        row = conn.execute(select(outbox.c.status, outbox.c.delivery_status)).one()
        names = list(conn.execute(select(events.c.name).where(events.c.type == "track")).scalars())
    assert tuple(row) == ("sent", "delivered")
    assert names == ["Order Shipped", "Message Delivered"]
