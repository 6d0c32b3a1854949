"""Chronos's domain core: jobs, schedules, policies, runs, events, the engines and the ports.

Pure: imports the standard library, pydantic and nothing else of the outside world.
"""

from .clock import FakeClock, SystemClock
from .errors import (
    ChronosError,
    ExecutionFailed,
    FieldError,
    InvalidArgument,
    InvalidJob,
    InvalidSchedule,
    JobNotFound,
    NameConflict,
    RunConflict,
    RunNotFound,
    ShellNotAllowed,
    StoreUnavailable,
    SubscriptionOverflow,
    UnknownJobType,
)
from .models import (
    Event,
    EventType,
    Job,
    JobSpec,
    JobStatus,
    JobSummary,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    Trigger,
)
from .operations import Events, Jobs, Runs
from .payloads import EmailPayload, HttpPayload, JobTypes, Payload, PythonPayload, ShellPayload, SqlPayload
from .ports import (
    Claim,
    Clock,
    Dispatch,
    DispatchQueue,
    EventBus,
    ExecutionResult,
    Executor,
    LogSink,
    SlotPlan,
    Store,
    Subscription,
)
from .python import RunContext, function_ref
from .retry import RetryPolicy, RetryStrategy
from .scheduler import Scheduler
from .schedules import Schedule, parse_duration, parse_schedule
from .subscriptions import BufferedSubscription
from .worker import Worker

__all__ = [
    "BufferedSubscription",
    "ChronosError",
    "Claim",
    "Clock",
    "Dispatch",
    "DispatchQueue",
    "EmailPayload",
    "Event",
    "EventBus",
    "EventType",
    "Events",
    "ExecutionFailed",
    "ExecutionResult",
    "Executor",
    "FakeClock",
    "FieldError",
    "HttpPayload",
    "InvalidArgument",
    "InvalidJob",
    "InvalidSchedule",
    "Job",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "JobSummary",
    "JobTypes",
    "Jobs",
    "LogSink",
    "MisfirePolicy",
    "NameConflict",
    "OverlapPolicy",
    "Payload",
    "PythonPayload",
    "RetryPolicy",
    "RetryStrategy",
    "Run",
    "RunConflict",
    "RunContext",
    "RunNotFound",
    "RunStatus",
    "Runs",
    "Schedule",
    "Scheduler",
    "ShellNotAllowed",
    "ShellPayload",
    "SlotPlan",
    "SqlPayload",
    "Store",
    "StoreUnavailable",
    "Subscription",
    "SubscriptionOverflow",
    "SystemClock",
    "Trigger",
    "UnknownJobType",
    "Worker",
    "function_ref",
    "parse_duration",
    "parse_schedule",
]
