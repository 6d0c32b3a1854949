"""The notices outbox (``tables.notices``): inserted by the outcomes that cause them, claimed under a
lease and settled by the notifier engine, which records every attempt. Each function is one call of
the store's thread pool: it takes the :class:`~.engine.Database` (or, inside another transaction, its
connection) and the store's :class:`~.dialects.Dialect`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from chronos_core.hooks import Notice, NoticeStatus

from .dialects import Dialect
from .dialects.base import chunks
from .engine import Database
from .rows import NOTICES, cut
from .tables import jobs, notices

__all__ = ["add_notices", "claim_notices", "insert_notices", "list_notices", "settle_notice"]


def insert_notices(conn: Connection, items: Sequence[Notice]) -> int:
    """Insert the notices whose key is new (also within ``items``) and whose job exists."""
    fresh: dict[str, Notice] = {}
    for n in items:
        fresh.setdefault(n.key, n)
    if not fresh:
        return 0
    for chunk in chunks(sorted(fresh)):
        for key in conn.scalars(select(notices.c.key).where(notices.c.key.in_(chunk))):
            fresh.pop(key, None)
    job_ids = sorted({n.job_id for n in fresh.values()})
    known: set[str] = set()
    for chunk in chunks(job_ids):
        known.update(conn.scalars(select(jobs.c.id).where(jobs.c.id.in_(chunk))))
    rows = [NOTICES.row(n) for n in fresh.values() if n.job_id in known]
    if rows:
        conn.execute(insert(notices), rows)
    return len(rows)


def add_notices(db: Database, items: Sequence[Notice]) -> int:
    with db.transaction() as conn:
        return insert_notices(conn, items)


def claim_notices(db: Database, d: Dialect, now: datetime, limit: int, owner: str,
                  lease_until: datetime) -> list[Notice]:
    free = (notices.c.owner.is_(None) | notices.c.lease_until.is_(None) | (notices.c.lease_until < now))
    due = select(notices.c.id).where(notices.c.status == NoticeStatus.PENDING.value, notices.c.due_at <= now,
                                     free)
    with db.transaction(read=True) as conn:  # a read first: most polls find nothing (no lock taken)
        if conn.scalar(due.limit(1)) is None:
            return []
    with db.transaction() as conn:
        ids = list(conn.scalars(d.skip_locked(due.order_by(notices.c.due_at, notices.c.id)
                                              .limit(max(limit, 0)))))
        if not ids:
            return []
        conn.execute(update(notices).where(notices.c.id.in_(ids)).values(owner=owner,
                                                                         lease_until=lease_until))
        rows = conn.execute(select(notices).where(notices.c.id.in_(ids))).all()
    return sorted((NOTICES.load_row(r) for r in rows), key=lambda n: (n.due_at, n.id))


def settle_notice(db: Database, d: Dialect, notice_id: str, owner: str, status: NoticeStatus,
                  now: datetime, due_at: datetime | None, error: str | None, code: int | None,
                  result: str | None) -> bool:
    with db.transaction() as conn:
        row = conn.execute(d.for_update(select(notices.c.owner, notices.c.status, notices.c.attempts,
                                               notices.c.tries).where(notices.c.id == notice_id))).first()
        if row is None or row.owner != owner or row.status != NoticeStatus.PENDING.value:
            return False
        tries = json.loads(row.tries)
        tries.append({"at": now.isoformat(), "ok": status is NoticeStatus.DELIVERED, "code": code,
                      "error": None if error is None else error[:500]})
        values: dict[str, Any] = {
            "attempts": row.attempts + 1, "tries": json.dumps(tries[-20:]), "status": status.value,
            "last_error": cut(error, 2000), "last_code": code, "owner": None, "lease_until": None}
        if status is NoticeStatus.PENDING:
            values["due_at"] = due_at or now
        else:
            values["finished_at"], values["result"] = now, None if result is None else result[:200]
        conn.execute(update(notices).where(notices.c.id == notice_id).values(**values))
        return True


def list_notices(db: Database, run_id: str | None, job_id: str | None, result: str | None,
                 limit: int) -> list[Notice]:
    q = select(notices)
    if run_id is not None:
        q = q.where(notices.c.run_id == run_id)
    if job_id is not None:
        q = q.where(notices.c.job_id == job_id)
    if result is not None:
        q = q.where(notices.c.result == result)
    with db.transaction(read=True) as conn:
        rows = conn.execute(q.order_by(notices.c.created_at, notices.c.id).limit(limit)).all()
    return [NOTICES.load_row(r) for r in rows]
