"""The README's job reference is true: its examples are jobs the real app accepts, the full example names
every field of a job, and each job type's example every field of its payload (so a new field shows up
here until it is documented)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from chronos_core.models import JobSpec
from chronos_core.payloads import EmailPayload, HttpPayload, PythonPayload, ShellPayload, SqlPayload
from tests.api.conftest import build_app, running

README = Path(__file__).resolve().parents[2] / "README.md"
# a payload field each example may leave out, because it excludes one that is shown
ALTERNATIVES = {"shell": {"argv"}, "http": {"body"}}
MODELS = {"shell": ShellPayload, "http": HttpPayload, "email": EmailPayload, "sql": SqlPayload,
          "python": PythonPayload}


def _examples() -> list[dict[str, Any]]:
    text = README.read_text()
    section = text.split("## Jobs: every field, by example", 1)[1].split("\n## ", 1)[0]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_the_full_example_names_every_job_field() -> None:
    full = _examples()[0]
    assert set(full) == set(JobSpec.model_fields)
    assert set(full["retry"]) == set(JobSpec.model_fields["retry"].annotation.model_fields)  # type: ignore[union-attr]


def test_each_type_example_names_every_payload_field() -> None:
    by_type = {e["type"]: e for e in _examples()[1:]}
    assert set(by_type) == set(MODELS)
    for kind, model in MODELS.items():
        names = {f.alias or n for n, f in model.model_fields.items()}
        assert set(by_type[kind]["payload"]) == names - ALTERNATIVES.get(kind, set()), kind


async def test_the_examples_are_accepted_by_the_app(tmp_path: Path) -> None:
    app = build_app(sql_connections={"app": f"sqlite:///{tmp_path}/app.db"}, python_modules=["myapp"],
                    worker=False, scheduler=False)
    async with running(app) as client:
        for example in _examples():
            r = await client.post("/jobs", json=example)
            assert r.status_code == 201, (example["name"], r.text)
