"""The one-step SQLite statements of ``dialects/sqlite.py``: what they write and read, across chunk bounds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine

from chronos_adapters.sql.dialects import sqlite as sqlite_batch


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[Connection]:
    engine = create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    with engine.connect() as c:
        c.exec_driver_sql("CREATE TABLE t (id TEXT PRIMARY KEY, a INTEGER, b TEXT, UNIQUE (a))")
        yield c
    engine.dispose()


def _rows(conn: Connection) -> list[tuple[str, int, str | None]]:
    return [tuple(r) for r in conn.exec_driver_sql("SELECT id, a, b FROM t ORDER BY a")]  # type: ignore[misc]


def test_insert_rows_spans_statements_and_counts_what_was_inserted(conn: Connection) -> None:
    rows = [(f"r{i:04d}", i, None if i % 3 else f"b{i}") for i in range(1234)]  # 3 statements of <= 500
    assert sqlite_batch.insert_rows(conn, "INSERT INTO t (id, a, b)", rows) == 1234
    assert _rows(conn) == rows
    again = [(f"x{i:04d}", i, "new") for i in range(1230, 1240)]  # 4 taken values of a, 6 free
    assert sqlite_batch.insert_rows(conn, "INSERT INTO t (id, a, b)", again,
                                    " ON CONFLICT (a) DO NOTHING") == 6
    assert len(_rows(conn)) == 1240
    assert sqlite_batch.insert_rows(conn, "INSERT INTO t (id, a, b)", []) == 0


def test_update_from_values_sets_each_rows_own_values_by_id(conn: Connection) -> None:
    sqlite_batch.insert_rows(conn, "INSERT INTO t (id, a, b)", [(f"r{i:04d}", i, "old") for i in range(700)])
    changes = [(f"r{i:04d}", f"new{i}") for i in range(0, 700, 2)] + [("missing", "x")]
    assert sqlite_batch.update_from_values(conn, "t", "b = v.column2", changes, "t.a < ?", (600,)) == 300
    got = {row[0]: row[2] for row in _rows(conn)}
    assert got["r0000"] == "new0" and got["r0598"] == "new598"
    assert got["r0001"] == "old" and got["r0600"] == "old"  # odd ids untouched; a >= 600 excluded
    assert sqlite_batch.update_from_values(conn, "t", "b = v.column2", []) == 0


def test_select_folded_returns_the_rows_in_order_as_strings(conn: Connection) -> None:
    sqlite_batch.insert_rows(conn, "INSERT INTO t (id, a, b)",
                             [("r1", 1, "x,y"), ("r2", 2, None), ("r3", 3, "z")])
    got = sqlite_batch.select_folded(conn, "id || char(31) || a || char(31) || coalesce(b, char(29))",
                                     "FROM t WHERE a >= ? ORDER BY a DESC", (2,))
    assert got == [["r3", "3", "z"], ["r2", "2", "\x1d"]]
    assert sqlite_batch.select_folded(conn, "id", "FROM t WHERE a > ?", (99,)) == []
