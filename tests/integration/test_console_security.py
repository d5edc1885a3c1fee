"""The console's guarantees, checked route by route on SQLite and PostgreSQL.

* No page or action without signing in: every route of the console
  sub-application is walked, signed out.
* A signed-in user sees only their own workspace: shop B's people asking for
  shop A's journeys, customers, tasks, messages and versions by id get 404,
  and their actions change nothing of A's.
* Roles: what an operator or a marketer may not open answers 403.
* A customer's markup is shown as text on every page that shows it.
* Every form post without its CSRF token (or with another session's) is
  refused with 403 before it does anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from console_world import MARKUP, PASSWORD, Browser, World, build, fast_passwords
from fastapi.routing import APIRoute
from sqlalchemy import Engine, func, select
from starlette.routing import Mount

from touchline.store.tables import api_keys, journeys, tasks, templates, workspaces


@pytest.fixture
def world(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    fast_passwords(monkeypatch)
    yield build(engine)


def console_routes(world: World) -> list[tuple[str, str]]:
    """Every (method, path template) the console sub-application serves."""
    mount = next(r for r in world.app.routes if isinstance(r, Mount) and r.path == "/console")
    found: list[tuple[str, str]] = []

    def walk(routes: list[object]) -> None:
        for route in routes:
            inner = getattr(route, "original_router", None)  # FastAPI's included router
            if inner is not None:
                walk(inner.routes)
            elif isinstance(route, APIRoute):
                found.extend((m, "/console" + route.path) for m in sorted(route.methods - {"HEAD"}))

    walk(mount.app.routes)  # type: ignore[attr-defined]
    return found


def fill(template: str, world: World, *, shop: str = "a") -> str:
    """A path template with ids of ``shop``'s things."""
    ids = {
        "a": {
            "key": "abandoned-cart",
            "profile_id": world.mallory,
            "task_id": world.task_a,
            "message_id": world.message_a,
            "key_id": 1,
            "version": 1,
        },
        "b": {
            "key": "b-secret",
            "profile_id": world.bob,
            "task_id": world.task_b,
            "message_id": world.message_b,
            "key_id": 3,
            "version": 1,
        },
    }[shop]
    return re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), template)


PUBLIC = {("GET", "/console/sign-in"), ("POST", "/console/sign-in")}


def test_the_walk_covers_every_section(world: World) -> None:
    """The route list the walks below use is the real one, not a stale copy."""
    paths = {path for _, path in console_routes(world)}
    for section in ("overview", "journeys", "templates", "customers", "queue", "inbox", "settings"):
        assert f"/console/{section}" in paths
    for section in ("broadcasts", "broadcasts/{key}", "broadcasts/{key}/progress"):
        assert f"/console/{section}" in paths
    assert len(paths) >= 25


def test_no_route_answers_without_signing_in(world: World) -> None:
    """Signed out, every GET and POST is sent to the sign-in page and nothing is written."""
    client = world.client()
    before = _counts(world)
    for method, template in console_routes(world):
        if (method, template) in PUBLIC:
            continue
        path = fill(template, world)
        response = client.request(method, path, data={"outcome": "reached", "kind": "admin"})
        assert response.status_code == 303, f"{method} {path} -> {response.status_code}"
        assert response.headers["location"].startswith("/console/sign-in"), f"{method} {path}"
        assert "Shop A" not in response.text
    assert _counts(world) == before


def test_a_forged_or_expired_cookie_opens_nothing(world: World) -> None:
    """A made-up session token, and a real one past its idle time, both mean signed out."""
    forged = world.client()
    forged.cookies.set("tl_console", "not-a-session", path="/console")
    assert forged.get("/console/journeys").status_code == 303
    browser = world.signed_in("marketer@a.example")
    assert browser.get("/console/journeys").status_code == 200
    world.clock.advance(__import__("datetime").timedelta(hours=13))
    assert browser.get("/console/journeys").status_code == 303


def _counts(world: World) -> tuple[int, ...]:
    with world.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(journeys)).scalar_one(),
            conn.execute(select(func.count()).select_from(api_keys)).scalar_one(),
            conn.execute(select(func.count()).select_from(templates)).scalar_one(),
            conn.execute(
                select(func.count()).select_from(tasks).where(tasks.c.status != "open")
            ).scalar_one(),
        )


def test_another_shop_cannot_open_anything_by_id(world: World) -> None:
    """B's marketer and admin get 404 for each of A's ids; their own ids open."""
    for email in ("marketer@b.example", "admin@b.example"):
        browser = world.signed_in(email)
        for method, template in console_routes(world):
            if method != "GET" or "{" not in template:
                continue
            theirs = fill(template, world, shop="a")
            if template == "/console/templates/{key}":
                theirs = "/console/templates/cart-reminder"  # A has it, B has not
            response = browser.get(theirs)
            if response.status_code == 403:  # the role may not open this section at all
                continue
            if template == "/console/templates/{key}":
                # An unknown key opens an empty editor for a new template of B's own.
                assert response.status_code == 200 and ">new<" in response.text
                assert "You left something in your cart" not in response.text
                continue
            assert response.status_code == 404, f"{email}: GET {theirs} -> {response.status_code}"
            assert "Mallory" not in response.text and MARKUP not in response.text
    admin = world.signed_in("admin@b.example")
    assert admin.get(f"/console/customers/{world.bob}").status_code == 200
    assert admin.get(f"/console/queue/{world.task_b}").status_code == 200
    assert admin.get(f"/console/inbox/{world.message_b}").status_code == 200


def test_another_shops_actions_change_nothing_of_ours(world: World) -> None:
    """B's admin pausing A's journey, claiming A's task or revoking A's key gets 404."""
    admin = world.signed_in("admin@b.example")
    assert admin.post("/console/journeys/abandoned-cart/pause").status_code == 404
    assert admin.post(f"/console/queue/{world.task_a}/claim").status_code == 404
    with world.engine.connect() as conn:
        a_key = conn.execute(
            select(api_keys.c.id).where(api_keys.c.workspace_id == world.a).limit(1)
        ).scalar_one()
    assert admin.post(f"/console/settings/keys/{a_key}/revoke").status_code == 404
    # Saving a template of the same name makes B's own, never touches A's.
    admin.post("/console/templates/cart-sms", {"channel": "sms", "text": "B's words"})
    with world.engine.connect() as conn:
        status = conn.execute(
            select(journeys.c.status).where(
                journeys.c.workspace_id == world.a, journeys.c.key == "abandoned-cart"
            )
        ).scalar_one()
        task = conn.execute(select(tasks.c.status).where(tasks.c.id == world.task_a)).scalar_one()
        revoked = conn.execute(select(api_keys.c.revoked_at).where(api_keys.c.id == a_key)).scalar()
        a_sms = conn.execute(
            select(templates.c.spec).where(
                templates.c.workspace_id == world.a, templates.c.key == "cart-sms"
            )
        ).scalar_one()
    assert (status, task, revoked) == ("active", "open", None)
    assert "B's words" not in a_sms["text"]


def test_search_never_finds_another_shops_customer(world: World) -> None:
    """Bob's email and user id, searched in shop A, find nobody."""
    browser = world.signed_in("marketer@a.example")
    for query in ("bob@example.com", "u-bob", f"#{world.bob}"):
        response = browser.get("/console/customers", params={"q": query})
        assert response.status_code == 200 and "No customer matches" in response.text


@pytest.mark.parametrize(
    ("email", "path"),
    [
        ("operator@a.example", "/console/journeys"),
        ("operator@a.example", "/console/templates"),
        ("operator@a.example", "/console/settings"),
        ("marketer@a.example", "/console/settings"),
        ("marketer@a.example", "/console/queue"),
    ],
)
def test_roles_keep_to_their_sections(world: World, email: str, path: str) -> None:
    """What a role may not open answers 403, and its menu does not offer it."""
    browser = world.signed_in(email)
    response = browser.get(path)
    assert response.status_code == 403
    assert f'href="{path}"' not in response.text


def test_customer_markup_is_text_on_every_page_that_shows_it(world: World) -> None:
    """Mallory's script-tag name and img trait never reach a page as markup."""
    admin = world.signed_in("admin@a.example")
    operator = world.signed_in("operator@a.example")
    task_id = _mallory_task(world)
    pages = [
        admin.get("/console/customers"),
        admin.get("/console/customers", params={"q": "mallory@example.com"}),
        admin.get(f"/console/customers/{world.mallory}"),
        admin.get("/console/inbox"),
        admin.get(f"/console/inbox/{world.message_a}"),
        admin.get("/console/templates/thanks", params={"customer": "u-mallory"}),
        operator.get("/console/queue"),
        operator.get(f"/console/queue/{task_id}"),
    ]
    for response in pages:
        if response.status_code == 303:
            response = admin.get(response.headers["location"])
        assert response.status_code == 200, response.request.url
        body = response.text
        assert "<script>alert" not in body, response.request.url
        assert "onerror=" not in body.replace("onerror=&#34;", "").replace("onerror=&quot;", ""), (
            response.request.url
        )
        assert re.search(r"<script(?![^>]*\bsrc=)", body) is None, "inline script"
    shown = admin.get(f"/console/customers/{world.mallory}").text
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in shown
    assert "&lt;img src=x" in shown
    preview = admin.post(
        "/console/templates/thanks/preview",
        {"channel": "email", "subject": "{{ profile.first_name }}", "customer": "u-mallory"},
    ).json()
    assert preview["subject"] == MARKUP  # JSON carries it as data; the page sets textContent


def _mallory_task(world: World) -> int:
    with world.engine.connect() as conn:
        return int(
            conn.execute(select(tasks.c.id).where(tasks.c.profile_id == world.mallory)).scalar_one()
        )


def test_every_form_post_without_its_csrf_token_is_refused(world: World) -> None:
    """Each POST route, signed in, without a token or with another session's, answers 403."""
    admin = world.signed_in("admin@a.example")
    other = world.signed_in("admin@a.example")  # a second session: its token is not ours
    before = _counts(world)
    for method, template in console_routes(world):
        if method != "POST" or (method, template) in PUBLIC:
            continue
        path = fill(template, world)
        bare = admin.client.post(path, data={"outcome": "reached", "kind": "admin"})
        assert bare.status_code == 403, f"POST {path} without a token -> {bare.status_code}"
        crossed = admin.client.post(
            path, data={"csrf_token": other.csrf, "outcome": "reached", "kind": "admin"}
        )
        assert crossed.status_code == 403, (
            f"POST {path} with another token -> {crossed.status_code}"
        )
    assert _counts(world) == before
    with world.engine.connect() as conn:
        settings = conn.execute(
            select(workspaces.c.settings).where(workspaces.c.id == world.a)
        ).scalar()
    assert not settings  # the settings form changed nothing either


def test_sign_in_form_needs_its_own_token(world: World) -> None:
    """A sign-in posted from elsewhere (no double-submit cookie) is refused: no login CSRF."""
    client = world.client()
    response = client.post(
        "/console/sign-in",
        data={"csrf_token": "x", "email": "admin@a.example", "password": PASSWORD},
    )
    assert response.status_code == 403
    assert "tl_console=" not in " ".join(response.headers.get_list("set-cookie"))


def test_sign_in_never_redirects_off_the_console(world: World) -> None:
    """``next`` pointing to another site, or outside /console, lands on the console."""
    for target in (
        "https://evil.example/",
        "//evil.example/",
        "/admin/v1/journeys",
        "/console\\@evil",
    ):
        browser = Browser(world.client())
        form = browser.client.get("/console/sign-in", params={"next": target})
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        response = browser.client.post(
            "/console/sign-in",
            data={
                "csrf_token": token,
                "email": "admin@a.example",
                "password": PASSWORD,
                "next": target,
            },
        )
        assert response.headers["location"] == "/console/", target


def test_pages_carry_a_strict_content_security_policy(world: World) -> None:
    """Own-origin scripts only, no framing, not cached; the sign-in page too."""
    browser = world.signed_in("admin@a.example")
    for path in ("/console/sign-in", "/console/overview", f"/console/customers/{world.anna}"):
        response = browser.get(path)
        csp = response.headers["content-security-policy"]
        assert (
            "script-src 'self'" in csp
            and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
        )
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


def test_repeated_wrong_passwords_are_slowed_down(world: World) -> None:
    """After ten tries an email is refused for a while (429), even with the right password."""
    browser = Browser(world.client())
    for _ in range(10):
        assert browser.sign_in("marketer@a.example", "wrong password!").status_code == 401
    assert browser.sign_in("marketer@a.example", PASSWORD).status_code == 429
