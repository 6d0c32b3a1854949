"""Issue #11 finding 1: a SQL job on a ``sqlite://`` connection must not leave its database file.

The attacks run against a real Chronos store file (made by ``Chronos.embedded``) next to the job's own
database, the way ``chronos serve`` lays them out in its working directory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chronos_adapters.executors import SqlExecutor
from chronos_app import Chronos
from chronos_core.errors import ExecutionFailed

from ._support import Lines, make_job, make_run

SECRET = "Bearer store-secret-4711"


@pytest.fixture
async def layout(tmp_path: Path) -> Path:
    """``tmp_path/chronos.db`` (a real store holding a job with a secret) and ``tmp_path/work.db``."""
    async with Chronos.embedded(database_url=f"sqlite:///{tmp_path}/chronos.db") as chronos:
        await chronos.jobs.create({"name": "victim", "type": "http", "payload": {
            "url": "https://example.com/", "headers": {"Authorization": SECRET}}})
    with sqlite3.connect(tmp_path / "work.db") as conn:
        conn.execute("CREATE TABLE items (x INTEGER)")
    return tmp_path


async def _run(tmp: Path, statement: str) -> tuple[str, str]:
    sql = SqlExecutor(connections={"work": f"sqlite:///{tmp}/work.db"})
    job = make_job("sql", {"connection": "work", "statement": statement})
    log = Lines()
    try:
        result = await sql.execute(job, make_run(job), log)
        return ("ok" if result.ok else f"failed: {result.error}"), log.text
    except ExecutionFailed as exc:
        assert not exc.retryable  # the same statement would be refused again
        return f"refused: {exc}", log.text
    finally:
        await sql.stop()


async def test_attaching_the_store_reads_no_secret(layout: Path) -> None:
    outcome, out = await _run(layout, f"ATTACH DATABASE '{layout}/chronos.db' AS c")
    assert outcome.startswith("refused")
    outcome, out = await _run(layout, "SELECT name, payload FROM c.jobs")
    assert outcome.startswith("refused") and "store-secret" not in out


async def test_attach_by_expression_or_uri_is_refused(layout: Path) -> None:
    for statement in (f"ATTACH DATABASE '{layout}/' || 'chronos.db' AS c",
                      f"ATTACH DATABASE 'file:{layout}/chronos.db?mode=ro' AS c",
                      "ATTACH DATABASE (SELECT 'chronos.db') AS c"):
        outcome, _ = await _run(layout, statement)
        assert outcome.startswith("refused"), statement


async def test_vacuum_into_writes_no_file(layout: Path) -> None:
    target = layout / "copy.db"
    for statement in (f"VACUUM INTO '{target}'", f"VACUUM main INTO '{target}'"):
        outcome, _ = await _run(layout, statement)
        assert outcome.startswith("refused")
    assert not target.exists()


async def test_no_pth_file_can_be_planted(layout: Path) -> None:
    site = layout / "site-packages"
    site.mkdir()
    outcome, _ = await _run(layout, f"ATTACH DATABASE '{site}/evil.pth' AS p")
    assert outcome.startswith("refused")
    assert list(site.iterdir()) == []


async def test_detach_and_extensions_are_refused(layout: Path) -> None:
    # defence in depth: with ATTACH gone DETACH has nothing to undo, and sqlite3 keeps extension
    # loading off unless enabled; the authorizer refuses both anyway
    for statement in ("DETACH DATABASE main", "SELECT load_extension('/tmp/evil')"):
        outcome, _ = await _run(layout, statement)
        assert outcome.startswith("refused"), statement


async def test_the_store_is_untouched_and_legitimate_statements_still_work(layout: Path) -> None:
    outcome, _ = await _run(layout, f"ATTACH DATABASE '{layout}/chronos.db' AS c")
    assert outcome.startswith("refused")
    assert (await _run(layout, "INSERT INTO items VALUES (1), (2)"))[0] == "ok"
    outcome, out = await _run(layout, "SELECT count(*) AS n FROM items")
    assert outcome == "ok" and out.splitlines()[-2:] == ['{"n": 2}', "1 rows"], out
    assert (await _run(layout, "VACUUM"))[0] == "ok"  # plain VACUUM (its own temporary database) works
    with sqlite3.connect(layout / "chronos.db") as conn:
        (payload,) = conn.execute("SELECT payload FROM jobs").fetchone()
    assert SECRET in payload
