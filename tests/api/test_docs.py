"""The API's documentation as served: each job type's payload in /openapi.json (plugins included)."""

from __future__ import annotations

from typing import Any, ClassVar

from chronos_core import ExecutionResult, Executor, Job, Payload, Run
from chronos_core.ports import LogSink
from tests.api.conftest import build_app, running


class SlackPayload(Payload):
    """Posts a message to a Slack channel."""

    channel: str
    text: str


class SlackExecutor(Executor):
    type_name: ClassVar[str] = "slack"

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        return ExecutionResult(ok=True)


def _schemas(doc: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = doc["components"]["schemas"]
    return schemas


async def test_each_job_type_payload_is_a_variant_discriminated_by_type() -> None:
    app = build_app()
    async with running(app) as c:
        doc = (await c.get("/openapi.json")).json()
        schemas = _schemas(doc)
        spec = schemas["JobSpec"]
        assert spec["discriminator"]["propertyName"] == "type"
        assert spec["discriminator"]["mapping"] == {t: f"#/components/schemas/{t.capitalize()}Job"
                                                    for t in ("email", "http", "python", "shell", "sql")}
        assert [v["$ref"] for v in spec["oneOf"]] == list(spec["discriminator"]["mapping"].values())
        http = schemas["HttpJob"]
        assert http["properties"]["type"] == {"type": "string", "const": "http", "title": "Type"}
        assert http["properties"]["payload"] == {"$ref": "#/components/schemas/HttpPayload"}
        assert {"name", "type"} <= set(http["required"])
        assert {"url", "method", "headers", "json", "expected_status"} <= set(
            schemas["HttpPayload"]["properties"])
        assert schemas["SqlPayload"]["required"] == ["connection", "statement"]
        for path, method in (("/jobs", "post"), ("/jobs/{job_id}", "put")):
            body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/JobSpec"}
        patch = doc["paths"]["/jobs/{job_id}"]["patch"]["requestBody"]["content"]
        assert list(patch) == ["application/merge-patch+json"]

        # a job type registered by a plugin (after start-up, even) is in the document too
        app.state.api.chronos.register_job_type("slack", SlackPayload, SlackExecutor())
        schemas = _schemas((await c.get("/openapi.json")).json())
        assert schemas["JobSpec"]["discriminator"]["mapping"]["slack"] == "#/components/schemas/SlackJob"
        assert schemas["SlackPayload"]["required"] == ["channel", "text"]
        assert schemas["SlackJob"]["description"] == (
            "A job of type 'slack'. Posts a message to a Slack channel.")
