"""Hostile review 'secreview' of branch secfix (/work/coord/review-secfix.md), SQL store side."""

from __future__ import annotations

import asyncio

import pytest

from chronos_adapters.sql import SqlStore
from chronos_core import RunStatus
from tests.contracts.test_store_contract import T0, S, make_job, running_run


@pytest.mark.mysql
async def test_one_finish_the_store_cannot_hold_does_not_fail_the_others_of_its_batch(
        clean_mysql_url: str) -> None:
    """A python-function job may raise ``ExecutionFailed(..., exit_code=2**40)`` (the executor passes the
    exit code on): MySQL's INT column refuses it (1264, DataError). secfix maps that to ``InvalidJob`` at
    ``exit_code`` - a job error for a run's outcome - and the group commit fails the whole batch with it,
    so an unrelated job's run that finished in the same moment is not recorded either."""
    async with SqlStore(clean_mysql_url) as store:
        good_job, bad_job = make_job("good"), make_job("bad")
        await store.add_jobs([good_job, bad_job])
        good = await running_run(store, good_job, T0)
        bad = await running_run(store, bad_job, T0)
        results = await asyncio.gather(
            store.finish_run(good.id, "w1", status=RunStatus.SUCCEEDED, finished_at=T0 + S, exit_code=0),
            store.finish_run(bad.id, "w1", status=RunStatus.FAILED, finished_at=T0 + S, exit_code=2**40),
            return_exceptions=True)
        print(results)
        assert results[0] is True, f"the good run's finish: {results[0]!r}"
        assert (await store.get_run(good.id)).status is RunStatus.SUCCEEDED
