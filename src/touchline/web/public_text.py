"""The words of the customer pages (:mod:`touchline.web.public`), in Russian and English.

Russian is the default: touchline's shops sell in Russia first, so a
customer whose locale is unknown gets Russian.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from touchline.store.consent import CONSENT_TOPICS

LANGUAGES = ("ru", "en")

#: What a topic is called when the workspace settings' ``topics`` do not name it.
DEFAULT_TOPIC_LABELS: Mapping[str, Mapping[str, str]] = {
    "ru": {"engaging": "Новости и советы", "selling": "Скидки и акции"},
    "en": {"engaging": "News and tips", "selling": "Offers and discounts"},
}

_CHANNEL_LABELS: Mapping[str, Mapping[str, str]] = {
    "ru": {
        "email": "Электронная почта",
        "sms": "SMS",
        "telegram": "Telegram",
        "push": "Push-уведомления",
        "whatsapp": "WhatsApp",
        "viber": "Viber",
        "call": "Звонки",
    },
    "en": {
        "email": "Email",
        "sms": "Text messages (SMS)",
        "telegram": "Telegram",
        "push": "Push notifications",
        "whatsapp": "WhatsApp",
        "viber": "Viber",
        "call": "Phone calls",
    },
}

# What is unsubscribed from, as the object of "Отписаться от ..." / "Unsubscribe from ...".
_SUBJECTS: Mapping[str, Mapping[str, str]] = {
    "ru": {
        "email": "писем",
        "sms": "SMS",
        "telegram": "сообщений в Telegram",
        "push": "push-уведомлений",
        "whatsapp": "сообщений в WhatsApp",
        "viber": "сообщений в Viber",
        "call": "звонков",
    },
    "en": {
        "email": "emails",
        "sms": "text messages",
        "telegram": "Telegram messages",
        "push": "push notifications",
        "whatsapp": "WhatsApp messages",
        "viber": "Viber messages",
        "call": "calls",
    },
}

TEXTS: Mapping[str, Mapping[str, str]] = {
    "ru": {
        "unsubscribe_title": "Отписаться от {what}?",
        "unsubscribe_detail": (
            "Нажмите кнопку, чтобы подтвердить. Сообщения о ваших заказах "
            "по-прежнему будут приходить."
        ),
        "unsubscribe_button": "Отписаться",
        "unsubscribed_title": "Вы отписались",
        "unsubscribed_body": "Вы отписаны от {what}. Больше мы их не пришлём.",
        "unsubscribed_mistake": "Отписались по ошибке? Подписку можно вернуть в настройках.",
        "manage": "Настроить подписки",
        "preferences_title": "Настройки подписки",
        "preferences_intro": "Выберите, какие сообщения {shop} может вам присылать.",
        "receive": "Получать рассылку",
        "pending": "Подписка ждёт подтверждения по ссылке, которую мы вам отправили.",
        "topics": "Темы:",
        "transactional": "Сообщения о заказах и доставке приходят всегда.",
        "save": "Сохранить",
        "saved": "Настройки сохранены.",
        "confirm_ask_title": "Подтвердите подписку",
        "confirm_ask_body": "Нажмите кнопку, чтобы получать рассылку {shop}. Канал: {channel}.",
        "confirm_button": "Подтвердить",
        "confirm_done_title": "Подписка подтверждена",
        "confirm_done_body": "Спасибо! Теперь вы будете получать рассылку {shop}. Канал: {channel}.",
        "confirm_nothing_title": "Подтверждать нечего",
        "confirm_nothing_body": (
            "По этой ссылке нет подписки, которая ждёт подтверждения. Возможно, вы уже отписались."
        ),
        "error_link_title": "Ссылка не работает",
        "error_link_body": (
            "Возможно, она скопирована не полностью. Откройте её из сообщения ещё раз."
        ),
        "error_form_title": "Форма устарела",
        "error_form_body": "Откройте страницу по ссылке из сообщения и попробуйте ещё раз.",
        "error_request_title": "Не удалось обработать запрос",
        "error_request_body": "Откройте страницу по ссылке из сообщения и попробуйте ещё раз.",
        "error_unavailable_title": "Сервис временно недоступен",
        "error_unavailable_body": "Попробуйте ещё раз через несколько минут.",
    },
    "en": {
        "unsubscribe_title": "Unsubscribe from {what}?",
        "unsubscribe_detail": (
            "Press the button to confirm. Messages about your orders will still reach you."
        ),
        "unsubscribe_button": "Unsubscribe",
        "unsubscribed_title": "You are unsubscribed",
        "unsubscribed_body": "We will not send you {what} any more.",
        "unsubscribed_mistake": (
            "Unsubscribed by mistake? You can subscribe again on the preference page."
        ),
        "manage": "Manage your subscriptions",
        "preferences_title": "Subscription preferences",
        "preferences_intro": "Choose which messages {shop} may send you.",
        "receive": "Receive our messages",
        "pending": "This subscription awaits confirmation from the link we sent you.",
        "topics": "Topics:",
        "transactional": "Messages about your orders and deliveries are always sent.",
        "save": "Save",
        "saved": "Your preferences are saved.",
        "confirm_ask_title": "Confirm your subscription",
        "confirm_ask_body": "Press the button to receive messages from {shop}. Channel: {channel}.",
        "confirm_button": "Confirm",
        "confirm_done_title": "Subscription confirmed",
        "confirm_done_body": "Thank you! You will now receive messages from {shop}. Channel: {channel}.",
        "confirm_nothing_title": "Nothing to confirm",
        "confirm_nothing_body": (
            "No subscription is waiting for confirmation. You may have unsubscribed since."
        ),
        "error_link_title": "This link does not work",
        "error_link_body": (
            "It may have been copied incompletely. Open it from the message once more."
        ),
        "error_form_title": "This form has expired",
        "error_form_body": "Open the page from the link in the message and try again.",
        "error_request_title": "We could not handle this request",
        "error_request_body": "Open the page from the link in the message and try again.",
        "error_unavailable_title": "Temporarily unavailable",
        "error_unavailable_body": "Please try again in a few minutes.",
    },
}


def language(tag: str | None) -> str:
    """``ru`` for a locale (or Accept-Language) starting with ``ru`` or unknown, else ``en``."""
    first = (tag or "").split(",")[0].strip().lower()
    if not first or first == "*" or first.startswith("ru"):
        return "ru"
    return "en"


def channel_label(lang: str, channel: str) -> str:
    """A channel's name for people, e.g. ``Электронная почта``."""
    return _CHANNEL_LABELS[lang].get(channel, channel)


def topic_labels(lang: str, settings: Mapping[str, Any]) -> dict[str, str]:
    """Every topic's label: the workspace's ``topics`` setting where it has one, else ours."""
    labels = dict(DEFAULT_TOPIC_LABELS[lang])
    custom = settings.get("topics")
    if isinstance(custom, Mapping):
        for topic in CONSENT_TOPICS:
            label = custom.get(topic)
            if isinstance(label, str) and label.strip():
                labels[topic] = label.strip()
    return labels


def subject(lang: str, channel: str, topic_label: str | None) -> str:
    """What an unsubscribe is from: ``писем «Скидки и акции»``, ``“Offers” emails``."""
    fallback = f"сообщений ({channel})" if lang == "ru" else f"{channel} messages"
    noun = _SUBJECTS[lang].get(channel, fallback)
    if topic_label is None:
        return noun
    return f"{noun} «{topic_label}»" if lang == "ru" else f"“{topic_label}” {noun}"


__all__ = [
    "DEFAULT_TOPIC_LABELS",
    "LANGUAGES",
    "TEXTS",
    "channel_label",
    "language",
    "subject",
    "topic_labels",
]
