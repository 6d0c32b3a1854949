"""The vendored JavaScript is exactly what packages.json pins (scripts/vendor-js --check), and the check
does notice a changed, missing or stray file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "chronos_app" / "ui" / "static" / "vendor"


def _check(vendor: Path) -> subprocess.CompletedProcess[str]:
    script = str(ROOT / "scripts" / "vendor-js")
    return subprocess.run([sys.executable, script, "--check", "--dir", str(vendor)],
                          capture_output=True, text=True, timeout=60)


def test_vendored_files_match_the_pins() -> None:
    result = _check(VENDOR)
    assert result.returncode == 0, result.stderr
    assert "alpinejs, uplot, swagger-ui-dist" in result.stdout
    for package in ("alpinejs", "uplot", "swagger-ui-dist"):
        assert (VENDOR / package / "LICENSE").read_text().strip(), package


def test_the_check_notices_a_changed_a_missing_and_a_stray_file(tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    (copy / "alpinejs" / "alpine.min.js").write_text("/* tampered */")
    (copy / "uplot" / "uPlot.min.css").unlink()
    (copy / "uplot" / "extra.js").write_text("")
    result = _check(copy)
    assert result.returncode != 0
    assert "alpinejs/alpine.min.js: changed since it was vendored" in result.stderr
    assert "uplot/uPlot.min.css: missing" in result.stderr
    assert "uplot/extra.js: not from a pinned package" in result.stderr
