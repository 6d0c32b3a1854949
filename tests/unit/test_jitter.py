"""Jitter offsets are the same in every scheduler process (a hash of the job and the slot, not Python's
randomized hash()) and spread within [0, jitter]."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from chronos_core.planning import jitter_offset

SLOTS = [datetime(2030, 1, 1, tzinfo=UTC) + timedelta(hours=i) for i in range(50)]
JOBS = [f"01a23430-0000-7000-8000-{i:012d}" for i in range(20)]


def _offsets() -> list[float]:
    return [jitter_offset(j, s, 30).total_seconds() for j in JOBS for s in SLOTS]


def test_offsets_are_within_bounds_and_spread() -> None:
    got = _offsets()
    assert all(0 <= x <= 30 for x in got)
    assert len(set(got)) > len(got) * 0.95  # not a constant, hardly a repeat
    assert 10 < sum(got) / len(got) < 20  # about uniform: mean near 15


def test_another_process_computes_the_same_offsets() -> None:
    code = ("import json; from tests.unit.test_jitter import _offsets; print(json.dumps(_offsets()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another process, another str hash
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert json.loads(out.stdout) == _offsets()
