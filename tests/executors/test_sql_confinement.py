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


# Attacks on the process itself run in a child process: without the confinement they crash it
# (segfault) or starve every SQLite database in it, the test runner's included.
_CHILD = r"""
import asyncio, json, sqlite3, sys
from chronos_adapters.executors import SqlExecutor
from chronos_core.errors import ExecutionFailed
from tests.executors._support import Lines, make_job, make_run

async def main(db, statements):
    sql = SqlExecutor(connections={"work": f"sqlite:///{db}"})
    outcomes = []
    for statement in statements:
        job = make_job("sql", {"connection": "work", "statement": statement})
        try:
            result = await sql.execute(job, make_run(job), Lines())
            outcomes.append("ok" if result.ok else "failed")
        except ExecutionFailed as exc:
            outcomes.append(f"refused: {exc}")
        print(json.dumps(outcomes[-1]), flush=True)
    await sql.stop()
    other = sqlite3.connect(":memory:")  # the rest of the process (the store) still gets memory
    other.execute("CREATE TABLE t (x)")
    other.execute("INSERT INTO t SELECT randomblob(100000) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3)")
    print(json.dumps("process ok"), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2:]))
"""


def _in_child(db: Path, *statements: str) -> list[str]:
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(db), *statements], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the process died ({proc.returncode}): {proc.stderr[-2000:]}"
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_fts3_tokenizer_cannot_install_a_pointer(layout: Path) -> None:
    # the two-argument form registers X'41...' as a tokenizer's method table; the next fts3 table
    # calls through it: a segfault of the whole service (or code execution, with a real address from
    # the one-argument form, which prints a pointer)
    outcomes = _in_child(layout / "work.db", "SELECT fts3_tokenizer('simple')",
                         "SELECT fts3_tokenizer('evil', X'4141414141414141')",
                         "CREATE VIRTUAL TABLE t USING fts3(x, tokenize=evil)")
    assert outcomes[0].startswith("refused") and "fts3_tokenizer" in outcomes[0]
    assert outcomes[1].startswith("refused")
    assert outcomes[-1] == "process ok"


def test_process_wide_and_corrupting_pragmas_are_refused(layout: Path) -> None:
    attacks = ("PRAGMA soft_heap_limit = 1", "PRAGMA hard_heap_limit = 100000",
               "SELECT * FROM pragma_hard_heap_limit", "PRAGMA writable_schema = ON",
               "PRAGMA temp_store_directory = '/tmp'", "PRAGMA locking_mode = EXCLUSIVE",
               "PRAGMA journal_mode = OFF", "PRAGMA synchronous = OFF", "PRAGMA schema_version = 7",
               "PRAGMA mmap_size = 1000000", "PRAGMA threads = 8", "PRAGMA database_list",
               "PRAGMA main.cell_size_check = OFF", "PRAGMA trusted_schema = ON")
    outcomes = _in_child(layout / "work.db", *attacks)
    assert outcomes[-1] == "process ok"
    assert [s for s, o in zip(attacks, outcomes, strict=False) if not o.startswith("refused")] == []


async def test_shadow_tables_and_huge_blobs_are_refused_fts_still_works(layout: Path) -> None:
    assert (await _run(layout, "CREATE VIRTUAL TABLE f USING fts4(x)"))[0] == "ok"
    assert (await _run(layout, "INSERT INTO f VALUES ('hello world')"))[0] == "ok"
    # a crafted segment in an FTS shadow table is parsed by SQLite's C code as trusted
    outcome, _ = await _run(layout, "UPDATE f_segdir SET root = X'00ffffffff'")
    assert outcome.startswith("refused") and "may not be modified" in outcome
    outcome, out = await _run(layout, "SELECT x FROM f WHERE f MATCH 'hello'")
    assert outcome == "ok" and '{"x": "hello world"}' in out
    outcome, _ = await _run(layout, "SELECT length(randomblob(100000000))")  # 100 MB in the service
    assert outcome.startswith("refused") and "too big" in outcome


async def test_harmless_pragmas_still_work(layout: Path) -> None:
    for statement in ("PRAGMA table_info(items)", "SELECT name FROM pragma_table_info('items')",
                      "PRAGMA user_version = 3", "PRAGMA foreign_keys = ON", "PRAGMA integrity_check",
                      "PRAGMA journal_mode", "PRAGMA optimize"):
        assert (await _run(layout, statement))[0] == "ok", statement
    outcome, out = await _run(layout, "PRAGMA user_version")
    assert outcome == "ok" and '{"user_version": 3}' in out


# -------------------------------------------- MySQL/MariaDB: the client side is this process, too

from tests.executors.test_sql import mariadb_url  # noqa: E402,F401 - the fixture


async def test_load_data_local_infile_reads_no_file_of_this_host(mariadb_url: str, tmp_path: Path) -> None:  # noqa: F811
    # LOAD DATA LOCAL INFILE makes the *client* (the worker) send a file of its host to the server; an
    # operator's ?local_infile=1 in the URL let a job read the store, /proc/self/environ...
    secret_file = tmp_path / "service-secret.txt"
    secret_file.write_text("host-file-secret-4711\n")
    sql = SqlExecutor(connections={"db": f"{mariadb_url}?local_infile=1"})

    async def run(statement: str) -> tuple[str, str]:
        job = make_job("sql", {"connection": "db", "statement": statement})
        log = Lines()
        try:
            await sql.execute(job, make_run(job), log)
            return "ok", log.text
        except ExecutionFailed as exc:
            return f"refused: {exc}", log.text

    try:
        assert (await run("CREATE TABLE leak (x TEXT)"))[0] == "ok"
        outcome, _ = await run(f"LOAD DATA LOCAL INFILE '{secret_file}' INTO TABLE leak")
        assert outcome.startswith("refused") and "local infile" in outcome
        outcome, out = await run("SELECT x FROM leak")
        assert outcome == "ok" and "host-file-secret" not in out
    finally:
        await sql.stop()
