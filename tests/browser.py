"""Real Chromium for the tests of pages people open: reports, maps, the dashboard, the investigator.

Playwright drives Debian's `chromium` (Playwright's own browser download cannot be fetched here);
`.ci/run` installs the package when it is missing. `watch(page)` records what a test must refuse:
console errors, uncaught page errors, and any request that would leave the machine.

Example:
    page = browser.new_page()
    seen = watch(page)
    page.goto(path.as_uri())
    assert seen.problems() == []
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

CHROMIUM = os.environ.get("FRAMEATLAS_CHROMIUM", "/usr/bin/chromium")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


@dataclass
class PageWatch:
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return (
            [f"console error: {m}" for m in self.console_errors]
            + [f"page error: {m}" for m in self.page_errors]
            + [f"request off the machine: {u}" for u in self.external_requests]
        )


def is_local(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in {"file", "data", "blob", "about", "chrome-error"}:
        return True
    return parsed.hostname in LOCAL_HOSTS


def watch(page) -> PageWatch:
    """Start recording `page`'s console errors, page errors and non-local requests (which are aborted)."""
    seen = PageWatch()
    page.on("console", lambda message: message.type == "error" and seen.console_errors.append(message.text))
    page.on("pageerror", lambda error: seen.page_errors.append(str(error)))

    def route(route):
        if is_local(route.request.url):
            route.continue_()
        else:
            seen.external_requests.append(route.request.url)
            route.abort()

    page.route("**/*", route)
    return seen


def launch(playwright):
    """Headless Chromium from the system package; file:// pages may load their relative siblings."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--allow-file-access-from-files", "--autoplay-policy=no-user-gesture-required"],
    )
