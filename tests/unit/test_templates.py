"""Template compilation and rendering: filters, defaults, UTM, HTML to text, CSS, sandbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from touchline.errors import InputError, TouchlineError
from touchline.messaging.templates import (
    RenderContext,
    RenderError,
    Template,
    TemplateError,
    add_utm,
    compile_template,
    html_to_text,
    utm_params,
)

NOW = datetime(2024, 3, 5, 19, 30, tzinfo=UTC)
NBSP = "\xa0"
NNBSP = "\u202f"


def render_text(source: str, **kw: Any) -> str:
    defaults = kw.pop("defaults", {})
    context = RenderContext(
        profile=kw.pop("profile", {"first_name": "Анна", "timezone": "Asia/Yekaterinburg"}),
        now=NOW,
        journey="cart-abandoned",
        **kw,
    )
    out = compile_template(Template("t1", "sms", text=source, defaults=defaults)).render(context)
    assert out.text is not None
    return out.text


def render_html(source: str, **kw: Any) -> Any:
    template = Template("cart-1", "email", subject="s", html=source, **kw)
    context = RenderContext(profile={"first_name": "Анна"}, now=NOW, journey="cart-abandoned")
    return compile_template(template).render(context)


# ------------------------------------------------------------------ filters


def test_money_formats_in_customer_locale() -> None:
    """money uses babel: ru_RU puts NBSP groups, a decimal comma and ₽ after the number."""
    assert render_text("{{ 1990 | money }}") == f"1{NBSP}990,00{NBSP}₽"
    assert render_text("{{ '1990.5' | money('USD') }}", locale="en_US") == "$1,990.50"


def test_money_rejects_non_numbers() -> None:
    """money on text that is not a number fails the render with RenderError."""
    with pytest.raises(RenderError, match="not a number"):
        render_text("{{ 'abc' | money }}")


def test_date_and_datetime_use_customer_timezone() -> None:
    """19:30 UTC on 5 March is 00:30 on 6 March in Yekaterinburg (UTC+5)."""
    assert render_text("{{ now | date }}") == f"6 мар. 2024{NNBSP}г."
    assert render_text("{{ now | date('long') }}") == f"6 марта 2024{NNBSP}г."
    assert render_text("{{ now | datetime('short') }}") == "06.03.2024, 00:30"


def test_date_accepts_iso_strings() -> None:
    """ISO strings (with Z, with offset, date-only) are read; date-only is not shifted."""
    assert render_text("{{ '2024-03-05T22:30:00Z' | date('d MMMM') }}") == "6 марта"
    assert render_text("{{ '2024-03-05T10:00:00+03:00' | datetime('HH:mm') }}") == "12:00"
    assert render_text("{{ '2024-03-05' | date('d MMMM') }}") == "5 марта"


def test_explicit_timezone_wins_over_profile() -> None:
    """RenderContext.timezone overrides the profile's zone."""
    assert render_text("{{ now | datetime('HH:mm') }}", timezone="Europe/Moscow") == "22:30"


@pytest.mark.parametrize(
    ("n", "word"),
    [
        (0, "товаров"),
        (1, "товар"),
        (2, "товара"),
        (4, "товара"),
        (5, "товаров"),
        (11, "товаров"),
        (12, "товаров"),
        (21, "товар"),
        (22, "товара"),
        (101, "товар"),
        (111, "товаров"),
    ],
)
def test_plural_russian(n: int, word: str) -> None:
    """plural picks the CLDR form for ru: 1/21/101 one, 2-4/22 few, 0/5/11-14/111 many."""
    source = "{{ context.n | plural('товар', 'товара', 'товаров') }}"
    assert render_text(source, context={"n": n}) == word


def test_plural_other_locale_uses_other() -> None:
    """In English 5 is 'other', falling back to the many form when other is not given."""
    source = "{{ 1 | plural('item', 'items', 'items') }} {{ 5 | plural('item', 'x', 'items') }}"
    assert render_text(source, locale="en_US") == "item items"


def test_builtin_default_and_truncate_still_work() -> None:
    """Jinja's default works on missing and null values; truncate shortens text."""
    profile = {"first_name": None}
    assert render_text("{{ profile.first_name | default('друг') }}", profile=profile) == "друг"
    assert render_text("{{ profile.nick | default('друг') }}") == "друг"
    assert render_text("{{ 'abcdefghijklmnopqrst' | truncate(10) }}") == "abcdefg..."


# ---------------------------------------------------------- missing values


def test_defaults_fill_missing_and_null_values() -> None:
    """A declared dotted default fills both an absent and a null trait, never a present one."""
    defaults = {"profile.first_name": "друг", "context.coupon.code": "HELLO"}
    assert render_text("Привет, {{ profile.first_name }}!", profile={}, defaults=defaults) == (
        "Привет, друг!"
    )
    assert (
        render_text("{{ profile.first_name }}", profile={"first_name": None}, defaults=defaults)
        == "друг"
    )
    assert render_text("{{ profile.first_name }}", defaults=defaults) == "Анна"
    assert render_text("{{ context.coupon.code }}", defaults=defaults) == "HELLO"


def test_missing_value_raises_render_error_naming_it() -> None:
    """A missing value without default is a RenderError naming the variable and template."""
    with pytest.raises(RenderError) as caught:
        render_text("Hi {{ profile.last_name }}")
    assert caught.value.variable == "profile.last_name"
    assert caught.value.template == "t1"
    assert caught.value.code == "render_failed"
    assert "profile.last_name" in str(caught.value)
    assert isinstance(caught.value, TouchlineError)


@pytest.mark.parametrize(
    ("source", "variable"),
    [
        ("{{ coupon }}", "coupon"),
        ("{{ profile.custom.size }}", "profile.custom"),
        ("{{ products[3].name }}", "products[3]"),
        ("{% for p in event.lines %}{% endfor %}", "event.lines"),
        ("{{ profile.last_name | upper }}", "profile.last_name"),
        ("{{ event.total | money }}", "event.total"),
    ],
)
def test_missing_value_names_path(source: str, variable: str) -> None:
    """Printing, iterating, indexing or filtering a missing value names its dotted path."""
    with pytest.raises(RenderError) as caught:
        render_text(source)
    assert caught.value.variable == variable


def test_missing_value_is_falsy_in_conditions() -> None:
    """if and `is defined` on a missing value do not fail; they read it as absent."""
    source = "{% if profile.vip %}VIP{% else %}no{% endif %} {{ profile.vip is defined }}"
    assert render_text(source) == "no False"


def test_mapping_keys_win_over_dict_methods() -> None:
    """event.items is the event's items field, not dict.items."""
    assert render_text("{{ event.items | length }}", event={"items": [1, 2, 3]}) == "3"


def test_render_does_not_mutate_caller_data() -> None:
    """Defaults are merged into a copy; the caller's profile is untouched."""
    profile: dict[str, Any] = {}
    render_text("{{ profile.first_name }}", profile=profile, defaults={"profile.first_name": "x"})
    assert profile == {}


# ------------------------------------------------------------- compilation


def test_syntax_error_names_template_part_and_line() -> None:
    """A syntax error is a TemplateError (an InputError) with template, part and line."""
    template = Template("cart-1", "email", subject="Hi", html="<p>\n<p>\n{{ profile.name }\n")
    with pytest.raises(TemplateError) as caught:
        compile_template(template)
    error = caught.value
    assert (error.template, error.part, error.line) == ("cart-1", "html", 3)
    assert error.code == "invalid_template"
    assert isinstance(error, InputError)
    assert "'cart-1'" in str(error) and "html line 3" in str(error)


def test_syntax_error_in_subject() -> None:
    """A bad subject is reported as the subject part."""
    with pytest.raises(TemplateError) as caught:
        compile_template(Template("t", "email", subject="{% if x %}", text="x"))
    assert caught.value.part == "subject"


# --------------------------------------------------------------------- UTM


def test_utm_added_to_http_links_keeping_existing_params() -> None:
    """http(s) hrefs get utm_*; existing query and utm_* values stay; others untouched."""
    html = (
        '<a href="https://shop.ru/cart?id=7&amp;utm_source=mail#top">cart</a>'
        "<a href='http://shop.ru/'>home</a>"
        '<a href="mailto:help@shop.ru">mail</a><a href="tel:+79990000000">call</a>'
        '<a href="#anchor">up</a>'
    )
    out = render_html(html).html
    assert (
        'href="https://shop.ru/cart?id=7&amp;utm_source=mail&amp;utm_medium=email'
        '&amp;utm_campaign=cart-abandoned&amp;utm_content=cart-1#top"'
    ) in out
    assert (
        'href="http://shop.ru/?utm_source=touchline&amp;utm_medium=email'
        '&amp;utm_campaign=cart-abandoned&amp;utm_content=cart-1"'
    ) in out
    assert 'href="mailto:help@shop.ru"' in out
    assert 'href="tel:+79990000000"' in out
    assert 'href="#anchor"' in out


def test_utm_in_text_body() -> None:
    """URLs in text get utm_* and keep trailing punctuation outside the URL."""
    text = render_text("Корзина: https://shop.ru/c?x=1. Пишите: mailto:a@b.ru")
    assert text == (
        "Корзина: https://shop.ru/c?x=1&utm_source=touchline&utm_medium=sms"
        "&utm_campaign=cart-abandoned&utm_content=t1. Пишите: mailto:a@b.ru"
    )


def test_own_links_get_no_utm() -> None:
    """The customer's unsubscribe and preference links are left as signed, without utm_*."""
    template = compile_template(
        Template(
            "promo",
            "email",
            subject="s",
            html='<a href="{{ links.unsubscribe_url }}">x</a> <a href="https://shop.ru/">y</a>',
        )
    )
    links = {
        "unsubscribe_url": "https://t.example/u/ws.abc",
        "preferences_url": "https://t.example/p/ws.d",
    }
    out = template.render(RenderContext(profile={}, now=NOW, journey="j", links=links))
    assert 'href="https://t.example/u/ws.abc"' in (out.html or "")
    assert "https://t.example/u/ws.abc?" not in (out.text or "") + (out.html or "")
    assert "https://shop.ru/?utm_source" in (out.html or "")


def test_utm_is_configurable() -> None:
    """utm overrides a value, adds a term, and null leaves a parameter out."""
    params = utm_params(
        {"source": "newsletter", "content": None, "utm_term": "sale"},
        channel="email",
        journey="j",
        template="t",
    )
    assert params == {
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "j",
        "utm_term": "sale",
    }
    assert add_utm("ftp://x/", params) == "ftp://x/"


# -------------------------------------------------------- HTML to text, CSS


def test_html_to_text() -> None:
    """Paragraphs and br become line breaks, links `label (url)`, list items `- `, no CSS/JS."""
    html = (
        "<html><head><title>T</title><style>p { color: red }</style></head><body>"
        "<h1>Корзина</h1><p>Здравствуйте,\n   Анна!<br>Вы   забыли:</p>"
        "<ul><li>Кеды</li><li>Носки</li></ul>"
        '<p><a href="https://shop.ru/cart">Вернуться</a> или <a href="mailto:a@b.ru">a@b.ru</a>'
        ' <a href="#x">наверх</a></p><script>alert(1)</script></body></html>'
    )
    assert html_to_text(html) == (
        "Корзина\n\nЗдравствуйте, Анна!\nВы забыли:\n\n- Кеды\n- Носки\n\n"
        "Вернуться (https://shop.ru/cart) или a@b.ru наверх"
    )


def test_text_derived_from_html_when_missing() -> None:
    """Without a text part, the text is made from the rendered HTML, links with UTM."""
    out = render_html('<p>Hi {{ profile.first_name }}, <a href="https://s.ru/">go</a></p>')
    assert out.text is not None
    assert out.text.startswith("Hi Анна, go (https://s.ru/?utm_source=touchline&")


def test_css_is_inlined() -> None:
    """A <style> rule ends up as a style= attribute on the matching element."""
    html = "<html><head><style>p.lead { color: red; }</style></head><body><p class='lead'>x</p></body></html>"
    out = render_html(html).html
    assert 'style="color: red;"' in out
    assert "<style" not in out


def test_html_is_autoescaped_but_text_and_subject_are_not() -> None:
    """Values are escaped in HTML only; the subject is one line."""
    template = Template(
        "t",
        "email",
        subject="Для {{ context.n }}\nновое",
        html="<p>{{ context.n }}</p>",
        text="{{ context.n }}",
    )
    context = RenderContext(profile={}, now=NOW, context={"n": "<b>A&B</b>"})
    out = compile_template(template).render(context)
    assert out.html == "<p>&lt;b&gt;A&amp;B&lt;/b&gt;</p>"
    assert out.text == "<b>A&B</b>"
    assert out.subject == "Для <b>A&B</b> новое"


# ------------------------------------------------------------------ sandbox


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ profile.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ profile._private }}",
        "{{ profile.update({'first_name': 'x'}) }}",
        "{% for x in range(10**9) %}x{% endfor %}",
        "{% for i in range(100) %}{% for j in range(100) %}{% for k in range(2) %}{% endfor %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10**9 }}",
        "{{ 10 ** 100000 }}",
        "{{ 'x'.center(10**9) }}",
        "{{ 'x' | center(10**9) }}",
        "{{ '%999999999s' % 1 }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{% set ns = namespace(v='x') %}{% for i in range(40) %}{% set ns.v = ns.v ~ ns.v %}{% endfor %}",
        "{% for i in range(9999) %}{{ 'x' * 100 }}{% endfor %}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{{ 1 / 0 }}",
    ],
)
def test_sandbox_abuse_fails_as_render_error(source: str) -> None:
    """Escapes, mutation and resource abuse end in RenderError, never run or hang."""
    with pytest.raises(RenderError):
        render_text(source)


def test_only_render_error_escapes() -> None:
    """Whatever goes wrong inside a render, callers see a RenderError with the part named."""
    with pytest.raises(RenderError) as caught:
        render_text("{{ [1, 2] | first | attr('x') | int(1) // 0 }}")
    assert caught.value.part == "text"
