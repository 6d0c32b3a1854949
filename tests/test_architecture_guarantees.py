"""ARCHITECTURE.md's guarantees table names the tests that prove each guarantee: every file and test it
names must exist (a renamed or deleted test would leave a guarantee unproven while the table still
claims it)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_the_guarantees_table_names_exists() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    section = text[text.index("## Guarantees\n"):]
    section = section[:section.index("\n## ", 1)]
    aliases = dict(re.findall(r"`(\w+)`\s*=\s*`(tests/[\w/.]+\.py)`", section))
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 10
    checked = 0
    for row in rows:
        proved_by = row.rstrip(" |").rsplit(" | ", 1)[1]
        assert "`" in proved_by, f"a guarantee without a test: {row[:80]}"
        current: Path | None = None
        for ref in re.findall(r"`([^`]+)`", proved_by):
            head, _, name = ref.partition("::")
            if head:
                path = ROOT / aliases.get(head, head)
                assert path.exists(), f"{ref}: no such file ({path.relative_to(ROOT)})"
                current = path
            assert current is not None, f"{ref}: which file?"
            if name:
                defined = re.findall(r"^(?:async )?def (test\w+)", current.read_text(), re.M)
                assert fnmatch.filter(defined, name), f"{ref}: no such test in {current.relative_to(ROOT)}"
                checked += 1
    assert checked >= 30
