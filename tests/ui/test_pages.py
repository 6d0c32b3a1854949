"""The dashboard and the API docs in Chromium: they load from the package (no request leaves the server),
ask for a token when the API wants one, and show what the token may do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.ui.conftest import VIEWER, Server, new_page, screenshot, start_server


def _same_origin_only(page: Any, server: Server) -> list[str]:
    foreign: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) or r.url.startswith("data:")
            else foreign.append(r.url))
    return foreign


def test_root_redirects_to_the_dashboard_which_asks_for_a_token(browser: Any, server: Server) -> None:
    page = new_page(browser, server, token=None)
    try:
        foreign = _same_origin_only(page, server)
        page.goto("/")
        assert page.url == f"{server.url}/ui/"
        page.get_by_label("API token").fill("not-a-token")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_text("That token is not valid here.").wait_for()
        page.get_by_label("API token").fill(VIEWER)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Overview").wait_for()
        assert page.get_by_test_id("access").inner_text() == "read-only"
        assert page.get_by_test_id("jobs-total").inner_text() == "0"
        assert not page.get_by_test_id("nav-new").is_visible()  # a read-only token: no "New job"
        page.get_by_test_id("live").filter(has_text="live").wait_for()
        assert foreign == []
        assert page.js_errors == []
    finally:
        page.context.close()


def test_docs_show_every_operation_offline(page: Any, server: Server) -> None:
    foreign = _same_origin_only(page, server)
    page.goto("/docs")
    page.locator(".swagger-ui .info .title").filter(has_text="Chronos").wait_for()
    page.locator("#operations-jobs-create_job").wait_for()
    assert page.locator(".opblock").count() >= 20
    screenshot(page, "docs")
    assert foreign == []


def test_with_auth_off_on_loopback_it_just_works(browser: Any, tmp_path: Path) -> None:
    server = start_server(tmp_path, CHRONOS_API_TOKENS="", CHRONOS_READONLY_TOKENS="")
    try:
        page = new_page(browser, server, token=None)
        page.goto("/")
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        expect(page.get_by_test_id("nav-new")).to_be_visible()  # may write: loopback, auth off
        expect(page.get_by_test_id("access")).to_be_hidden()  # nothing to sign out of
        expect(page.get_by_test_id("live")).to_have_text("live")
        assert page.js_errors == []
        page.context.close()
    finally:
        server.stop()
