"""Telling a person's open or click from a machine's: pure heuristics, no I/O.

An open pixel or a click link is fetched by many things besides the
customer: Apple Mail Privacy Protection downloads every image of every
message on delivery, corporate mail gateways and antivirus "safe links"
follow every link before the reader sees the mail, messengers and chat apps
fetch a link to draw its preview. Counting those as opens and clicks makes
rates meaningless and would tell a journey waiting for ``Email Opened`` that
a customer opened a mail nobody read.

:func:`machine_reason` names the first rule that holds, or None for a
person; :func:`classify` is the yes/no. The rules, in order:

``no_agent``
    No ``User-Agent`` at all: every mail client and browser sends one.
``scanner_agent``
    The user agent of a crawler, link scanner, preview fetcher or HTTP
    library (:data:`SCANNER_AGENTS`).
``privacy_proxy`` (opens only)
    Apple's prefetch: the agent is exactly ``Mozilla/5.0`` (what Apple's
    proxy sends; no browser or mail client sends it bare), or the address is
    in Apple's own network, :data:`APPLE_NETWORKS`.
``too_soon``
    Within :data:`MACHINE_WINDOW` of the message leaving (``sent_at``),
    including a fetch that raced the recording of ``sent_at``.
``burst`` (clicks only)
    Another link of the same message was followed within
    :data:`BURST_WINDOW`: a person follows one link at a time, a scanner all
    of them at once. The same link twice in that window is a double click.

Not flagged on purpose: Gmail's and Yahoo's image proxies
(``GoogleImageProxy``, ``YahooMailProxy``). They fetch the images when the
reader opens the mail and cache them, so their first fetch is a real open
(later opens of the same mail are not seen). Counting them as machines
would mean no Gmail reader ever "opens", and every cascade waiting for
``Email Opened`` would fall through to its fallback for them.

Limits: Apple's proxy also egresses through partner networks and may change
its agent; opens it hides there look human. A scanner with a browser's
agent, from an ordinary address, more than 10 s after sending, clicking one
link, looks human too. These rules keep rates honest in aggregate; they are
not proof about one fetch.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

HitKind = Literal["opened", "clicked"]

#: Nobody reads a message and acts on it within 10 s of it leaving; prefetchers and
#: gateway scanners do, often within a second or two.
MACHINE_WINDOW = timedelta(seconds=10)
#: A person follows one link at a time; a scanner follows every link within a second or so.
BURST_WINDOW = timedelta(seconds=2)
#: What Apple Mail Privacy Protection's image fetcher sends as its user agent, and nothing more.
APPLE_PROXY_AGENT = "Mozilla/5.0"
#: Apple's own address block, from which its privacy proxy fetches mail images.
APPLE_NETWORKS = (ipaddress.ip_network("17.0.0.0/8"),)
#: Agents of crawlers, mail gateway scanners, link preview fetchers and HTTP libraries.
#: Matched case-insensitively anywhere in the agent. ``bot`` only counts at the end of a
#: product name (``Googlebot/2.1``, ``Slackbot-LinkExpanding``, ``TwitterBot)``), so a
#: phone model that ends in "bot" followed by a space is not taken for one.
SCANNER_AGENTS = (
    r"bot(?:[/)-]|$)",
    r"crawler",
    r"spider",
    r"slurp",
    r"\+https?://",  # crawlers sign their agent with a "+http://..." info page
    r"preview",  # BingPreview, SkypeUriPreview, link previewers
    r"scanner",
    r"headless",  # HeadlessChrome drives most sandboxing scanners
    r"phantomjs",
    r"facebookexternalhit",  # also what iMessage sends for its link previews
    r"vkshare",
    r"whatsapp",
    r"barracuda",
    r"mimecast",
    r"proofpoint",
    r"symantec",
    r"trend ?micro",
    r"fireeye",
    r"forcepoint",
    r"sophos",
    r"safelinks",
    r"python-requests",
    r"python-urllib",
    r"aiohttp",
    r"httpx",
    r"curl/",
    r"wget/",
    r"go-http-client",
    r"okhttp",
    r"java/",
    r"apache-httpclient",
    r"libwww-perl",
    r"node-fetch",
    r"axios/",
)

_SCANNER = re.compile("|".join(SCANNER_AGENTS), re.IGNORECASE)


class PriorHit(NamedTuple):
    """An earlier open or click of the same message, as :func:`classify` needs it."""

    at: datetime
    url: str | None


def machine_reason(
    kind: HitKind,
    *,
    sent_at: datetime | None,
    at: datetime,
    user_agent: str | None,
    ip: str | None,
    recent: Sequence[PriorHit] = (),
    url: str | None = None,
) -> str | None:
    """Why this open or click looks like a machine's (a rule name from the module
    docstring), or None when it looks like a person's.

    ``recent`` are the message's earlier clicks (only clicks are compared);
    ``url`` is where this click goes.
    """
    agent = (user_agent or "").strip()
    if not agent:
        return "no_agent"
    if _SCANNER.search(agent):
        return "scanner_agent"
    if kind == "opened" and (agent == APPLE_PROXY_AGENT or _in_apple_network(ip)):
        return "privacy_proxy"
    if sent_at is not None and at <= sent_at + MACHINE_WINDOW:
        return "too_soon"
    if kind == "clicked" and any(
        abs(at - prior.at) <= BURST_WINDOW and prior.url != url for prior in recent
    ):
        return "burst"
    return None


def classify(
    kind: HitKind,
    *,
    sent_at: datetime | None,
    at: datetime,
    user_agent: str | None,
    ip: str | None,
    recent: Sequence[PriorHit] = (),
    url: str | None = None,
) -> bool:
    """True when an open or click is a machine's (see :func:`machine_reason`)."""
    reason = machine_reason(
        kind, sent_at=sent_at, at=at, user_agent=user_agent, ip=ip, recent=recent, url=url
    )
    return reason is not None


def _in_apple_network(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:  # a test client's or a proxy's placeholder
        return False
    return any(address in network for network in APPLE_NETWORKS)


__all__ = [
    "APPLE_NETWORKS",
    "APPLE_PROXY_AGENT",
    "BURST_WINDOW",
    "MACHINE_WINDOW",
    "SCANNER_AGENTS",
    "HitKind",
    "PriorHit",
    "classify",
    "machine_reason",
]
