"""An incoming webhook's URL is its credential (Slack's ``/services/T…/B…/<secret>``): shown to every token
that reads the job or its notifications, it let a read-only viewer post into the team's channel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from chronos_app.api.schemas import NoticeOut
from chronos_core.hooks import Notice, NoticeKind
from tests.api.conftest import build_app, running

SLACK = "https://hooks.slack.com/services/T0ABCDEF/B0GHIJKL/sEcReTpAtH4711xyz"


@pytest.fixture
async def api() -> Any:
    async with running(build_app(worker=False, scheduler=False)) as c:
        yield c


async def test_a_webhook_url_path_is_masked_and_kept_when_written_back(api: httpx.AsyncClient) -> None:
    spec = {"name": "w", "type": "shell", "payload": {"command": "true"},
            "notify": [{"on": ["failed"], "webhook": {"url": SLACK, "format": "slack"}}]}
    created = await api.post("/jobs", json=spec)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    for r in (created, await api.get(f"/jobs/{job_id}"), await api.get("/jobs")):
        assert "sEcReTpAtH4711" not in r.text and "B0GHIJKL" not in r.text, r.text
    shown = (await api.get(f"/jobs/{job_id}")).json()
    assert shown["notify"][0]["webhook"]["url"] == "https://hooks.slack.com/***"
    body = {k: shown[k] for k in ("name", "type", "payload", "notify")}
    assert (await api.put(f"/jobs/{job_id}", json=body)).status_code == 200  # as shown: kept
    chronos = api._transport.app.state.api.chronos  # type: ignore[attr-defined]
    assert (await chronos.jobs.get(job_id)).notify[0].webhook.url == SLACK
    body["notify"][0]["webhook"]["url"] = "https://hooks.slack.com/services/T0/B0/new-path-0001"
    assert (await api.put(f"/jobs/{job_id}", json=body)).status_code == 200  # a new URL, sent in full
    assert (await chronos.jobs.get(job_id)).notify[0].webhook.url.endswith("new-path-0001")


def test_a_notification_shows_the_webhook_origin_only() -> None:
    now = datetime.now(UTC)
    notice = Notice(id="n1", key="r:failed:0", kind=NoticeKind.NOTIFY, event="failed", job_id="j",
                    run_id="r", target={"webhook": {"url": SLACK, "format": "slack"}}, data={},
                    created_at=now, due_at=now)
    shown = NoticeOut.of(notice).model_dump(mode="json")
    assert shown["target"] == {"url": "https://hooks.slack.com/***", "format": "slack"}
