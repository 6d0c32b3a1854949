"""The schema as SQLAlchemy Core tables (no ORM): what the Alembic migrations create and what the store
queries. Datetimes are stored as naive UTC with microseconds (``DATETIME(6)`` on MySQL/MariaDB) and read
back as aware UTC; MySQL tables use a binary collation so names and ids compare exactly, as in Python."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["UtcDateTime", "from_utc_text", "job_run_counts", "job_summaries", "jobs", "metadata",
           "notices", "outbox",
           "run_counts", "runs", "utc_naive", "utc_text"]

_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})


def utc_naive(value: datetime) -> datetime:
    """An aware datetime as stored: naive UTC. A naive one is refused (its zone is unknown)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: Chronos stores aware UTC datetimes")
    return value.astimezone(UTC).replace(tzinfo=None)


def utc_text(value: datetime) -> str:
    """An aware datetime as the driver value of the store's hot statements: naive UTC as
    ``YYYY-MM-DD HH:MM:SS.ffffff``. On SQLite that is exactly the text SQLAlchemy's ``DATETIME`` stores
    for ``UtcDateTime`` (comparisons and the unique slot key work on this text); MySQL reads it into a
    ``DATETIME(6)`` exactly, and pymysql escapes a string several times faster than a datetime."""
    if value.tzinfo is not UTC:
        value = utc_naive(value)
    return value.isoformat(" ", "microseconds")[:26]


def from_utc_text(value: str | None) -> datetime | None:
    """The stored text of a ``UtcDateTime`` (as SQLite returns it to a bare query) as an aware datetime."""
    if value is None:
        return None
    if value.__class__ is str and len(value) == 26:  # utc_text's (and SQLAlchemy's DATETIME's) form
        return _parse(value + "+00:00")  # ~8x faster than parsing, then replace(tzinfo=UTC)
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


_parse = datetime.fromisoformat


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime stored as naive UTC with microseconds."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else utc_naive(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], datetime | None] | None:
        """On SQLite the stored text (``utc_text``'s, 26 characters) is parsed straight into an aware
        datetime: ``fromisoformat(text + "+00:00")`` costs ~1 us where SQLAlchemy's DATETIME parser and
        then ``replace(tzinfo=UTC)`` cost ~10 us (busy 2-core machine), and a page of 100 runs of
        ``GET /jobs/{id}/history`` reads 600 of them (bench/api.py). Anything else takes the usual way."""
        usual = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite":
            return usual
        parse = datetime.fromisoformat

        def process(value: Any) -> datetime | None:
            if value is None:
                return None
            if value.__class__ is str and len(value) == 26:
                return parse(value + "+00:00")
            return usual(value) if usual is not None else value  # text written some other way
        return process


_LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

jobs = Table(
    "jobs", metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("type", String(50), nullable=False),
    Column("payload", _LongText, nullable=False),  # JSON
    Column("schedule", String(200)),
    Column("timezone", String(64), nullable=False),
    Column("description", Text),
    Column("retry", Text, nullable=False),  # JSON of RetryPolicy
    Column("timeout", Float),
    Column("overlap", String(16), nullable=False),
    Column("misfire", String(16), nullable=False),
    Column("misfire_grace", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("next_run_at", UtcDateTime),
    Column("start_at", UtcDateTime),
    Column("end_at", UtcDateTime),
    Column("history_limit", Integer),
    # hooks (chronos_core.hooks): JSON lists, NULL when empty
    Column("notify", Text),
    Column("chain", Text),  # the job's `then` (a reserved word in SQL)
    Column("pause_after_failures", Integer),
    Column("alert_after", Float),
    Column("jitter", Float),
    Column("exclude", Text),
    Column("paused_reason", Text),
    # the jitter offset of next_run_at's slot in µs (chronos_core.planning.jitter_order; 0 without
    # jitter): the claim takes the jobs due at one instant in the order their jittered slots come due
    Column("next_offset", BigInteger, nullable=False, server_default="0"),  # (jitter: up to a day)
    UniqueConstraint("name"),
    Index(None, "status", "next_run_at", "next_offset"),  # the due-job claim, in its order
    **_MYSQL,
)

runs = Table(
    "runs", metadata,
    Column("id", String(36), primary_key=True),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("scheduled_for", UtcDateTime, nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    # = due_at while the run is queued and not handed to the dispatch queue; NULL otherwise. Indexed, so
    # the due retries are found without scanning history.
    Column("dispatch_due_at", UtcDateTime),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("exit_code", Integer),
    Column("output", _LongText, nullable=False),
    Column("error", Text),
    Column("owner", String(200)),
    Column("lease_expires_at", UtcDateTime),
    Column("output_lines", Integer, nullable=False, server_default="0"),  # lines printed so far
    Column("result", _LongText),  # JSON: what the attempt returned (Run.result), NULL for none
    UniqueConstraint("job_id", "scheduled_for", "attempt"),  # one first attempt per slot
    Index(None, "job_id", "id"),  # history, newest first
    Index(None, "status", "id"),  # runs of a status across jobs, newest first (GET /runs?status=)
    Index(None, "status", "job_id"),  # active runs of the claimed jobs
    Index(None, "status", "lease_expires_at"),  # expired leases
    Index(None, "dispatch_due_at"),  # undispatched due runs
    Index(None, "finished_at"),  # retention by age
    **_MYSQL,
)

# One row per job (created with it): what its runs came to, written by finish_run in the transaction that
# records each outcome (JobSummary), so listing jobs with their last run never scans the history. Kept
# apart from `jobs`: a finish never locks the row the scheduler's claim locks, nor changes its version.
job_summaries = Table(
    "job_summaries", metadata,
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("last_run_id", String(36)),
    Column("last_run_status", String(16)),
    Column("last_run_scheduled_for", UtcDateTime),
    Column("last_run_started_at", UtcDateTime),
    Column("last_run_finished_at", UtcDateTime),
    Column("last_success_at", UtcDateTime),
    Column("last_failure_at", UtcDateTime),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("consecutive_failed_slots", Integer, nullable=False, server_default="0"),
    Index(None, "last_run_status", "job_id"),  # GET /jobs?last_status=failed
    **_MYSQL,
)

# Run outcomes counted as they are written (finishes, recorded slots, cancellations), for GET /stats, so
# that reading a day of them costs what the buckets, jobs and statuses in it are, not the history (which
# retention prunes anyway). `run_counts`: totals per minute, a row per writing store instance (`writer`),
# so concurrent writers never wait for each other's row. `job_run_counts`: per job per hour, for ranking
# the jobs. No foreign keys: a deleted job's counts still happened (and counting takes no lock on the
# job's row). Buckets older than two days are dropped by prune_runs.
run_counts = Table(
    "run_counts", metadata,
    Column("bucket", UtcDateTime, primary_key=True),  # the minute
    Column("writer", String(16), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("n", Integer, nullable=False),
    **_MYSQL,
)

job_run_counts = Table(
    "job_run_counts", metadata,
    Column("bucket", UtcDateTime, primary_key=True),  # the hour
    Column("job_id", String(36), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("n", Integer, nullable=False),
    **_MYSQL,
)

# The outbox of notifications, chained runs and auto-pauses (chronos_core.hooks.Notice): written by
# finish_run in the transaction of the outcome that caused them, delivered by the notifier engine, which
# records every attempt here. `key` is unique (run, event, rule): an outcome never notifies twice.
notices = Table(
    "notices", metadata,
    Column("id", String(36), primary_key=True),
    Column("key", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("event", String(32), nullable=False),
    Column("job_id", String(36), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", String(36)),
    Column("target", Text, nullable=False),  # JSON
    Column("data", _LongText, nullable=False),  # JSON
    Column("status", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("owner", String(200)),
    Column("lease_until", UtcDateTime),
    Column("last_error", Text),
    Column("last_code", Integer),
    Column("finished_at", UtcDateTime),
    Column("result", String(200)),
    Column("tries", Text, nullable=False),  # JSON list of {at, ok, code, error}
    UniqueConstraint("key"),
    Index(None, "status", "due_at"),  # the notifier's claim
    Index(None, "run_id"),  # a run's notices
    Index(None, "job_id", "created_at"),
    Index(None, "result"),  # the chain that made a run
    **_MYSQL,
)

# The dispatch outbox of a scaled-out deployment (chronos_adapters.kafka.outbox): one row per dispatch in
# insertion order (`seq`), written in the claim's transaction, published to the runs topic by the relay,
# which sets `sent_at`. Datetimes are naive UTC here (the relay writes them so). Migration 0006; databases
# where an older relay created the table itself keep theirs (the same columns and indexes).
outbox = Table(
    "chronos_outbox", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("job_id", String(36), nullable=False),
    Column("message", LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"), nullable=False),
    # False while written by the store in the claim transaction and not yet handed over by ``put``
    Column("ready", Boolean, nullable=False),
    Column("created_at", DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"), nullable=False),
    Column("sent_at", DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")),
    Index("ix_chronos_outbox_unsent", "sent_at", "seq"),
    Index("ux_chronos_outbox_run", "run_id", unique=True),
    mysql_engine="InnoDB",
)
