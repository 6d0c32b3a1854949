"""job summaries, live output line counts, runs by status

Revision ID: 0002
Revises: 0001
Create Date: 2027-01-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_dt = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("output_lines", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_runs_status_id", "runs", ["status", "id"])
    op.create_table(
        "job_summaries",
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("last_run_id", sa.String(36)),
        sa.Column("last_run_status", sa.String(16)),
        sa.Column("last_run_scheduled_for", _dt),
        sa.Column("last_run_started_at", _dt),
        sa.Column("last_run_finished_at", _dt),
        sa.Column("last_success_at", _dt),
        sa.Column("last_failure_at", _dt),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("job_id", name="pk_job_summaries"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_summaries_job_id_jobs",
                                ondelete="CASCADE"),
        **_MYSQL,
    )
    op.create_index("ix_job_summaries_last_run_status_job_id", "job_summaries",
                    ["last_run_status", "job_id"])
    # Existing jobs get their summary from the history kept so far (once, here; from now on finish_run
    # keeps it). An attempt that ran has a start time; records (missed/skipped) and runs cancelled before
    # they started have none.
    op.execute("INSERT INTO job_summaries (job_id, consecutive_failures) SELECT id, 0 FROM jobs")
    ran = ("FROM runs r WHERE r.job_id = job_summaries.job_id AND r.started_at IS NOT NULL "
           "AND r.finished_at IS NOT NULL AND r.status IN ('succeeded', 'failed', 'timed_out', 'cancelled')")
    last = f"{ran} ORDER BY r.finished_at DESC, r.id DESC LIMIT 1"
    op.execute(
        "UPDATE job_summaries SET "
        + ", ".join(f"last_run_{c} = (SELECT r.{c} {last})"
                    for c in ("id", "status", "scheduled_for", "started_at", "finished_at"))
        + f", last_success_at = (SELECT MAX(r.finished_at) {ran} AND r.status = 'succeeded')"
        + f", last_failure_at = (SELECT MAX(r.finished_at) {ran} AND r.status IN ('failed', 'timed_out'))")
    op.execute(
        f"UPDATE job_summaries SET consecutive_failures = (SELECT COUNT(*) {ran} "
        "AND r.status IN ('failed', 'timed_out') AND (job_summaries.last_success_at IS NULL "
        "OR r.finished_at > job_summaries.last_success_at))")


def downgrade() -> None:
    op.drop_table("job_summaries")
    op.drop_index("ix_runs_status_id", "runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("output_lines")
