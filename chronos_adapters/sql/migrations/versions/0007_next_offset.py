"""jobs.next_offset: the jitter offset (µs) of next_run_at's slot, so the claim takes the jobs due at one
instant in the order their jittered slots come due; the claim's index becomes (status, next_run_at,
next_offset)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

Existing rows get 0: a jittered job due now is claimed in the old order once, and ordered from its next
slot on (the claim writes the offset with the next next_run_at).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("next_offset", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_jobs_status_next_run_at_next_offset", "jobs",
                    ["status", "next_run_at", "next_offset"])
    op.drop_index("ix_jobs_status_next_run_at", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_status_next_run_at", "jobs", ["status", "next_run_at"])
    op.drop_index("ix_jobs_status_next_run_at_next_offset", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("next_offset")
