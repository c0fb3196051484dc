"""A real headless Chromium (Debian's `chromium`), driven by Playwright.

Never `playwright install`: the browser is the system package at /usr/bin/chromium,
installed by `make` (the `.venv/.chromium` step). A missing browser fails the tests
with what to install rather than skipping them: a skipped dashboard test would let a
broken dashboard pass CI unnoticed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.server.embedded_s3 import EmbeddedS3
from tests.servers import ApiServer

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


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    # Package scope, not session: Playwright's sync API runs an event loop on the main
    # thread while it is open, and any later test's asyncio.run() would then refuse to
    # start ("cannot be called from a running event loop").
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
    # expect() has its own default (5 s), short for a page that polls every 2 s beside a
    # trainer on a loaded 2-core machine.
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    yield opened
    context.close()


@pytest.fixture
def keyed_api_server(
    s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path
) -> Iterator[ApiServer]:
    """A real API server with API keys required (an admin key set; docs/auth.md), over
    the test store: the dashboard must send the key the user pasted on every call."""
    server = ApiServer(
        s3_server,
        tmp_path / "keyed-home",
        state_bucket=f"keyed-{uuid.uuid4().hex[:12]}",
        admin_key="dashboard-admin-key-0123456789abcdef",
        # An external store: the trainers share the service's store credentials.
        # The tenants may use the demo bucket.
        extra_env={
            "TUNEFORGE_TRAINER_SHARED_CREDENTIALS": "true",
            "TUNEFORGE_ALLOWED_BUCKETS": '["demo"]',
        },
    )
    server.start()
    yield server
    server.stop()
    server.kill_trainers()
