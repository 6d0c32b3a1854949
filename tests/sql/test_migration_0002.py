"""Upgrading a database with history to 0002: each existing job gets its summary from the runs kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert

from chronos_adapters.sql import SqlStore
from chronos_adapters.sql.engine import open_engine, run_blocking
from chronos_adapters.sql.migrate import alembic_config
from chronos_adapters.sql.rows import JOBS
from chronos_adapters.sql.tables import jobs, runs
from chronos_core.models import JobSummary, RunStatus
from tests.contracts.test_store_contract import T0, S, make_job, make_run

# job columns added by later migrations (0004: the hooks)
_LATER = {"notify", "chain", "pause_after_failures", "alert_after", "jitter", "exclude", "paused_reason"}


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chronos.db'}"
    return str(request.getfixturevalue("fresh_mysql_url"))


async def test_existing_jobs_get_summaries_from_their_history(url: str) -> None:
    busy, idle = make_job("busy"), make_job("idle")
    history = [
        make_run(busy, T0, status=RunStatus.SUCCEEDED, finished_at=T0 + S),
        make_run(busy, T0 + 10 * S, status=RunStatus.FAILED, finished_at=T0 + 11 * S),
        make_run(busy, T0 + 20 * S, status=RunStatus.MISSED),  # a record: it did not run
        make_run(busy, T0 + 30 * S, status=RunStatus.TIMED_OUT, finished_at=T0 + 33 * S),
    ]
    engine, _ = open_engine(url, pool_size=1)

    def at_0001_with_history() -> None:
        try:
            with engine.connect() as conn:
                cfg = alembic_config(conn)
                command.upgrade(cfg, "0001")
                conn.commit()
                conn.execute(insert(jobs), [{k: v for k, v in JOBS.row(j).items() if k not in _LATER}
                                            for j in (busy, idle)])
                for run in history:
                    started = None if run.status is RunStatus.MISSED else run.scheduled_for
                    conn.execute(insert(runs).values(
                        id=run.id, job_id=run.job_id, scheduled_for=run.scheduled_for,
                        trigger=run.trigger.value, attempt=run.attempt, status=run.status.value,
                        created_at=run.created_at, due_at=run.due_at, started_at=started,
                        finished_at=run.finished_at, output="x"))
                conn.commit()
        finally:
            engine.dispose()
    run_blocking(engine, at_0001_with_history)  # (an asyncio driver's engine: on a loop of its own)
    store = SqlStore(url)  # upgrades to head on start
    await store.start()
    try:
        got = await store.job_summaries([busy.id, idle.id])
        assert got[idle.id] == JobSummary()
        last = history[3]
        assert got[busy.id] == JobSummary(
            last_run_id=last.id, last_run_status=RunStatus.TIMED_OUT, last_run_scheduled_for=T0 + 30 * S,
            last_run_started_at=T0 + 30 * S, last_run_finished_at=T0 + 33 * S, last_success_at=T0 + S,
            last_failure_at=T0 + 33 * S, consecutive_failures=2,
            consecutive_failed_slots=2)  # (0004: as many as the failed attempts)
        assert (await store.get_run(history[0].id)).output_lines == 0  # old rows: counted from now on
        assert [j.id for j in await store.list_jobs(last_status={RunStatus.TIMED_OUT})] == [busy.id]
    finally:
        await store.stop()
