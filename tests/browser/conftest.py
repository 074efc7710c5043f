"""Browser tests: headless Chromium (Debian's package, installed by the tooling when missing)
driven by Playwright against the test stack's Dagster webserver. Every test saves a screenshot
of its page, on success and on failure, as ``$CONFLUX_HOME/screenshots/<test>-<outcome>.png``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        item.outcome = "passed" if report.passed else "failed"
    return report


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Chromium for one module: Playwright's sync API keeps an event loop running in this
    thread until it stops, and later tests calling ``asyncio.run`` would fail meanwhile."""
    from playwright.sync_api import sync_playwright

    from conflux.stack.browser import ensure_chromium, launch_args

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(ensure_chromium()), headless=True,
                                     args=launch_args())
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, webserver, request) -> Iterator:
    """A fresh page on the webserver; its screenshot is saved whatever the outcome."""
    from conflux.cli.dagster_api import graphql

    # the "Join the Dagster community" dialog, shown once per instance, would cover the page
    graphql(webserver.settings.dagster_url, "mutation SetNuxSeen { setNuxSeen }")
    context = browser.new_context(viewport={"width": 1600, "height": 1000},
                                  base_url=webserver.settings.dagster_url)
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    outcome = getattr(request.node, "outcome", "failed")
    folder = Path(webserver.settings.home) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(folder / f"{request.node.name}-{outcome}.png"), full_page=True)
    finally:
        context.close()
