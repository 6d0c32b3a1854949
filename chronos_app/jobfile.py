"""Job definition files: YAML or JSON, one job, a list of jobs, or several YAML documents (``---``).

Used by ``chronos jobs create|update -f`` and meant for anything else that reads job files. The result is
plain JSON data, ready for the API: YAML's dates and times become ISO 8601 strings.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["JobFileError", "parse_jobs", "read_jobs"]


class JobFileError(ValueError):
    """The file cannot be read, is neither JSON nor YAML, or holds something other than job mappings."""


_YAML_HINT = ("; quote values that start with '@' or '*' (schedule: \"@every 30s\", "
              "schedule: \"*/5 * * * *\")")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def parse_jobs(text: str, source: str = "<text>") -> tuple[list[dict[str, Any]], bool]:
    """The job mappings in ``text``, and whether it held exactly one mapping (not a list)."""
    docs: list[Any]
    stripped = text.lstrip()
    try:
        docs = [json.loads(text)] if stripped.startswith(("{", "[")) else []
    except ValueError:
        docs = []  # not JSON after all (e.g. a YAML flow mapping): YAML decides
    if not docs:
        import yaml

        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            message = " ".join(str(exc).split())
            hint = _YAML_HINT if ("'@'" in message or "alias" in message) else ""
            raise JobFileError(f"{source} is neither JSON nor YAML: {message}{hint}") from None
    single = len(docs) == 1 and isinstance(docs[0], dict)
    jobs: list[Any] = []
    for doc in docs:
        jobs.extend(doc if isinstance(doc, list) else [doc])
    if not jobs:
        raise JobFileError(f"{source} holds no job")
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise JobFileError(f"{source}: job #{i + 1} is a {type(job).__name__}, not a mapping of fields")
    return [_plain(j) for j in jobs], single


def read_jobs(source: str) -> tuple[list[dict[str, Any]], bool]:
    """:func:`parse_jobs` of a file, or of standard input for ``-``."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"cannot read {source}: {exc}") from None
    return parse_jobs(text, "standard input" if source == "-" else source)
