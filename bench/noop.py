"""A job type that does nothing, added through Chronos's executor registry like any user-defined type
(``chronos.register_job_type``), so the benchmark measures the scheduler rather than fork()."""

from __future__ import annotations

from typing import ClassVar

from chronos_core import ExecutionResult, Executor, Job, LogSink, Payload, Run

__all__ = ["NoopExecutor", "NoopPayload"]

_OK = ExecutionResult(ok=True)


class NoopPayload(Payload):
    """No fields: a no-op job carries nothing."""


class NoopExecutor(Executor):
    type_name: ClassVar[str] = "noop"

    async def execute(self, job: Job, run: Run, log: LogSink) -> ExecutionResult:
        return _OK
