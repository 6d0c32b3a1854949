"""bench.targets: a target is met only when every repetition meets it, and a missing file says so."""

import json
from pathlib import Path

from bench import targets


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(tmp_path: Path, capsys, **files: Path) -> list[str]:
    argv = []
    for name in ("api", "burst", "run", "real-jobs", "scale-out"):
        argv += [f"--{name}", str(files.get(name.replace("-", "_"), tmp_path / "absent.jsonl"))]
    assert targets.main(argv) == 0
    return capsys.readouterr().out.splitlines()


def test_every_repetition_must_meet_the_target(tmp_path, capsys):
    case = "GET /jobs?limit=100"
    history = "GET /jobs/{id}/history?limit=100"
    api = _write(tmp_path / "api.jsonl", [
        *({"case": case, "system": "chronos", "ratio": r} for r in (0.30, 0.26, 0.27)),
        *({"case": history, "system": "chronos", "ratio": r} for r in (0.30, 0.20, 0.26)),
        *({"case": "POST /jobs", "system": "chronos", "rps": r} for r in (900.0, 950.0, 1200.0)),
    ])
    out = _run(tmp_path, capsys, api=api)
    assert any(case in line and line.endswith("met)") and "NOT" not in line for line in out)
    assert any(history in line and "met at the median only" in line for line in out)
    assert any("POST /jobs" in line and "NOT met" in line for line in out)


def test_durable_needs_both_the_on_time_share_and_the_p99(tmp_path, capsys):
    rows = [{"system": "chronos", "store": "sqlite", "kind": "interval", "n": 10_000, "stored": 10_000,
             "on_time_pct": 99.95, "lag_p99_ms": p99, "cpu_us_per_run": 100.0} for p99 in (80.0, 150.0, 90.0)]
    out = _run(tmp_path, capsys, run=_write(tmp_path / "run.jsonl", rows))
    line = next(x for x in out if "durable sqlite interval" in x)
    assert "met at the median only" in line
    assert "not measured" in next(x for x in out if "durable mariadb cron" in x)


def test_missing_files_are_named_not_guessed(tmp_path, capsys):
    out = _run(tmp_path, capsys)
    assert any(line.startswith("- 2 ") and "not measured" in line for line in out)
    assert any(line.startswith("- 4 ") and "not measured" in line for line in out)
    assert any(line.startswith("- 5 ") and "not measured" in line for line in out)
    assert any("POST /jobs" in line and "not measured" in line for line in out)
