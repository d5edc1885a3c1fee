"""SMS over SMPP 3.4 to an operator's or aggregator's SMSC, through ``smpplib``.

One bound session per channel is kept open and shared by every send; it is
bound on first use and re-bound after any connection failure. ``smpplib`` is
blocking, so each send runs in a worker thread (``asyncio.to_thread``) and a
lock keeps the session to one conversation at a time.

Encoding follows :mod:`touchline.messaging.sms`, so what is sent is what was
billed:

* GSM-7 text goes with ``data_coding=0`` as unpacked GSM 03.38 septets, one per
  octet (the SMSC packs them), extension characters as ESC + code.
* Anything else goes with ``data_coding=8`` as UTF-16-BE (UCS-2).
* A long text is cut by :func:`touchline.messaging.sms.split` (never inside an
  escape pair or a surrogate pair) and each part carries a 6-octet user data
  header (``05 00 03 ref total seq``) with ``esm_class=0x40`` (UDHI). The
  8-bit reference comes from the idempotency key, so a resend of the same
  message reuses it.

``registered_delivery=1`` asks for a delivery receipt. Receipts arrive as
``deliver_sm`` only on a receiver or transceiver session: configure
``bind="transceiver"`` and collect them with :meth:`SmppChannel.poll_receipts`;
:func:`parse_receipt` reads their text.

A message of several parts is several ``submit_sm``; if a later part fails the
earlier ones are already with the SMSC, and a retry sends them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import smpplib.client
import smpplib.consts
import smpplib.exceptions
import smpplib.smpp

from touchline.config import Secret
from touchline.errors import (
    InputError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from touchline.messaging.channels.base import OutgoingMessage, SendResult
from touchline.messaging.channels.sms_http import (
    DeliveryReport,
    ReportStatus,
    prepare_sms,
    sms_detail,
)
from touchline.messaging.phone import DEFAULT_REGION, INVALID_NUMBER
from touchline.messaging.sms import GSM_BASIC_TABLE, analyse, split

DATA_CODING_GSM7 = 0x00
DATA_CODING_UCS2 = 0x08
ESM_CLASS_UDHI = 0x40
#: esm_class message type of a deliver_sm that is an SMSC delivery receipt.
ESM_CLASS_RECEIPT = 0x04

#: Concatenation numbers parts in one octet.
MAX_PARTS = 255

# GSM 03.38 extension table: character -> code after the ESC (0x1B).
_GSM_EXTENSION_CODES = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
_GSM_BASIC_CODES = {char: code for code, char in enumerate(GSM_BASIC_TABLE) if code != 0x1B}

#: submit_sm_resp statuses worth retrying: the SMSC is busy or broken, not the message.
TRANSIENT_STATUSES = frozenset(
    {
        smpplib.consts.SMPP_ESME_RTHROTTLED,
        smpplib.consts.SMPP_ESME_RMSGQFUL,
        smpplib.consts.SMPP_ESME_RSYSERR,
        smpplib.consts.SMPP_ESME_RSUBMITFAIL,
        0x00000064,  # ESME_RX_T_APPN: temporary application error
    }
)
#: Statuses that mean the destination number is unusable.
INVALID_NUMBER_STATUSES = frozenset(
    {
        smpplib.consts.SMPP_ESME_RINVDSTADR,
        smpplib.consts.SMPP_ESME_RINVDSTTON,
        smpplib.consts.SMPP_ESME_RINVDSTNPI,
    }
)

#: Receipt ``stat:`` words (SMPP 3.4 appendix B) and what they mean for us.
RECEIPT_STATES: dict[str, ReportStatus] = {
    "DELIVRD": "delivered",
    "EXPIRED": "failed",
    "DELETED": "failed",
    "UNDELIV": "failed",
    "REJECTD": "failed",
    "UNKNOWN": "failed",
    "ACCEPTD": "sent",
    "ENROUTE": "sent",
}

_RECEIPT_FIELD = re.compile(r"\b(id|stat|err):(\S*)", re.IGNORECASE)


@dataclass(frozen=True)
class SmppConfig:
    """An SMSC account. ``source_addr`` is the sender: digits, or an alphanumeric name."""

    host: str
    port: int
    system_id: str
    password: Secret
    system_type: str = ""
    source_addr: str = ""
    bind: Literal["transmitter", "transceiver"] = "transmitter"
    registered_delivery: bool = True
    region: str = DEFAULT_REGION
    #: Seconds to wait for the SMSC on connect and for each response.
    timeout: float = 10.0


@dataclass(frozen=True)
class EncodedSms:
    """The ``short_message`` octets of every part and how the SMSC should read them."""

    data_coding: int
    esm_class: int
    parts: list[bytes]


def gsm_encode(text: str) -> bytes:
    """``text`` as unpacked GSM 03.38 septets; ValueError for a character outside the alphabet."""
    out = bytearray()
    for char in text:
        if char in _GSM_BASIC_CODES:
            out.append(_GSM_BASIC_CODES[char])
        elif char in _GSM_EXTENSION_CODES:
            out += bytes((0x1B, _GSM_EXTENSION_CODES[char]))
        else:
            raise ValueError(f"{char!r} is not in the GSM 03.38 alphabet")
    return bytes(out)


def encode_parts(text: str, *, reference: int) -> EncodedSms:
    """The parts of ``text`` ready for ``submit_sm``, with a UDH when there are several."""
    gsm = analyse(text).encoding == "GSM-7"
    pieces = split(text)
    if len(pieces) > MAX_PARTS:
        raise PermanentDeliveryError(
            f"SMS of {len(pieces)} parts is over the {MAX_PARTS}-part limit",
            code="message_too_long",
        )
    encoded = [gsm_encode(piece) if gsm else piece.encode("utf-16-be") for piece in pieces]
    data_coding = DATA_CODING_GSM7 if gsm else DATA_CODING_UCS2
    if len(encoded) == 1:
        return EncodedSms(data_coding, 0, encoded)
    total = len(encoded)
    parts = [
        bytes((0x05, 0x00, 0x03, reference & 0xFF, total, seq)) + body
        for seq, body in enumerate(encoded, start=1)
    ]
    return EncodedSms(data_coding, ESM_CLASS_UDHI, parts)


def concat_reference(idempotency_key: str) -> int:
    """The 8-bit concatenation reference for a message: stable across resends."""
    return zlib.crc32(idempotency_key.encode("utf-8")) & 0xFF


def parse_receipt(short_message: bytes) -> DeliveryReport:
    """The DeliveryReport in a receipt text (``id:... stat:DELIVRD err:000 ...``).

    InputError when the text has no ``id`` or ``stat``. An ``err`` other than
    zeros is kept as the error; a failed state without one keeps the state.
    """
    text = short_message.decode("latin-1")
    fields = {key.lower(): value for key, value in _RECEIPT_FIELD.findall(text)}
    provider_id, stat = fields.get("id"), fields.get("stat", "").upper()
    if not provider_id or not stat:
        raise InputError(f"not an SMPP delivery receipt: {text[:80]!r}")
    status = RECEIPT_STATES.get(stat, "sent")
    err = fields.get("err", "")
    error = err if err.strip("0") else (stat if status == "failed" else None)
    return DeliveryReport(provider_id=provider_id, status=status, error=error, provider_status=stat)


def _address(raw: str) -> tuple[int, int, str]:
    """(ton, npi, address) for a number or an alphanumeric sender."""
    digits = raw.lstrip("+")
    if digits.isdigit():
        return 1, 1, digits  # international, ISDN (E.164)
    return 5, 0, raw  # alphanumeric, unknown plan


def _decode_id(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


class SmppChannel:
    """Send SMS over one bound SMPP session, kept open across sends."""

    name = "sms"

    def __init__(
        self,
        config: SmppConfig,
        *,
        client_factory: Callable[[SmppConfig], smpplib.client.Client] | None = None,
    ) -> None:
        self._config = config
        self._client_factory = client_factory or _default_client
        self._client: smpplib.client.Client | None = None
        self._lock = threading.Lock()
        self._receipts: list[DeliveryReport] = []

    def __repr__(self) -> str:
        return f"SmppChannel({self._config.host!r}, {self._config.port})"

    async def send(self, message: OutgoingMessage) -> SendResult:
        number, info = prepare_sms(message, region=self._config.region)
        encoded = encode_parts(message.text, reference=concat_reference(message.idempotency_key))
        ids = await asyncio.to_thread(self._submit_all, number, encoded)
        return SendResult(
            provider_id=ids[0],
            status="accepted",
            detail=sms_detail(info, message_ids=ids, data_coding=encoded.data_coding),
        )

    async def poll_receipts(self, *, timeout: float = 0.0) -> list[DeliveryReport]:
        """Delivery receipts received so far, waiting up to ``timeout`` seconds for one."""
        return await asyncio.to_thread(self._poll, timeout)

    async def aclose(self) -> None:
        """Unbind and close the session, if one is open."""
        await asyncio.to_thread(self._close)

    # --- blocking side, run in worker threads -------------------------------------------------

    def _submit_all(self, number: str, encoded: EncodedSms) -> list[str]:
        config = self._config
        dest_ton, dest_npi, destination = _address(number)
        src_ton, src_npi, source = _address(config.source_addr)
        with self._lock:
            ids: list[str] = []
            try:
                client = self._session()
                for part in encoded.parts:
                    pdu = client.send_message(
                        source_addr_ton=src_ton,
                        source_addr_npi=src_npi,
                        source_addr=source,
                        dest_addr_ton=dest_ton,
                        dest_addr_npi=dest_npi,
                        destination_addr=destination,
                        esm_class=encoded.esm_class,
                        data_coding=encoded.data_coding,
                        registered_delivery=1 if config.registered_delivery else 0,
                        short_message=part,
                    )
                    response = self._await_response(client, pdu.sequence)
                    if response.is_error():
                        raise _status_error(int(response.status), sent=ids)
                    ids.append(_decode_id(response.message_id))
            except (smpplib.exceptions.ConnectionError, OSError) as exc:
                # socket.timeout is an OSError: the session is in an unknown state.
                self._drop()
                raise TransientDeliveryError(
                    f"SMSC {config.host}:{config.port} failed: {type(exc).__name__} {exc}"
                    + (f" after parts {ids}" if ids else ""),
                    code="smpp_unavailable",
                ) from None
            except smpplib.exceptions.PDUError as exc:
                self._drop()
                raise TransientDeliveryError(
                    f"SMSC {config.host}:{config.port} protocol error: {exc}",
                    code="smpp_unavailable",
                ) from None
            return ids

    def _session(self) -> smpplib.client.Client:
        """The bound client, after handling what the SMSC sent meanwhile; rebinds a dead one."""
        if self._client is not None:
            try:
                self._client.poll()  # answers enquire_link, takes receipts, sees a closed socket
            except (smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError, OSError):
                self._drop()
        if self._client is None:
            self._client = self._bind()
        return self._client

    def _bind(self) -> smpplib.client.Client:
        config = self._config
        client = self._client_factory(config)
        client.set_message_received_handler(self._on_deliver)
        try:
            client.connect()
            bind = (
                client.bind_transceiver if config.bind == "transceiver" else client.bind_transmitter
            )
            bind(
                system_id=config.system_id,
                password=config.password.reveal(),
                system_type=config.system_type,
            )
        except smpplib.exceptions.PDUError as exc:
            client.disconnect()
            # Wrong credentials fail every message alike: retried until the account is fixed.
            raise TransientDeliveryError(
                f"SMSC refused the bind as {config.system_id!r}: {exc.args[0]}",
                code="smpp_bind_failed",
            ) from None
        except BaseException:
            client.disconnect()  # smpplib keeps the socket of a failed connect open
            raise
        return client

    def _await_response(self, client: smpplib.client.Client, sequence: int) -> Any:
        """Read PDUs until the response to ``sequence``, serving what the SMSC asks meanwhile."""
        while True:
            pdu = client.read_pdu()
            if pdu.command in ("submit_sm_resp", "generic_nack") and pdu.sequence == sequence:
                return pdu
            if pdu.command == "deliver_sm":
                status = self._on_deliver(pdu)
                self._reply(client, "deliver_sm_resp", pdu.sequence, status=status)
            elif pdu.command == "enquire_link":
                self._reply(client, "enquire_link_resp", pdu.sequence)
            elif pdu.command == "unbind":
                self._reply(client, "unbind_resp", pdu.sequence)
                raise smpplib.exceptions.ConnectionError("SMSC unbound the session")
            # Anything else (enquire_link_resp, a late response) is not ours to act on.

    @staticmethod
    def _reply(client: smpplib.client.Client, command: str, sequence: int, **kwargs: Any) -> None:
        response = smpplib.smpp.make_pdu(command, client=client, **kwargs)
        response.sequence = sequence
        client.send_pdu(response)

    def _on_deliver(self, pdu: Any) -> int:
        """Keep a receipt from ``deliver_sm``; ignore mobile-originated texts. Returns the status."""
        if not int(pdu.esm_class or 0) & ESM_CLASS_RECEIPT:
            return smpplib.consts.SMPP_ESME_ROK
        try:
            report = parse_receipt(pdu.short_message or b"")
        except InputError:
            return smpplib.consts.SMPP_ESME_ROK  # acknowledged so the SMSC does not resend forever
        receipted = getattr(pdu, "receipted_message_id", None)
        if receipted:  # the TLV is authoritative where the text id may be reformatted
            report = DeliveryReport(
                _decode_id(receipted), report.status, report.error, report.provider_status
            )
        self._receipts.append(report)
        return smpplib.consts.SMPP_ESME_ROK

    def _poll(self, timeout: float) -> list[DeliveryReport]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._client is not None:
                    try:
                        self._client.poll()
                    except (smpplib.exceptions.ConnectionError, OSError):
                        self._drop()
                if self._receipts or time.monotonic() >= deadline:
                    reports, self._receipts = self._receipts, []
                    return reports
            time.sleep(0.02)

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()

    def _close(self) -> None:
        with self._lock:
            client = self._client
            if client is None:
                return
            # Closing anyway: a failed unbind only means the SMSC went first.
            with contextlib.suppress(
                smpplib.exceptions.ConnectionError, smpplib.exceptions.PDUError, OSError
            ):
                client.unbind()
            self._drop()


def _default_client(config: SmppConfig) -> smpplib.client.Client:
    return smpplib.client.Client(
        config.host, config.port, timeout=config.timeout, allow_unknown_opt_params=True
    )


def _status_error(status: int, *, sent: list[str]) -> Exception:
    description = smpplib.consts.DESCRIPTIONS.get(status, "unknown status")
    message = f"SMSC answered 0x{status:08X} ({description})"
    if sent:
        message += f" after parts {sent}"
    if status in TRANSIENT_STATUSES:
        code = "smpp_throttled" if status == smpplib.consts.SMPP_ESME_RTHROTTLED else "smpp_busy"
        return TransientDeliveryError(message, code=code)
    if status in INVALID_NUMBER_STATUSES:
        return PermanentDeliveryError(message, code=INVALID_NUMBER)
    return PermanentDeliveryError(message, code="smpp_rejected")
