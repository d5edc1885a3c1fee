"""How the Celery and procrastinate tasks send a reminder: one SMTP transaction.

Each worker thread keeps one ``smtplib`` connection to the sink and reuses
it, as touchline's SMTP channel does with its own connection; a broken
connection is opened again once. The message is a small text/HTML email,
about the size of touchline's rendered reminder.
"""

from __future__ import annotations

import os
import smtplib
import threading
from email.message import EmailMessage

FROM_ADDRESS = "shop@peers.example.com"
_local = threading.local()


def reminder_message(n: int) -> EmailMessage:
    user = f"r-{n:06d}"
    message = EmailMessage()
    message["From"] = FROM_ADDRESS
    message["To"] = f"{user}@peers.example.com"
    message["Subject"] = "You left something in your cart"
    message.set_content(f"Hello {user}, cart cart-{n:06d} is still waiting for you.")
    message.add_alternative(
        f"<p>Hello {user}, cart <b>cart-{n:06d}</b> is still waiting for you.</p>",
        subtype="html",
    )
    return message


def _connection() -> smtplib.SMTP:
    smtp: smtplib.SMTP | None = getattr(_local, "smtp", None)
    if smtp is None:
        smtp = smtplib.SMTP("127.0.0.1", int(os.environ["PEERS_SMTP_PORT"]), timeout=30)
        _local.smtp = smtp
    return smtp


def send_reminder(n: int) -> None:
    """Send reminder ``n`` to its customer; returns once the server accepted it."""
    message = reminder_message(n)
    try:
        _connection().send_message(message)
    except (smtplib.SMTPServerDisconnected, OSError):
        _local.smtp = None
        _connection().send_message(message)
