"""The pages a run leaves, opened in real Chromium as the colleague it is sent to would."""

from __future__ import annotations

import pytest
from browser import watch

pytestmark = pytest.mark.slow


def test_dashboard_opens_offline_with_no_errors(finished_run, browser):
    page = browser.new_page()
    seen = watch(page)
    page.goto((finished_run / "index.html").as_uri())
    page.wait_for_load_state("load")
    assert "shared" in page.title() or "frameatlas" in page.title().lower()
    assert page.locator("a[href]").count() > 0
    assert seen.problems() == []
    page.close()
