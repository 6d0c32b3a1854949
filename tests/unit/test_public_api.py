"""Pins the curated public API: changing it must be a deliberate edit of this test."""

from __future__ import annotations

import inspect
import subprocess
import sys

import chronos_app
import chronos_core
from chronos_app import Chronos

CORE = [
    "BackendUnavailable", "BrokerUnavailable",
    "BufferedSubscription", "ChronosError", "Claim", "Clock", "Dispatch", "DispatchQueue", "EmailPayload",
    "Event", "EventBus",
    "EventType", "Events", "ExecutionFailed", "ExecutionResult", "Executor", "FakeClock", "FieldError",
    "HttpPayload", "InvalidArgument", "PythonPayload", "RunContext", "function_ref", "InvalidJob",
    "InvalidSchedule", "Job", "JobNotFound", "JobSpec",
    "JobStatus", "JobSummary", "JobTypes",
    "Jobs", "LogSink", "MisfirePolicy", "NameConflict", "OverlapPolicy", "Payload", "RetryPolicy",
    "RetryStrategy", "Run", "RunConflict", "RunNotFound", "RunStatus", "Runs", "Schedule", "Scheduler",
    "ShellNotAllowed", "ShellPayload", "SlotPlan", "SqlPayload", "Store", "StoreUnavailable", "Subscription",
    "SubscriptionOverflow", "SystemClock", "Trigger", "UnknownJobType", "Worker", "parse_duration",
    "parse_schedule",
]


def test_core_all_is_pinned() -> None:
    assert sorted(chronos_core.__all__) == sorted(CORE)
    for name in chronos_core.__all__:
        assert getattr(chronos_core, name) is not None


def test_app_all_is_pinned_and_resolves() -> None:
    assert sorted(chronos_app.__all__) == ["Chronos", "Container", "Settings", "SyncChronos", "create_app"]
    for name in chronos_app.__all__:
        assert getattr(chronos_app, name) is not None


def test_embedding_does_not_import_the_web_stack() -> None:
    code = "import sys, chronos_app; print('starlette' in sys.modules, 'dependency_injector' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_chronos_facade() -> None:
    params = inspect.signature(Chronos.embedded).parameters
    assert list(params)[:2] == ["database_url", "allow_shell"]
    assert params["database_url"].default is None
    assert params["allow_shell"].kind is inspect.Parameter.KEYWORD_ONLY and params["allow_shell"].default
    assert {"executors", "executor_config", "options"} <= set(params)
    for name in ("register_job_type", "start", "stop", "__aenter__", "__aexit__"):
        assert callable(getattr(Chronos, name)), name
    assert list(inspect.signature(Chronos.stop).parameters) == ["self", "grace"]
    chronos = Chronos.embedded()
    assert isinstance(chronos.jobs, chronos_core.Jobs)
    assert isinstance(chronos.runs, chronos_core.Runs)
    assert isinstance(chronos.events, chronos_core.Events)
