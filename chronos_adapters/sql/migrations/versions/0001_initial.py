"""jobs and runs

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_dt = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_long = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(50), nullable=False),
        sa.Column("payload", _long, nullable=False),
        sa.Column("schedule", sa.String(200)),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("retry", sa.Text(), nullable=False),
        sa.Column("timeout", sa.Float()),
        sa.Column("overlap", sa.String(16), nullable=False),
        sa.Column("misfire", sa.String(16), nullable=False),
        sa.Column("misfire_grace", sa.Float(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _dt, nullable=False),
        sa.Column("updated_at", _dt, nullable=False),
        sa.Column("next_run_at", _dt),
        sa.Column("start_at", _dt),
        sa.Column("end_at", _dt),
        sa.Column("history_limit", sa.Integer()),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("name", name="uq_jobs_name"),
        **_MYSQL,
    )
    op.create_index("ix_jobs_status_next_run_at", "jobs", ["status", "next_run_at"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("scheduled_for", _dt, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _dt, nullable=False),
        sa.Column("due_at", _dt, nullable=False),
        sa.Column("dispatch_due_at", _dt),
        sa.Column("started_at", _dt),
        sa.Column("finished_at", _dt),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("output", _long, nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("owner", sa.String(200)),
        sa.Column("lease_expires_at", _dt),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_runs_job_id_jobs", ondelete="CASCADE"),
        sa.UniqueConstraint("job_id", "scheduled_for", "attempt",
                            name="uq_runs_job_id_scheduled_for_attempt"),
        **_MYSQL,
    )
    op.create_index("ix_runs_job_id_id", "runs", ["job_id", "id"])
    op.create_index("ix_runs_status_job_id", "runs", ["status", "job_id"])
    op.create_index("ix_runs_status_lease_expires_at", "runs", ["status", "lease_expires_at"])
    op.create_index("ix_runs_dispatch_due_at", "runs", ["dispatch_due_at"])
    op.create_index("ix_runs_finished_at", "runs", ["finished_at"])


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("jobs")
