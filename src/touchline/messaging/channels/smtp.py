"""Email over SMTP: MIME building, optional DKIM signing, one reused connection.

:func:`compose_email` is pure (message + settings + clock in, ``EmailMessage``
out) so headers can be tested without a server. :class:`SmtpChannel` keeps one
connected :class:`aiosmtplib.SMTP`, reuses it across sends, reconnects when the
server has dropped it, and translates every ``aiosmtplib`` failure into
:class:`~touchline.errors.TransientDeliveryError` or
:class:`~touchline.errors.PermanentDeliveryError`.

The ``Message-ID`` is derived from the message's ``idempotency_key``, so a
resend after a crash carries the same id and receivers (and our own bounce
matching) can recognise it.
"""

from __future__ import annotations

import asyncio
import email.policy
import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Literal

import aiosmtplib
import dkim
import dkim.crypto

from touchline.config import Secret
from touchline.errors import ConfigError, PermanentDeliveryError, TransientDeliveryError
from touchline.messaging.channels.base import OutgoingMessage, SendResult

Security = Literal["none", "starttls", "tls"]

#: 7-bit transfer encodings everywhere: relays that lack 8BITMIME would
#: re-encode 8-bit bodies in transit and break the DKIM body hash.
POLICY = email.policy.default.clone(linesep="\r\n", cte_type="7bit")

#: Headers DKIM covers when present (RFC 6376 §5.4 recommends From, To,
#: Subject, Date, Message-ID; RFC 8058 requires the two List-Unsubscribe ones).
DKIM_HEADERS: tuple[str, ...] = (
    "From",
    "Reply-To",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
)

#: Recipient replies that mean the mailbox does not exist or is not accepted:
#: hard bounces, the address should be suppressed.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})

#: How long ``aclose`` waits for a TLS connection to finish closing.
CLOSE_GRACE = 1.0

#: Headers the channel sets itself; a message's extra headers may not replace them.
_STRUCTURAL_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "dkim-signature",
        "return-path",
    }
)


@dataclass(frozen=True)
class SmtpSettings:
    """Where and as whom to send; one per workspace (From/Reply-To differ)."""

    host: str
    port: int
    from_address: str
    security: Security = "starttls"
    username: str | None = None
    password: Secret | None = None
    from_name: str | None = None
    reply_to: str | None = None
    return_path: str | None = None  # envelope sender (bounces); defaults to from_address
    timeout: float = 30.0
    helo_name: str | None = None  # None: aiosmtplib uses socket.getfqdn()


@dataclass(frozen=True)
class DkimSettings:
    """DKIM signing key: ``private_key`` is a PKCS#1 PEM (``BEGIN RSA PRIVATE KEY``)."""

    selector: str
    domain: str
    private_key: Secret
    include_headers: tuple[str, ...] = DKIM_HEADERS


class SmtpRecipientRefused(PermanentDeliveryError):
    """The server refused the recipient (550/551/553): a hard bounce."""

    code = "smtp_recipient_refused"

    def __init__(self, message: str, *, smtp_code: int, smtp_message: str, recipient: str):
        super().__init__(message)
        self.smtp_code = smtp_code
        self.smtp_message = smtp_message
        self.recipient = recipient
        self.hard_bounce = smtp_code in HARD_BOUNCE_CODES


def message_id_for(idempotency_key: str, domain: str) -> str:
    """The Message-ID for a key: the same key always gives the same id."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def _domain_of(address: str) -> str:
    _, addr = parseaddr(address)
    domain = addr.rpartition("@")[2]
    return domain or "touchline.invalid"


def _list_unsubscribe(message: OutgoingMessage) -> tuple[str, str] | None:
    meta = message.metadata
    if meta.get("purpose") != "marketing":
        return None
    url, mailto = meta.get("unsubscribe_url"), meta.get("unsubscribe_mailto")
    if not url:
        return None
    if not mailto:  # RFC 8058 needs only the https URI; the mailto is for older clients
        return f"<{url}>", "List-Unsubscribe=One-Click"
    mailto = str(mailto)
    if not mailto.lower().startswith("mailto:"):
        mailto = "mailto:" + mailto
    return f"<{mailto}>, <{url}>", "List-Unsubscribe=One-Click"


def compose_email(
    message: OutgoingMessage, *, settings: SmtpSettings, now: datetime
) -> EmailMessage:
    """Build the MIME message: text alone, or multipart/alternative text + html.

    Raises :class:`PermanentDeliveryError` when the message cannot be expressed
    (a header value with a line break, an extra header that would replace one
    the channel owns, an unparseable address).
    """
    try:
        msg = EmailMessage(policy=POLICY)
        msg["From"] = Address(
            display_name=settings.from_name or "", addr_spec=settings.from_address
        )
        msg["To"] = message.to
        addresses = msg["To"].addresses
        if len(addresses) != 1 or "@" not in addresses[0].addr_spec:
            raise PermanentDeliveryError(
                f"expected one email address, got {message.to!r}", code="invalid_address"
            )
        if settings.reply_to:
            msg["Reply-To"] = settings.reply_to
        msg["Subject"] = message.subject or ""
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = message_id_for(
            message.idempotency_key, _domain_of(settings.from_address)
        )
        unsubscribe = _list_unsubscribe(message)
        if unsubscribe is not None:
            msg["List-Unsubscribe"], msg["List-Unsubscribe-Post"] = unsubscribe
        for name, value in message.headers.items():
            if name.lower() in _STRUCTURAL_HEADERS:
                raise PermanentDeliveryError(
                    f"header {name!r} is set by the SMTP channel", code="invalid_header"
                )
            del msg[name]
            msg[name] = value
        msg.set_content(message.text)
        if message.html is not None:
            msg.add_alternative(message.html, subtype="html")
    except (ValueError, TypeError, IndexError) as exc:
        # email raises ValueError for CR/LF in header values, IndexError/ValueError
        # for addresses it cannot parse.
        raise PermanentDeliveryError(f"cannot build email: {exc}", code="invalid_email") from exc
    return msg


def dkim_sign(message_bytes: bytes, settings: DkimSettings) -> bytes:
    """Return ``message_bytes`` with a DKIM-Signature header prepended."""
    present = {
        line.split(b":", 1)[0].strip().lower()
        for line in message_bytes.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line and line[:1] not in (b" ", b"\t")
    }
    include = [h.lower().encode("ascii") for h in settings.include_headers]
    signature = dkim.sign(
        message_bytes,
        settings.selector.encode("ascii"),
        settings.domain.encode("ascii"),
        settings.private_key.reveal().encode("ascii"),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h for h in include if h in present],
    )
    return bytes(signature) + message_bytes


class SmtpChannel:
    """Deliver email through one SMTP server, reusing a single connection.

    Sends are serialised on that connection (an SMTP session carries one
    transaction at a time); run several channels for parallelism.
    """

    name = "email"

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        dkim: DkimSettings | None = None,
        tls_context: ssl.SSLContext | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if dkim is not None:
            try:
                dkim_crypto_check(dkim)
            except Exception as exc:
                raise ConfigError(f"DKIM private key for {dkim.domain} is unusable") from exc
        self.settings = settings
        self._dkim = dkim
        self._tls_context = tls_context
        self._clock = clock
        self._smtp: aiosmtplib.SMTP | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        s = self.settings
        return f"SmtpChannel({s.host}:{s.port}, security={s.security!r})"

    async def send(self, message: OutgoingMessage) -> SendResult:
        mime = compose_email(message, settings=self.settings, now=self._clock())
        data = mime.as_bytes(policy=POLICY)
        if self._dkim is not None:
            data = dkim_sign(data, self._dkim)
        sender = self.settings.return_path or self.settings.from_address
        recipient = mime["To"].addresses[0].addr_spec
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            response = await self._send_bytes(sender, recipient, data)
        return SendResult(
            provider_id=str(mime["Message-ID"]),
            status="accepted",
            detail={"smtp_response": response},
        )

    async def aclose(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None or not smtp.is_connected:
            return
        protocol = smtp.protocol
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()
        await _until_connection_lost(protocol)

    async def _send_bytes(self, sender: str, recipient: str, data: bytes) -> str:
        reused = self._smtp is not None and self._smtp.is_connected
        try:
            try:
                smtp = await self._connected()
                _, response = await smtp.sendmail(sender, [recipient], data)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # The server dropped an idle connection we thought was alive:
                # reconnect once. A duplicate, if any, carries the same Message-ID.
                await self._drop()
                smtp = await self._connected()
                _, response = await smtp.sendmail(sender, [recipient], data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            raise _response_error(refused.code, refused.message, recipient=recipient) from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            await self._drop()
            # Wrong credentials fail every message alike; retry after the fix
            # instead of marking each message permanently failed.
            raise TransientDeliveryError(
                f"SMTP authentication failed: {exc.code} {exc.message}", code="smtp_auth_failed"
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:  # service closing the channel
                await self._drop()
            raise _response_error(exc.code, exc.message, recipient=None) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Connection refused, timeouts, disconnects, TLS failures, STARTTLS
            # not offered: the link is broken, not the message.
            await self._drop()
            raise TransientDeliveryError(
                f"SMTP {self.settings.host}:{self.settings.port}: {type(exc).__name__}: {exc}",
                code="smtp_unavailable",
            ) from exc
        except ValueError as exc:  # aiosmtplib refuses an address it cannot quote
            raise PermanentDeliveryError(f"invalid address: {exc}", code="invalid_address") from exc
        return response

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            local_hostname=s.helo_name,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=self._tls_context,
        )
        await smtp.connect()
        self._smtp = smtp
        if s.username is not None and s.password is not None:
            # Logged in here rather than by connect(), so a refused login leaves
            # the connection for _drop() to close cleanly.
            await smtp.login(s.username, s.password.reveal())
        return smtp

    async def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            protocol = smtp.protocol
            smtp.close()
            await _until_connection_lost(protocol)


async def _until_connection_lost(protocol: object) -> None:
    """Wait (briefly) until the socket is really closed.

    Over TLS, closing sends close_notify and releases the socket a few loop
    iterations later; a caller that stops its event loop right after
    ``aclose`` would otherwise leak it. aiosmtplib exposes no public close
    waiter, hence the private flag.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_GRACE
    while not getattr(protocol, "_connection_lost", True) and loop.time() < deadline:
        await asyncio.sleep(0.005)


def dkim_crypto_check(settings: DkimSettings) -> None:
    """Parse the DKIM key once, so a bad key fails at start-up, not per message."""
    dkim.crypto.parse_pem_private_key(settings.private_key.reveal().encode("ascii"))


def _response_error(
    code: int, text: str, *, recipient: str | None
) -> TransientDeliveryError | PermanentDeliveryError:
    detail = f"SMTP {code} {text}"
    if 400 <= code < 500:
        return TransientDeliveryError(detail, code="smtp_transient")
    if recipient is not None:
        return SmtpRecipientRefused(detail, smtp_code=code, smtp_message=text, recipient=recipient)
    return PermanentDeliveryError(detail, code="smtp_rejected")
