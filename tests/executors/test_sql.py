"""The SQL executor on SQLite and on a real MariaDB (its own database, dropped afterwards)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url

from chronos_adapters.executors import SqlExecutor
from chronos_core.errors import ExecutionFailed
from chronos_core.ports import ExecutionResult
from tests.conftest import backend_missing

from ._support import Lines, make_job, make_run

MYSQL_URL = os.environ.get("CHRONOS_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/")


@pytest.fixture(scope="module")
def mariadb_url() -> Iterator[str]:
    """A URL to a fresh database of its own on the test MariaDB server."""
    base = make_url(MYSQL_URL).set(drivername="mysql+pymysql")
    name = f"chronos_test_exec_{secrets.token_hex(4)}"
    server = create_engine(base.set(database=None))
    try:
        with server.begin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:
        server.dispose()
        backend_missing(f"MariaDB at {base.render_as_string(hide_password=True)} ({exc})")
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with server.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        server.dispose()


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("mariadb_url")
    return url


@pytest.fixture
async def sql(db_url: str) -> AsyncIterator[SqlExecutor]:
    ex = SqlExecutor(connections={"main": db_url}, max_rows=10)
    try:
        await run(ex, "DROP TABLE IF EXISTS items")
        await run(ex, "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(50), price DECIMAL(8,2))")
        yield ex
    finally:
        await ex.stop()


async def run(ex: SqlExecutor, statement: str, log: Lines | None = None,
              **payload: object) -> ExecutionResult:
    job = make_job("sql", {"connection": "main", "statement": statement, **payload})
    return await asyncio.wait_for(ex.execute(job, make_run(job), log or Lines()), 60)


async def test_insert_with_bound_params_then_select(sql: SqlExecutor) -> None:
    log = Lines()
    result = await run(sql, "INSERT INTO items (id, name, price) VALUES (:id, :name, :price)", log,
                       params={"id": 1, "name": "o'brien; DROP TABLE items", "price": "9.50"})
    assert result.ok and log.of()[-1] == "1 rows affected"
    log = Lines()
    assert (await run(sql, "SELECT id, name, price FROM items WHERE id = :id", log, params={"id": 1})).ok
    assert log.of()[1] == "columns: id, name, price" and log.of()[3] == "1 rows"
    row = json.loads(log.of()[2])
    assert (row["id"], row["name"], float(row["price"])) == (1, "o'brien; DROP TABLE items", 9.5)


async def test_row_count_and_capped_rows(sql: SqlExecutor) -> None:
    for i in range(30):
        await run(sql, "INSERT INTO items (id, name) VALUES (:i, :n)", params={"i": i, "n": f"n{i}"})
    log = Lines()
    assert (await run(sql, "SELECT id FROM items ORDER BY id", log, max_rows=3)).ok
    assert log.of()[2:] == ['{"id": 0}', '{"id": 1}', '{"id": 2}', "30 rows (first 3 shown)"]
    log = Lines()
    assert (await run(sql, "SELECT id FROM items ORDER BY id", log, max_rows=500)).ok
    assert len(log.of()) == 2 + 10 + 1 and log.of()[-1] == "30 rows (first 10 shown)"  # executor cap: 10
    log = Lines()
    assert (await run(sql, "UPDATE items SET name = 'x' WHERE id < 7", log)).ok
    assert log.of()[-1] == "7 rows affected"


@pytest.mark.parametrize("statement", ["SELEC 1", "SELECT * FROM no_such_table"])
async def test_bad_statements_are_not_retried(sql: SqlExecutor, statement: str) -> None:
    with pytest.raises(ExecutionFailed) as err:
        await run(sql, statement)
    assert not err.value.retryable
    assert "[SQL:" not in str(err.value)


async def test_missing_parameter_is_not_retried(sql: SqlExecutor) -> None:
    with pytest.raises(ExecutionFailed) as err:
        await run(sql, "SELECT * FROM items WHERE id = :id")
    assert not err.value.retryable and "'id'" in str(err.value)


async def test_failed_statement_rolls_back(sql: SqlExecutor) -> None:
    await run(sql, "INSERT INTO items (id, name) VALUES (1, 'a')")
    with pytest.raises(ExecutionFailed) as err:
        await run(sql, "INSERT INTO items (id, name) VALUES (1, 'dup')")
    assert not err.value.retryable
    log = Lines()
    await run(sql, "SELECT name FROM items", log)
    assert log.of()[2:] == ['{"name": "a"}', "1 rows"]


async def test_unknown_connection_is_not_retried() -> None:
    ex = SqlExecutor(connections={"reports": "sqlite://"})
    job = make_job("sql", {"connection": "prod", "statement": "SELECT 1"})
    with pytest.raises(ExecutionFailed) as err:
        await ex.execute(job, make_run(job), Lines())
    assert not err.value.retryable
    assert str(err.value) == "unknown SQL connection 'prod' (configured in CHRONOS_SQL_CONNECTIONS: reports)"


async def test_misconfigured_url_is_not_retried_and_hides_the_password() -> None:
    ex = SqlExecutor(connections={"main": "mysql+pymysql//root:Secret99@127.0.0.1/x"})
    with pytest.raises(ExecutionFailed) as err:
        await run(ex, "SELECT 1")
    assert not err.value.retryable and "misconfigured" in str(err.value)
    assert "Secret99" not in str(err.value)


async def test_sqlite_timeout_interrupts_the_statement(tmp_path: Path) -> None:
    ex = SqlExecutor(connections={"main": f"sqlite:///{tmp_path / 'slow.db'}"})
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000000) "
               "SELECT count(*) FROM c")
    try:
        with pytest.raises(TimeoutError):
            await run_for(ex, endless, 1.0)
        assert ex.running == 0  # the statement was interrupted, its thread is done
        assert (await run(ex, "SELECT 1")).ok
    finally:
        await ex.stop()


@pytest.mark.mysql
async def test_mariadb_timeout_kills_the_query(mariadb_url: str) -> None:
    ex = SqlExecutor(connections={"main": mariadb_url})
    marker = f"chronos-{secrets.token_hex(4)}"
    try:
        with pytest.raises(TimeoutError):
            await run_for(ex, f"SELECT SLEEP(60) /* {marker} */", 1.0)
        assert ex.running == 0
        log = Lines()
        await run(ex, "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE "
                      f"INFO LIKE '%{marker}%' AND ID <> CONNECTION_ID() "
                      "AND INFO NOT LIKE '%PROCESSLIST%'", log)
        assert log.of()[2] == '{"n": 0}'  # nothing left running on the server
    finally:
        await ex.stop()


@pytest.mark.mysql
async def test_mariadb_refused_connection_is_retryable(mariadb_url: str) -> None:
    url = make_url(mariadb_url).set(port=1).render_as_string(hide_password=False)
    ex = SqlExecutor(connections={"main": url})
    try:
        with pytest.raises(ExecutionFailed) as err:
            await run(ex, "SELECT 1")
        assert err.value.retryable and "2003" in str(err.value)
    finally:
        await ex.stop()


@pytest.mark.mysql
async def test_mariadb_bad_password_is_not_retried_and_masked(mariadb_url: str) -> None:
    url = make_url(mariadb_url).set(username="chronos_nobody", password="Wr0ngPass!")
    ex = SqlExecutor(connections={"main": url.render_as_string(hide_password=False)})
    try:
        with pytest.raises(ExecutionFailed) as err:
            await run(ex, "SELECT 1")
        assert not err.value.retryable and "Access denied" in str(err.value)
        assert "Wr0ngPass!" not in str(err.value)
    finally:
        await ex.stop()


async def run_for(ex: SqlExecutor, statement: str, seconds: float) -> ExecutionResult:
    job = make_job("sql", {"connection": "main", "statement": statement})
    return await asyncio.wait_for(ex.execute(job, make_run(job), Lines()), seconds)


