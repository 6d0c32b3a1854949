"""The SQL store binds datetimes of its hot statements itself, without SQLAlchemy's per-value processors:
the values must be exactly what ``UtcDateTime`` binds (on SQLite the stored text is compared and makes the
unique slot key, so one character of difference would let a slot be claimed twice)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import mysql, sqlite

from chronos_adapters.sql.store import _from_sqlite_text, _memo, _naive, _sqlite_text
from chronos_adapters.sql.tables import runs

VALUES = [
    datetime(2030, 1, 1, tzinfo=UTC),
    datetime(2030, 1, 1, 12, 30, 5, 7, tzinfo=UTC),
    datetime(2030, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2030, 6, 1, 1, 0, 0, 500000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2030, 6, 1, 1, 0, 0, tzinfo=timezone(-timedelta(hours=8))),
    datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),
]


@pytest.mark.parametrize("value", VALUES, ids=str)
def test_sqlite_text_is_what_sqlalchemy_stores(value: datetime) -> None:
    dialect = sqlite.dialect()
    bind = runs.c.scheduled_for.type._cached_bind_processor(dialect)
    assert bind is not None
    assert _sqlite_text(value) == bind(value)
    assert _from_sqlite_text(_sqlite_text(value)) == value
    assert _from_sqlite_text(_sqlite_text(value)).tzinfo is UTC  # type: ignore[union-attr]


@pytest.mark.parametrize("value", VALUES, ids=str)
def test_mysql_value_is_what_sqlalchemy_binds(value: datetime) -> None:
    dialect = mysql.dialect()
    bind = runs.c.scheduled_for.type._cached_bind_processor(dialect)
    assert bind is not None
    assert _naive(value) == bind(value) and _naive(value).tzinfo is None


def test_naive_datetimes_are_refused_as_by_the_column_type() -> None:
    with pytest.raises(ValueError, match="naive"):
        _sqlite_text(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        _naive(datetime(2030, 1, 1))


def test_memo_converts_each_value_once_and_passes_none() -> None:
    calls: list[datetime] = []

    def convert(value: datetime) -> str:
        calls.append(value)
        return _sqlite_text(value)

    dt = _memo(convert)
    a = VALUES[1]
    assert dt(None) is None
    assert dt(a) == dt(a.astimezone(timezone(timedelta(hours=2)))) == _sqlite_text(a)  # the same instant
    assert dt(VALUES[0]) == _sqlite_text(VALUES[0])
    assert calls == [a, VALUES[0]]
