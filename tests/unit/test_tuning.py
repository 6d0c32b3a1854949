"""``tune_gc`` / ``tune_process`` in a fresh interpreter (tuning this test process would change every later
test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _in_fresh_python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_tune_gc_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    got = _in_fresh_python(
        "import gc, json\n"
        "from chronos_app.tuning import tune_gc\n"
        "before = gc.get_freeze_count()\n"
        "tune_gc()\n"
        "print(json.dumps({'before': before, 'frozen': gc.get_freeze_count(),\n"
        "                  'threshold': gc.get_threshold()}))")
    assert got["before"] == 0 and got["frozen"] > 1000
    assert got["threshold"][0] == 7000


def test_tune_gc_keeps_a_higher_threshold_and_a_disabled_collector_alone() -> None:
    got = _in_fresh_python(
        "import gc, json\n"
        "from chronos_app.tuning import tune_gc\n"
        "gc.set_threshold(20000, 10, 10); tune_gc(); a = gc.get_threshold()\n"
        "gc.set_threshold(0); tune_gc(); b = gc.get_threshold()\n"
        "print(json.dumps({'a': a, 'b': b}))")
    assert got["a"][0] == 20000 and got["b"][0] == 0


def test_tune_process_also_shortens_the_switch_interval_but_never_lengthens_it() -> None:
    got = _in_fresh_python(
        "import gc, json, sys\n"
        "from chronos_app.tuning import tune_process\n"
        "tune_process(); a = sys.getswitchinterval(); frozen = gc.get_freeze_count()\n"
        "sys.setswitchinterval(0.0001); tune_process(); b = sys.getswitchinterval()\n"
        "print(json.dumps({'a': a, 'b': b, 'frozen': frozen}))")
    assert got["a"] == pytest.approx(0.0005) and got["b"] == pytest.approx(0.0001) and got["frozen"] > 1000
