"""SQLite statements that handle a whole batch of rows in one step.

CPython's ``sqlite3`` releases the GIL around every step of a statement: an ``executemany`` of N rows, or a
SELECT that returns N rows, lets go of the GIL and takes it back N times. Beside a busy event-loop thread
every one of those re-acquisitions waits for that thread to yield (the "convoy effect"): 1,000 run starts
as one executemany took 4 ms alone and 500 ms next to a busy thread, and the same starts as the two
statements below 21 ms. So the store's hot writes on SQLite go through these helpers: a multi-row
``INSERT``, an ``UPDATE … FROM (VALUES …)`` keyed by id, and SELECTs folded into one row with
``group_concat``. Separators are ASCII control characters, which neither ids, stored datetimes nor JSON
text (it escapes them) contain.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection

__all__ = ["FIELD", "RECORD", "in_list", "insert_rows", "select_folded", "update_from_values"]

FIELD = "\x1f"  # between the fields of one folded row (SQL: char(31))
RECORD = "\x1e"  # between folded rows (SQL: char(30))
_MAX_VARIABLES = 30_000  # SQLite >= 3.32 allows 32,766 bound parameters per statement
_MAX_ROWS = 500  # rows per statement: a handful of statement shapes stays in sqlite3's statement cache


def _parts(rows: Sequence[Sequence[Any]], width: int) -> Iterator[Sequence[Sequence[Any]]]:
    per = max(1, min(_MAX_ROWS, _MAX_VARIABLES // max(1, width)))
    for i in range(0, len(rows), per):
        yield rows[i:i + per]


def insert_rows(conn: Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> int:
    """``head`` (``INSERT INTO t (a, b)``) ``VALUES (?, ?), (?, ?) …`` ``tail`` (e.g. ``ON CONFLICT …
    DO NOTHING``) in as few statements as the parameter limit allows; the number of rows inserted."""
    if not rows:
        return 0
    width = len(rows[0])
    mark = "(" + ", ".join("?" * width) + ")"
    count = 0
    for part in _parts(rows, width):
        flat = [value for row in part for value in row]
        sql = f"{head} VALUES {', '.join([mark] * len(part))}{tail}"
        count += conn.exec_driver_sql(sql, tuple(flat)).rowcount
    return count


def update_from_values(conn: Connection, table: str, assignments: str, rows: Sequence[Sequence[Any]],
                       where: str = "", params: Sequence[Any] = ()) -> int:
    """``UPDATE table SET assignments FROM (VALUES (id, …), …) AS v WHERE table.id = v.column1 [AND
    where]``: each row's own values by id, one statement per chunk. ``assignments`` refer to the values
    as ``v.column2``, ``v.column3``…; ``params`` are bound after each chunk's values (for ``?`` in
    ``assignments`` and ``where``, in that order). The number of rows changed."""
    if not rows:
        return 0
    width = len(rows[0])
    mark = "(" + ", ".join("?" * width) + ")"
    extra = f" AND {where}" if where else ""
    count = 0
    for part in _parts(rows, width + len(params)):
        flat = [value for row in part for value in row]
        sql = (f"UPDATE {table} SET {assignments} FROM (VALUES {', '.join([mark] * len(part))}) AS v "
               f"WHERE {table}.id = v.column1{extra}")
        count += conn.exec_driver_sql(sql, (*flat, *params)).rowcount
    return count


def select_folded(conn: Connection, fields: str, rest: str, params: Sequence[Any] = ()) -> list[list[str]]:
    """``SELECT fields rest`` folded into a single row and split again: ``fields`` is one SQL text
    expression per row, its parts joined with ``char(31)`` (see :data:`FIELD`); the rows come back as
    lists of strings (NULL parts become ``''`` unless the expression says otherwise). ``rest`` is the
    query's FROM/WHERE/ORDER/LIMIT; the order of the rows is that of ``rest``."""
    sql = f"SELECT group_concat(x, char(30)) FROM (SELECT {fields} AS x {rest})"
    text = conn.exec_driver_sql(sql, tuple(params)).scalar()
    if not text:
        return []
    return [record.split(FIELD) for record in text.split(RECORD)]


def in_list(values: Sequence[Any]) -> str:
    """``?, ?, …`` for an IN list of ``values``."""
    return ", ".join("?" * len(values))
