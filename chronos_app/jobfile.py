"""Job definition files: YAML, JSON or TOML; one job, a list of jobs, several YAML documents (``---``),
or a mapping ``{"jobs": [...]}`` (TOML: ``[[jobs]]`` tables).

Used by ``chronos jobs create|update -f``, ``chronos apply -f`` and ``chronos serve --jobs``, and meant for
anything else that reads job files. The result is plain JSON data, ready for the API: YAML's and TOML's
dates and times become ISO 8601 strings. ``expand_env`` replaces ``${VAR}`` in string values by the
environment's value (``$${`` is a literal ``${``), so secrets stay out of the file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["JobFileError", "expand_env", "parse_jobs", "read_jobs"]


class JobFileError(ValueError):
    """The file cannot be read, is neither JSON nor YAML, or holds something other than job mappings."""


_YAML_HINT = ("; quote values that start with '@' or '*' (schedule: \"@every 30s\", "
              "schedule: \"*/5 * * * *\")")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return value


def parse_jobs(text: str, source: str = "<text>", *, toml: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """The job mappings in ``text`` (TOML with ``toml``, else JSON or YAML), and whether it held exactly
    one job mapping (not a list)."""
    docs: list[Any]
    stripped = text.lstrip()
    if toml:
        import tomllib

        try:
            docs = [tomllib.loads(text)]
        except tomllib.TOMLDecodeError as exc:
            raise JobFileError(f"{source} is not valid TOML: {exc}") from None
        if not isinstance(docs[0].get("jobs"), list):
            raise JobFileError(f"{source}: a TOML job file holds [[jobs]] tables, one per job")
    else:
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
    # {"jobs": [...]}: the set as one document (a job has no field "jobs")
    docs = [d["jobs"] if isinstance(d, dict) and set(d) == {"jobs"} and isinstance(d["jobs"], list) else d
            for d in docs]
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


def read_jobs(source: str, *, expand: bool = False,
              environ: Mapping[str, str] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """:func:`parse_jobs` of a file (TOML if it ends in ``.toml``), or of standard input for ``-``; with
    ``expand``, ``${VAR}`` taken from ``environ`` (default: the process's environment)."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"cannot read {source}: {exc}") from None
    name = "standard input" if source == "-" else source
    jobs, single = parse_jobs(text, name, toml=source.lower().endswith(".toml"))
    if expand:
        jobs = [expand_env(job, os.environ if environ is None else environ, f"{name}: job #{i + 1}")
                for i, job in enumerate(jobs)]
    return jobs, single


_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{([^}]*)\}?")


def expand_env(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """``value`` with ``${NAME}`` in every string (not in keys) replaced by ``environ[NAME]``; ``$${`` is
    a literal ``${``. An unset variable, or a ``${`` that is not ``${NAME}``, is a :class:`JobFileError`
    naming it (and ``where``)."""
    if isinstance(value, dict):
        return {k: expand_env(v, environ, where) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, environ, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name = m.group(1)
        if name is None:
            raise JobFileError(f"{where}: {m.group(0)!r} is not a variable like ${{NAME}} (write $${{ for "
                               "a literal ${)")
        if name not in environ:
            raise JobFileError(f"{where}: the environment variable {name} is not set (the file uses "
                               f"${{{name}}})")
        return environ[name]

    return _VAR.sub(sub, value)
