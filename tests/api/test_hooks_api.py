"""The hook fields over the REST API: validated (problem+json pointing at the field), shown with their
secrets masked, kept on PUT unless the webhook moves to another origin, chain cycles refused with the
cycle, a run's notifications listed; the README's examples are accepted as written."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import build_app, running

README = Path(__file__).resolve().parents[2] / "README.md"
HOOK = {"url": "https://hooks.example.com/x", "headers": {"Authorization": "Bearer tok-123456"},
        "secret": "sign-me-0123456789"}


def job(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "shell", "payload": {"command": "true"}, **extra}


@pytest.fixture
async def api() -> Any:
    async with running(build_app(worker=False, scheduler=False)) as c:
        yield c


def pointers(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return [e["pointer"] for e in r.json()["errors"]]


async def test_bad_hook_fields_are_refused_each_at_its_place(api: httpx.AsyncClient) -> None:
    r = await api.post("/jobs", json=job("bad", notify=[
        {"on": ["failed"], "webhook": {"url": "ftp://x"}},
        {"on": ["exploded"], "email": {"to": ["ops@example.com"]}},
        {"on": ["failed"], "webhook": {"url": "https://a.example"}, "email": {"to": ["ops@example.com"]}},
        {"on": ["failed"], "email": {"to": ["not an address"]}},
    ], pause_after_failures=0, alert_after=-1, jitter=-5,
        exclude=[{"from": "2026-12-27T00:00:00", "to": "2026-12-24T00:00:00"},
                 {"cron": "* * * * *", "from": "2026-12-24T00:00:00"}]))
    got = pointers(r)
    for p in ("/notify/0/webhook/url", "/notify/1/on/0", "/notify/2", "/notify/3/email/to",
              "/pause_after_failures", "/alert_after", "/jitter", "/exclude/0", "/exclude/1"):
        assert p in got, (p, got)


async def test_webhook_secrets_are_masked_and_kept_on_put(api: httpx.AsyncClient) -> None:
    r = await api.post("/jobs", json=job("a", notify=[{"on": ["failed"], "webhook": HOOK}]))
    assert r.status_code == 201, r.text
    shown = r.json()
    assert "tok-123456" not in r.text and "sign-me" not in r.text
    assert shown["notify"][0]["webhook"]["headers"] == {"Authorization": "***"}
    assert shown["notify"][0]["webhook"]["secret"] == "***"
    # written back as shown: the stored values stay
    body = {k: shown[k] for k in ("name", "type", "payload", "notify")}
    body["description"] = "changed"
    assert (await api.put(f"/jobs/{shown['id']}", json=body)).status_code == 200
    from chronos_core.hookspec import NotifyRule  # the stored rule, read through the library
    app_job = await _stored(api, shown["id"])
    assert app_job[0] == NotifyRule.model_validate({"on": ["failed"], "webhook": HOOK})
    # moved to another origin: the masked values must be sent again
    body["notify"][0]["webhook"]["url"] = "https://elsewhere.example/x"
    got = pointers(await api.put(f"/jobs/{shown['id']}", json=body))
    assert got == ["/notify/0/webhook/headers/Authorization", "/notify/0/webhook/secret"]


async def _stored(api: httpx.AsyncClient, job_id: str) -> Any:
    app = api._transport.app  # type: ignore[attr-defined]
    chronos = app.state.api.chronos
    return (await chronos.jobs.get(job_id)).notify


async def test_chain_cycles_are_refused_with_the_cycle(api: httpx.AsyncClient) -> None:
    r = await api.post("/jobs", json=job("a", then=[{"on": ["succeeded"], "job": "b"}]))
    assert r.status_code == 201
    assert (await api.post("/jobs", json=job("b", then=[{"job": "c"}]))).status_code == 201
    r = await api.post("/jobs", json=job("c", then=[{"on": ["failed"], "job": "a"}]))
    assert pointers(r) == ["/then"]
    assert "c -> a -> b -> c" in r.json()["errors"][0]["reason"]
    r = await api.post("/jobs", json=job("self", then=[{"job": "self"}]))
    assert "self -> self" in r.json()["errors"][0]["reason"]
    # a chain to a job that does not exist yet is fine (it may be created next)
    assert (await api.post("/jobs", json=job("d", then=[{"job": "later"}]))).status_code == 201


async def test_notifications_of_an_unknown_run_are_404(api: httpx.AsyncClient) -> None:
    r = await api.get("/runs/00000000-0000-7000-8000-000000000000/notifications")
    assert r.status_code == 404


def _section_examples() -> list[dict[str, Any]]:
    text = README.read_text()
    section = text.split("## Notifications, chains, auto-pause, alerts, blackouts", 1)[1].split("\n## ", 1)[0]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


async def test_the_readme_examples_are_accepted(api: httpx.AsyncClient) -> None:
    examples = _section_examples()
    assert examples
    for example in examples:
        r = await api.post("/jobs", json=example)
        assert r.status_code == 201, r.text
        for name in ("notify", "then", "pause_after_failures", "alert_after", "jitter", "exclude"):
            if name in example:
                assert r.json()[name] is not None


async def test_the_preview_of_a_job_marks_its_excluded_slots_and_offsets(api: httpx.AsyncClient) -> None:
    r = await api.post("/jobs", json=job("weekdays", schedule="0 12 * * *", timezone="Europe/Berlin",
                                         jitter=60, exclude=[{"cron": "* * * * sat,sun"}]))
    assert r.status_code == 201, r.text
    p = (await api.get("/schedules/preview", params={"job_id": r.json()["id"], "count": 14})).json()
    from datetime import datetime

    times = [datetime.fromisoformat(t) for t in p["times"]]
    weekend = [t for t in times if t.weekday() >= 5]
    assert [datetime.fromisoformat(t) for t in p["excluded"]] == weekend and len(weekend) == 4
    assert len(p["offsets"]) == 14 and all(0 <= o <= 60 for o in p["offsets"]) and len(set(p["offsets"])) > 1
    assert p["timezone"] == "Europe/Berlin" and p["schedule"] == "0 12 * * *"
    r = await api.get("/schedules/preview")
    assert r.status_code == 422 and "/schedule" in pointers(r)


async def test_the_openapi_document_describes_the_fields_and_the_notifications(api: httpx.AsyncClient
                                                                               ) -> None:
    doc = (await api.get("/openapi.json")).json()
    text = json.dumps(doc)
    for name in ("pause_after_failures", "alert_after", "jitter", "exclude", "paused_reason",
                 "consecutive_failed_slots", "parent_run_id", "then", "notify"):
        assert f'"{name}"' in text, name
    assert "/runs/{run_id}/notifications" in doc["paths"]
    assert "NotifyRule" in text and "WebhookChannel" in text and "NoticeOut" in text


async def test_an_exclusion_is_answered_as_the_document_names_it_and_written_back_unchanged(
        api: httpx.AsyncClient) -> None:
    window = {"from": "2026-12-24T00:00:00", "to": "2026-12-27T00:00:00"}
    r = await api.post("/jobs", json=job("holidays", schedule="0 12 * * *", exclude=[window]))
    assert r.status_code == 201, r.text
    for shown in (r.json(), (await api.get(f"/jobs/{r.json()['id']}")).json(),
                  (await api.get("/jobs")).json()["items"][0]):
        assert shown["exclude"] == [{"from": window["from"], "to": window["to"], "cron": None}], shown
    doc = (await api.get("/openapi.json")).json()
    assert "from" in doc["components"]["schemas"]["Exclusion"]["properties"]
    # what a client read is what it may send back
    body = {k: v for k, v in r.json().items() if k in job("x", schedule="", exclude=[])}
    again = await api.put(f"/jobs/{r.json()['id']}", json={**body, "exclude": r.json()["exclude"]})
    assert again.status_code == 200, again.text
    assert again.json()["exclude"] == r.json()["exclude"]
