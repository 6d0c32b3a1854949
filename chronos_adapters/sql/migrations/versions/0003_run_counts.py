"""run outcomes counted per minute and per job per hour (GET /stats)

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_dt = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "run_counts",
        sa.Column("bucket", _dt, nullable=False),
        sa.Column("writer", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "writer", "status", name="pk_run_counts"),
        **_MYSQL,
    )
    op.create_table(
        "job_run_counts",
        sa.Column("bucket", _dt, nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bucket", "job_id", "status", name="pk_job_run_counts"),
        **_MYSQL,
    )
    # the outcomes of the last two days of the history kept so far
    sqlite = op.get_bind().dialect.name == "sqlite"
    minute = ("strftime('%Y-%m-%d %H:%M:00.000000', finished_at)" if sqlite
              else "DATE_FORMAT(finished_at, '%Y-%m-%d %H:%i:00.000000')")
    hour = ("strftime('%Y-%m-%d %H:00:00.000000', finished_at)" if sqlite
            else "DATE_FORMAT(finished_at, '%Y-%m-%d %H:00:00.000000')")
    since = ("strftime('%Y-%m-%d %H:%M:%f', 'now', '-2 days')" if sqlite
             else "UTC_TIMESTAMP(6) - INTERVAL 2 DAY")
    ended = (f"FROM runs WHERE finished_at IS NOT NULL AND status NOT IN ('queued', 'running') "
             f"AND finished_at >= {since}")
    op.execute(f"INSERT INTO run_counts (bucket, writer, status, n) SELECT {minute}, 'migration', status, "
               f"COUNT(*) {ended} GROUP BY {minute}, status")
    op.execute(f"INSERT INTO job_run_counts (bucket, job_id, status, n) SELECT {hour}, job_id, status, "
               f"COUNT(*) {ended} GROUP BY {hour}, job_id, status")


def downgrade() -> None:
    op.drop_table("job_run_counts")
    op.drop_table("run_counts")
