"""The SQL store binds datetimes of its hot statements itself, as text, without SQLAlchemy's per-value
processors: on SQLite the text must be exactly what ``UtcDateTime`` stores (the stored text is compared and
makes the unique slot key, so one character of difference would let a slot be claimed twice); MySQL must
read it into the same instant that ``UtcDateTime`` binds."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from chronos_adapters.sql import SqlStore
from chronos_adapters.sql.rows import memo as _memo
from chronos_adapters.sql.tables import from_utc_text as _from_utc_text
from chronos_adapters.sql.tables import runs
from chronos_adapters.sql.tables import utc_text as _utc_text
from chronos_core.planning import plan_due_job
from tests.contracts.test_store_contract import make_job

VALUES = [
    datetime(2030, 1, 1, tzinfo=UTC),
    datetime(2030, 1, 1, 12, 30, 5, 7, tzinfo=UTC),
    datetime(2030, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2030, 6, 1, 1, 0, 0, 500000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2030, 6, 1, 1, 0, 0, tzinfo=timezone(-timedelta(hours=8))),
    datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),
]


@pytest.mark.parametrize("value", VALUES, ids=str)
def test_utc_text_is_what_sqlalchemy_stores(value: datetime) -> None:
    dialect = sqlite.dialect()
    bind = runs.c.scheduled_for.type._cached_bind_processor(dialect)
    assert bind is not None
    assert _utc_text(value) == bind(value)
    assert _from_utc_text(_utc_text(value)) == value
    assert _from_utc_text(_utc_text(value)).tzinfo is UTC  # type: ignore[union-attr]


@pytest.mark.mysql
async def test_mysql_reads_the_text_as_the_instant(fresh_mysql_url: str) -> None:
    """Slots written as text by the claim (insert, next_run_at, the due select's bound) are the instants
    that the SQLAlchemy reads and binds: read back equal, found by the existing-slots select."""
    base = datetime(2030, 1, 1, 12, 30, 5, tzinfo=UTC)
    slots = [base, base + timedelta(microseconds=7), base + timedelta(microseconds=999999),
             (base + timedelta(microseconds=500000)).astimezone(timezone(timedelta(hours=5, minutes=30)))]
    async with SqlStore(fresh_mysql_url) as store:
        made = [dataclasses.replace(make_job(f"j{i}", next_run_at=v), schedule="@every 1s", start_at=v)
                for i, v in enumerate(slots)]
        await store.add_jobs(made)
        claim = await store.claim_due(max(slots), 10, plan_due_job)
        assert sorted(d.run.scheduled_for for d in claim.dispatch) == sorted(slots)
        for d in claim.dispatch:
            assert (await store.get_run(d.run.id)).scheduled_for == d.run.scheduled_for
            assert (await store.get_job(d.job.id)).next_run_at == d.run.scheduled_for + timedelta(seconds=1)

        def existing() -> set[tuple[str, datetime, int]]:
            with store.engine.begin() as conn:
                return store._existing_slots(conn, [d.run for d in claim.dispatch])
        assert store.run_blocking(existing) == {
            (d.run.job_id, d.run.scheduled_for, 1) for d in claim.dispatch}


def test_naive_datetimes_are_refused_as_by_the_column_type() -> None:
    with pytest.raises(ValueError, match="naive"):
        _utc_text(datetime(2030, 1, 1))


def test_memo_converts_each_value_once_and_passes_none() -> None:
    calls: list[datetime] = []

    def convert(value: datetime) -> str:
        calls.append(value)
        return _utc_text(value)

    dt = _memo(convert)
    a = VALUES[1]
    assert dt(None) is None
    assert dt(a) == dt(a.astimezone(timezone(timedelta(hours=2)))) == _utc_text(a)  # the same instant
    assert dt(VALUES[0]) == _utc_text(VALUES[0])
    assert calls == [a, VALUES[0]]
