"""The dashboard's API additions through HTTP: job types with payload schemas, per-job digests (schedule
in words, last outcomes), a schedule in words with its DST days flagged."""

from __future__ import annotations

import httpx

from chronos_app.api.views import describe_schedule
from tests.api.conftest import build_app, job, running, wait_for
from tests.api.test_docs import SlackExecutor, SlackPayload


async def test_job_types_carry_their_payload_schema_and_whether_this_server_runs_them() -> None:
    app = build_app(allow_shell=False)
    async with running(app) as c:
        types = {t["name"]: t for t in (await c.get("/job-types")).json()["items"]}
        assert {"email", "http", "shell", "sql"} <= set(types)
        assert types["shell"]["enabled"] is False and types["http"]["enabled"] is True
        assert {"command", "argv", "env"} <= set(types["shell"]["payload_schema"]["properties"])
        assert "url" in types["http"]["payload_schema"]["properties"]
        assert types["sql"]["description"]
        job_schema = (await c.get("/job-types")).json()["job_schema"]
        assert {"name", "type", "schedule", "timezone", "retry", "payload"} <= set(job_schema["properties"])
        # a plugin's type (registered after start-up, even) is offered with its payload's schema
        app.state.api.chronos.register_job_type("slack", SlackPayload, SlackExecutor())
        slack = {t["name"]: t for t in (await c.get("/job-types")).json()["items"]}["slack"]
        assert slack["enabled"] is True and slack["description"] == "Posts a message to a Slack channel."
        assert slack["payload_schema"]["required"] == ["channel", "text"]


async def test_digests_give_the_schedule_in_words_and_the_last_outcomes_oldest_first() -> None:
    async with running(build_app()) as c:
        ok = (await c.post("/jobs", json=job(name="ok", schedule="0 9 * * mon-fri",
                                             timezone="Europe/Berlin"))).json()
        bad = (await c.post("/jobs", json=job(name="bad", payload={"command": "exit 3"}))).json()
        for _ in range(3):
            await c.post(f"/jobs/{bad['id']}/run")

        async def three_done() -> bool:
            runs = (await c.get(f"/jobs/{bad['id']}/history")).json()["items"]
            return len(runs) == 3 and all(r["status"] == "failed" for r in runs)

        await wait_for(three_done)
        missing = "00000000-0000-7000-8000-000000000000"
        r = await c.get("/job-digests", params={"ids": f"{bad['id']},{missing},{ok['id']}"})
        assert r.status_code == 200
        items = r.json()["items"]
        assert [d["job_id"] for d in items] == [bad["id"], ok["id"]]  # the unknown id left out
        assert items[1] == {"job_id": ok["id"], "outcomes": [],
                            "schedule_text": "At 09:00, Monday through Friday (Europe/Berlin)"}
        assert items[0]["schedule_text"] == "manual only (no schedule)"
        outcomes = items[0]["outcomes"]
        assert [o["status"] for o in outcomes] == ["failed"] * 3
        history = (await c.get(f"/jobs/{bad['id']}/history")).json()["items"]
        assert [o["run_id"] for o in outcomes] == [h["id"] for h in reversed(history)]
        for bad_ids in ("", "nope", "a" * 40):
            problem = (await c.get("/job-digests", params={"ids": bad_ids})).json()
            assert problem["status"] == 422 and problem["errors"][0]["pointer"] == "/ids"


async def test_describe_a_schedule_flags_fire_times_on_days_the_clocks_change(
        client: httpx.AsyncClient) -> None:
    r = await client.get("/schedules/describe", params={"schedule": "30 2 * * *", "timezone": "Europe/Berlin",
                                                        "count": 3})
    body = r.json()
    assert body["description"] == "At 02:30 (Europe/Berlin)" and len(body["times"]) == 3
    params = {"schedule": "@at 2030-03-31T12:00:00", "timezone": "Europe/Berlin"}  # the spring change
    (changed,) = (await client.get("/schedules/describe", params=params)).json()["times"]
    assert changed == {"at": "2030-03-31T10:00:00Z", "dst": "the clocks change this day in Europe/Berlin "
                       "(UTC+01:00 → UTC+02:00): a wall time may be skipped or happen twice"}
    params["schedule"] = "@at 2030-04-01T12:00:00"
    (plain,) = (await client.get("/schedules/describe", params=params)).json()["times"]
    assert plain == {"at": "2030-04-01T10:00:00Z", "dst": None}
    manual = (await client.get("/schedules/describe", params={"schedule": ""})).json()
    assert manual["description"] == "manual only (no schedule)" and manual["times"] == []
    problem = (await client.get("/schedules/describe", params={"schedule": "61 * * * *"})).json()
    assert problem["status"] == 422 and problem["errors"][0]["pointer"] == "/schedule"


def test_schedules_in_words() -> None:
    # six fields: seconds first
    assert describe_schedule("0 0 9 * * 1-5", "UTC") == "At 09:00, Monday through Friday (UTC)"
    assert describe_schedule("*/10 * * * * *") == "Every 10 seconds (UTC)"
    assert describe_schedule("@daily", "Asia/Tokyo") == "every day at 00:00 (Asia/Tokyo)"
    assert describe_schedule("@every 90s") == "every 90s"
    assert describe_schedule(None) == "manual only (no schedule)"
