"""The memory store keeps the current minute's and hour's outcome counts at hand (a speed-up,
BENCHMARKS.md): the counts must be what bucketing every finish by ``datetime.replace`` gives."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from chronos_adapters.memory import MemoryStore
from chronos_core.models import RunStatus

T0 = datetime(2026, 3, 29, 0, 59, 58, tzinfo=UTC)  # next to an hour, and Europe/Paris's DST change


def test_counts_match_bucketing_each_finish() -> None:
    rnd = random.Random(17)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), ZoneInfo("Europe/Paris")]
    store = MemoryStore()
    minutes: Counter[tuple[datetime, str]] = Counter()
    hours: Counter[tuple[datetime, tuple[str, str]]] = Counter()
    at = T0
    for _ in range(3000):
        step = rnd.choice([0.0, 0.3, 1.0, 59.9, 60.0, 3600.0, -61.0, -0.5])  # on, across, back over bounds
        at = (at + timedelta(seconds=step)).astimezone(rnd.choice(zones))
        job, status = rnd.choice("ab"), rnd.choice([RunStatus.SUCCEEDED, RunStatus.FAILED])
        store._count(at, job, status)
        minutes[(at.replace(second=0, microsecond=0), status.value)] += 1
        hours[(at.replace(minute=0, second=0, microsecond=0), (job, status.value))] += 1
    horizon = max(store._totals) - timedelta(days=2)  # (what is older than two days is dropped)
    assert {(b, k): n for b, c in store._totals.items() for k, n in c.items()} == \
        {key: n for key, n in minutes.items() if key[0] >= horizon or key[0] in store._totals}
    horizon = max(store._per_job) - timedelta(days=2)
    assert {(b, k): n for b, c in store._per_job.items() for k, n in c.items()} == \
        {key: n for key, n in hours.items() if key[0] >= horizon or key[0] in store._per_job}


def test_a_finished_run_is_packed_as_its_evolved_copy() -> None:
    from chronos_adapters.memory.store import _pack, _pack_finished, _unpack
    from chronos_core.models import Trigger, evolve, new_run

    run = evolve(new_run("j", T0, Trigger.SCHEDULE, T0), status=RunStatus.RUNNING, started_at=T0, owner="w",
                 lease_expires_at=T0 + timedelta(seconds=30), output_lines=3)
    for result in (None, {"a": [1, "é"]}):
        args = dict(status=RunStatus.FAILED, finished_at=T0 + timedelta(seconds=1), exit_code=2,
                    output="x\ny", error="boom", output_lines=2, result=result)
        want = evolve(run, lease_expires_at=None, **args)
        got = _pack_finished(run, **args)  # type: ignore[arg-type]
        assert got == _pack(want) and _unpack(got) == want
