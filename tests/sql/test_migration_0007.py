"""Migration 0007: ``jobs.next_offset`` (the jitter order of a job's next slot) and the claim's index
(status, next_run_at, next_offset). A database with jobs from before upgrades: they get offset 0, the claim
still claims them, and from their next slot on the claim orders the jittered ones by their offset."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, text

from chronos_adapters.sql import SqlStore
from chronos_adapters.sql.engine import open_engine, run_blocking
from chronos_adapters.sql.migrate import alembic_config, migrate
from chronos_core.planning import jitter_order, plan_due_job
from tests.contracts.test_store_contract import T0, S, make_job


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chronos.db'}"
    return str(request.getfixturevalue("fresh_mysql_url"))


def _sql(url: str, work: Any) -> Any:
    engine, _ = open_engine(url, pool_size=1)

    def go() -> Any:
        try:
            with engine.connect() as conn:
                out = work(conn)
                conn.commit()
                return out
        finally:
            engine.dispose()
    return run_blocking(engine, go)


async def test_jobs_from_before_0007_get_offset_0_and_are_ordered_from_their_next_slot(url: str) -> None:
    jobs = [dataclasses.replace(make_job(f"old{i}"), jitter=30.0) for i in range(12)]

    def at_0006_with_jobs(conn: Any) -> None:
        command.upgrade(alembic_config(conn), "0006")
        conn.commit()
        for j in jobs:  # the columns of 0006 (no next_offset)
            conn.execute(text(
                "INSERT INTO jobs (id, name, type, payload, schedule, timezone, retry, overlap, misfire, "
                "misfire_grace, status, created_at, updated_at, next_run_at, jitter) VALUES (:id, :name, "
                "'shell', '{}', :schedule, 'UTC', '{}', 'allow', 'fire_once', 5, 'active', :at, :at, :next, "
                ":jitter)"), {"id": j.id, "name": j.name, "schedule": j.schedule, "jitter": j.jitter,
                              "at": "2029-12-31 12:00:00.000000", "next": "2030-01-01 12:00:00.000000"})
            conn.execute(text("INSERT INTO job_summaries (job_id) VALUES (:id)"), {"id": j.id})
    _sql(url, at_0006_with_jobs)
    migrate(url)

    def state(conn: Any) -> tuple[set[int], dict[str, list[str]]]:
        offsets = {r[0] for r in conn.execute(text("SELECT next_offset FROM jobs"))}
        indexes = {i["name"]: [c for c in i["column_names"] if c] for i in inspect(conn).get_indexes("jobs")}
        return offsets, indexes
    offsets, indexes = _sql(url, state)
    assert offsets == {0}
    assert indexes.get("ix_jobs_status_next_run_at_next_offset") == ["status", "next_run_at", "next_offset"]
    assert "ix_jobs_status_next_run_at" not in indexes
    store = SqlStore(url, pool_size=2, create_schema=False)
    await store.start()
    try:
        first = await store.claim_due(T0, 100, plan_due_job)  # the old rows: all claimed, as before
        assert first.jobs == 12 and first.waiting == 12
        order = sorted(jobs, key=lambda j: jitter_order(j.id, T0 + S, j.jitter))
        claimed = []
        for _ in range(3):
            claim = await store.claim_due(T0 + S, 4, plan_due_job)
            runs = await store.list_runs(limit=100)
            claimed.append({r.job_id for r in runs if r.scheduled_for == T0 + S} - set().union(*claimed))
        assert claimed == [{j.id for j in order[k:k + 4]} for k in (0, 4, 8)]
        assert claim.jobs == 4
    finally:
        await store.stop()
