"""What a user does in the dashboard, in Chromium against a real ``chronos serve``: create a job through
the form (a field error first), see it appear in the list live, run it and watch its log arrive (lines
printed before the page opened included), pause/resume (one job and in bulk), cancel a long run, a
read-only token, and the live stream coming back after the server restarts. Each page is screenshotted.

Waits are for what the page shows (Playwright's auto-waiting, generous timeouts), never timed assertions.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.ui.conftest import VIEWER, Server, new_page, screenshot

pytestmark = pytest.mark.browser


def _job(client: httpx.Client, **spec: Any) -> dict[str, Any]:
    r = client.post("/jobs", json={"type": "shell", **spec})
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    return job


def _wait_for(check: Any, limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_create_a_job_through_the_form_and_see_it_appear_in_the_list_live(
        browser: Any, server: Server, page: Any) -> None:
    jobs = new_page(browser, server)  # a second tab, left open on the list: it must update by itself
    try:
        jobs.goto("/ui/#/jobs")
        expect(jobs.get_by_test_id("live")).to_have_text("live")
        page.goto("/ui/#/new")
        page.get_by_label("name *").fill("ui-hello")
        page.get_by_label("type *").select_option("shell")
        page.get_by_label("schedule").fill("61 * * * *")
        page.get_by_label("command").fill("for i in 1 2 3; do echo line-$i; done")
        page.get_by_role("button", name="Create job").click()
        error = page.locator("#f-schedule-error")  # the API's 422, next to its field
        expect(error).to_be_visible()
        expect(error).to_contain_text("61")
        expect(page.get_by_label("schedule")).to_have_attribute("aria-invalid", "true")
        page.get_by_label("schedule").fill("0 9 * * mon-fri")
        page.get_by_label("timezone").fill("Europe/Berlin")
        expect(page.get_by_test_id("schedule-words")).to_have_text(
            "At 09:00, Monday through Friday (Europe/Berlin)")
        page.get_by_label("schedule").focus()
        expect(page.get_by_test_id("preview-times").locator("li")).to_have_count(5)
        screenshot(page, "create")
        page.get_by_role("button", name="Create job").click()
        expect(page.locator("h1")).to_contain_text("ui-hello")
        assert re.search(r"#/jobs/[0-9a-f-]{36}$", page.url)
        row = jobs.locator("tr[data-job='ui-hello']")
        expect(row).to_be_visible()  # no reload: the job.created event refreshed the list
        expect(row).to_contain_text("At 09:00, Monday through Friday (Europe/Berlin)")
        # run it from its page: the run page shows its output and final status
        page.get_by_role("button", name="Run now").click()
        expect(page.get_by_test_id("run-status")).to_have_text("succeeded")
        expect(page.get_by_test_id("log")).to_have_text("line-1\nline-2\nline-3\n")
        expect(row.get_by_test_id("last-status")).to_have_text("succeeded")
        expect(row.get_by_test_id("strip").locator("a.succeeded")).to_have_count(1)
        assert jobs.js_errors == []
    finally:
        jobs.context.close()


def test_run_log_shows_lines_printed_before_the_page_opened_then_live_ones(
        server: Server, page: Any, tmp_path: Path) -> None:
    marker = tmp_path / "go"
    with server.client() as c:
        job = _job(c, name="ui-talker", payload={"command": f"echo before-1; echo before-2; "
                                                             f"while [ ! -f {marker} ]; do sleep 0.05; done; "
                                                             "echo after-1; echo after-2 >&2"})
        run = c.post(f"/jobs/{job['id']}/run").json()
        # the run has printed two lines (stored: any API instance sees them) and is waiting
        _wait_for(lambda: c.get(f"/runs/{run['id']}").json().get("output", "").count("before-") == 2)
        page.goto(f"/ui/#/runs/{run['id']}")
        log = page.get_by_test_id("log")
        expect(log).to_have_text("before-1\nbefore-2\n")
        expect(page.get_by_test_id("run-status")).to_have_text("running")
        marker.write_text("")
        expect(log).to_have_text("before-1\nbefore-2\nafter-1\nafter-2\n")
        expect(log.locator(".stderr")).to_have_text("after-2\n")
        expect(page.get_by_test_id("run-status")).to_have_text("succeeded")
        expect(page.get_by_test_id("exit-code")).to_have_text("0")
        expect(page.get_by_test_id("live")).to_have_text("")  # the stream is closed once the run ended
        screenshot(page, "run")
        # auto-scroll can be paused
        page.get_by_test_id("follow").click()
        expect(page.get_by_test_id("follow")).to_have_text("Resume auto-scroll")


def test_pause_and_resume_a_job_and_in_bulk(server: Server, page: Any) -> None:
    with server.client() as c:
        one = _job(c, name="ui-bulk-1", schedule="@hourly", payload={"command": "true"})
        _job(c, name="ui-bulk-2", schedule="@daily", payload={"command": "true"})
        _job(c, name="ui-not-bulk", payload={"command": "true"})
    page.goto(f"/ui/#/jobs/{one['id']}")
    status = page.get_by_test_id("job-status")
    expect(status).to_have_text("active")
    page.get_by_role("button", name="Pause").click()
    expect(status).to_have_text("paused")
    screenshot(page, "job")
    page.get_by_role("button", name="Resume").click()
    expect(status).to_have_text("active")
    # the page's first, unfiltered list answers late (after the search below): it must not win
    page.add_init_script("""{
      const fetch0 = window.fetch;
      let slowed = false;
      window.fetch = async (url, init) => {
        if (!slowed && String(url).startsWith("/jobs?") && !String(url).includes("name=")) {
          slowed = true;
          const answer = await fetch0(url, init);
          await new Promise((r) => setTimeout(r, 1500));
          setTimeout(() => { window.slowAnswered = true; }, 100);
          return answer;
        }
        return fetch0(url, init);
      };
    }""")
    page.goto("about:blank")  # a new document: the script above runs in it
    page.goto("/ui/#/jobs")
    page.get_by_label("Name starts with").fill("ui-bulk-")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("tbody tr[data-job]")
    expect(rows).to_have_count(2)
    page.wait_for_function("window.slowAnswered === true")
    expect(rows).to_have_count(2)
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.job)")) == ["ui-bulk-1", "ui-bulk-2"]
    page.get_by_label("Select all on this page").check()
    page.get_by_role("button", name="Pause selected (2)").click()
    expect(rows.get_by_test_id("job-status").filter(has_text="paused")).to_have_count(2)
    with server.client() as c:
        stored = c.get("/jobs", params={"name": "ui-bulk-"}).json()["items"]
        assert {j["status"] for j in stored} == {"paused"}
    page.get_by_label("Select all on this page").check()
    page.get_by_role("button", name="Resume selected (2)").click()
    expect(rows.get_by_test_id("job-status").filter(has_text="active")).to_have_count(2)
    page.get_by_label("Status").select_option("paused")
    expect(page.get_by_text("No job matches these filters.")).to_be_visible()


def test_cancel_a_long_run(server: Server, page: Any) -> None:
    with server.client() as c:
        job = _job(c, name="ui-long", payload={"command": "echo started; sleep 300"})
        run = c.post(f"/jobs/{job['id']}/run").json()
    page.goto(f"/ui/#/runs/{run['id']}")
    expect(page.get_by_test_id("log")).to_have_text("started\n")
    page.get_by_role("button", name="Cancel run").click()
    expect(page.get_by_test_id("run-status")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    # its job's history, then cleared (asked first)
    page.get_by_role("link", name="ui-long").click()
    expect(page.get_by_test_id("history").locator("tbody tr")).to_have_count(1)
    page.get_by_role("button", name="Clear history…").click()
    page.get_by_role("button", name="Yes, clear").click()
    expect(page.get_by_test_id("history-empty")).to_be_visible()
    expect(page.get_by_test_id("history")).to_be_hidden()
    with server.client() as c:
        assert c.get(f"/jobs/{job['id']}/history").json()["items"] == []


def test_the_run_page_shows_what_its_outcome_set_off(server: Server, page: Any) -> None:
    with server.client() as c:
        _job(c, name="ui-chain-b", payload={"command": "echo second"})
        first = _job(c, name="ui-chain-a", payload={"command": "echo first"},
                     then=[{"on": ["succeeded"], "job": "ui-chain-b"}])
        run = c.post(f"/jobs/{first['id']}/run").json()
    page.goto(f"/ui/#/runs/{run['id']}")
    expect(page.get_by_test_id("run-status")).to_have_text("succeeded")
    notices = page.get_by_test_id("notices")
    expect(notices.locator("tbody tr")).to_have_count(1)
    expect(notices).to_contain_text("chain")
    expect(notices.locator(".badge")).to_have_text("delivered")  # read again while pending
    page.get_by_test_id("child-run").click()  # the chained run, and back to the run that started it
    expect(page.locator("h1")).to_contain_text("ui-chain-b")
    expect(page.get_by_test_id("log")).to_have_text("second\n")
    page.get_by_test_id("parent-run").click()
    expect(page.locator("h1")).to_contain_text("ui-chain-a")


def test_a_read_only_token_sees_no_write_actions_and_no_secret(browser: Any, server: Server) -> None:
    secret = "Bearer s3cr3t-ui-token-value"
    with server.client() as c:
        job = c.post("/jobs", json={"name": "ui-secret", "type": "http", "payload": {
            "url": "http://127.0.0.1:9/x", "headers": {"Authorization": secret}}}).json()
    page = new_page(browser, server, token=VIEWER)
    try:
        page.goto(f"/ui/#/jobs/{job['id']}")
        expect(page.get_by_test_id("payload")).to_contain_text('"Authorization": "***"')
        page.get_by_text("The whole definition").click()
        expect(page.get_by_test_id("definition")).to_contain_text('"name": "ui-secret"')
        expect(page.get_by_test_id("access")).to_have_text("read-only")
        for name in ("Run now", "Pause", "Delete…"):
            expect(page.get_by_role("button", name=name)).to_be_hidden()
        expect(page.get_by_role("link", name="Edit")).to_be_hidden()
        assert "s3cr3t" not in page.content()
        page.goto("/ui/#/jobs")
        expect(page.locator("tr[data-job='ui-secret']")).to_be_visible()
        expect(page.get_by_role("button", name=re.compile("Pause selected"))).to_be_hidden()
        expect(page.get_by_label("Select all on this page")).to_be_hidden()
        expect(page.get_by_test_id("nav-new")).to_be_hidden()
        assert page.js_errors == []
    finally:
        page.context.close()


def test_edit_a_job_through_the_form_keeps_its_secret(server: Server, page: Any) -> None:
    secret = "Bearer edit-form-secret-value"
    with server.client() as c:
        job = c.post("/jobs", json={"name": "ui-edit", "type": "http", "schedule": "@daily", "payload": {
            "url": "http://127.0.0.1:9/a", "headers": {"Authorization": secret}},
            "retry": {"max_attempts": 3}}).json()
    page.goto(f"/ui/#/jobs/{job['id']}/edit")
    expect(page.get_by_label("url *")).to_have_value("http://127.0.0.1:9/a")
    expect(page.get_by_label("headers")).to_have_value("Authorization: ***")  # the form never has it
    page.get_by_text("Options (retry, timeout").click()
    expect(page.get_by_label("retry.max_attempts")).to_have_value("3")
    page.get_by_label("retry.max_attempts").fill("lots")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#f-retry-max-attempts-e")).to_be_visible()  # the API's 422 at its field
    page.get_by_label("retry.max_attempts").fill("5")
    page.get_by_label("url *").fill("http://127.0.0.1:9/b")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("h1")).to_contain_text("ui-edit")
    assert "secret" not in page.content()
    with server.client() as c:
        shown = c.get(f"/jobs/{job['id']}").json()
    assert shown["payload"]["url"] == "http://127.0.0.1:9/b" and shown["retry"]["max_attempts"] == 5
    assert shown["payload"]["headers"] == {"Authorization": "***"} and shown["schedule"] == "@daily"


def test_phone_width_and_overview(browser: Any, server: Server) -> None:
    with server.client() as c:  # some failures to show
        flaky = _job(c, name="ui-flaky", schedule="*/5 * * * *", payload={"command": "echo oops >&2; exit 2"})
        for _ in range(3):
            run = c.post(f"/jobs/{flaky['id']}/run").json()
            _wait_for(lambda run=run: c.get(f"/runs/{run['id']}").json()["status"] == "failed")
    page = new_page(browser, server)
    try:
        page.goto("/ui/#/jobs")
        expect(page.locator("tr[data-job='ui-flaky'] .strip a.failed")).to_have_count(3)
        expect(page.locator("tr[data-job='ui-flaky']")).to_contain_text("Every 5 minutes (UTC)")
        expect(page.get_by_test_id("live")).to_have_text("live")
        expect(page.get_by_test_id("range")).to_contain_text(" of ")
        screenshot(page, "jobs")
        with server.client() as c:  # a name is text, never markup (it arrives live, through the table)
            evil = _job(c, name='ui-<img src=x onerror="window.pwned=1">', payload={"command": "true"})
            c.post(f"/jobs/{evil['id']}/run")
        expect(page.get_by_role("link", name='ui-<img src=x onerror="window.pwned=1">')).to_be_visible()
        expect(page.locator("tr[data-job^='ui-<img'] [data-testid=last-status]")).to_have_text("succeeded")
        assert page.locator("tbody img").count() == 0 and page.evaluate("window.pwned") is None
    finally:
        page.context.close()
    page = new_page(browser, server, width=390, height=844)
    try:
        page.goto("/ui/#/jobs")
        expect(page.locator("tr[data-job='ui-flaky']")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        screenshot(page, "jobs-phone")
    finally:
        page.context.close()
    page = new_page(browser, server)
    try:
        page.goto("/ui/")
        expect(page.get_by_test_id("jobs-total")).not_to_have_text("0")
        expect(page.locator(".chart canvas")).to_have_count(1)
        expect(page.get_by_role("link", name="ui-flaky").first).to_be_visible()  # recent failures
        expect(page.get_by_test_id("live")).to_have_text("live")
        assert page.locator("main img").count() == 0 and page.evaluate("window.pwned") is None
        screenshot(page, "overview")
        assert page.js_errors == []
    finally:
        page.context.close()


def test_the_stream_reconnects_after_the_server_restarts(server: Server, page: Any) -> None:
    page.goto("/ui/#/jobs")
    live = page.get_by_test_id("live")
    expect(live).to_have_text("live")
    server.stop()
    expect(live).to_have_text("reconnecting…")
    server.start()
    expect(live).to_have_text("live", timeout=30_000)
    with server.client() as c:
        _job(c, name="ui-after-restart", payload={"command": "true"})
    expect(page.locator("tr[data-job='ui-after-restart']")).to_be_visible()
