"""A value the SQL store cannot hold, and what reaches the log about it (review-secattack F2).

The core bounds every field so that a job it accepts fits every store (tests/api/test_notify_bounds.py);
this is the store's own answer when a value does not fit anyway (a caller that builds its ``Job``
itself): ``InvalidJob`` at the column, never a bare driver error - which the API answered 500 and logged
with its statement's parameters, the job's secrets. No engine the store opens puts parameters in an
error's text or an echo.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from chronos_adapters.sql import SqlStore
from chronos_adapters.sql.engine import open_engine
from chronos_core.errors import InvalidJob
from chronos_core.hookspec import NotifyRule
from tests.contracts.test_store_contract import make_job

SECRET = "s3cret-env-value-7f41c2aa"
HOOK_SECRET = "Bearer hook-secret-19d3e8b2"


def too_long_notify() -> list[NotifyRule]:
    rule = NotifyRule.model_validate({"on": ["failed"], "webhook": {
        "url": "https://example.com/hook", "headers": {"Authorization": HOOK_SECRET, "X-Pad": "p" * 4000}}})
    return [rule] * 20  # ~82 KB of JSON: the MySQL TEXT column holds 65,535 bytes


@pytest.mark.mysql
async def test_a_value_too_long_for_its_column_is_invalid_and_logs_no_parameter(
        clean_mysql_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    job = dataclasses.replace(make_job("big"), payload={"command": "true", "env": {"DB_PASSWORD": SECRET}},
                              notify=too_long_notify())
    async with SqlStore(clean_mysql_url) as store:
        with pytest.raises(InvalidJob) as info:
            await store.add_jobs([job])
        assert [e.loc for e in info.value.errors] == [("notify",)]
        stored = make_job("small")
        await store.add_jobs([stored])
        with pytest.raises(InvalidJob) as again:  # the UPDATE too
            await store.update_job(dataclasses.replace(stored, payload=job.payload, notify=job.notify))
        assert (await store.get_job(stored.id)).notify == []
    for shown in (str(info.value), str(again.value), caplog.text):
        assert SECRET not in shown and HOOK_SECRET not in shown and "parameters" not in shown, shown


def test_every_engine_hides_statement_parameters(tmp_path: Path) -> None:
    engine, _ = open_engine(f"sqlite:///{tmp_path / 'x.db'}", options={"hide_parameters": False})
    try:
        assert engine.hide_parameters
        with engine.connect() as conn, pytest.raises(Exception) as info:
            conn.execute(text("SELECT * FROM no_such_table WHERE x = :x"), {"x": SECRET})
        assert SECRET not in str(info.value) and "hidden" in str(info.value)
    finally:
        engine.dispose()


def test_the_column_is_found_in_mysql_and_mariadb_texts() -> None:
    """too_large points at the column: MySQL's ``column 'c'`` and MariaDB's 1366 ``column `db`.`t`.`c```."""
    from sqlalchemy import exc as sa_exc

    from chronos_adapters.sql.engine import too_large

    class Orig(Exception):
        pass

    for code, message in [(1406, "Data too long for column 'description' at row 1"),
                       (1366, "Incorrect string value: '\\xF0\\x9F' for column `chronos`.`jobs`.`description`"
                              " at row 1")]:
        err = too_large(sa_exc.DataError("INSERT ...", {}, Orig(code, message)))
        assert [e.pointer for e in err.errors] == ["/description"], (message, err.errors)
        assert "xF0" not in str(err)
