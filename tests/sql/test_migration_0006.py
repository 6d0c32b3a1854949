"""Migration 0006: ``chronos migrate`` creates the dispatch outbox; a database whose outbox an older relay
created itself (before the table was part of the migrations) upgrades and keeps its rows."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    inspect,
)
from sqlalchemy.dialects.mysql import LONGBLOB

from chronos_adapters.sql.engine import open_engine, run_blocking
from chronos_adapters.sql.migrate import alembic_config, current_revision, head_revision, migrate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'chronos.db'}"
    return str(request.getfixturevalue("fresh_mysql_url"))


def _old_relays_table() -> Table:
    """The table exactly as the relay created it before migration 0006 (``metadata.create_all``)."""
    return Table(
        "chronos_outbox", MetaData(),
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("run_id", String(36), nullable=False),
        Column("job_id", String(36), nullable=False),
        Column("message", LargeBinary().with_variant(LONGBLOB(), "mysql"), nullable=False),
        Column("ready", Boolean, nullable=False),
        Column("created_at", DateTime, nullable=False),
        Column("sent_at", DateTime),
        Index("ix_chronos_outbox_unsent", "sent_at", "seq"),
        Index("ux_chronos_outbox_run", "run_id", unique=True),
        mysql_engine="InnoDB",
    )


def _outbox_indexes(url: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    engine, _ = open_engine(url, pool_size=1)

    def read() -> list[Any]:
        try:
            with engine.connect() as conn:
                assert current_revision(conn) == head_revision()
                return list(inspect(conn).get_indexes("chronos_outbox"))
        finally:
            engine.dispose()
    found = run_blocking(engine, read)
    return {i["name"]: (tuple(c for c in i["column_names"] if c), bool(i["unique"])) for i in found}


def test_migrate_creates_the_outbox_with_its_indexes(url: str) -> None:
    migrate(url)
    assert _outbox_indexes(url) == {"ix_chronos_outbox_unsent": (("sent_at", "seq"), False),
                                    "ux_chronos_outbox_run": (("run_id",), True)}


async def test_an_outbox_an_older_relay_created_is_kept_with_its_rows(url: str) -> None:
    pytest.importorskip("aiokafka")
    from chronos_adapters.kafka import KafkaDispatchQueue
    from chronos_adapters.kafka.outbox import OutboxRelay, write_outbox
    from tests.contracts.test_queue_contract import make_dispatch, make_job

    waiting = make_dispatch(make_job("job-old"))
    engine, _ = open_engine(url, pool_size=1)

    def at_0005_with_the_old_table() -> None:
        try:
            with engine.connect() as conn:
                command.upgrade(alembic_config(conn), "0005")
                conn.commit()
            _old_relays_table().create(engine)
            with engine.begin() as conn:
                write_outbox(conn, [waiting], T0)  # written by the store, not handed over yet
        finally:
            engine.dispose()
    run_blocking(engine, at_0005_with_the_old_table)
    migrate(url)  # chronos migrate after the upgrade
    assert set(_outbox_indexes(url)) == {"ix_chronos_outbox_unsent", "ux_chronos_outbox_run"}
    relay = OutboxRelay(url, KafkaDispatchQueue("127.0.0.1:9"))  # the relay loop is not run
    await relay.open()
    try:
        assert await relay.pending() == 1
        added = make_dispatch(make_job("job-new"))
        await relay.write([waiting, added])  # marks the old row ready, adds the new one
        assert await relay.pending() == 2
    finally:
        await relay.stop()
