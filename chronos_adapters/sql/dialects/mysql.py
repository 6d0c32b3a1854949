"""MySQL/MariaDB's statements (PyMySQL or asyncmy: the same paramstyle and escaping): concurrent
writers lock rows, so the claim takes its due jobs ``FOR UPDATE SKIP LOCKED`` (schedulers claim disjoint
jobs) and reads lock what they are about to change; a batch of compare-and-sets is one ``CASE`` update
per chunk (one round trip) whose WHERE holds the condition, tried in a savepoint and rolled back when any
row did not match. SQLAlchemy's MySQL dialects set ``CLIENT.FOUND_ROWS``: a rowcount is the rows
matched, changed or not."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Select, select

from chronos_core.models import JobSummary, Run, RunStatus

from ..rows import SUMMARIES, RunRows, cut, memo
from ..tables import job_summaries, jobs, runs, utc_text
from .base import CHUNK, Dialect, DueRow, Finish, Finished, Start, chunks

__all__ = ["MysqlDialect"]

_Guard = Callable[[list[dict[str, Any]]], tuple[str, list[Any]]]  # a chunk's extra WHERE and its params
_QUEUED, _RUNNING = RunStatus.QUEUED.value, RunStatus.RUNNING.value


def _driver(value: Any) -> Any:
    return utc_text(value) if isinstance(value, datetime) else value


def _marks(width: int, count: int) -> str:
    return ", ".join(["(" + ", ".join(["%s"] * width) + ")"] * count)


def _queued(_rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """A start's compare-and-set: the run is queued."""
    return " AND `status` = %s", [_QUEUED]


def _held_by(owners: dict[str, str | None]) -> _Guard:
    """A finish's compare-and-set: the run is running and held by the call's owner (NULL-safe)."""
    def guard(rows: list[dict[str, Any]]) -> tuple[str, list[Any]]:
        params: list[Any] = [_RUNNING]
        for r in rows:
            params += (r["id"], owners[r["id"]])
        return (f" AND `status` = %s AND `owner` <=> CASE `id` {' '.join(['WHEN %s THEN %s'] * len(rows))} "
                "END", params)
    return guard


class MysqlDialect(Dialect):
    name = "mysql"
    mark = "%s"

    def __init__(self, engine: Engine, rows: RunRows, writer: str) -> None:
        super().__init__(engine, rows, writer)
        # the version is a digest of the definition computed by MySQL; the index (status, next_run_at,
        # next_offset) serves the condition and the order
        self._due_sql = (f"SELECT next_run_at, id, SHA2(JSON_ARRAY({', '.join(self.definition)}), 256) "
                         "FROM jobs WHERE status = %s AND next_run_at <= %s "
                         "ORDER BY next_run_at, next_offset LIMIT %s FOR UPDATE SKIP LOCKED")
        quoted = [self.quote(c) for c in SUMMARIES.columns]
        self._summary_head = f"INSERT INTO job_summaries (job_id, {', '.join(quoted)})"
        self._summary_tail = " ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in quoted)
        self._counts = [f"INSERT INTO {table} (bucket, {key}, status, n)"
                        for table, key in (("run_counts", "writer"), ("job_run_counts", "job_id"))]

    def skip_locked(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update(skip_locked=True)

    def for_update(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update()

    def name_prefix(self, name: str) -> ColumnElement[bool]:
        # binary collation: LIKE is exact (and, unlike =, counts trailing blanks)
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        prefix: ColumnElement[bool] = jobs.c.name.like(escaped + "%", escape="\\")
        return prefix

    def stored_time(self, value: Any) -> datetime:
        at: datetime = value.replace(tzinfo=UTC)
        return at

    # the claim ----------------------------------------------------------------------------------
    def due_jobs(self, conn: Connection, status: str, now: datetime, limit: int) -> list[DueRow]:
        due = conn.exec_driver_sql(self._due_sql, (status, utc_text(now), limit)).all()
        return [(r[0].replace(tzinfo=UTC), r[1], r[2]) for r in due]

    def set_next_run_at(self, conn: Connection, next_at: dict[datetime | None, list[str]]) -> None:
        # one `WHERE id IN` update per distinct value when there are few, else one CASE per chunk
        if len(next_at) <= 8:
            for value, job_ids in next_at.items():
                for chunk in chunks(job_ids):
                    conn.exec_driver_sql(
                        f"UPDATE jobs SET next_run_at = %s WHERE id IN ({', '.join(['%s'] * len(chunk))})",
                        (_driver(value), *chunk))
            return
        pairs = [(job_id, _driver(value)) for value, job_ids in next_at.items() for job_id in job_ids]
        for part in chunks(pairs):
            params: list[Any] = [x for pair in part for x in pair]
            params += (job_id for job_id, _ in part)
            conn.exec_driver_sql(
                f"UPDATE jobs SET next_run_at = CASE id {' '.join(['WHEN %s THEN %s'] * len(part))} END "
                f"WHERE id IN ({', '.join(['%s'] * len(part))})", tuple(params))

    def set_next_offsets(self, conn: Connection, offsets: Sequence[tuple[str, int]]) -> None:
        for part in chunks(list(offsets)):
            params: list[Any] = [x for pair in part for x in pair]
            params += (job_id for job_id, _ in part)
            conn.exec_driver_sql(
                f"UPDATE jobs SET next_offset = CASE id {' '.join(['WHEN %s THEN %s'] * len(part))} END "
                f"WHERE id IN ({', '.join(['%s'] * len(part))})", tuple(params))

    def insert_new_runs(self, conn: Connection, planned: Sequence[Run],
                        rows: list[tuple[Any, ...]]) -> set[str]:
        # the taken slots selected first (INSERT IGNORE would also turn other errors into warnings)
        existing = self.existing_slots(conn, planned)
        left_out: set[str] = set()
        keep: list[tuple[Any, ...]] = []
        for run, row in zip(planned, rows, strict=True):
            slot = (run.job_id, run.scheduled_for, run.attempt)
            if slot in existing:
                left_out.add(run.id)
                continue
            existing.add(slot)
            keep.append(row)
        if keep:
            self.insert_runs(conn, keep)
        return left_out

    # the group commit ---------------------------------------------------------------------------
    def update_runs(self, conn: Connection, rows: Sequence[dict[str, Any]],
                    fixed: dict[str, Any] | None = None) -> int:
        return self._update(conn, rows, fixed or {})

    def _update(self, conn: Connection, rows: Sequence[dict[str, Any]], fixed: dict[str, Any],
                guard: _Guard | None = None) -> int:
        """One CASE update per chunk, with the extra condition ``guard`` makes for each chunk."""
        if not rows:
            return 0
        cols = [c for c in rows[0] if c != "id"]
        size = matched = 0
        chunk: list[dict[str, Any]] = []
        for r in rows:
            chunk.append(r)
            size += sum(len(v) for v in r.values() if isinstance(v, str))
            if len(chunk) >= CHUNK or size > 4_000_000:
                matched += self._case_update(conn, cols, chunk, fixed, guard)
                chunk, size = [], 0
        if chunk:
            matched += self._case_update(conn, cols, chunk, fixed, guard)
        return matched

    @staticmethod
    def _case_update(conn: Connection, cols: list[str], rows: list[dict[str, Any]],
                     fixed: dict[str, Any], guard: _Guard | None) -> int:
        """``UPDATE runs SET c = CASE id WHEN k1 THEN v1 ... END ... WHERE id IN (...)``, written as
        driver SQL: building it as SQLAlchemy expressions costs more than the round trips it saves."""
        whens = " ".join(["WHEN %s THEN %s"] * len(rows))
        sets: list[str] = []
        params: list[Any] = []
        dt = memo(utc_text)
        for c in cols:
            sets.append(f"`{c}` = CASE `id` {whens} END")
            for r in rows:
                v = r[c]
                params += (r["id"], dt(v) if isinstance(v, datetime) else v)
        for c, v in fixed.items():
            sets.append(f"`{c}` = %s")
            params.append(_driver(v))
        params += (r["id"] for r in rows)
        extra = ""
        if guard is not None:
            extra, more = guard(rows)
            params += more
        return int(conn.exec_driver_sql(f"UPDATE runs SET {', '.join(sets)} WHERE `id` IN "
                                        f"({', '.join(['%s'] * len(rows))}){extra}", tuple(params)).rowcount)

    def _all_matched(self, conn: Connection, rows: list[dict[str, Any]], fixed: dict[str, Any],
                     guard: _Guard) -> bool:
        """The batch of compare-and-sets in a savepoint: True when every row matched; else (a run in
        another state, the same run twice) everything is rolled back to the savepoint."""
        conn.exec_driver_sql("SAVEPOINT chronos_cas")
        if self._update(conn, rows, fixed, guard) == len(rows):
            conn.exec_driver_sql("RELEASE SAVEPOINT chronos_cas")
            return True
        conn.exec_driver_sql("ROLLBACK TO SAVEPOINT chronos_cas")
        conn.exec_driver_sql("RELEASE SAVEPOINT chronos_cas")
        return False

    def start_runs(self, conn: Connection, starts: Sequence[Start]) -> list[bool] | None:
        if self._all_matched(conn, [
                {"id": op.run_id, "started_at": op.now, "owner": op.owner, "lease_expires_at": op.until}
                for op in starts], {"status": _RUNNING, "dispatch_due_at": None}, _queued):
            return [True] * len(starts)
        return None

    def finish_runs(self, conn: Connection, finishes: Sequence[Finish]
                    ) -> tuple[list[bool], list[Finished]] | None:
        cap = self.rows.cap
        if not self._all_matched(conn, [
                {"id": fin.run_id, "status": fin.status.value, "finished_at": fin.finished_at,
                 "exit_code": fin.exit_code, "output": cap(fin.output), "error": cut(fin.error),
                 "output_lines": fin.output_lines, "result": fin.result}
                for fin in finishes], {"lease_expires_at": None, "dispatch_due_at": None},
                _held_by({fin.run_id: fin.owner for fin in finishes})):
            return None
        facts: dict[str, tuple[str, datetime, datetime | None]] = {}
        for chunk in chunks(sorted({fin.run_id for fin in finishes})):
            facts.update((r.id, (r.job_id, r.scheduled_for, r.started_at)) for r in conn.execute(
                select(runs.c.id, runs.c.job_id, runs.c.scheduled_for, runs.c.started_at)
                .where(runs.c.id.in_(chunk))))
        return [True] * len(finishes), [
            Finished(fin.run_id, job_id, fin.status, slot_at, started, fin.finished_at)
            for fin in finishes for job_id, slot_at, started in [facts[fin.run_id]]]

    def read_summaries(self, conn: Connection, job_ids: Collection[str]) -> dict[str, JobSummary]:
        # in id order, so concurrent batches cannot deadlock
        summaries: dict[str, JobSummary] = {}
        for chunk in chunks(sorted(job_ids)):
            summaries.update((row.job_id, SUMMARIES.load_row(row)) for row in conn.execute(
                select(job_summaries).where(job_summaries.c.job_id.in_(chunk))
                .order_by(job_summaries.c.job_id).with_for_update()))
        return summaries

    def write_summaries(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        for part in chunks(rows):
            conn.exec_driver_sql(f"{self._summary_head} VALUES {_marks(len(rows[0]), len(part))}"
                                 f"{self._summary_tail}", tuple(v for row in part for v in row))

    def add_counts(self, conn: Connection, totals: list[tuple[Any, ...]],
                   per_job: list[tuple[Any, ...]]) -> None:
        for head, rows in zip(self._counts, (totals, per_job), strict=True):
            for part in chunks(rows):
                conn.exec_driver_sql(f"{head} VALUES {_marks(4, len(part))} "
                                     "ON DUPLICATE KEY UPDATE n = n + VALUES(n)",
                                     tuple(v for row in part for v in row))
