"""The SQLite store holds every job's secrets in clear: its files are the service user's alone, whatever
the umask (with the usual 022 every local user could read chronos.db and its WAL)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from chronos_app import Chronos


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.glob("chronos.db*")}


async def test_a_new_store_and_its_wal_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        async with Chronos.embedded(database_url=f"sqlite:///{tmp_path}/chronos.db") as chronos:
            await chronos.jobs.create({"name": "victim", "type": "http", "payload": {
                "url": "https://example.com/", "headers": {"Authorization": "Bearer store-secret-4711"}}})
            files = _modes(tmp_path)
    finally:
        os.umask(old)
    assert {"chronos.db", "chronos.db-wal"} <= set(files)
    assert {name: oct(mode) for name, mode in files.items() if mode & 0o077} == {}


async def test_an_existing_store_readable_by_others_is_reported(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "chronos.db"
    db.touch(mode=0o644)
    db.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="chronos.store.sql")
    async with Chronos.embedded(database_url=f"sqlite:///{db}"):
        pass
    assert any("readable by other users" in r.getMessage() for r in caplog.records)
    assert stat.S_IMODE(db.stat().st_mode) == 0o644  # the operator's file: said, not changed


def test_chronos_migrate_creates_the_store_readable_by_its_owner_only(tmp_path: Path) -> None:
    """``chronos migrate`` (``migrate(url)``) opens the database as the store does: a store it creates is
    as private as one the service creates (it used to be left to the umask)."""
    from chronos_adapters.sql import migrate

    old = os.umask(0o022)
    try:
        migrate(f"sqlite:///{tmp_path}/chronos.db")
    finally:
        os.umask(old)
    files = _modes(tmp_path)
    assert "chronos.db" in files
    assert {name: oct(mode) for name, mode in files.items() if mode & 0o077} == {}
