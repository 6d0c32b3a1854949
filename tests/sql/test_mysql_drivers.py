"""The store's error translation on both MySQL drivers (PyMySQL, and asyncmy through SQLAlchemy's asyncio
layer, whose calls run as greenlets on an event loop of the store's own): a connection that dies in the
middle of a transaction is ``StoreUnavailable`` (what the engines retry on), and the store reconnects; a
lock wait timeout is run again (as a deadlock is: both are rolled back by the server); a plain
``mysql://`` URL gets the default driver."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from chronos_adapters.sql import SqlStore
from chronos_adapters.sql.engine import MYSQL_DRIVER, engine_url
from chronos_core.errors import StoreUnavailable
from tests.contracts.test_store_contract import make_job
from tests.fixtures.mysql import _admin, asyncmy_missing, mysql_server_url, with_driver

pytestmark = pytest.mark.mysql


@pytest.fixture(params=["pymysql", "asyncmy"])
def url(request: pytest.FixtureRequest, clean_mysql_url: str) -> str:
    if request.param == "asyncmy" and asyncmy_missing():
        pytest.skip("asyncmy is not installed")
    return with_driver(clean_mysql_url, request.param)


async def test_a_connection_killed_in_a_transaction_is_store_unavailable_then_reconnects(url: str) -> None:
    async with SqlStore(url, pool_size=2) as store:
        job = make_job("survivor")
        await store.add_jobs([job])

        def killed_midway() -> None:
            with store._tx() as conn:
                me = conn.execute(text("SELECT CONNECTION_ID()")).scalar()
                admin = _admin(mysql_server_url())
                try:
                    with admin.cursor() as cur:
                        cur.execute(f"KILL {int(me)}")  # type: ignore[arg-type]
                finally:
                    admin.close()
                conn.execute(text("SELECT COUNT(*) FROM jobs"))
        with pytest.raises(StoreUnavailable):
            await store._call(killed_midway)
        assert (await store.get_job(job.id)).name == "survivor"  # a new connection
        assert store.engine.pool.checkedout() == 0


async def test_a_lock_wait_timeout_runs_the_transaction_again(url: str) -> None:
    async with SqlStore(url, pool_size=2) as store:
        job = make_job("locked")
        await store.add_jobs([job])
        held, again = threading.Event(), threading.Event()
        attempts: list[int] = []

        def holder() -> None:  # another client holds the job's row until the store's second attempt
            admin = _admin(mysql_server_url())
            try:
                with admin.cursor() as cur:
                    cur.execute("BEGIN")
                    cur.execute(f"SELECT id FROM `{store.engine.url.database}`.jobs WHERE id = %s "
                                "FOR UPDATE", (job.id,))
                    held.set()
                    again.wait(60)
                    cur.execute("COMMIT")
            finally:
                admin.close()
        thread = threading.Thread(target=holder)
        thread.start()
        held.wait(60)

        def update() -> str:
            attempts.append(1)
            with store._tx() as conn:
                conn.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
                if len(attempts) > 1:
                    again.set()
                conn.execute(text("UPDATE jobs SET name = 'renamed' WHERE id = :id"), {"id": job.id})
                return "done"
        try:
            assert await store._call(update) == "done"
        finally:
            again.set()
            thread.join()
        assert len(attempts) == 2
        assert (await store.get_job(job.id)).name == "renamed"


def test_a_plain_mysql_url_gets_the_default_driver() -> None:
    assert engine_url("mysql://u@h/db").drivername == f"mysql+{MYSQL_DRIVER}"
    assert engine_url("mariadb://u@h/db").drivername == f"mariadb+{MYSQL_DRIVER}"
    for given in ("mysql+pymysql://u@h/db", "mysql+asyncmy://u@h/db", "sqlite:///x.db"):
        assert engine_url(given).drivername == given.split(":")[0]
