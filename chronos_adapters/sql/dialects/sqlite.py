"""SQLite's statements. Writers are serialized (``BEGIN IMMEDIATE`` and the store's writer lock, see
``engine.Database``), so nothing is locked by row and a compare-and-set is a read then an update in the
same transaction.

The batches are statements that handle a whole batch of rows in one step. CPython's ``sqlite3`` releases
the GIL around every step of a statement: an ``executemany`` of N rows, or a SELECT that returns N rows,
lets go of the GIL and takes it back N times. Beside a busy event-loop thread every one of those
re-acquisitions waits for that thread to yield (the "convoy effect"): 1,000 run starts as one executemany
took 4 ms alone and 500 ms next to a busy thread, and the same starts as the two statements below 21 ms.
So the hot writes go through :func:`insert_rows` (a multi-row ``INSERT``), :func:`update_from_values`
(an ``UPDATE … FROM (VALUES …)`` keyed by id) and :func:`select_folded` (SELECTs folded into one row with
``group_concat``). Separators are ASCII control characters, which neither ids, stored datetimes nor JSON
text (it escapes them) contain."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Integer, Table, func

from chronos_core.models import JobSummary, Run, RunStatus

from ..rows import SUMMARIES, RunRows, cut, memo
from ..tables import UtcDateTime, from_utc_text, job_summaries, jobs, runs, utc_text
from .base import Dialect, DueRow, Finish, Finished, Start, chunks

__all__ = ["FIELD", "RECORD", "SqliteDialect", "in_list", "insert_rows", "select_folded",
           "update_from_values"]


# the batch statements -----------------------------------------------------------------------------

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


# the dialect --------------------------------------------------------------------------------------

_NULL = "\x1d"  # a NULL column of a folded row (SQL: char(29))
_QUEUED, _RUNNING = RunStatus.QUEUED.value, RunStatus.RUNNING.value


def _folded(conn: Connection, expressions: Sequence[str], rest: str,
            params: Sequence[Any] = ()) -> list[list[str | None]]:
    """``SELECT expressions rest`` folded into one row (see :func:`select_folded`), NULLs as None."""
    fields = " || char(31) || ".join(f"coalesce({e}, char(29))" for e in expressions)
    return [[None if part == _NULL else part for part in parts]
            for parts in select_folded(conn, fields, rest, params)]


def _readers(table: Table, columns: Sequence[str]) -> list[Callable[[str | None], Any]]:
    """How each column comes back from a folded row (as text): datetimes and integers converted."""
    def integer(text: str | None) -> int | None:
        return None if text is None else int(text)

    out: list[Callable[[str | None], Any]] = []
    for name in columns:
        kind = table.c[name].type
        out.append(from_utc_text if isinstance(kind, UtcDateTime)
                   else integer if isinstance(kind, Integer) else (lambda text: text))
    return out


def _from_values(columns: Sequence[str], fixed: str = "") -> str:
    """The SET of an ``UPDATE … FROM (VALUES (id, c1, c2 …))``: each column from its value."""
    sets = [f"{c} = v.column{i}" for i, c in enumerate(columns, start=2)]
    return ", ".join([*sets, fixed] if fixed else sets)


class SqliteDialect(Dialect):
    name = "sqlite"
    mark = "?"

    def __init__(self, engine: Engine, rows: RunRows, writer: str) -> None:
        super().__init__(engine, rows, writer)
        # (the offset as text that sorts as the number: see due_jobs)
        self._due = ["next_run_at", "printf('%015d', next_offset)", "id",
                     f"json_array({', '.join(self.definition)})"]
        # only the slot key: any other constraint (a primary key) still fails the statement
        slot_key = ", ".join(self.quote(c) for c in ("job_id", "scheduled_for", "attempt"))
        self._skip_taken = f" ON CONFLICT ({slot_key}) DO NOTHING"
        self._start_set = _from_values(["started_at", "owner", "lease_expires_at"],
                                       f"status = '{_RUNNING}', dispatch_due_at = NULL")
        self._finish_columns = ["status", "finished_at", "exit_code", "output", "error", "output_lines",
                                "result"]
        self._finish_set = _from_values(self._finish_columns,
                                        "lease_expires_at = NULL, dispatch_due_at = NULL")
        self._summary_readers = _readers(job_summaries, SUMMARIES.columns)
        quoted = [self.quote(c) for c in SUMMARIES.columns]
        self._summary_head = f"INSERT INTO job_summaries (job_id, {', '.join(quoted)})"
        self._summary_tail = (" ON CONFLICT (job_id) DO UPDATE SET "
                              + ", ".join(f"{c} = excluded.{c}" for c in quoted))
        self._counts = [(f"INSERT INTO {table} (bucket, {key}, status, n)",
                         f" ON CONFLICT (bucket, {key}, status) DO UPDATE SET n = {table}.n + excluded.n")
                        for table, key in (("run_counts", "writer"), ("job_run_counts", "job_id"))]
        self._datetimes = {c.name for c in runs.c if isinstance(c.type, UtcDateTime)}

    def name_prefix(self, name: str) -> ColumnElement[bool]:
        # LIKE is case-insensitive on SQLite: compare the prefix exactly
        return func.substr(jobs.c.name, 1, len(name)) == name

    def stored_time(self, value: Any) -> datetime:
        at = from_utc_text(value)
        assert at is not None
        return at

    # the claim ----------------------------------------------------------------------------------
    def due_jobs(self, conn: Connection, status: str, now: datetime, limit: int) -> list[DueRow]:
        # the version is the definition as JSON
        due = _folded(conn, self._due, "FROM jobs WHERE status = ? AND next_run_at <= ? "
                      "ORDER BY next_run_at, next_offset LIMIT ?", (status, utc_text(now), limit))
        due.sort()  # by next_run_at (stored text sorts as time), next_offset: the folded order
        return [(self.stored_time(r[0]), str(r[2]), r[3]) for r in due]

    def set_next_run_at(self, conn: Connection, next_at: dict[datetime | None, list[str]]) -> None:
        update_from_values(conn, "jobs", _from_values(["next_run_at"]), [
            (job_id, text) for value, job_ids in next_at.items()
            for text in [None if value is None else utc_text(value)] for job_id in job_ids])

    def set_next_offsets(self, conn: Connection, offsets: Sequence[tuple[str, int]]) -> None:
        update_from_values(conn, "jobs", _from_values(["next_offset"]), offsets)

    def insert_runs(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        insert_rows(conn, self.insert_head, rows)

    def insert_new_runs(self, conn: Connection, planned: Sequence[Run],
                        rows: list[tuple[Any, ...]]) -> set[str]:
        # the unique slot key finds the taken slots (ON CONFLICT DO NOTHING: a slot planned twice in
        # this batch too); the ids left out are looked up only when the count falls short (they are new
        # ids, so every one present was inserted here)
        if insert_rows(conn, self.insert_head, rows, self._skip_taken) == len(rows):
            return set()
        return self.missing_ids(conn, [r.id for r in planned])

    # the group commit ---------------------------------------------------------------------------
    def update_runs(self, conn: Connection, rows: Sequence[dict[str, Any]],
                    fixed: dict[str, Any] | None = None) -> int:
        # an executemany (in-process, cheap), datetimes converted as for inserts
        if not rows:
            return 0
        fixed = fixed or {}
        cols = [c for c in rows[0] if c != "id"]
        dt = memo(utc_text)
        times = self._datetimes
        sets = ", ".join(f"{self.quote(c)} = ?" for c in [*cols, *fixed])
        tail = tuple(dt(v) if c in times else v for c, v in fixed.items())
        return int(conn.exec_driver_sql(f"UPDATE runs SET {sets} WHERE id = ?", [
            tuple(dt(r[c]) if c in times else r[c] for c in cols) + tail + (r["id"],) for r in rows]
        ).rowcount)

    def _states(self, conn: Connection, run_ids: Collection[str],
                more: Sequence[str] = ()) -> dict[str, list[str | None]]:
        """(status, owner, *more) of each of ``run_ids`` that exists, folded into one row per chunk.
        The status is compared by the caller, not in SQL: given a long IN list and a status, SQLite's
        planner (without ANALYZE) prefers the status index and would scan every such run."""
        states: dict[str, list[str | None]] = {}
        for chunk in chunks(sorted(run_ids)):
            for run_id, *state in _folded(conn, ["id", "status", "owner", *more],
                                          f"FROM runs WHERE id IN ({in_list(chunk)})", chunk):
                states[str(run_id)] = state
        return states

    def start_runs(self, conn: Connection, starts: Sequence[Start]) -> list[bool] | None:
        dt = memo(utc_text)
        states = self._states(conn, {op.run_id for op in starts})
        results: list[bool] = []
        applied: list[tuple[Any, ...]] = []
        for op in starts:
            state = states.pop(op.run_id, None)  # (a second start of the same run in a batch loses)
            results.append(state is not None and state[0] == _QUEUED)
            if results[-1]:
                applied.append((op.run_id, dt(op.now), op.owner, dt(op.until)))
        update_from_values(conn, "runs", self._start_set, applied, f"runs.status = '{_QUEUED}'")
        return results

    def finish_runs(self, conn: Connection, finishes: Sequence[Finish]
                    ) -> tuple[list[bool], list[Finished]] | None:
        dt = memo(utc_text)
        cap = self.rows.cap
        facts = self._states(conn, {fin.run_id for fin in finishes}, ["job_id", "scheduled_for",
                                                                      "started_at"])
        results: list[bool] = []
        done: list[tuple[Any, ...]] = []
        applied: list[Finished] = []
        for fin in finishes:
            fact = facts.get(fin.run_id)
            results.append(fact is not None and fact[0] == _RUNNING and fact[1] == fin.owner)
            if fact is not None and results[-1]:
                del facts[fin.run_id]  # a second finish of the same run in this batch loses
                done.append((fin.run_id, fin.status.value, dt(fin.finished_at), fin.exit_code,
                             cap(fin.output), cut(fin.error), fin.output_lines, fin.result))
                applied.append(Finished(fin.run_id, str(fact[2]), fin.status, self.stored_time(fact[3]),
                                        from_utc_text(fact[4]), fin.finished_at))
        update_from_values(conn, "runs", self._finish_set, done, f"runs.status = '{_RUNNING}'")
        return results, applied

    def read_summaries(self, conn: Connection, job_ids: Collection[str]) -> dict[str, JobSummary]:
        summaries: dict[str, JobSummary] = {}
        readers = self._summary_readers
        ids = sorted(job_ids)
        for chunk in chunks(ids):
            for job_id, *parts in _folded(conn, ["job_id", *SUMMARIES.columns],
                                          f"FROM job_summaries WHERE job_id IN ({in_list(chunk)})",
                                          chunk):
                summaries[str(job_id)] = SUMMARIES.load(
                    [read(part) for read, part in zip(readers, parts, strict=True)])
        return summaries

    def write_summaries(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        insert_rows(conn, self._summary_head, rows, self._summary_tail)

    def add_counts(self, conn: Connection, totals: list[tuple[Any, ...]],
                   per_job: list[tuple[Any, ...]]) -> None:
        for (head, tail), rows in zip(self._counts, (totals, per_job), strict=True):
            insert_rows(conn, head, rows, tail)
