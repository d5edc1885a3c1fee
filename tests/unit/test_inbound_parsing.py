"""Reading forwarded SMS replies and telling STOP from ordinary text (pure parts of inbound SMS)."""

from __future__ import annotations

import pytest

from touchline.errors import InputError
from touchline.messaging.replies import (
    STOP_WORDS,
    InboundSms,
    event_message_id,
    masked_number,
    reply_keyword,
    sender_number,
    stop_keyword,
)
from touchline.web.api.callbacks import (
    decode_payload,
    parse_inbound,
    parse_inbound_http,
    parse_inbound_smsaero,
    parse_inbound_twilio,
)

# -- parsing ------------------------------------------------------------------------------


def test_a_twilio_reply_form_is_read() -> None:
    """From, To, Body and MessageSid become sender, recipient, text and provider id."""
    form = {
        "MessageSid": "SM123",
        "AccountSid": "AC1",
        "From": "+79161234567",
        "To": "+15005550006",
        "Body": "Спасибо!",
        "NumMedia": "0",
    }
    assert parse_inbound_twilio(form) == InboundSms(
        provider_id="SM123", sender="+79161234567", recipient="+15005550006", text="Спасибо!"
    )


def test_twilio_advanced_opt_out_marks_the_reply_as_an_opt_out() -> None:
    """OptOutType=STOP (Twilio's own opt-out keywords) sets opt_out; START and HELP do not."""
    base = {"MessageSid": "SM1", "From": "+79161234567", "Body": "REMOVE"}
    assert parse_inbound_twilio({**base, "OptOutType": "STOP"}).opt_out is True
    assert parse_inbound_twilio({**base, "OptOutType": "START"}).opt_out is False
    assert parse_inbound_twilio(base).opt_out is False


def test_twilio_sms_sid_stands_in_for_message_sid_and_a_missing_body_is_empty() -> None:
    """Older callbacks carry SmsSid only; an MMS without text has no Body."""
    sms = parse_inbound_twilio({"SmsSid": "SM9", "From": "+79161234567"})
    assert (sms.provider_id, sms.text, sms.recipient) == ("SM9", "", None)


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"From": "+79161234567", "Body": "x"}, "MessageSid"),
        ({"MessageSid": "SM1", "Body": "x"}, "From"),
        ({"MessageSid": "SM1", "From": "  ", "Body": "x"}, "From"),
    ],
)
def test_a_twilio_form_without_its_ids_is_refused(form: dict[str, str], field: str) -> None:
    """A missing MessageSid or From is an InputError naming the field."""
    with pytest.raises(InputError, match=f"^{field}: required"):
        parse_inbound_twilio(form)


def test_the_generic_shape_is_read_with_numbers_as_text() -> None:
    """{from, to, text, id}: a numeric id or number becomes text; to may be left out."""
    sms = parse_inbound_http({"from": 79161234567, "text": " Да ", "id": 42})
    assert sms == InboundSms(provider_id="42", sender="79161234567", recipient=None, text=" Да ")


def test_smsaero_replies_are_read_at_the_top_level_or_under_data() -> None:
    """SMS Aero's bodies may nest their fields under data, as its API answers do."""
    fields = {"from": "79161234567", "to": "SHOP", "text": "STOP", "id": "777"}
    assert parse_inbound_smsaero(fields) == parse_inbound_smsaero({"data": fields})
    assert parse_inbound_smsaero({"data": fields}).recipient == "SHOP"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"from": "+79161234567", "text": "x"}, "id: required"),
        ({"from": "+79161234567", "text": "x", "id": True}, "id: must be a string"),
        ({"from": "+79161234567", "text": "x", "id": "x" * 161}, "id: longer than"),
        ({"text": "x", "id": "1"}, "from: required"),
        ({"from": ["+7"], "text": "x", "id": "1"}, "from: must be a string"),
        ({"from": "+79161234567", "id": "1"}, "text: required"),
        ({"from": "+79161234567", "text": 5, "id": "1"}, "text: required"),
    ],
)
def test_a_malformed_generic_reply_names_the_field(
    payload: dict[str, object], message: str
) -> None:
    """Missing or mistyped fields are InputErrors whose message starts with the field."""
    with pytest.raises(InputError, match=f"^{message}"):
        parse_inbound_http(payload)


def test_parse_inbound_picks_the_reader_by_provider() -> None:
    """A decoded Twilio form goes to the Twilio reader, a JSON body to the generic one."""
    form = decode_payload(
        b"MessageSid=SM1&From=%2B79161234567&Body=STOP", "application/x-www-form-urlencoded"
    )
    assert parse_inbound("twilio", form).text == "STOP"
    body = decode_payload(b'{"from": "+79161234567", "text": "hi", "id": "g1"}', None)
    assert parse_inbound("http", body).provider_id == "g1"


# -- STOP words ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("STOP", "STOP"),
        (" stop ", "STOP"),
        ("Stop.", "STOP"),
        ("STOP!!!", "STOP"),
        ("stop all", "STOPALL"),
        ("Unsubscribe", "UNSUBSCRIBE"),
        ("cancel", "CANCEL"),
        ("Стоп", "СТОП"),
        ("«СТОП»", "СТОП"),
        ("отписаться", "ОТПИСАТЬСЯ"),
        ("Отписка!", "ОТПИСКА"),
        ("отпишите", "ОТПИШИТЕ"),
        ("ＳＴＯＰ", "STOP"),  # full-width letters from some phone keyboards
    ],
)
def test_stop_words_are_recognised_whatever_the_case_and_punctuation(
    text: str, keyword: str
) -> None:
    """A reply that is only a listed word, in any case, with punctuation or spaces, is STOP."""
    assert stop_keyword(text) == keyword


@pytest.mark.parametrize(
    "text",
    [
        "Please stop sending me the wrong size",
        "Стоп, я перепутал размер",
        "Нет",
        "нет, спасибо",
        "Отмена",
        "START",
        "СТАРТ",
        "stopped",
        "STOP STOP",
        "",
        "🛑",
    ],
)
def test_ordinary_replies_are_not_stop(text: str) -> None:
    """Sentences containing a stop word, НЕТ, ОТМЕНА, START and near-misses are ordinary replies."""
    assert stop_keyword(text) is None


def test_every_stop_word_is_its_own_keyword() -> None:
    """The list is written as reply_keyword leaves words, or an entry could never match."""
    assert {reply_keyword(word) for word in STOP_WORDS} == set(STOP_WORDS)
    assert "НЕТ" not in STOP_WORDS


# -- numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+79161234567", "RU", "+79161234567"),
        ("79161234567", "RU", "+79161234567"),  # SMS Aero's bare international digits
        ("8 (916) 123-45-67", "RU", "+79161234567"),
        ("15005550006", "RU", "+15005550006"),  # digits without + from another country
        ("442071838750", "RU", "+442071838750"),
        ("SHOP", "RU", None),
        ("12345", "RU", None),
    ],
)
def test_sender_numbers_become_e164(raw: str, region: str, expected: str | None) -> None:
    """National and bare international forms normalise to E.164; non-numbers give None."""
    assert sender_number(raw, region=region) == expected


def test_the_event_message_id_is_deterministic_per_provider_and_id() -> None:
    """The same reply posted twice gets the same message id; another provider's does not."""
    assert event_message_id("twilio", "SM1") == "sms-in:twilio:SM1"
    assert event_message_id("twilio", "SM1") != event_message_id("http", "SM1")


def test_logged_numbers_are_masked() -> None:
    """Logs keep the country code and the last two digits only."""
    assert masked_number("+79161234567") == "+791…67"
