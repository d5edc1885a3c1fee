"""A synthetic Russian online shop that speaks Segment (pure and deterministic).

:class:`Shop` invents ``customers`` customers for a period of ``days`` days
and everything they do there, as raw Segment messages (the dicts a site
would post to ``/v1/track`` and ``/v1/identify``):

* some visitors browse anonymously first (``anonymousId``), then sign up:
  an ``identify`` carrying both ids (which merges the anonymous profile) and a
  ``Signed Up`` event;
* sessions in the customer's own evening-heavy local hours: ``Product
  Viewed``, sometimes ``Product Added to Wishlist``, ``Product Added`` with a
  ``cart_id``, ``Cart Viewed``, ``Checkout Started``, ``Order Completed``;
* each order's afterlife: ``Payment Due`` for deferred payment, ``Order
  Shipped`` with a tracking number, ``Order Delivered`` days later, and a few
  ``Order Cancelled``, ``Order Refunded`` and ``Product Reviewed``.

The same seed gives the same customers and the same events. Customers also
react to messages (:meth:`Shop.react`): a reminder about a cart makes some of
them order that very cart, a review request makes some write a review. The
chances are in :data:`REACTIONS`; their randomness is drawn from the message
itself, so a run is repeatable whatever order messages arrive in.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from touchline.demo.catalogue import (
    CARRIERS,
    CATEGORIES,
    EMAIL_DOMAINS,
    FEMALE_NAMES,
    MALE_NAMES,
    MOBILE_CODES,
    SURNAMES,
    TIMEZONES,
    Product,
    build_catalogue,
    translit,
)

Raw = dict[str, Any]

DEFAULT_START = datetime(2025, 3, 3, tzinfo=UTC)
"""A fixed Monday, so the same seed gives the same history on any day it runs."""

CURRENCY = "RUB"
WELCOME_COUPON = (
    "WELCOME10"  # a welcome-pool code as customers type it (the goal matches the prefix)
)

TIME_GRID = timedelta(minutes=10)
"""Event times are rounded down to this, as a shop exporting its log every ten
minutes would send them. The simulation replays events that share a time as
one batch and every wait in the pack is a multiple of ten minutes, so the run
moves in 10-minute steps: far fewer store round trips than to-the-second times,
while the order of events within each visit is kept."""

# Tuning values: shares of people or sessions doing something, rough figures
# for a Russian electronics-and-home shop, kept lean so the default demo
# (2,000 customers, four weeks) replays in about a minute on two cores.
ANONYMOUS_FIRST = 0.35  # visitors who browse before they register
PHONE_SHARE = 0.75  # customers who give a mobile number
EMAIL_CONSENT_SHARE = 0.8  # tick "send me news and offers" when they sign up
SMS_CONSENT_SHARE = 0.55  # of those with a phone, agree to promotional SMS
SESSIONS_PER_DAY = 0.22  # the most active customers' sessions per day
FIRST_SESSION_AT_SIGNUP = 0.3  # customers who look around right after signing up
FAVOURITE_CATEGORY = 0.65  # sessions spent in the customer's favourite category
VIEWS_PER_SESSION = (0.55, 0.3, 0.15)  # chance of 1, 2, 3 products viewed
WISHLIST_SHARE = 0.06  # sessions that save a product to the wishlist
CART_SHARE = 0.4  # sessions that put something in a cart
CART_VIEWED_SHARE = 0.2  # carts whose page is opened
CHECKOUT_SHARE = 0.5  # carts that reach checkout
ORDER_SHARE = 0.8  # checkouts that become orders
CANCEL_SHARE = 0.05  # orders cancelled before shipping
REFUND_SHARE = 0.02  # delivered orders refunded
DEFERRED_PAYMENT_SHARE = 0.08  # orders paid later (invoice, instalments)
REVIEW_UNASKED = 0.04  # delivered orders reviewed without a request
LAST_SIGNUP_BEFORE_END = timedelta(minutes=30)  # everyone signs up inside the period
FREE_SHIPPING_FROM = 3000  # roubles
SHIPPING = 299  # roubles

# Shopping activity by local hour (0-23): quiet nights, a lunch bump, busy evenings.
HOUR_WEIGHTS = (
    1, 0.5, 0.3, 0.2, 0.2, 0.3, 0.8, 2, 3, 4, 4.5, 5,
    5.5, 5, 4.5, 4.5, 5, 5.5, 6.5, 8, 9, 8.5, 6, 3,
)  # fmt: skip


@dataclass(frozen=True)
class Customer:
    user_id: str
    anonymous_id: str
    first_name: str
    last_name: str
    email: str
    phone: str | None
    timezone: str
    birthday: date
    signup_at: datetime
    activity: float  # sessions per day
    favourite: str  # category
    email_consent: bool = True
    sms_consent: bool = False

    def traits(self) -> dict[str, Any]:
        traits: dict[str, Any] = {
            "email": self.email,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "timezone": self.timezone,
            "locale": "ru-RU",
            "birthday": self.birthday.isoformat(),
        }
        consent: dict[str, Any] = {"email": {"granted": self.email_consent, "text": "signup-v1"}}
        if self.phone:
            traits["phone"] = self.phone
            consent["sms"] = {"granted": self.sms_consent, "text": "signup-v1"}
        traits["consent"] = consent
        return traits


@dataclass
class Cart:
    cart_id: str
    user_id: str
    products: list[Product] = field(default_factory=list)
    ordered: bool = False


@dataclass(frozen=True)
class Order:
    order_id: str
    user_id: str
    cart_id: str
    products: tuple[Product, ...]
    revenue: int


@dataclass(frozen=True)
class Reaction:
    """How some recipients of a template answer it."""

    chance: float
    action: str  # order_cart | add_viewed | shop_with_promo | buy | review
    after: tuple[int, int]  # minutes after the message, min and max


# Share of recipients who act on a message, what they do, and how soon. Delays
# are at least one TIME_GRID, so an answer always comes after its message.
REACTIONS: dict[str, Reaction] = {
    "welcome-promo": Reaction(0.20, "shop_with_promo", (15, 26 * 60)),
    "welcome-promo-last-chance": Reaction(0.10, "shop_with_promo", (15, 48 * 60)),
    "browse-similar-products": Reaction(0.14, "add_viewed", (10, 20 * 60)),
    "cart-reminder-1h": Reaction(0.15, "order_cart", (10, 180)),
    "cart-reminder-24h": Reaction(0.07, "order_cart", (10, 24 * 60)),
    "cart-reminder-sms": Reaction(0.10, "order_cart", (10, 12 * 60)),
    "review-request": Reaction(0.22, "review", (30, 48 * 60)),
    "cross-sell-accessories": Reaction(0.08, "buy", (60, 72 * 60)),
    "cross-sell-bestsellers": Reaction(0.04, "buy", (60, 72 * 60)),
    "order-cancelled-free-delivery": Reaction(0.10, "buy", (60, 72 * 60)),
    "order-cancelled-apology": Reaction(0.06, "buy", (60, 72 * 60)),
}


class MessageLike(Protocol):
    """What :meth:`Shop.react` reads of a message (a ``SimulatedMessage`` fits)."""

    @property
    def at(self) -> str: ...
    @property
    def user_id(self) -> str | None: ...
    @property
    def journey(self) -> str: ...
    @property
    def step(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def outcome(self) -> str: ...


def iso(at: datetime) -> str:
    """``2025-03-03T18:05:00Z``: UTC, rounded down to the :data:`TIME_GRID`."""
    at = at.astimezone(UTC)
    grid = TIME_GRID.total_seconds()
    seconds = at.minute * 60 + at.second + at.microsecond / 1e6
    at -= timedelta(seconds=seconds % grid)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; means here are small (a few sessions)."""
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class Shop:
    """A deterministic shop: its catalogue, its customers and what they do."""

    def __init__(
        self, *, seed: int, customers: int, days: int, start: datetime = DEFAULT_START
    ) -> None:
        if customers < 1 or days < 1:
            raise ValueError("a shop needs at least one customer and one day")
        self.seed = seed
        self.start = start
        self.end = start + timedelta(days=days)
        self.catalogue = build_catalogue()
        self.products = {p.product_id: p for p in self.catalogue}
        self._by_category: dict[str, list[Product]] = {c: [] for c in CATEGORIES}
        for product in self.catalogue:
            self._by_category[product.category].append(product)
        self.carts: dict[str, Cart] = {}
        self.orders: dict[str, Order] = {}
        self._message_ids = itertools.count(1)
        self._cart_ids = itertools.count(1)
        self._order_ids = itertools.count(100001)
        rng = random.Random(seed)
        self.customers = [self._customer(rng, index) for index in range(customers)]
        self._by_user = {c.user_id: c for c in self.customers}
        history: list[Raw] = []
        for customer in self.customers:
            history.extend(self._life(rng, customer))
        self.events: list[Raw] = self._in_period(history)
        """Every organic event of the period, in time order."""

    # -- people ----------------------------------------------------------------------

    def _customer(self, rng: random.Random, index: int) -> Customer:
        consent = random.Random(f"{self.seed}:consent:{index}")
        female = rng.random() < 0.55
        first = rng.choice(FEMALE_NAMES if female else MALE_NAMES)
        last = rng.choice(SURNAMES)[1 if female else 0]
        zones, weights = zip(*TIMEZONES, strict=True)
        tz = rng.choices(zones, weights)[0]
        phone = None
        if rng.random() < PHONE_SHARE:
            phone = f"+7{rng.choice(MOBILE_CODES)}{rng.randrange(10**7):07d}"
        period = (self.end - self.start).total_seconds()
        # Earlier sign-ups are likelier, so most customers have time to shop.
        offset = timedelta(seconds=period * rng.random() ** 1.3)
        day = (self.start + offset).astimezone(ZoneInfo(tz)).date()
        signup_at = self._local_moment(rng, day, tz)
        if signup_at < self.start:
            signup_at += timedelta(days=1)
        signup_at = min(signup_at, self.end - LAST_SIGNUP_BEFORE_END)
        return Customer(
            user_id=f"cust-{index + 1:05d}",
            anonymous_id=f"anon-{seed_hex(rng)}",
            first_name=first,
            last_name=last,
            email=f"{translit(first)}.{translit(last)}{index + 1}@{rng.choice(EMAIL_DOMAINS)}",
            phone=phone,
            timezone=tz,
            birthday=date(rng.randint(1965, 2006), rng.randint(1, 12), rng.randint(1, 28)),
            signup_at=signup_at,
            activity=SESSIONS_PER_DAY * rng.random() ** 2,  # most customers are occasional
            favourite=rng.choice(CATEGORIES),
            # A separate stream, so consent does not reshuffle everything else.
            email_consent=consent.random() < EMAIL_CONSENT_SHARE,
            sms_consent=consent.random() < SMS_CONSENT_SHARE,
        )

    def _local_moment(self, rng: random.Random, day: date, tz: str) -> datetime:
        """A moment of ``day`` in ``tz``, at an hour people shop, as UTC."""
        hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
        clock = time(hour, rng.randrange(60), rng.randrange(60))
        return datetime.combine(day, clock, tzinfo=ZoneInfo(tz)).astimezone(UTC)

    def _life(self, rng: random.Random, c: Customer) -> list[Raw]:
        out: list[Raw] = []
        if rng.random() < ANONYMOUS_FIRST:
            before = c.signup_at - timedelta(minutes=rng.randint(10, 3 * 24 * 60))
            out += self._browse(rng, c, before, views=rng.randint(1, 2), anonymous=True)
        out.append(self._identify(c, c.signup_at))
        out.append(
            self._track(
                c,
                "Signed Up",
                c.signup_at + timedelta(seconds=3),
                {"method": rng.choice(("email", "email", "phone", "vk")), "source": "site"},
            )
        )
        remaining_days = (self.end - c.signup_at).total_seconds() / 86400
        moments = []
        if rng.random() < FIRST_SESSION_AT_SIGNUP:
            moments.append(c.signup_at + timedelta(minutes=rng.randint(1, 20)))
        for _ in range(_poisson(rng, c.activity * remaining_days)):
            later = c.signup_at + timedelta(days=rng.random() * remaining_days)
            local_day = later.astimezone(ZoneInfo(c.timezone)).date()
            moments.append(max(self._local_moment(rng, local_day, c.timezone), c.signup_at))
        for moment in sorted(moments):
            out += self._session(rng, c, moment)
        return out

    # -- behaviour -------------------------------------------------------------------

    def _browse(
        self,
        rng: random.Random,
        c: Customer,
        at: datetime,
        *,
        views: int,
        category: str | None = None,
        anonymous: bool = False,
    ) -> list[Raw]:
        if category is None:
            category = c.favourite if rng.random() < FAVOURITE_CATEGORY else rng.choice(CATEGORIES)
        out = []
        for product in rng.sample(self._by_category[category], k=min(views, 6)):
            out.append(
                self._track(
                    c, "Product Viewed", at, self._product_props(product), anonymous=anonymous
                )
            )
            at += timedelta(seconds=rng.randint(20, 240))
        return out

    def _session(self, rng: random.Random, c: Customer, at: datetime) -> list[Raw]:
        out = self._browse(rng, c, at, views=rng.choices((1, 2, 3), VIEWS_PER_SESSION)[0])
        viewed = [self.products[e["properties"]["product_id"]] for e in out]
        t = parse_iso(out[-1]["timestamp"]) + timedelta(seconds=rng.randint(20, 120))
        if rng.random() < WISHLIST_SHARE:
            props = {"wishlist_id": f"wl-{c.user_id}", "wishlist_name": "Избранное"}
            out.append(
                self._track(
                    c, "Product Added to Wishlist", t, {**props, **self._product_props(viewed[0])}
                )
            )
            t += timedelta(seconds=rng.randint(10, 60))
        if rng.random() >= CART_SHARE:
            return out
        picks = viewed[: rng.choice((1, 1, 1, 2))]
        out += self._shop(rng, c, picks, t, checkout=CHECKOUT_SHARE, order=ORDER_SHARE)
        return out

    def _shop(
        self,
        rng: random.Random,
        c: Customer,
        picks: list[Product],
        at: datetime,
        *,
        checkout: float,
        order: float,
        coupon: str | None = None,
    ) -> list[Raw]:
        """Put ``picks`` in a new cart; maybe check out (chance ``checkout``) and order."""
        cart = Cart(cart_id=f"cart-{next(self._cart_ids):06d}", user_id=c.user_id)
        self.carts[cart.cart_id] = cart
        out = []
        for product in picks:
            cart.products.append(product)
            props = {"cart_id": cart.cart_id, **self._product_props(product), "quantity": 1}
            out.append(self._track(c, "Product Added", at, props))
            at += timedelta(seconds=rng.randint(15, 180))
        if rng.random() < CART_VIEWED_SHARE:
            out.append(self._track(c, "Cart Viewed", at, self._cart_props(cart)))
            at += timedelta(seconds=rng.randint(15, 120))
        if rng.random() < checkout:
            out += self._checkout(rng, c, cart, at, order=order, coupon=coupon)
        return out

    def _checkout(
        self,
        rng: random.Random,
        c: Customer,
        cart: Cart,
        at: datetime,
        *,
        order: float,
        coupon: str | None = None,
    ) -> list[Raw]:
        props = self._cart_props(cart)
        total = sum(p.price for p in cart.products)
        out = [self._track(c, "Checkout Started", at, {**props, "value": total})]
        if rng.random() < order:
            out += self._order(rng, c, cart, at + timedelta(seconds=rng.randint(60, 600)), coupon)
        return out

    def _order(
        self, rng: random.Random, c: Customer, cart: Cart, at: datetime, coupon: str | None
    ) -> list[Raw]:
        """``Order Completed`` and what happens to the order afterwards."""
        cart.ordered = True
        order_id = str(next(self._order_ids))
        subtotal = sum(p.price for p in cart.products)
        discount = round(subtotal * 0.1) if coupon else 0
        revenue = subtotal - discount
        shipping = 0 if revenue >= FREE_SHIPPING_FROM else SHIPPING
        deferred = rng.random() < DEFERRED_PAYMENT_SHARE
        order = Order(order_id, c.user_id, cart.cart_id, tuple(cart.products), revenue)
        self.orders[order_id] = order
        props: dict[str, Any] = {
            "order_id": order_id,
            "cart_id": cart.cart_id,
            "affiliation": "Интернет-магазин",
            "total": revenue + shipping,
            "revenue": revenue,
            "shipping": shipping,
            "discount": discount,
            "currency": CURRENCY,
            "payment_method": rng.choice(("invoice", "instalments")) if deferred else "card",
            "products": [p.as_segment() for p in cart.products],
        }
        if coupon:
            props["coupon"] = coupon
        out = [self._track(c, "Order Completed", at, props)]
        if rng.random() < CANCEL_SHARE:
            by_shop = rng.random() < 0.3
            out.append(
                self._track(
                    c,
                    "Order Cancelled",
                    at + timedelta(minutes=rng.randint(30, 20 * 60)),
                    {
                        "order_id": order_id,
                        "cart_id": cart.cart_id,
                        "total": revenue + shipping,
                        "currency": CURRENCY,
                        "cancelled_by": "shop" if by_shop else "customer",
                        "reason": "out_of_stock" if by_shop else "changed_mind",
                        "products": props["products"],
                    },
                )
            )
            return out
        if deferred:
            due = at + timedelta(hours=rng.randint(20, 40))
            out.append(
                self._track(
                    c,
                    "Payment Due",
                    due,
                    {
                        "order_id": order_id,
                        "amount": revenue + shipping,
                        "currency": CURRENCY,
                        "due_date": (due + timedelta(days=3)).date().isoformat(),
                        "payment_url": f"https://shop.example.ru/pay/{order_id}",
                    },
                )
            )
        tracking = f"RU{rng.randrange(10**9):09d}CN"
        carrier = rng.choice(CARRIERS)
        shipped = at + timedelta(hours=rng.randint(18, 48))
        delivered = shipped + timedelta(hours=rng.randint(24, 5 * 24))
        out.append(
            self._track(
                c,
                "Order Shipped",
                shipped,
                {
                    "order_id": order_id,
                    "tracking_number": tracking,
                    "carrier": carrier,
                    "estimated_delivery": delivered.date().isoformat(),
                },
            )
        )
        delivery: dict[str, Any] = {
            "order_id": order_id,
            "tracking_number": tracking,
            "carrier": carrier,
            "delivery_type": "courier",
        }
        if rng.random() < 0.6:
            delivery["delivery_type"] = "pickup_point"
            delivery["keep_until"] = (delivered + timedelta(days=7)).date().isoformat()
        out.append(self._track(c, "Order Delivered", delivered, delivery))
        if rng.random() < REFUND_SHARE:
            out.append(
                self._track(
                    c,
                    "Order Refunded",
                    delivered + timedelta(days=rng.randint(1, 6)),
                    {
                        "order_id": order_id,
                        "total": revenue + shipping,
                        "currency": CURRENCY,
                        "products": props["products"],
                    },
                )
            )
        elif rng.random() < REVIEW_UNASKED:
            out.append(self._review(rng, c, order, delivered + timedelta(days=rng.randint(1, 4))))
        return out

    def _review(self, rng: random.Random, c: Customer, order: Order, at: datetime) -> Raw:
        product = order.products[0]
        return self._track(
            c,
            "Product Reviewed",
            at,
            {
                "product_id": product.product_id,
                "order_id": order.order_id,
                "review_id": f"rev-{order.order_id}",
                "rating": rng.choice((3, 4, 5, 5, 5)),
                "review_body": rng.choice(("Всё отлично", "Рекомендую", "Быстрая доставка")),
            },
        )

    # -- reactions -------------------------------------------------------------------

    def react(
        self, message: MessageLike, *, trigger: Callable[[], Mapping[str, Any] | None]
    ) -> list[Raw]:
        """The events with which the recipient answers ``message`` (often none).

        ``trigger`` returns the properties of the event that started the
        journey the message belongs to; it is only called when the customer
        does react and needs to know which cart, product or order it was about.
        Events past the end of the period are dropped.
        """
        reaction = REACTIONS.get(message.template)
        customer = self._by_user.get(message.user_id or "")
        if reaction is None or customer is None or message.outcome == "skipped":
            return []
        key = f"{self.seed}:{message.user_id}:{message.journey}:{message.step}:{message.at}"
        rng = random.Random(key)
        if rng.random() >= reaction.chance:
            return []
        at = parse_iso(message.at) + timedelta(minutes=rng.randint(*reaction.after))
        return self._in_period(self._act(rng, customer, reaction.action, at, trigger))

    def _act(
        self,
        rng: random.Random,
        c: Customer,
        action: str,
        at: datetime,
        trigger: Callable[[], Mapping[str, Any] | None],
    ) -> list[Raw]:
        if action == "order_cart":
            cart = self.carts.get(str((trigger() or {}).get("cart_id")))
            if cart is None or cart.ordered:
                return []  # bought already, or not a cart we know
            out = [self._track(c, "Cart Viewed", at, self._cart_props(cart))]
            return out + self._checkout(rng, c, cart, at + timedelta(minutes=2), order=1.0)
        if action == "add_viewed":
            product = self.products.get(str((trigger() or {}).get("product_id")))
            if product is None:
                return []
            viewed = self._track(c, "Product Viewed", at, self._product_props(product))
            later = at + timedelta(minutes=3)
            return [viewed, *self._shop(rng, c, [product], later, checkout=0.5, order=0.8)]
        if action == "review":
            order = self.orders.get(str((trigger() or {}).get("order_id")))
            return [] if order is None else [self._review(rng, c, order, at)]
        browse = self._browse(rng, c, at, views=1)
        picks = [self.products[browse[0]["properties"]["product_id"]]]
        t = parse_iso(browse[-1]["timestamp"]) + timedelta(minutes=1)
        # "shop_with_promo" may stop at the cart; "buy" always checks out
        coupon = WELCOME_COUPON if action == "shop_with_promo" else None
        checkout = 0.5 if coupon else 1.0
        return browse + self._shop(rng, c, picks, t, checkout=checkout, order=0.9, coupon=coupon)

    # -- messages --------------------------------------------------------------------

    def _message_id(self) -> str:
        return f"demo-{self.seed}-{next(self._message_ids)}"

    def _track(
        self,
        c: Customer,
        name: str,
        at: datetime,
        properties: dict[str, Any],
        *,
        anonymous: bool = False,
    ) -> Raw:
        raw: Raw = {
            "type": "track",
            "messageId": self._message_id(),
            "event": name,
            "properties": properties,
            "timestamp": iso(at),
        }
        if anonymous:
            raw["anonymousId"] = c.anonymous_id
        else:
            raw["userId"] = c.user_id
        return raw

    def _identify(self, c: Customer, at: datetime) -> Raw:
        return {
            "type": "identify",
            "messageId": self._message_id(),
            "userId": c.user_id,
            "anonymousId": c.anonymous_id,
            "traits": c.traits(),
            "context": {"locale": "ru-RU", "timezone": c.timezone},
            "timestamp": iso(at),
        }

    def _product_props(self, product: Product) -> dict[str, Any]:
        return {
            "product_id": product.product_id,
            "sku": product.sku,
            "name": product.name,
            "category": product.category,
            "brand": product.brand,
            "price": product.price,
            "currency": CURRENCY,
            "url": f"https://shop.example.ru/product/{product.product_id}",
        }

    def _cart_props(self, cart: Cart) -> dict[str, Any]:
        return {
            "cart_id": cart.cart_id,
            "currency": CURRENCY,
            "products": [p.as_segment() for p in cart.products],
        }

    def _in_period(self, raws: list[Raw]) -> list[Raw]:
        """Events inside [start, end), in time order (stable for equal times)."""
        lo, hi = iso(self.start), iso(self.end)
        return sorted((r for r in raws if lo <= r["timestamp"] < hi), key=lambda r: r["timestamp"])


def seed_hex(rng: random.Random) -> str:
    """A 16-hex-digit id drawn from ``rng`` (anonymous ids look random, yet repeat per seed)."""
    return f"{rng.getrandbits(64):016x}"


__all__ = ["DEFAULT_START", "REACTIONS", "Cart", "Customer", "Order", "Shop", "iso"]
