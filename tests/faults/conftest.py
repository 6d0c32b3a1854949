"""Fixtures of the fault suite (the rig itself is ``tests/faults/rig.py``): a private MariaDB, a private
Tansu broker behind a proxy, and the HTTP target, one each per module; the measurements printed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import backend_missing
from tests.faults.rig import RESULTS, Kafka, MariaDb, Target, start_target
from tests.fixtures.kafka import TansuProcess


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fault suite")
    for r in RESULTS:
        terminalreporter.write_line("  ".join(f"{k}={v}" for k, v in r.items()))


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDb]:
    db = MariaDb(tmp_path_factory.mktemp("mariadb"))
    db.install()
    db.start()
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture(scope="module")
def kafka() -> Iterator[Kafka]:
    try:
        broker = TansuProcess()
        broker.start()
        proxy = TansuProcess(origin=broker.bootstrap)
        proxy.start()
    except Exception as exc:
        backend_missing(f"the Tansu Kafka broker ({exc})")
    try:
        yield Kafka(broker, proxy)
    finally:
        proxy.stop()
        broker.stop()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    t, stop = start_target()
    try:
        yield t
    finally:
        stop()
