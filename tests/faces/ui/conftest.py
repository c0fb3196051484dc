"""A real headless Chromium (Debian's `chromium`), driven by Playwright.

Never `playwright install`: the browser is the system package at /usr/bin/chromium,
installed by `make` (the `.venv/.chromium` step). A missing browser fails the tests
with what to install rather than skipping them: a skipped dashboard test would let a
broken dashboard pass CI unnoticed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("TUNEFORGE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests need Debian's chromium package. "
            "Run `make .venv/.chromium` as root (apt-get install -y --no-install-recommends "
            "chromium), or set TUNEFORGE_TEST_CHROMIUM to a Chromium binary."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # bypass_csp: the page's Content-Security-Policy forbids string evaluation, which
    # Playwright's wait_for_function uses. It also means the text-not-HTML test checks
    # the escaping itself, with no CSP to hide a mistake (the header has its own test).
    context = browser.new_context(viewport={"width": 1280, "height": 1400}, bypass_csp=True)
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()
