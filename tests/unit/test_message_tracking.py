"""Tracking without a store: link rewriting, the open pixel, tokens and the machine heuristics."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest

from touchline.errors import InputError
from touchline.measure.engagement import hit_event_name
from touchline.measure.machines import (
    APPLE_PROXY_AGENT,
    PriorHit,
    classify,
    machine_reason,
)
from touchline.measure.tokens import (
    MAX_URL_BYTES,
    make_track_token,
    read_track_token,
    track_workspace,
)
from touchline.measure.tracking import add_pixel, rewrite_email
from touchline.web.track import PIXEL_GIF

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
PUBLIC = "https://t.example"
WS = "ws_1"
SENT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/122.0 Safari/537.36"
)
UNSUBSCRIBE = f"{PUBLIC}/u/{WS}.AAAA"

HTML = f"""<html><body>
<p><a href="https://shop.example/sale?utm_source=touchline&amp;utm_medium=email">Sale</a></p>
<p><a class="x" href='https://shop.example/new'>New</a> <a href="#top">top</a></p>
<p><a href="mailto:help@shop.example">mail us</a> <a href="tel:+79161234567">call</a></p>
<p><a href="{UNSUBSCRIBE}">Отписаться</a></p>
<p><a href="{PUBLIC}/p/{WS}.BBBB">Настройки</a></p>
</body></html>"""

TEXT = f"""Sale: https://shop.example/sale?utm_source=touchline&utm_medium=email.
New (https://shop.example/new), write to mailto:help@shop.example
Unsubscribe: {UNSUBSCRIBE}"""


def rewrite(html: str | None = HTML, text: str | None = TEXT) -> tuple[str, str]:
    out_html, out_text = rewrite_email(
        html,
        text,
        public_url=PUBLIC,
        secret=SECRET,
        workspace_id=WS,
        outbox_id=42,
        skip={UNSUBSCRIBE},
    )
    return out_html or "", out_text or ""


def destinations(content: str) -> list[str]:
    """Where each click link in ``content`` leads, by reading its token."""
    tokens = re.findall(rf"{re.escape(PUBLIC)}/t/c/([\w-]+\.[\w-]+)", unescape(content))
    return [read_track_token(SECRET, token, kind="click").url or "" for token in tokens]


# -- rewriting ------------------------------------------------------------------------------


def test_every_web_link_of_the_html_becomes_a_signed_click_link() -> None:
    """Both shop links go through /t/c/ and their tokens name the original URL, query intact."""
    # when
    html, _ = rewrite()
    # then
    assert destinations(html) == [
        "https://shop.example/sale?utm_source=touchline&utm_medium=email",
        "https://shop.example/new",
    ]
    assert "https://shop.example/" not in html.replace(PUBLIC, "")


def test_mailto_tel_anchors_skipped_and_own_links_are_left_alone() -> None:
    """mailto:, tel:, #anchors, the skip URLs and touchline's own pages keep their hrefs."""
    html, text = rewrite()
    assert 'href="mailto:help@shop.example"' in html
    assert 'href="tel:+79161234567"' in html
    assert 'href="#top"' in html
    assert f'href="{UNSUBSCRIBE}"' in html
    assert f'href="{PUBLIC}/p/{WS}.BBBB"' in html
    assert f"Unsubscribe: {UNSUBSCRIBE}" in text


def test_text_links_are_tracked_and_keep_their_punctuation() -> None:
    """Plain-text URLs are rewritten; a sentence's full stop and a closing bracket stay outside."""
    _, text = rewrite()
    assert destinations(text) == [
        "https://shop.example/sale?utm_source=touchline&utm_medium=email",
        "https://shop.example/new",
    ]
    assert re.search(r"/t/c/[A-Za-z0-9_.-]+\.\n", text)
    assert re.search(r"/t/c/[A-Za-z0-9_.-]+\), write", text)


def test_rewriting_twice_changes_nothing_more() -> None:
    """Tracked links point at touchline's own /t/ path, so a second pass wraps nothing and adds no pixel."""
    html, text = rewrite()
    again_html, again_text = rewrite(html, text)
    assert (again_html, again_text) == (html, text)
    assert html.count("/t/o/") == 1


def test_the_pixel_goes_just_before_the_closing_body_tag() -> None:
    """One 1×1 image whose token names the message sits right before </body>."""
    html, _ = rewrite()
    found = re.search(
        rf'<img src="{re.escape(PUBLIC)}/t/o/([^"]+)\.gif" width="1" height="1" alt=""></body>',
        html,
    )
    assert found is not None, html
    claims = read_track_token(SECRET, found.group(1), kind="open")
    assert (claims.workspace_id, claims.outbox_id, claims.url) == (WS, 42, None)


def test_the_pixel_is_appended_to_html_without_a_body() -> None:
    """A fragment gets the pixel at its end; a document with two </body> gets it before the last."""
    assert add_pixel("<p>hi</p>", "https://t/x.gif") == (
        '<p>hi</p><img src="https://t/x.gif" width="1" height="1" alt="">'
    )
    assert add_pixel("a</BODY>b</body >", "s").endswith(
        'b<img src="s" width="1" height="1" alt=""></body >'
    )


def test_a_text_only_message_gets_no_pixel() -> None:
    """Without HTML there is nowhere to put an image: only the text's links change."""
    html, text = rewrite_email(
        None,
        "Go https://shop.example/x",
        public_url=PUBLIC,
        secret=SECRET,
        workspace_id=WS,
        outbox_id=1,
    )
    assert html is None
    assert text is not None and text.startswith(f"Go {PUBLIC}/t/c/")


def test_a_url_too_long_for_a_token_is_left_as_it_is() -> None:
    """A destination over MAX_URL_BYTES stays untracked rather than failing the message."""
    url = "https://shop.example/" + "x" * MAX_URL_BYTES
    _, text = rewrite(None, f"see {url}")
    assert text == f"see {url}"


# -- tokens ---------------------------------------------------------------------------------


def click_token(url: str = "https://shop.example/a", secret: bytes = SECRET) -> str:
    return make_track_token(secret, kind="click", workspace_id=WS, outbox_id=7, url=url)


def test_a_click_token_round_trips() -> None:
    """What make_track_token signs, read_track_token gives back."""
    claims = read_track_token(SECRET, click_token(), kind="click")
    assert (claims.kind, claims.workspace_id, claims.outbox_id, claims.url) == (
        "click",
        WS,
        7,
        "https://shop.example/a",
    )
    assert track_workspace(click_token()) == WS


@pytest.mark.parametrize("position", [len(WS) + 3, -1, -10, -30])
def test_a_token_changed_anywhere_is_refused(position: int) -> None:
    """One character changed in the payload or the MAC fails verification with bad_link."""
    token = click_token()
    swap = "A" if token[position] != "A" else "B"
    tampered = (
        token[:position] + swap + token[position + 1 :] if position != -1 else token[:-1] + swap
    )
    with pytest.raises(InputError) as caught:
        read_track_token(SECRET, tampered, kind="click")
    assert caught.value.code == "bad_link"


@pytest.mark.parametrize(
    ("token", "kind", "secret"),
    [
        pytest.param(click_token(secret=OTHER_SECRET), "click", SECRET, id="another-key"),
        pytest.param(
            make_track_token(SECRET, kind="open", workspace_id=WS, outbox_id=7),
            "click",
            SECRET,
            id="open-token-as-click",
        ),
        pytest.param(click_token().replace(WS, "ws_2", 1), "click", SECRET, id="other-workspace"),
        pytest.param(click_token()[:-4], "click", SECRET, id="cut-short"),
        pytest.param("ws_1", "click", SECRET, id="no-body"),
        pytest.param("ws_1.!!!!", "click", SECRET, id="not-base64"),
    ],
)
def test_tokens_touchline_did_not_sign_for_that_use_are_refused(
    token: str, kind: str, secret: bytes
) -> None:
    """Another key, the other kind, another workspace or a cut token: all bad_link."""
    with pytest.raises(InputError) as caught:
        read_track_token(secret, token, kind="click")
    assert caught.value.code == "bad_link"


def test_only_web_urls_can_be_signed_into_a_click_token() -> None:
    """A javascript: or relative destination is refused at signing time."""
    for url in ("javascript:alert(1)", "/relative", "ftp://x"):
        with pytest.raises(ValueError):
            click_token(url)


# -- machines -------------------------------------------------------------------------------

LATER = SENT + timedelta(hours=2)

CASES = [
    # kind, seconds after sending, user agent, ip, recent (seconds, url), this url, reason
    ("opened", 7200, BROWSER, "203.0.113.9", [], None, None),
    ("opened", 7200, APPLE_PROXY_AGENT, "203.0.113.9", [], None, "privacy_proxy"),
    ("opened", 7200, BROWSER, "17.58.101.3", [], None, "privacy_proxy"),
    (
        "opened",
        7200,
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "66.102.8.20",
        [],
        None,
        None,
    ),
    ("opened", 3, BROWSER, "203.0.113.9", [], None, "too_soon"),
    ("opened", -2, BROWSER, "203.0.113.9", [], None, "too_soon"),
    ("opened", 11, BROWSER, "203.0.113.9", [], None, None),
    ("opened", 7200, None, None, [], None, "no_agent"),
    ("opened", 7200, "  ", None, [], None, "no_agent"),
    ("clicked", 7200, BROWSER, "203.0.113.9", [], "https://s/a", None),
    ("clicked", 7200, APPLE_PROXY_AGENT, "17.1.2.3", [], "https://s/a", None),
    ("clicked", 1, BROWSER, "203.0.113.9", [], "https://s/a", "too_soon"),
    (
        "clicked",
        7200,
        "Googlebot/2.1 (+http://www.google.com/bot.html)",
        None,
        [],
        "u",
        "scanner_agent",
    ),
    ("clicked", 7200, "Slackbot-LinkExpanding 1.0", None, [], "u", "scanner_agent"),
    (
        "clicked",
        7200,
        "facebookexternalhit/1.1 Facebot Twitterbot/1.0",
        None,
        [],
        "u",
        "scanner_agent",
    ),
    ("clicked", 7200, "python-requests/2.31", None, [], "u", "scanner_agent"),
    ("clicked", 7200, BROWSER.replace("Chrome", "HeadlessChrome"), None, [], "u", "scanner_agent"),
    (
        "clicked",
        7200,
        "Mozilla/5.0 (Linux; Android 10; CUBOT KINGKONG) AppleWebKit/537.36 Chrome/99 Mobile",
        None,
        [],
        "u",
        None,
    ),
    ("clicked", 7200, BROWSER, None, [(7199, "https://s/b")], "https://s/a", "burst"),
    ("clicked", 7200, BROWSER, None, [(7201, "https://s/b")], "https://s/a", "burst"),
    ("clicked", 7200, BROWSER, None, [(7199, "https://s/a")], "https://s/a", None),
    ("clicked", 7200, BROWSER, None, [(7190, "https://s/b")], "https://s/a", None),
    ("opened", 7200, BROWSER, None, [(7199, "https://s/b")], None, None),
]


@pytest.mark.parametrize(
    ("kind", "after", "agent", "ip", "recent", "url", "reason"),
    CASES,
    ids=[f"{c[0]}-{c[6] or 'person'}-{i}" for i, c in enumerate(CASES)],
)
def test_classify(
    kind: str,
    after: int,
    agent: str | None,
    ip: str | None,
    recent: list[tuple[int, str]],
    url: str | None,
    reason: str | None,
) -> None:
    """Each heuristic flags its case and nothing else; people's opens and clicks pass."""
    at = SENT + timedelta(seconds=after)
    prior = [PriorHit(SENT + timedelta(seconds=s), u) for s, u in recent]
    args = {"sent_at": SENT, "at": at, "user_agent": agent, "ip": ip, "recent": prior, "url": url}
    assert machine_reason(kind, **args) == reason  # type: ignore[arg-type]
    assert classify(kind, **args) is (reason is not None)  # type: ignore[arg-type]


def test_unknown_sending_time_skips_only_the_timing_rule() -> None:
    """A message with no sent_at is judged by its agent alone."""
    assert not classify("opened", sent_at=None, at=LATER, user_agent=BROWSER, ip=None, recent=[])
    assert classify("opened", sent_at=None, at=LATER, user_agent="curl/8.0", ip=None, recent=[])


# -- names and bytes ------------------------------------------------------------------------


def test_event_names_follow_kind_and_channel() -> None:
    """Opens and clicks become the event names journeys wait for."""
    assert hit_event_name("opened", "email") == "Email Opened"
    assert hit_event_name("clicked", "email") == "Email Link Clicked"
    assert hit_event_name("clicked", "sms") == "SMS Link Clicked"
    assert hit_event_name("clicked", "telegram") == "Message Link Clicked"


def test_the_pixel_is_a_one_by_one_transparent_gif() -> None:
    """GIF89a, 1×1 in the header and image descriptor, a transparency extension, a trailer."""
    assert PIXEL_GIF[:6] == b"GIF89a"
    assert PIXEL_GIF[6:10] == b"\x01\x00\x01\x00"
    assert b"\x21\xf9\x04\x01" in PIXEL_GIF
    assert PIXEL_GIF.endswith(b"\x3b")
    assert len(PIXEL_GIF) == 43
