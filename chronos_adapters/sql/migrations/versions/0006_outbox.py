"""the dispatch outbox (chronos_outbox) of a Kafka deployment, until now created by the relay itself

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A database an older relay already gave the table (``metadata.create_all`` on its start) keeps it: the
columns and indexes are the same, so the migration only records the revision there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_dt = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("chronos_outbox"):
        return  # created by a relay before this migration existed
    op.create_table(
        "chronos_outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("message", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
                  nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.Column("created_at", _dt, nullable=False),
        sa.Column("sent_at", _dt),
        mysql_engine="InnoDB",
    )
    op.create_index("ix_chronos_outbox_unsent", "chronos_outbox", ["sent_at", "seq"])
    op.create_index("ux_chronos_outbox_run", "chronos_outbox", ["run_id"], unique=True)


def downgrade() -> None:
    op.drop_table("chronos_outbox")
