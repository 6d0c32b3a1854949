"""The listings' decoded rows, kept (``decoded.DecodedRows``): a row is decoded again as soon as any of
its values differs from those its kept object came from (no version column is trusted), and what is kept
stays within its bounds."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chronos_adapters.sql import SqlStore
from chronos_adapters.sql.decoded import DecodedRows
from chronos_core.models import RunStatus
from tests.contracts.test_store_contract import T0, S, make_job, make_run


class Reader:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, row: Sequence[Any]) -> dict[str, Any]:
        self.calls += 1
        return {"id": row[0], "values": list(row[1:])}


def test_a_row_seen_before_is_not_decoded_again_and_a_changed_one_is() -> None:
    read = Reader()
    rows = DecodedRows(read, 0, 3)
    first = rows(("a", "x", 1, "ignored"))
    assert rows(("a", "x", 1, "not compared")) is first  # beyond stop: not part of what is compared
    assert read.calls == 1
    assert rows(("a", "x", 2, ""))["values"] == ["x", 2, ""]  # one value differs: decoded again
    assert rows(("a", "y", 2, ""))["values"] == ["y", 2, ""]
    assert rows(("a", None, 2, ""))["values"] == [None, 2, ""]
    assert read.calls == 4
    assert len(rows) == 1
    rows.forget("a")
    assert len(rows) == 0 and rows.nbytes == 0


def test_bounded_by_entries_and_bytes_oldest_first() -> None:
    rows = DecodedRows(Reader(), 0, 2, max_entries=3, max_bytes=100 * 1024)
    for key in "abcd":
        rows((key, "v"))
    assert len(rows) == 3 and "a" not in rows._entries
    big = DecodedRows(Reader(), 0, 2, max_bytes=100 * 1024)
    big(("small", "v"))
    big(("large", "x" * 1024))  # over a hundredth of the budget: decoded each time, not kept
    assert set(big._entries) == {"small"}
    held = DecodedRows(Reader(), 0, 2, max_bytes=1024 * 1024)
    for i in range(200):  # ~8.5 KB each
        held((i, "x" * 4000))
    assert held.nbytes <= held.max_bytes
    assert 100 < len(held) < 200 and 199 in held._entries and 0 not in held._entries


async def test_a_listing_shows_a_change_that_kept_the_version(tmp_path: Path) -> None:
    """``update_job`` stores whatever it is given, ``updated_at`` included: a job rewritten with the same
    ``updated_at`` is listed as stored now, not as the kept copy (its values are compared, not a version);
    a finished run shows in the next page's summary."""
    async with SqlStore(f"sqlite:///{tmp_path / 'd.db'}") as store:
        job = make_job("kept")
        await store.add_jobs([job])
        (listed, summary), = await store.list_jobs_with_summaries()
        assert listed.payload == job.payload and summary.last_run_id is None
        assert (await store.list_jobs_with_summaries())[0][0] is listed  # decoded once
        assert (await store.list_jobs())[0] is listed  # the same rows' reader for both listings
        changed = dataclasses.replace(job, payload={"command": "echo changed"})
        assert changed.updated_at == job.updated_at
        await store.update_job(changed)
        (relisted, _), = await store.list_jobs_with_summaries()
        assert relisted.payload == {"command": "echo changed"}
        assert (await store.list_jobs())[0].payload == {"command": "echo changed"}
        run = make_run(job, T0)
        await store.add_run(run, dispatched=True)
        assert await store.start_run(run.id, "w", T0, T0 + 30 * S)
        assert await store.finish_run(run.id, "w", status=RunStatus.SUCCEEDED, finished_at=T0 + S)
        (_, summary), = await store.list_jobs_with_summaries()
        assert summary.last_run_id == run.id and summary.last_run_status is RunStatus.SUCCEEDED
        await store.delete_job(job.id)
        assert len(store._listed_jobs) == 0 and len(store._listed_summaries) == 0


async def test_a_runs_page_shows_each_runs_progress(tmp_path: Path) -> None:
    """Runs listed again are decoded once while their row stays the same, and again as soon as it moves
    (queued, running, succeeded with its output)."""
    async with SqlStore(f"sqlite:///{tmp_path / 'd.db'}") as store:
        job = make_job("runs")
        await store.add_jobs([job])
        run = make_run(job, T0)
        await store.add_run(run, dispatched=True)
        (queued,) = await store.list_runs(job.id)
        assert queued.status is RunStatus.QUEUED
        assert (await store.list_runs(job.id))[0] is queued
        assert await store.start_run(run.id, "w", T0, T0 + 30 * S)
        (running,) = await store.list_runs(job.id)
        assert running.status is RunStatus.RUNNING and running.owner == "w"
        assert await store.finish_run(run.id, "w", status=RunStatus.SUCCEEDED, finished_at=T0 + S,
                                      output="done\n")
        (ended,) = await store.list_runs(job.id)
        assert (ended.status, ended.output) == (RunStatus.SUCCEEDED, "done\n")
        assert (await store.list_runs(job.id, status=[RunStatus.SUCCEEDED]))[0] is ended
