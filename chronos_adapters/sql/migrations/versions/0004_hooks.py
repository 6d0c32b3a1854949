"""job hooks (notify, then, pause_after_failures, alert_after, jitter, exclude), failed slots in the
summaries, and the notices outbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_dt = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_long = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("notify", sa.Text()))
        batch.add_column(sa.Column("chain", sa.Text()))
        batch.add_column(sa.Column("pause_after_failures", sa.Integer()))
        batch.add_column(sa.Column("alert_after", sa.Float()))
        batch.add_column(sa.Column("jitter", sa.Float()))
        batch.add_column(sa.Column("exclude", sa.Text()))
        batch.add_column(sa.Column("paused_reason", sa.Text()))
    with op.batch_alter_table("job_summaries") as batch:
        batch.add_column(sa.Column("consecutive_failed_slots", sa.Integer(), nullable=False,
                                   server_default="0"))
    # the failed slots so far: as many as the failed attempts since the last success (an upper bound
    # when retries failed too; exact for jobs without retries)
    op.execute("UPDATE job_summaries SET consecutive_failed_slots = consecutive_failures")
    op.create_table(
        "notices",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("run_id", sa.String(36)),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("data", _long, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", _dt, nullable=False),
        sa.Column("due_at", _dt, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("owner", sa.String(200)),
        sa.Column("lease_until", _dt),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_code", sa.Integer()),
        sa.Column("finished_at", _dt),
        sa.Column("result", sa.String(200)),
        sa.Column("tries", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_notices_job_id_jobs", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_notices"),
        sa.UniqueConstraint("key", name="uq_notices_key"),
        **_MYSQL,
    )
    op.create_index("ix_notices_status_due_at", "notices", ["status", "due_at"])
    op.create_index("ix_notices_run_id", "notices", ["run_id"])
    op.create_index("ix_notices_job_id_created_at", "notices", ["job_id", "created_at"])
    op.create_index("ix_notices_result", "notices", ["result"])


def downgrade() -> None:
    op.drop_table("notices")
    with op.batch_alter_table("job_summaries") as batch:
        batch.drop_column("consecutive_failed_slots")
    with op.batch_alter_table("jobs") as batch:
        for name in ("paused_reason", "exclude", "jitter", "alert_after", "pause_after_failures", "chain",
                     "notify"):
            batch.drop_column(name)
