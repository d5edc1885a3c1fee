"""Message templates: compiled once, rendered per message in Jinja2's sandbox.

A :class:`Template` has up to three parts — ``subject``, ``html``, ``text`` —
written in Jinja2. They run in an :class:`ImmutableSandboxedEnvironment`
(users' text is data): no private or dunder attributes, no mutation of the
data passed in, and limits on what a template may cost:

* a rendered part is at most :data:`MAX_OUTPUT_CHARS`, one printed value or
  concatenation too, and ``*``, ``**`` and ``%`` refuse results past that size;
* ``range`` hands out at most :data:`MAX_RANGE_ITEMS` items per render in all;
* a render stops after :data:`MAX_RENDER_SECONDS`.

Those limits bound memory and time for any template we know of, but this is
in-process: a worker should still run with an OS memory limit.

A missing value is an error, not an empty string, so nobody receives
"Hello, !". Values that are absent *or null* are missing; a template declares
fallbacks in ``defaults`` with dotted names (``profile.first_name: друг``),
merged into the data before rendering, so ``is defined`` and ``if`` see them
too. ``{% if x %}``, ``x is defined`` and ``x | default(...)`` work on missing
values; printing, iterating or calling one raises :class:`RenderError` naming
it. :meth:`CompiledTemplate.render` raises nothing but :class:`RenderError`:
the dispatcher fails that one message with the reason and goes on.

After rendering, every ``http(s)`` link of the HTML (``<a>``/``<area>`` href)
and of the text gets UTM parameters (existing ones are kept), the text is
derived from the HTML when the template has none, and ``<style>`` rules are
inlined into ``style=`` attributes for email clients (``css_inline``).

``{{ promo_code("cart10") }}`` prints the customer's code from a promo pool,
through :attr:`RenderContext.promo`; without one (previews, checks) it prints
:data:`PROMO_SAMPLE`. A pool that is unknown, empty or expired fails the
message with that reason.

``recommend`` lists products for the customer, through
:attr:`RenderContext.recommend` (see :mod:`touchline.audience.recommendations`):
``recommend.similar(product_id, 4)``, ``recommend.bought_together(ids, 4)``
(one id or a list), ``recommend.viewed_not_bought(4)``,
``recommend.popular(4, category=None)`` and ``recommend.for_customer(4)``,
at most :data:`MAX_RECOMMENDATIONS` each. Without a recommender (checks,
renders without a store) every call gives an empty list, as a new shop
would: templates show their fallback.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache, wraps
from html import escape as html_escape
from html import unescape as html_unescape
from html.parser import HTMLParser
from typing import Any, Literal, NoReturn, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import css_inline
from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency
from jinja2 import TemplateSyntaxError, Undefined, UndefinedError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import missing

from touchline.errors import InputError, TouchlineError
from touchline.journeys.localtime import zone

__all__ = [
    "DEFAULT_CURRENCY",
    "DEFAULT_LOCALE",
    "MAX_OUTPUT_CHARS",
    "MAX_RANGE_ITEMS",
    "MAX_RECOMMENDATIONS",
    "MAX_RENDER_SECONDS",
    "PARTS",
    "PROMO_SAMPLE",
    "CompiledTemplate",
    "RenderContext",
    "RenderError",
    "RenderedMessage",
    "Recommendations",
    "Template",
    "TemplateError",
    "add_utm",
    "compile_template",
    "html_to_text",
    "inline_css",
    "utm_params",
    "with_utm",
    "with_utm_html",
]

DEFAULT_LOCALE = "ru_RU"
DEFAULT_CURRENCY = "RUB"

MAX_OUTPUT_CHARS = 256 * 1024
"""Largest rendered part; real emails are under 100 KB and Gmail clips at 102 KB."""

MAX_RANGE_ITEMS = 10_000
"""Items ``range`` may produce in one render; a template loops over data, not numbers."""

MAX_RENDER_SECONDS = 2.0
"""Wall time one render may take; real templates take milliseconds."""

PROMO_SAMPLE = "PROMO-SAMPLE"
"""What ``promo_code(...)`` prints when no code is issued (previews): plainly not a real code."""

MAX_RECOMMENDATIONS = 12
"""Most products one ``recommend.*`` call lists: an email shows four to eight."""

Part = Literal["subject", "html", "text"]
PARTS: tuple[Part, ...] = ("subject", "html", "text")

UTM_DEFAULTS: Mapping[str, str] = {
    "source": "touchline",
    "medium": "{channel}",
    "campaign": "{journey}",
    "content": "{template}",
}
"""UTM parameters added to links; ``{channel}``, ``{journey}``, ``{template}`` are filled in."""


# ------------------------------------------------------------------ errors


class TemplateError(InputError):
    """A template part does not compile. ``line`` is 1-based within the part."""

    code = "invalid_template"

    def __init__(self, detail: str, *, template: str, part: Part, line: int | None) -> None:
        where = f"{part} line {line}" if line else part
        super().__init__(f"template {template!r}, {where}: {detail}")
        self.detail = detail
        self.template = template
        self.part = part
        self.line = line


class RenderError(TouchlineError):
    """One message could not be rendered; ``variable`` names a missing value if that was why."""

    code = "render_failed"

    def __init__(
        self,
        detail: str,
        *,
        template: str,
        part: Part | None = None,
        variable: str | None = None,
    ) -> None:
        where = f"template {template!r}" + (f", {part}" if part else "")
        super().__init__(f"{where}: {detail}")
        self.detail = detail
        self.template = template
        self.part = part
        self.variable = variable


class _Missing(UndefinedError):
    def __init__(self, variable: str) -> None:
        super().__init__(f"{variable} is missing (no value and no default)")
        self.variable = variable


class _TooCostly(Exception):
    """A size, range or time limit was passed; the render stops."""


class _PromoUnavailable(Exception):
    """``promo_code(...)`` got no code (pool unknown, empty or expired); the render stops."""


# -------------------------------------------------------------------- model


class Recommendations(Protocol):
    """What ``recommend.*`` asks; each answer is a list of product mappings."""

    def similar(self, product_id: str, limit: int) -> Sequence[Mapping[str, Any]]: ...
    def bought_together(
        self, product_ids: Sequence[str], limit: int
    ) -> Sequence[Mapping[str, Any]]: ...
    def viewed_not_bought(self, limit: int) -> Sequence[Mapping[str, Any]]: ...
    def popular(self, limit: int, category: str | None = None) -> Sequence[Mapping[str, Any]]: ...
    def for_customer(self, limit: int) -> Sequence[Mapping[str, Any]]: ...


@dataclass(frozen=True)
class Template:
    """A message template as written: Jinja2 source per part, fallbacks and UTM settings.

    ``utm`` overrides :data:`UTM_DEFAULTS` by name (``source``, ``medium``,
    ``campaign``, ``content``, ``term``); a null value leaves that parameter out.
    """

    name: str
    channel: str
    subject: str | None = None
    html: str | None = None
    text: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    utm: Mapping[str, str | None] | None = None


@dataclass(frozen=True)
class RenderContext:
    """The data one message is rendered with.

    ``timezone`` is the customer's IANA zone; when None, ``profile["timezone"]``
    is used, then UTC. An unknown ``locale`` falls back to :data:`DEFAULT_LOCALE`.
    ``journey`` is the journey key, used for ``utm_campaign``. ``promo`` gives
    ``promo_code(pool)`` its code (see :func:`touchline.store.promo.promo_provider`).
    """

    profile: Mapping[str, Any]
    now: datetime
    event: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    products: Sequence[Any] = ()
    locale: str = DEFAULT_LOCALE
    currency: str = DEFAULT_CURRENCY
    timezone: str | None = None
    journey: str | None = None
    promo: Callable[[str], str] | None = None
    #: Answers ``recommend.*`` (see :class:`touchline.audience.recommendations.Recommender`).
    recommend: Recommendations | None = None
    #: The customer's own links: ``unsubscribe_url`` and ``preferences_url`` (marketing).
    links: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedMessage:
    """What a template produced; ``text`` is derived from ``html`` if the template has none."""

    subject: str | None
    html: str | None
    text: str | None


# ----------------------------------------------------------- render state


@dataclass
class _State:
    locale: Locale
    currency: str
    tz: tzinfo
    deadline: float
    range_left: int = MAX_RANGE_ITEMS
    promo: Callable[[str], str] | None = None
    recommend: Recommendations | None = None


_STATE: ContextVar[_State | None] = ContextVar("touchline_render_state", default=None)


def _state() -> _State:
    state = _STATE.get()
    if state is None:  # a filter called outside render(): only possible in tests
        raise RuntimeError("template filters run only inside CompiledTemplate.render")
    return state


def _tick() -> None:
    state = _STATE.get()
    if state is not None and time.monotonic() > state.deadline:
        raise _TooCostly(f"rendering took longer than {MAX_RENDER_SECONDS:g} s")


def _check_size(value: Any) -> Any:
    """``value`` if it is no longer than the limit (checked after an operation)."""
    if isinstance(value, str | list | tuple | dict):
        _check_length(len(value))
    return value


def _check_length(length: int) -> None:
    """Refuses a length before an operation builds it."""
    if length > MAX_OUTPUT_CHARS:
        raise _TooCostly(f"a value would be longer than {MAX_OUTPUT_CHARS} characters")


# ------------------------------------------------------------ data scopes


class _Data(dict[str, Any]):
    """A mapping from the render data that knows its dotted path (for error messages)."""

    __slots__ = ("_tl_path",)
    _tl_path: str


class _List(list[Any]):
    __slots__ = ("_tl_path",)
    _tl_path: str


def _data(value: Any, path: str) -> Any:
    """Copies ``value`` into _Data/_List, dropping null mapping values (null means missing)."""
    if isinstance(value, Mapping):
        out = _Data()
        out._tl_path = path
        for key, item in value.items():
            if item is not None:
                out[str(key)] = _data(item, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(value, list | tuple):
        items = _List(_data(item, f"{path}[{i}]") for i, item in enumerate(value))
        items._tl_path = path
        return items
    return value


def _apply_defaults(root: _Data, defaults: Mapping[str, Any]) -> None:
    """Sets each dotted default where the data has no value; never overwrites."""
    for dotted, value in defaults.items():
        if value is None:
            continue
        *parents, leaf = dotted.split(".")
        scope = root
        for name in parents:
            nxt = scope.get(name)
            if nxt is None:
                nxt = _data({}, f"{scope._tl_path}.{name}" if scope._tl_path else name)
                scope[name] = nxt
            if not isinstance(nxt, _Data):
                break
            scope = nxt
        else:
            if leaf not in scope:
                scope[leaf] = _data(value, f"{scope._tl_path}.{leaf}" if scope._tl_path else leaf)


class _Undefined(Undefined):
    """Missing values are falsy and testable, but printing or using one fails with its name."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        if self._undefined_exception is not UndefinedError:  # the sandbox's SecurityError
            raise self._undefined_exception(self._undefined_message)
        raise _Missing(self._tl_name())

    def _tl_name(self) -> str:
        name, obj = self._undefined_name, self._undefined_obj
        if obj is missing:
            return str(name)
        base = getattr(obj, "_tl_path", None) or type(obj).__name__
        return f"{base}[{name}]" if isinstance(name, int) else f"{base}.{name}"

    __str__ = __iter__ = __len__ = _fail_with_undefined_error  # type: ignore[assignment]
    __html__ = _fail_with_undefined_error


# -------------------------------------------------------------- environment


class _CodeGenerator(CodeGenerator):
    """Routes ``~`` concatenation through a size check (the sandbox cannot intercept it)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat(")
        super().visit_Concat(node, frame)
        self.write(")")


_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_BIG_FORMAT_WIDTH = re.compile(r"%[^a-zA-Z%]*\d{6,}|\{[^{}]*:[^{}]*\d{6,}[^{}]*\}")


class _Sandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def checked_concat(self, value: Any) -> Any:
        _tick()
        return _check_size(value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `event.items` means the event's items, not dict.items.
        if isinstance(obj, _Data) and attribute in obj:
            return obj[attribute]
        if isinstance(obj, str) and attribute in ("format", "format_map"):
            _check_str_method(obj, attribute, ())
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(n, int):
                    _check_length(len(seq) * max(n, 0))
            if isinstance(left, int) and isinstance(right, int):
                _check_bits(left.bit_length() + right.bit_length())
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            _check_bits(left.bit_length() * max(right, 0))
        elif operator == "%" and isinstance(left, str) and _BIG_FORMAT_WIDTH.search(left):
            raise _TooCostly("a format width is too large")
        return _check_size(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(owner, getattr(__obj, "__name__", ""), args)
        return _check_size(super().call(__context, __obj, *args, **kwargs))


def _check_bits(bits: int) -> None:
    if bits > 4096:
        raise _TooCostly("a number is too large")


def _check_str_method(text: str, name: str, args: tuple[Any, ...]) -> None:
    if name in _PADDING_METHODS:
        _check_length(max([a for a in args if isinstance(a, int)] or [0]))
    elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
        old = args[0] if isinstance(args[0], str) else ""
        grows = max(len(args[1]) - len(old), 0)
        _check_length(len(text) + text.count(old) * grows if old else len(text) * grows)
    elif name in ("format", "format_map") and _BIG_FORMAT_WIDTH.search(text):
        raise _TooCostly("a format width is too large")


def _guarded_range(*args: int) -> range:
    """``range`` drawing on the render's budget of :data:`MAX_RANGE_ITEMS` items."""
    items = range(*args)
    state = _state()
    if len(items) > state.range_left:
        raise _TooCostly(f"range() may give at most {MAX_RANGE_ITEMS} items per message")
    state.range_left -= len(items)
    return items


def _promo_code(pool: Any) -> str:
    """The customer's code from promo pool ``pool``; :data:`PROMO_SAMPLE` when rendering without one."""
    _require(pool)
    provider = _state().promo
    if provider is None:
        return PROMO_SAMPLE
    try:
        return provider(str(pool))
    except TouchlineError as exc:
        raise _PromoUnavailable(f"promo_code({pool!r}): {exc.message} ({exc.code})") from None


class _Recommend:
    """The ``recommend`` global: asks the render's recommender, or answers an empty list."""

    def similar(self, product_id: Any, limit: Any = 4) -> Any:
        return self._ask("similar", lambda r, n: r.similar(_product_id(product_id), n), limit)

    def bought_together(self, product_ids: Any, limit: Any = 4) -> Any:
        _require(product_ids)
        if isinstance(product_ids, list | tuple):
            ids = [_product_id(p) for p in product_ids]
        else:
            ids = [_product_id(product_ids)]
        return self._ask("bought_together", lambda r, n: r.bought_together(ids, n), limit)

    def viewed_not_bought(self, limit: Any = 4) -> Any:
        return self._ask("viewed_not_bought", lambda r, n: r.viewed_not_bought(n), limit)

    def popular(self, limit: Any = 4, category: Any = None) -> Any:
        kind = None if category is None else str(_require(category))
        return self._ask("popular", lambda r, n: r.popular(n, kind), limit)

    def for_customer(self, limit: Any = 4) -> Any:
        return self._ask("for_customer", lambda r, n: r.for_customer(n), limit)

    def _ask(
        self,
        name: str,
        call: Callable[[Recommendations, int], Sequence[Mapping[str, Any]]],
        limit: Any,
    ) -> Any:
        _require(limit)
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ValueError(f"recommend.{name}: the count must be a whole number")
        if not 1 <= limit <= MAX_RECOMMENDATIONS:
            raise ValueError(f"recommend.{name}: the count must be 1 to {MAX_RECOMMENDATIONS}")
        provider = _state().recommend
        items = [] if provider is None else list(call(provider, limit))[:limit]
        return _data(items, f"recommend.{name}")


def _product_id(value: Any) -> str:
    _require(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"recommend: {value!r} is not a product id")
    return str(value)


def _finalize(value: Any) -> Any:
    _tick()
    return _check_size(value)


_SIZED_FILTERS = frozenset({"center", "indent", "slice", "batch", "wordwrap"})
"""Built-in filters whose integer arguments set the size of what they build."""


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with the render's time limit, a size check on its result, and on its arguments
    where they set a size (``center(10**9)``) or a format width (``"%999999999s" | format``)."""

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        values = (*args, *kwargs.values())
        if name in _SIZED_FILTERS:
            for arg in values:
                if isinstance(arg, int) and arg > MAX_OUTPUT_CHARS:
                    raise _TooCostly(f"{name}: an argument is too large")
        elif name == "format" and any(
            isinstance(a, str) and _BIG_FORMAT_WIDTH.search(a) for a in values
        ):
            raise _TooCostly("a format width is too large")
        elif name == "replace":
            texts = [str(a) for a in args if isinstance(a, str)]
            if len(texts) >= 3:
                _check_str_method(texts[-3], "replace", (texts[-2], texts[-1]))
        return _check_size(func(*args, **kwargs))

    return guarded


# ------------------------------------------------------------------ filters


def _require(value: Any) -> Any:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    return value


def _money(amount: Any, currency: str | None = None) -> str:
    state = _state()
    _require(amount)
    try:
        number = Decimal(str(amount).strip())
    except InvalidOperation:
        raise ValueError(f"money: {amount!r} is not a number") from None
    return str(format_currency(number, currency or state.currency, locale=state.locale))


def _as_moment(value: Any, *, what: str) -> date:
    _require(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not an ISO date or time") from None
    if isinstance(value, date):
        return value
    raise ValueError(f"{what}: {value!r} is not a date or time")


def _local(moment: datetime, tz: tzinfo) -> datetime:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo("UTC"))
    return aware.astimezone(tz)


def _date(value: Any, format: str = "medium") -> str:  # noqa: A002 - the filter's argument name
    state = _state()
    moment = _as_moment(value, what="date")
    day = _local(moment, state.tz).date() if isinstance(moment, datetime) else moment
    return str(format_date(day, format, locale=state.locale))


def _datetime(value: Any, format: str = "medium") -> str:  # noqa: A002
    state = _state()
    moment = _as_moment(value, what="datetime")
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day)
    return str(format_datetime(_local(moment, state.tz), format, locale=state.locale))


def _plural(n: Any, one: str, few: str, many: str, other: str | None = None) -> str:
    """The word form for ``n`` by the locale's CLDR plural rules (1 товар, 2 товара, 5 товаров)."""
    _require(n)
    number = Decimal(str(n)) if not isinstance(n, int | float | Decimal) else n
    form = _state().locale.plural_form(number)
    forms = {"one": one, "few": few, "many": many, "other": other if other is not None else many}
    return forms.get(form, forms["other"])


@lru_cache(maxsize=256)
def _locale(name: str) -> Locale:
    try:
        return Locale.parse(name.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return Locale.parse(DEFAULT_LOCALE)


def _environment(*, autoescape: bool) -> _Sandbox:
    env = _Sandbox(
        autoescape=autoescape,
        undefined=_Undefined,
        finalize=_finalize,
        keep_trailing_newline=False,
    )
    env.globals.pop("lipsum", None)  # generates text; nothing a message needs
    env.globals["range"] = _guarded_range
    env.globals["promo_code"] = _promo_code
    env.globals["recommend"] = _Recommend()
    filters: dict[str, Callable[..., Any]] = dict(env.filters)
    filters.update({"money": _money, "date": _date, "datetime": _datetime, "plural": _plural})
    env.filters = {name: _guard_filter(name, f) for name, f in filters.items()}
    return env


_HTML_ENV = _environment(autoescape=True)
_TEXT_ENV = _environment(autoescape=False)


# ------------------------------------------------------------------ compile


@dataclass(frozen=True)
class CompiledTemplate:
    """A template ready to render many messages; build it with :func:`compile_template`."""

    template: Template
    _parts: Mapping[Part, Any]

    def render(self, context: RenderContext) -> RenderedMessage:
        """Render every part for one message. Raises only :class:`RenderError`."""
        name = self.template.name
        part: Part | None = None
        tz = zone(context.timezone or _str_or_none(context.profile.get("timezone")))
        state = _State(
            locale=_locale(context.locale or DEFAULT_LOCALE),
            currency=context.currency or DEFAULT_CURRENCY,
            tz=tz,
            deadline=time.monotonic() + MAX_RENDER_SECONDS,
            promo=context.promo,
            recommend=context.recommend,
        )
        token = _STATE.set(state)
        try:
            data = _data(
                {
                    "profile": context.profile,
                    "event": context.event,
                    "context": context.context,
                    "products": list(context.products),
                    "now": context.now,
                    "locale": context.locale,
                    "currency": context.currency,
                    "timezone": str(tz),
                    "links": dict(context.links),
                },
                "",
            )
            _apply_defaults(data, self.template.defaults)
            out: dict[Part, str | None] = {}
            for part in PARTS:
                compiled = self._parts.get(part)
                out[part] = None if compiled is None else _generate(compiled, data)
            part = None
            return self._finish(out, context)
        except RenderError:
            raise
        except _Missing as exc:
            raise RenderError(str(exc), template=name, part=part, variable=exc.variable) from None
        except SecurityError as exc:
            raise RenderError(f"not allowed: {exc}", template=name, part=part) from None
        except _TooCostly as exc:
            raise RenderError(f"too costly: {exc}", template=name, part=part) from None
        except _PromoUnavailable as exc:
            raise RenderError(str(exc), template=name, part=part) from None
        except Exception as exc:  # a filter's ValueError, a RecursionError, a template's own error
            raise RenderError(f"{type(exc).__name__}: {exc}", template=name, part=part) from None
        finally:
            _STATE.reset(token)

    def _finish(self, out: Mapping[Part, str | None], context: RenderContext) -> RenderedMessage:
        t = self.template
        params = utm_params(t.utm, channel=t.channel, journey=context.journey, template=t.name)
        own = frozenset(context.links.values())  # touchline's own links are not campaign traffic
        subject = out["subject"]
        if subject is not None:
            subject = " ".join(subject.split())  # one header line, whatever the template did
        html = out["html"]
        text = out["text"]
        if html is not None:
            html = with_utm_html(html, params, keep=own)
            if text is None:
                text = html_to_text(html)
            html = inline_css(html)
        if text is not None:
            text = with_utm(text, params, keep=own)
        return RenderedMessage(subject=subject, html=html, text=text)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _generate(compiled: Any, data: Mapping[str, Any]) -> str:
    chunks: list[str] = []
    size = 0
    for chunk in compiled.generate(data):
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise _TooCostly(f"the output is longer than {MAX_OUTPUT_CHARS} characters")
        _tick()
        chunks.append(chunk)
    return "".join(chunks)


def compile_template(template: Template) -> CompiledTemplate:
    """Compile every part of ``template``; :class:`TemplateError` names the first bad part and line."""
    parts: dict[Part, Any] = {}
    for part in PARTS:
        source = getattr(template, part)
        if source is None:
            continue
        env = _HTML_ENV if part == "html" else _TEXT_ENV
        try:
            parts[part] = env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(
                exc.message or "syntax error", template=template.name, part=part, line=exc.lineno
            ) from None
    return CompiledTemplate(template, parts)


# ---------------------------------------------------------------------- UTM


def utm_params(
    overrides: Mapping[str, str | None] | None,
    *,
    channel: str,
    journey: str | None,
    template: str,
) -> dict[str, str]:
    """The ``utm_*`` parameters for links; a parameter whose value ends up empty is left out."""
    merged: dict[str, str | None] = dict(UTM_DEFAULTS)
    for key, value in (overrides or {}).items():
        merged[key.removeprefix("utm_")] = value
    fill = {"{channel}": channel, "{journey}": journey or "", "{template}": template}
    out: dict[str, str] = {}
    for key, value in merged.items():
        if value is None:
            continue
        text = str(value)
        for placeholder, filled in fill.items():
            text = text.replace(placeholder, filled)
        if text:
            out[f"utm_{key}"] = text
    return out


def add_utm(url: str, params: Mapping[str, str], *, keep: Collection[str] = ()) -> str:
    """``url`` with the ``params`` it lacks appended to its query; non-http(s) URLs and
    those in ``keep`` unchanged."""
    if not params or url in keep or not re.match(r"(?i)https?://", url):
        return url
    parts = urlsplit(url)
    present = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    extra = {k: v for k, v in params.items() if k not in present}
    if not extra:
        return url
    query = "&".join(q for q in (parts.query, urlencode(extra)) if q)
    return urlunsplit(parts._replace(query=query))


_TAG = re.compile(r"""<(?:a|area)\b(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_HREF = re.compile(r"""(\shref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.IGNORECASE)
_TEXT_URL = re.compile(r"""https?://[^\s<>"'()\[\]]+""", re.IGNORECASE)


def with_utm_html(html: str, params: Mapping[str, str], *, keep: Collection[str] = ()) -> str:
    """``html`` with UTM parameters on the http(s) hrefs of its ``<a>`` and ``<area>`` tags."""
    if not params:
        return html

    def href(match: re.Match[str]) -> str:
        raw = next(g for g in match.groups()[1:] if g is not None)
        url = add_utm(html_unescape(raw), params, keep=keep)
        return f'{match.group(1)}"{html_escape(url, quote=True)}"'

    return _TAG.sub(lambda tag: _HREF.sub(href, tag.group(0)), html)


def with_utm(text: str, params: Mapping[str, str], *, keep: Collection[str] = ()) -> str:
    """Plain ``text`` with UTM parameters on its http(s) URLs (trailing punctuation left out)."""
    if not params:
        return text

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        stripped = url.rstrip(".,;:!?")
        return add_utm(stripped, params, keep=keep) + url[len(stripped) :]

    return _TEXT_URL.sub(one, text)


# ----------------------------------------------------------- HTML → text


class _TextMaker(HTMLParser):
    _SKIP = frozenset({"style", "script", "head", "title", "template", "noscript"})
    _PARAGRAPH = frozenset(
        {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote"}
    )
    _LINE = frozenset({"div", "tr", "section", "header", "footer", "article", "hr", "dd", "dt"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skipping += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in self._PARAGRAPH:
            self.out.append("\n\n")
        elif tag in self._LINE or tag == "td":
            self.out.append("\n" if tag != "td" else " ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.out)))
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and not self.skipping:
                self.out.append(alt)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in self._PARAGRAPH:
            self.out.append("\n\n")
        elif tag in self._LINE:
            self.out.append("\n")
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = " ".join("".join(self.out[start:]).split())
            if href and re.match(r"(?i)(https?:|mailto:|tel:)", href):
                bare = re.sub(r"(?i)^(mailto:|tel:)", "", href)
                if label and label not in (href, bare):
                    self.out.append(f" ({href})")
                elif not label:
                    self.out.append(href)

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(re.sub(r"\s+", " ", data))

    def text(self) -> str:
        lines = [" ".join(line.split()) for line in "".join(self.out).split("\n")]
        collapsed: list[str] = []
        for line in lines:
            if line or (collapsed and collapsed[-1]):
                collapsed.append(line)
        return "\n".join(collapsed).strip()


def html_to_text(html: str) -> str:
    """A plain-text version of an HTML body: paragraphs and ``<br>`` as line breaks,
    links as ``label (url)``, list items as ``- item``, styles and scripts left out."""
    maker = _TextMaker()
    maker.feed(html)
    maker.close()
    return maker.text()


# -------------------------------------------------------------- CSS inline

_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)


def inline_css(html: str) -> str:
    """``html`` with its ``<style>`` rules copied into ``style=`` attributes.

    Remote stylesheets are never fetched (a template must not make us call out);
    ``@media`` rules stay in a ``<style>`` block for clients that read them.
    HTML without ``<style>`` is returned as it is.
    """
    if "<style" not in html.lower():
        return html
    return str(_INLINER.inline(html))
