"""Fuzzing the API from its own OpenAPI document (schemathesis): no 500, no response outside the schema.

Bounded to a few examples per operation so it stays fast; ``make fuzz`` runs it with more. The server is
the real app on SQLite (API only: the fuzzer's jobs are stored, never executed) behind uvicorn in a thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from chronos_app.api.routes import OPS
from tests.api.conftest import build_app

EXAMPLES = int(os.environ.get("CHRONOS_FUZZ_EXAMPLES", "15"))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("fuzz") / "chronos.db"  # the service's default store, SQLite
    app = build_app(worker=False, scheduler=False, allow_shell=False, database_url=f"sqlite:///{db}")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name="fuzz-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


# One test per documented operation but the SSE streams (they never end by themselves; their errors are
# covered in test_monitor.py). Driven through hypothesis directly: schemathesis's own pytest plugin does
# not support the pytest version we run.
OPERATIONS = [(op.method, op.path, GenerationMode.POSITIVE) for op in OPS
              if op.media_type != "text/event-stream"]
# negative cases (schema-violating input) for the operations that take input beyond an id in the path
OPERATIONS += [(op.method, op.path, GenerationMode.NEGATIVE) for op in OPS
               if op.media_type != "text/event-stream" and (op.body or op.query)]


@pytest.mark.parametrize(("method", "path", "mode"), OPERATIONS,
                         ids=[f"{m} {p} {g.value}" for m, p, g in OPERATIONS])
def test_api_conforms_to_its_schema(api_schema: schemathesis.BaseSchema, method: str, path: str,
                                    mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def fuzz(case: schemathesis.Case) -> None:
        # Schema-valid input may still be refused by the domain (a cron expression, a time zone, a job
        # type are checked semantically), so "valid data accepted" is not a check here; everything else is.
        case.call_and_validate(timeout=30, excluded_checks=[positive_data_acceptance])

    fuzz()


def test_stateful_sequences_follow_the_links(api_schema: schemathesis.BaseSchema, base_url: str) -> None:
    """Create jobs, then act on them through the OpenAPI links (get, replace, pause, run now, history,
    delete, read and cancel runs) in generated orders: no 500, every response as documented."""
    base = api_schema.exclude(path_regex=r"^/monitor/(logs|runs)").as_state_machine()

    class Machine(base):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            # Each scenario starts from an empty store, so hypothesis can replay it exactly.
            with httpx.Client(base_url=base_url, timeout=30) as c:
                while items := c.get("/jobs", params={"limit": 500}).json()["items"]:
                    for job in items:
                        c.delete(f"/jobs/{job['id']}")

        def before_call(self, case: schemathesis.Case) -> None:
            # Random strings rarely make a valid cron expression or payload: make most creations succeed
            # (keeping the generated name and policies) so the linked operations meet real jobs.
            if case.method == "POST" and case.path == "/jobs" and isinstance(case.body, dict):
                # the idempotency cache outlives a scenario: a replayed key would answer differently
                for name in [h for h in (case.headers or {}) if h.lower() == "idempotency-key"]:
                    del case.headers[name]
                if len(str(case.body.get("name", ""))) % 4:
                    case.body.update({"type": "http", "payload": {"url": "https://example.invalid/hook"},
                                      "schedule": "@hourly", "timezone": "UTC"})

        def validate_response(self, response, case, additional_checks=None, **kwargs):  # type: ignore[no-untyped-def]
            case.validate_response(response, excluded_checks=[positive_data_acceptance],
                                   transport_kwargs=kwargs)

    config = settings(max_examples=max(5, EXAMPLES // 3), stateful_step_count=8, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    # The server's answers depend on the clock (schedule previews) and fresh ids, so hypothesis's replay of
    # a scenario can draw differently; that says nothing about the API, so such a run is simply repeated.
    # Real findings (a 500, an off-schema response) fail at once.
    for attempt in range(3):
        try:
            Machine.run(settings=config)
            return
        except FlakyStrategyDefinition:
            if attempt == 2:
                raise
