"""Browser tests: the console in a real headless Chromium, against a real ``touchline serve``.

Chromium is Debian's ``chromium`` package (``/usr/bin/chromium``, or the path in
``TOUCHLINE_CHROMIUM``), driven by Playwright for Python; Playwright's own
browser downloads are never used. Without Chromium or Playwright the tests
skip, saying why; in CI (``CI=true``) they fail instead, since CI installs both.

One server and one browser serve the whole module: the store is a SQLite file
seeded by :mod:`seed` before ``touchline serve`` starts on a free port.
Screenshots go to ``$TOUCHLINE_SCREENSHOTS`` (default ``tests/browser/artifacts/``);
with ``TOUCHLINE_UPDATE_DOCS_SCREENSHOTS=1`` two of them are also copied into
``docs/screenshots/`` for the README.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
# The acceptance tests' helpers start `touchline serve` as a real process.
sys.path.insert(0, str(HERE.parent / "acceptance"))

from seed import Seeded, seed  # noqa: E402
from server import Served, start_serve  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("TOUCHLINE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("TOUCHLINE_SCREENSHOTS") or HERE / "artifacts")
DOCS_SCREENSHOTS = HERE.parents[1] / "docs" / "screenshots"
#: How long one page action or assertion may wait in the browser, in milliseconds.
TIMEOUT_MS = 10_000


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI installs it: see .ci/run)", pytrace=False)
    pytest.skip(f"{reason} - browser tests skipped")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium for one module's tests.

    Module-scoped, not session-scoped: Playwright's sync API keeps an event loop
    running in this thread while it is open, and tests of other modules that
    run in the same process call ``asyncio.run``, which refuses to start inside
    a running loop. Closing it when the module is done stops the loop.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        _unavailable(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Seeded, str]]:
    """A seeded store and ``touchline serve`` on it: (server, seed, database URL)."""
    folder = tmp_path_factory.mktemp("console")
    url = f"sqlite:///{folder / 'touchline.db'}"
    seeded = seed(url)
    served = start_serve(url, folder)
    try:
        yield served, seeded, url
    finally:
        served.stop()


@pytest.fixture
def page(chromium: Any, shop: tuple[Served, Seeded, str]) -> Iterator[Any]:
    """A fresh browser context (no cookies) on the server, desktop-sized."""
    served = shop[0]
    context = chromium.new_context(base_url=served.url, viewport={"width": 1360, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # Script errors, and anything the page's Content-Security-Policy refused. (A 401 or
    # 404 answer is logged as an error too; tests check those answers themselves.)
    tab.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and "Failed to load resource" not in msg.text
            else None
        ),
    )
    try:
        yield tab
    finally:
        context.close()
    # A script error or a CSP refusal in the console is a failure, wherever it happened.
    assert not errors, f"the browser reported errors: {errors}"


def screenshot(page: Any, name: str, *, docs: bool = False) -> Path:
    """Save the whole page as ``name``.png; with ``docs``, also refresh the README's copy."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if docs and os.environ.get("TOUCHLINE_UPDATE_DOCS_SCREENSHOTS") == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SCREENSHOTS / f"{name}.png")
    return path
