"""The dependency rule (DESIGN.md section 1), checked on the source: arrows point one way only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_CORE = {"chronos_adapters", "chronos_app", "sqlalchemy", "pymysql", "aiokafka", "httpx",
                     "starlette", "sse_starlette", "uvicorn", "dependency_injector", "smtplib", "subprocess",
                     "alembic", "click", "prometheus_client", "aiosmtpd"}


def imports(package: str) -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out.extend((str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.append((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return out


def test_the_core_imports_no_adapter_framework_or_driver() -> None:
    bad = [(f, m) for f, m in imports("chronos_core") if m in FORBIDDEN_IN_CORE]
    assert bad == []


def test_the_core_imports_only_stdlib_and_pydantic() -> None:
    import sys

    allowed = set(sys.stdlib_module_names) | {"pydantic", "pydantic_core", "chronos_core"}
    assert sorted({m for _, m in imports("chronos_core")} - allowed) == []


@pytest.mark.parametrize("package", ["chronos_adapters"])
def test_adapters_never_import_the_app(package: str) -> None:
    assert [(f, m) for f, m in imports(package) if m == "chronos_app"] == []
