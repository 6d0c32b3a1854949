"""Running one executor directly, outside the engines: a job, a run and a log sink that records lines."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chronos_core.ids import new_id
from chronos_core.models import (
    Job,
    JobStatus,
    MisfirePolicy,
    OverlapPolicy,
    Run,
    RunStatus,
    Trigger,
)
from chronos_core.retry import RetryPolicy

SLOT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_job(type_: str, payload: dict[str, Any], **kw: Any) -> Job:
    now = datetime.now(UTC)
    return Job(id=new_id(), name=f"t-{new_id()}", type=type_, payload=payload, schedule=None,
               timezone="UTC", retry=RetryPolicy(), timeout=kw.pop("timeout", None),
               overlap=OverlapPolicy.ALLOW, misfire=MisfirePolicy.FIRE_ONCE, misfire_grace=5.0,
               status=JobStatus.ACTIVE, created_at=now, updated_at=now, **kw)


def make_run(job: Job, attempt: int = 1, scheduled_for: datetime = SLOT) -> Run:
    now = datetime.now(UTC)
    return Run(id=new_id(), job_id=job.id, scheduled_for=scheduled_for, trigger=Trigger.MANUAL,
               attempt=attempt, status=RunStatus.RUNNING, created_at=now, due_at=now, started_at=now)


@dataclass
class Lines:
    """A log sink that keeps (stream, line) pairs."""

    items: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, line: str, stream: str = "stdout") -> None:
        self.items.append((stream, line))

    def of(self, stream: str = "stdout") -> list[str]:
        return [line for s, line in self.items if s == stream]

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.items)


def children_running(word: str) -> list[int]:
    """This process's children whose command line has ``word``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == os.getpid() and word.encode() in cmdline:
                found.append(int(entry))
    return found


def live_group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of process group ``pgid``, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != b"Z":
                members.append(int(entry))
    return members
