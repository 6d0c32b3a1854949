"""Date-time fields in request bodies refuse numbers, as the query parameters do (a3ae1bd).

pydantic alone reads a number where a datetime is expected as Unix seconds - ``"start_at": 0`` was a job
starting in 1970, and ``"1700000000"`` (a string) too - while the OpenAPI document says ``string``,
``format: date-time``. Every body that carries one (a job's ``start_at``, ``end_at`` and its exclusions'
``from``/``to``, in POST /jobs, PUT and PATCH /jobs/{id} and POST /jobs/apply) answers a number with the
usual 422 problem, its pointer at the field; ISO 8601 text still works.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx

from tests.api.conftest import job

PROBLEM = "application/problem+json"
NUMBERS: tuple[Any, ...] = (0, 1_700_000_000, 1.5, -1, 1e9, True, "0", "1700000000", "0.0", "-1", "1e9")
START = "2027-01-01T09:00:00+01:00"
END = "2028-01-01T00:00:00Z"
FROM, TO = "2027-06-01T00:00:00", "2027-06-02T12:00:00"  # an exclusion's times may be in the job's zone


def with_bad(value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """(the bad field's pointer, the fields of a job with ``value`` there, the others valid)."""
    yield "/start_at", {"start_at": value, "end_at": END}
    yield "/end_at", {"start_at": START, "end_at": value}
    yield "/exclude/0/from", {"exclude": [{"from": value, "to": TO}]}
    yield "/exclude/0/to", {"exclude": [{"from": FROM, "to": value}]}


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def refused(r: httpx.Response, pointer: str) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["type"] == "https://chronos.dev/problems/invalid-job" and body["status"] == 422, body
    assert [e["pointer"] for e in body["errors"]] == [pointer], body
    assert "date-time" in body["errors"][0]["reason"], body


def merge_patch(client: httpx.AsyncClient, job_id: str, patch: dict[str, Any]) -> Any:
    return client.patch(f"/jobs/{job_id}", json=patch,
                        headers={"content-type": "application/merge-patch+json"})


async def test_every_body_refuses_a_number_for_a_date_time(client: httpx.AsyncClient) -> None:
    made = await client.post("/jobs", json=job(name="kept", schedule="@hourly", start_at=START))
    assert made.status_code == 201, made.text
    shown = made.json()
    for value in NUMBERS:
        for pointer, fields in with_bad(value):
            refused(await client.post("/jobs", json=job(name="new", **fields)), pointer)
            replaced = {**shown, **fields}  # a job as GET shows it, one field changed
            refused(await client.put(f"/jobs/{shown['id']}", json=replaced), pointer)
            refused(await merge_patch(client, shown["id"], fields), pointer)
            applied = {"jobs": [job(name="fine"), job(name="new", **fields)]}
            refused(await client.post("/jobs/apply", json=applied), f"/jobs/1{pointer}")
    after = await client.get("/jobs")
    assert [j["name"] for j in after.json()["items"]] == ["kept"]  # nothing made, nothing changed
    assert instant(after.json()["items"][0]["start_at"]) == instant(START)
    assert after.json()["items"][0]["updated_at"] == shown["updated_at"]


async def test_iso_8601_text_still_works_in_every_body(client: httpx.AsyncClient) -> None:
    times = {"start_at": START, "end_at": END, "exclude": [{"from": FROM, "to": TO}]}
    made = await client.post("/jobs", json=job(name="a", schedule="@hourly", **times))
    assert made.status_code == 201, made.text
    shown = made.json()
    assert (instant(shown["start_at"]), instant(shown["end_at"])) == (instant(START), instant(END))
    assert shown["exclude"] == [{"from": FROM, "to": TO, "cron": None}]
    put = await client.put(f"/jobs/{shown['id']}", json={**shown, "end_at": "2029-01-01T00:00:00.5+00:00"})
    assert put.status_code == 200, put.text
    assert instant(put.json()["end_at"]) == instant("2029-01-01T00:00:00.5Z")
    patched = await merge_patch(client, shown["id"], {"start_at": "2027-02-01T00:00:00Z",
                                                      "exclude": [{"from": "2027-05-01 00:00", "to": TO}]})
    assert patched.status_code == 200, patched.text
    assert instant(patched.json()["start_at"]) == instant("2027-02-01T00:00:00Z")
    assert patched.json()["exclude"][0]["from"] == "2027-05-01T00:00:00"
    applied = await client.post("/jobs/apply", json={"jobs": [job(name="b", schedule="@hourly", **times)]})
    assert applied.status_code == 200 and applied.json()["created"] == ["b"], applied.text


async def test_the_document_says_string_date_time_for_every_such_field(client: httpx.AsyncClient) -> None:
    """What the document promises is what the API does: only text, as a date-time."""
    doc = (await client.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    seen = []
    for name, schema in schemas.items():
        for field in ("from", "to") if name.startswith("Exclusion") else ("start_at", "end_at"):
            prop = schema.get("properties", {}).get(field)
            if prop is None:
                continue
            seen.append(f"{name}.{field}")
            variants = prop.get("anyOf", [prop])
            assert {v.get("type") for v in variants} <= {"string", "null"}, (name, field, prop)
            assert [v.get("format") for v in variants if v.get("type") == "string"] == ["date-time"], prop
    # the request body's variants (one per job type: ShellJob...), the response, the exclusions
    assert {"ShellJob.start_at", "ShellJob.end_at", "JobOut.start_at", "JobOut.end_at"} <= set(seen), seen
    assert {f for f in seen if f.startswith("Exclusion")} >= {"Exclusion.from", "Exclusion.to"}, seen
