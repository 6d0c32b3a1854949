"""Cost grows with the work, not the history (issue #18, target 6): the statements the SQL store sends for a
claim, a run's start and finish and a job's history page (``limit=50``) find their rows through an index -
no full scan of ``runs`` (or ``jobs``), and the history page is read in index order (no sort of the job's
whole history). Checked with the database's own planner: SQLite's ``EXPLAIN QUERY PLAN``, MariaDB's
``EXPLAIN``, on every statement the store actually sent (captured from the engine), with its parameters,
over hundreds of runs and thousands of jobs (so that MariaDB's optimizer has no reason to prefer a scan).
The page of jobs with their summaries that ``GET /jobs`` reads is checked the same way."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from chronos_adapters.sql import SqlStore, migrate
from chronos_core.models import RunStatus
from chronos_core.planning import plan_due_job
from tests.contracts.test_store_contract import T0, S, make_job

JOBS = 10
SLOTS = 60  # 600 finished runs before the measured calls, 60 per job
IDLE = 3000  # stored jobs not due (an hour away), as most of a large installation's are
BIG = ("runs", "jobs")  # the tables that grow with the history and the jobs


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    url = (f"sqlite:///{tmp_path / 'chronos.db'}" if request.param == "sqlite"
           else str(request.getfixturevalue("fresh_mysql_url")))
    migrate(url)
    s = SqlStore(url, pool_size=2, create_schema=False)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@contextmanager
def captured(store: SqlStore) -> Iterator[list[tuple[str, Any]]]:
    """The statements (with their first parameter set) the store sends meanwhile."""
    sent: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
               executemany: bool) -> None:
        sent.append((statement, parameters[0] if executemany and parameters else parameters))

    event.listen(store.engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(store.engine, "before_cursor_execute", before)


def explainable(statement: str) -> bool:
    """A read or write of a big table that the planner can explain."""
    words = statement.lstrip().split(None, 1)
    verb = words[0].upper() if words else ""
    return verb in ("SELECT", "UPDATE", "DELETE", "WITH") and \
        any(re.search(rf"\b{t}\b", statement) for t in BIG)


def plan_problems(store: SqlStore, statement: str, parameters: Any) -> list[str]:
    """What is wrong with the plan of one statement: a full scan of a big table, or a sort of rows found
    (``ORDER BY`` not served by the index). Statements that touch no big table, or that the planner
    cannot explain (``INSERT ... VALUES``, ``COMMIT``), have no plan to check."""
    if not explainable(statement):
        return []
    problems = []
    sqlite = store.engine.dialect.name == "sqlite"

    def explain() -> tuple[list[Any], list[str]]:
        with store.engine.connect() as conn:
            result = conn.exec_driver_sql(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement,
                                          parameters or ())
            return [tuple(r) for r in result], list(result.keys())
    rows, names = store.run_blocking(explain)
    for row in rows:
        r = dict(zip(names, row, strict=True))
        if sqlite:
            detail = str(r["detail"])
            for t in BIG:
                if re.fullmatch(rf"SCAN (TABLE )?{t}( AS \w+)?", detail):
                    problems.append(f"full scan of {t}: {detail}")
            if "TEMP B-TREE" in detail and "ORDER BY" in detail and "LIMIT" in statement.upper():
                problems.append(f"sorts what it found: {detail}")
        else:
            if r.get("table") in BIG and r.get("type") == "ALL":
                problems.append(f"full scan of {r['table']}: {r}")
            if r.get("table") in BIG and "filesort" in str(r.get("Extra") or "") and \
                    "LIMIT" in statement.upper():
                problems.append(f"sorts what it found: {r}")
    return [f"{p}\n  in: {' '.join(statement.split())[:400]}" for p in problems]


async def _history(store: SqlStore) -> list[str]:
    """JOBS due jobs with SLOTS finished runs each, and IDLE jobs not due; the due jobs' ids."""
    jobs = [make_job(f"plan-{i}") for i in range(JOBS)]
    await store.add_jobs(jobs)
    idle = [make_job(f"idle-{i}", next_run_at=T0 + 3600 * S) for i in range(IDLE)]
    for i in range(0, IDLE, 500):
        await store.add_jobs(idle[i:i + 500])
    for k in range(SLOTS):
        now = T0 + k * S + S / 10
        claim = await store.claim_due(now, JOBS, plan_due_job)
        for d in claim.dispatch:
            assert await store.start_run(d.run.id, "w", now, now + S)
            assert await store.finish_run(d.run.id, "w", status=RunStatus.SUCCEEDED, finished_at=now)
    if store.engine.dialect.name != "sqlite":
        def analyze() -> None:
            with store.engine.begin() as conn:  # InnoDB's statistics, as it updates them by itself in time
                conn.execute(text("ANALYZE TABLE runs, jobs"))
        store.run_blocking(analyze)
    return [j.id for j in jobs]


async def test_claim_start_finish_and_history_use_indexes(store: SqlStore) -> None:
    job_ids = await _history(store)
    now = T0 + SLOTS * S + S / 10
    calls: dict[str, list[tuple[str, Any]]] = {}
    with captured(store) as sent:
        claim = await store.claim_due(now, JOBS, plan_due_job)
    calls["claim"] = sent
    assert len(claim.dispatch) == JOBS
    run = claim.dispatch[0].run
    with captured(store) as sent:
        assert await store.start_run(run.id, "w", now, now + S)
    calls["start"] = sent
    with captured(store) as sent:
        assert await store.finish_run(run.id, "w", status=RunStatus.FAILED, finished_at=now, error="x",
                                      retry=dataclasses.replace(run, id=run.id[:-4] + "beef", attempt=2,
                                                                due_at=now + S))
    calls["finish"] = sent
    with captured(store) as sent:
        page = await store.list_runs(job_ids[7], limit=50)
    calls["history"] = sent
    assert len(page) == 50 and all(r.job_id == job_ids[7] for r in page)
    # the jobs listing (GET /jobs): a page of jobs with their summaries joined, in one query, first and
    # later pages, read in the primary key's order (no sort of every job)
    with captured(store) as sent:
        first = await store.list_jobs_with_summaries(limit=101)
        later = await store.list_jobs_with_summaries(after=first[-1][0].id, limit=101)
    calls["jobs listing"] = sent
    assert len(first) == len(later) == 101
    assert len([s for s, _ in sent if s.lstrip().upper().startswith("SELECT")]) == 2  # one query a page
    assert all(any(explainable(s) for s, _ in stmts) for stmts in calls.values()), calls
    problems = [f"{what}: {p}" for what, stmts in calls.items() for s, params in stmts
                for p in plan_problems(store, s, params)]
    assert not problems, "\n".join(problems)
