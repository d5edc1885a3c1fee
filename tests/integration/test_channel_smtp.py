"""SmtpChannel against a real local aiosmtpd server."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from touchline.config import Secret
from touchline.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from touchline.messaging.channels.base import OutgoingMessage
from touchline.messaging.channels.smtp import (
    DkimSettings,
    SmtpChannel,
    SmtpRecipientRefused,
    SmtpSettings,
    compose_email,
)

NOW = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Recorder:
    """aiosmtpd handler: keeps what arrives and answers as told."""

    rcpt_reply: str | None = None
    data_reply: str = "250 2.0.0 Ok: queued"
    received: list[tuple[tuple[str, int], str, list[str], bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply.startswith("250"):
            self.received.append(
                (
                    session.peer,
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                )
            )
        return self.data_reply

    def parsed(self, index: int = -1) -> EmailMessage:
        raw = self.received[index][3]
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Server:
    handler: Recorder
    port: int


StartServer = Callable[..., Server]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    controllers: list[Controller] = []

    def start(handler: Recorder | None = None, **smtp_kwargs: Any) -> Server:
        handler = handler or Recorder()
        port = free_port()
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, server_hostname="mx.test", **smtp_kwargs
        )
        controller.start()
        controllers.append(controller)
        return Server(handler, port)

    yield start
    for controller in controllers:
        controller.stop()


def settings_for(port: int, **overrides: Any) -> SmtpSettings:
    base = SmtpSettings(
        host="127.0.0.1",
        port=port,
        security="none",
        from_address="news@shop.example",
        from_name="Магазин Shop",
        reply_to="help@shop.example",
        timeout=5.0,
        helo_name="client.test",
    )
    return replace(base, **overrides)


def outgoing(key: str = "msg-1", **overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "idempotency_key": key,
        "channel": "email",
        "to": "anna@example.org",
        "subject": "Ваш заказ отправлен",
        "text": "Здравствуйте, Анна! Заказ в пути.",
        "html": "<p>Здравствуйте, <b>Анна</b>! Заказ в пути.</p>",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


async def send_all(channel: SmtpChannel, *messages: OutgoingMessage) -> list[Any]:
    try:
        return [await channel.send(m) for m in messages]
    finally:
        await channel.aclose()


def test_html_message_arrives_as_multipart_alternative(start_server: StartServer) -> None:
    """Text + html become multipart/alternative with the expected headers and envelope."""
    # given
    server = start_server()
    channel = SmtpChannel(settings_for(server.port), clock=lambda: NOW)
    # when
    [result] = asyncio.run(send_all(channel, outgoing(headers={"X-Campaign": "spring"})))
    # then
    peer, mail_from, rcpt_tos, _ = server.handler.received[0]
    assert (mail_from, rcpt_tos) == ("news@shop.example", ["anna@example.org"])
    msg = server.handler.parsed()
    assert msg.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert msg.get_body(("plain",)).get_content().strip() == "Здравствуйте, Анна! Заказ в пути."  # type: ignore[union-attr]
    assert "<b>Анна</b>" in msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert msg["From"].addresses[0].display_name == "Магазин Shop"
    assert msg["From"].addresses[0].addr_spec == "news@shop.example"
    assert msg["Reply-To"] == "help@shop.example"
    assert msg["To"] == "anna@example.org"
    assert msg["Date"].datetime == NOW
    assert msg["X-Campaign"] == "spring"
    assert msg["Message-ID"] == result.provider_id
    assert "List-Unsubscribe" not in msg


def test_cyrillic_subject_is_encoded_and_round_trips(start_server: StartServer) -> None:
    """A Cyrillic subject travels as 7-bit RFC 2047 words and decodes back unchanged."""
    server = start_server()
    asyncio.run(send_all(SmtpChannel(settings_for(server.port)), outgoing()))
    raw = server.handler.received[0][3]
    assert raw.isascii()
    assert server.handler.parsed()["Subject"] == "Ваш заказ отправлен"


def test_text_only_message_is_a_single_text_part(start_server: StartServer) -> None:
    """Without html the email is a plain text/plain message, not multipart."""
    server = start_server()
    asyncio.run(send_all(SmtpChannel(settings_for(server.port)), outgoing(html=None)))
    msg = server.handler.parsed()
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "Здравствуйте, Анна! Заказ в пути."


def test_message_id_is_stable_for_the_same_idempotency_key(start_server: StartServer) -> None:
    """A resend of the same key (even from a fresh channel) carries the same Message-ID."""
    server = start_server()
    asyncio.run(send_all(SmtpChannel(settings_for(server.port)), outgoing("k-1")))
    asyncio.run(send_all(SmtpChannel(settings_for(server.port)), outgoing("k-1"), outgoing("k-2")))
    ids = [server.handler.parsed(i)["Message-ID"] for i in range(3)]
    assert ids[0] == ids[1] != ids[2]
    assert ids[0].endswith("@shop.example>")


def test_list_unsubscribe_headers_only_on_marketing_mail(start_server: StartServer) -> None:
    """Marketing mail gets RFC 8058 one-click headers; transactional mail does not."""
    server = start_server()
    meta = {
        "unsubscribe_url": "https://shop.example/u/abc",
        "unsubscribe_mailto": "u+abc@shop.example",
    }
    asyncio.run(
        send_all(
            SmtpChannel(settings_for(server.port)),
            outgoing("m", metadata={"purpose": "marketing", **meta}),
            outgoing("t", metadata={"purpose": "transactional", **meta}),
        )
    )
    marketing, transactional = server.handler.parsed(0), server.handler.parsed(1)
    assert (
        marketing["List-Unsubscribe"] == "<mailto:u+abc@shop.example>, <https://shop.example/u/abc>"
    )
    assert marketing["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "List-Unsubscribe" not in transactional
    assert "List-Unsubscribe-Post" not in transactional


def test_dkim_signature_verifies(start_server: StartServer) -> None:
    """The DKIM-Signature on arriving mail verifies against the published public key."""
    # given
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_der)
    settings = DkimSettings(selector="tl1", domain="shop.example", private_key=Secret(private_pem))
    server = start_server()
    meta = {
        "purpose": "marketing",
        "unsubscribe_url": "https://shop.example/u/abc",
        "unsubscribe_mailto": "u@shop.example",
    }
    # when
    asyncio.run(
        send_all(SmtpChannel(settings_for(server.port), dkim=settings), outgoing(metadata=meta))
    )
    # then
    raw = server.handler.received[0][3]
    assert raw.startswith(b"DKIM-Signature:")
    looked_up: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        looked_up.append(name)
        return txt

    assert dkim.verify(raw, dnsfunc=dnsfunc)
    assert looked_up == [b"tl1._domainkey.shop.example."]
    tags = dict(
        tag.strip().split("=", 1)
        for tag in "".join(server.handler.parsed()["DKIM-Signature"].split()).split(";")
        if tag.strip()
    )
    covered = set(tags["h"].lower().split(":"))
    assert {"from", "to", "subject", "date", "message-id"} <= covered
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= covered
    tampered = raw.replace(b"Subject:", b"Subject: FW:", 1)
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_unusable_dkim_key_fails_at_construction() -> None:
    """A malformed DKIM key is a ConfigError when the channel is built, not per message."""
    bad = DkimSettings(selector="s", domain="shop.example", private_key=Secret("not a key"))
    with pytest.raises(ConfigError):
        SmtpChannel(settings_for(25), dkim=bad)


def test_two_sends_share_one_connection(start_server: StartServer) -> None:
    """Consecutive sends reuse the connected session instead of reconnecting."""
    server = start_server()
    asyncio.run(send_all(SmtpChannel(settings_for(server.port)), outgoing("a"), outgoing("b")))
    peers = {peer for peer, *_ in server.handler.received}
    assert len(server.handler.received) == 2
    assert len(peers) == 1


def test_reconnects_after_the_server_drops_an_idle_connection(start_server: StartServer) -> None:
    """When the server closes an idle session, the next send reconnects and succeeds."""
    server = start_server(timeout=0.3)  # aiosmtpd closes sessions idle for 0.3 s

    async def scenario() -> None:
        channel = SmtpChannel(settings_for(server.port))
        try:
            await channel.send(outgoing("a"))
            await asyncio.sleep(0.8)
            await channel.send(outgoing("b"))
        finally:
            await channel.aclose()

    asyncio.run(scenario())
    peers = [peer for peer, *_ in server.handler.received]
    assert len(peers) == 2
    assert peers[0] != peers[1]


def _self_signed_cert() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def tls_server(
    start_server: StartServer, tmp_path: Any
) -> tuple[Server, ssl.SSLContext, list[str]]:
    """An aiosmtpd server that requires STARTTLS before AUTH, with a trusting client context."""
    cert_pem, key_pem = _self_signed_cert()
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    logins: list[str] = []

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret"
        if ok:
            logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends 535

    server = start_server(
        tls_context=server_ctx,
        require_starttls=True,
        auth_require_tls=True,
        auth_required=True,
        authenticator=authenticator,
    )
    client_ctx = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client_ctx, logins


def test_authenticates_over_starttls(tls_server: tuple[Server, ssl.SSLContext, list[str]]) -> None:
    """With security=starttls the channel upgrades, logs in, and delivers."""
    server, client_ctx, logins = tls_server
    settings = settings_for(
        server.port, security="starttls", username="mailer", password=Secret("s3cret")
    )
    asyncio.run(send_all(SmtpChannel(settings, tls_context=client_ctx), outgoing()))
    assert logins == ["mailer"]
    assert server.handler.parsed()["Subject"] == "Ваш заказ отправлен"


def test_wrong_password_is_transient(tls_server: tuple[Server, ssl.SSLContext, list[str]]) -> None:
    """Rejected credentials fail as transient (a config fix, not a bad message)."""
    server, client_ctx, logins = tls_server
    settings = settings_for(
        server.port, security="starttls", username="mailer", password=Secret("wrong")
    )
    with pytest.raises(TransientDeliveryError) as info:
        asyncio.run(send_all(SmtpChannel(settings, tls_context=client_ctx), outgoing()))
    assert info.value.code == "smtp_auth_failed"
    assert "wrong" not in str(info.value)
    assert logins == [] and server.handler.received == []


def test_untrusted_certificate_is_transient(
    tls_server: tuple[Server, ssl.SSLContext, list[str]],
) -> None:
    """A server certificate the client does not trust fails the send as transient."""
    server, _, _ = tls_server
    settings = settings_for(
        server.port, security="starttls", username="mailer", password=Secret("s3cret")
    )
    with pytest.raises(TransientDeliveryError):
        asyncio.run(send_all(SmtpChannel(settings), outgoing()))
    assert server.handler.received == []


def test_450_reply_is_transient(start_server: StartServer) -> None:
    """A 4xx reply to DATA raises TransientDeliveryError carrying the code."""
    server = start_server(Recorder(data_reply="450 4.2.0 try later"))
    with pytest.raises(TransientDeliveryError) as info:
        asyncio.run(send_all(SmtpChannel(settings_for(server.port)), outgoing()))
    assert "450" in str(info.value)
    assert not isinstance(info.value, PermanentDeliveryError)


def test_550_recipient_is_a_permanent_hard_bounce(start_server: StartServer) -> None:
    """A 550 reply to RCPT raises SmtpRecipientRefused with hard_bounce and the server text."""
    server = start_server(Recorder(rcpt_reply="550 5.1.1 mailbox unavailable"))
    with pytest.raises(SmtpRecipientRefused) as info:
        asyncio.run(send_all(SmtpChannel(settings_for(server.port)), outgoing()))
    assert isinstance(info.value, PermanentDeliveryError)
    assert info.value.hard_bounce is True
    assert info.value.smtp_code == 550
    assert info.value.recipient == "anna@example.org"
    assert "mailbox unavailable" in str(info.value)


def test_554_data_rejection_is_permanent_but_not_a_bounce(start_server: StartServer) -> None:
    """A 5xx reply to DATA (content refused) is permanent, not a recipient hard bounce."""
    server = start_server(Recorder(data_reply="554 5.7.1 spam"))
    with pytest.raises(PermanentDeliveryError) as info:
        asyncio.run(send_all(SmtpChannel(settings_for(server.port)), outgoing()))
    assert not isinstance(info.value, SmtpRecipientRefused)
    assert "554" in str(info.value)


def test_channel_recovers_after_a_refused_recipient(start_server: StartServer) -> None:
    """After a refused recipient the same connection still delivers the next message."""
    handler = Recorder(rcpt_reply="550 no such user")
    server = start_server(handler)

    async def scenario() -> None:
        channel = SmtpChannel(settings_for(server.port))
        try:
            with pytest.raises(SmtpRecipientRefused):
                await channel.send(outgoing("a"))
            handler.rcpt_reply = None
            await channel.send(outgoing("b"))
        finally:
            await channel.aclose()

    asyncio.run(scenario())
    assert len(handler.received) == 1


def test_closed_port_is_transient() -> None:
    """Connection refused (nothing listening) raises TransientDeliveryError."""
    with pytest.raises(TransientDeliveryError) as info:
        asyncio.run(send_all(SmtpChannel(settings_for(free_port())), outgoing()))
    assert info.value.code == "smtp_unavailable"


def test_silent_server_times_out_as_transient() -> None:
    """A server that accepts but never greets hits the timeout, a transient failure."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        settings = settings_for(listener.getsockname()[1], timeout=0.3)
        with pytest.raises(TransientDeliveryError):
            asyncio.run(send_all(SmtpChannel(settings), outgoing()))


def test_extra_headers_cannot_replace_structural_ones() -> None:
    """A message header that would override From (or inject a line) is a permanent error."""
    settings = settings_for(25)
    with pytest.raises(PermanentDeliveryError):
        compose_email(outgoing(headers={"From": "evil@x.example"}), settings=settings, now=NOW)
    with pytest.raises(PermanentDeliveryError):
        compose_email(
            outgoing(headers={"X-Tag": "a\r\nBcc: evil@x.example"}), settings=settings, now=NOW
        )
    with pytest.raises(PermanentDeliveryError):
        compose_email(outgoing(to="not-an-address"), settings=settings, now=NOW)


def test_implicit_tls_delivers(start_server: StartServer, tmp_path: Any) -> None:
    """With security=tls the channel speaks TLS from the first byte (port 465 style)."""
    cert_pem, key_pem = _self_signed_cert()
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = start_server(ssl_context=server_ctx)
    client_ctx = ssl.create_default_context(cadata=cert_pem.decode())
    settings = settings_for(server.port, security="tls")
    asyncio.run(send_all(SmtpChannel(settings, tls_context=client_ctx), outgoing()))
    assert server.handler.parsed()["Subject"] == "Ваш заказ отправлен"
