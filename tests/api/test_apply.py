"""``POST /jobs/apply``: jobs as code through the real app."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import build_app, running
from tests.api.test_readme_examples import _examples


def _http(name: str, **fields: object) -> dict[str, object]:
    return {"name": name, "type": "http", "payload": {"url": f"https://example.com/{name}"}, **fields}


async def test_apply_dry_run_then_apply_then_nothing_to_do() -> None:
    async with running(build_app(worker=False, scheduler=False)) as c:
        await c.post("/jobs", json=_http("old"))
        body = {"jobs": [_http("a"), _http("b", schedule="@daily")], "prune": True}
        dry = await c.post("/jobs/apply?dry_run=true", json=body)
        assert dry.status_code == 200, dry.text
        assert dry.json() == {"created": ["a", "b"], "updated": [], "unchanged": [], "deleted": ["old"],
                              "dry_run": True}
        assert [j["name"] for j in (await c.get("/jobs")).json()["items"]] == ["old"]
        done = (await c.post("/jobs/apply", json=body)).json()
        assert (done["created"], done["deleted"], done["dry_run"]) == (["a", "b"], ["old"], False)
        again = (await c.post("/jobs/apply", json=body)).json()
        assert (again["unchanged"], again["created"], again["updated"]) == (["a", "b"], [], [])
        assert sorted(j["name"] for j in (await c.get("/jobs")).json()["items"]) == ["a", "b"]


async def test_apply_refusals_point_into_the_set() -> None:
    async with running(build_app(worker=False, scheduler=False)) as c:
        r = await c.post("/jobs/apply", json={"jobs": [_http("a"), _http("b", schedule="sometimes"),
                                                        _http("a")]})
        assert r.status_code == 422
        assert {e["pointer"] for e in r.json()["errors"]} == {"/jobs/1/schedule", "/jobs/2/name"}
        r = await c.post("/jobs/apply", json={"jobs": [_http("a")], "purge": True})
        assert r.status_code == 422 and r.json()["errors"][0]["pointer"] == "/purge"
        r = await c.post("/jobs/apply", json=[_http("a")])
        assert r.status_code == 422
        assert (await c.get("/jobs")).json()["items"] == []


async def test_apply_reads_a_name_with_blanks_at_its_ends_as_the_name() -> None:
    """Jobs as code: a file's ``"nightly "`` is the stored ``nightly`` (unchanged, not a second job nor a
    store error), and ``"nightly"`` and ``" nightly"`` in one set are the same job given twice."""
    async with running(build_app(worker=False, scheduler=False)) as c:
        assert (await c.post("/jobs/apply", json={"jobs": [_http("nightly")]})).status_code == 200
        again = await c.post("/jobs/apply", json={"jobs": [_http("nightly ", payload={
            "url": "https://example.com/nightly"})]})
        assert again.status_code == 200, again.text
        assert (again.json()["unchanged"], again.json()["created"]) == (["nightly"], [])
        r = await c.post("/jobs/apply", json={"jobs": [_http("nightly"), _http(" nightly")]})
        assert r.status_code == 422 and [e["pointer"] for e in r.json()["errors"]] == ["/jobs/1/name"]
        assert [j["name"] for j in (await c.get("/jobs")).json()["items"]] == ["nightly"]


async def test_applying_every_field_of_every_type_twice_changes_nothing(tmp_path: Path) -> None:
    examples = _examples()  # the README's: every job field, every payload field of every type
    app = build_app(sql_connections={"app": f"sqlite:///{tmp_path}/app.db"}, python_modules=["myapp"],
                    worker=False, scheduler=False)
    async with running(app) as c:
        first = await c.post("/jobs/apply", json={"jobs": examples})
        assert first.status_code == 200, first.text
        assert sorted(first.json()["created"]) == sorted(e["name"] for e in examples)
        again = (await c.post("/jobs/apply", json={"jobs": examples})).json()
    assert sorted(again["unchanged"]) == sorted(e["name"] for e in examples), again
