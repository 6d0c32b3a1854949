"""Jobs, runs, job summaries and notices as rows of the ``tables.py`` tables, and back: one codec per
entity, derived from the dataclass fields and the table's columns (a column holds the field of its name).
Enum fields are stored by value and ``UtcDateTime`` columns as datetimes (or, for the hot statements that
bind driver values themselves, as :func:`~.tables.utc_text`); the few fields stored otherwise (JSON text,
pydantic models, text cut to a length) say so in their codec's ``encode`` / ``decode``."""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter
from sqlalchemy import Table

from chronos_core.hooks import Notice
from chronos_core.hookspec import ChainRule, Exclusion, NotifyRule, notify_json
from chronos_core.models import Job, JobSummary, Run, RunStatus
from chronos_core.planning import jitter_order
from chronos_core.retry import RetryPolicy

from .tables import UtcDateTime, job_summaries, jobs, notices, runs

__all__ = ["JOBS", "NOTICES", "RUNS", "SUMMARIES", "Codec", "RunRows", "cut", "job_row", "json_text",
           "memo", "with_next_run_at"]

E = TypeVar("E")
Convert = Callable[[Any], Any]


def memo(convert: Callable[[datetime], Any]) -> Callable[[datetime | None], Any]:
    """``convert`` for one batch of rows, each distinct value converted once: a claim's runs share their
    creation time, and a first attempt's slot is also its due time."""
    done: dict[datetime, Any] = {}

    def memo(value: datetime | None) -> Any:
        if value is None:
            return None
        out = done.get(value)
        if out is None:
            out = done[value] = convert(value)
        return out
    return memo


def json_text(value: Any) -> str | None:
    """A JSON value as stored: text, NULL for None."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


def cut(error: str | None, limit: int = 8000) -> str | None:
    """Errors are stored whole up to 8000 characters (a TEXT column holds 64 KiB of UTF-8 on MySQL)."""
    return error if error is None or len(error) <= limit else error[:limit] + " [...]"


def _enum_of(hint: Any) -> type[enum.Enum] | None:
    """The enum class of a field typed ``E`` or ``E | None``."""
    for t in (hint, *typing.get_args(hint)):
        if isinstance(t, type) and issubclass(t, enum.Enum):
            return t
    return None


def _optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


def _value_or_none(member: enum.Enum | None) -> Any:
    return None if member is None else member.value


def _member_or_none(lookup: dict[Any, enum.Enum], value: Any) -> enum.Enum | None:
    return None if value is None else lookup[value]


_VALUE = object()  # an encoder that is ``member.value`` of a non-optional enum field


def _compile_row(fields: Sequence[str], encode: Mapping[int, Any], datetimes: Collection[int],
                 with_dt: bool, computed: Mapping[int, str] | None = None) -> Callable[..., tuple[Any, ...]]:
    """``lambda obj, dt, waits: (obj.a, e1(obj.b), dt(obj.c), obj.d.value, …)``: a row from the fields
    (and the ``computed`` expressions, at their positions), its
    conversions applied, compiled once from the field names. Generated because it is worth it: CPython
    3.11 reads slots in bytecode (specialized LOAD_ATTR) several times faster than ``attrgetter`` or a
    loop over the fields does; 1,000 claimed runs as rows cost 2-9 ms this way and 17-33 ms through an
    ``attrgetter`` and loops, side by side on 2 shared cores (a claim of 1,000 jobs is 130-160 ms of CPU
    on SQLite). The same as the hand-written tuples it replaces, without restating the fields."""
    scope: dict[str, Any] = {}
    parts = []
    for i, name in enumerate(fields):
        if not name.isidentifier():
            raise ValueError(f"not a field name: {name!r}")
        part = f"obj.{name}"
        if encode.get(i) is _VALUE:
            part = f"{part}.value"
        elif i in encode:
            scope[f"e{i}"] = encode[i]
            part = f"e{i}({part})"
        if with_dt and i in datetimes:
            part = f"dt({part})"
        parts.append(part)
    for at, expression in sorted((computed or {}).items()):
        parts.insert(at, expression)
    fn: Callable[..., tuple[Any, ...]] = eval(f"lambda obj, dt, waits=False: ({', '.join(parts)},)", scope)
    return fn


class Codec(Generic[E]):
    """One dataclass as one table's rows. The columns it writes are the table's columns that name a
    field (``renamed`` maps a column to its field where the names differ), in the table's order."""

    def __init__(self, cls: type[E], table: Table, *, renamed: Mapping[str, str] | None = None,
                 encode: Mapping[str, Convert] | None = None,
                 decode: Mapping[str, Convert] | None = None) -> None:
        renamed = renamed or {}
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        table_columns = [c.name for c in table.c]
        self.cls = cls
        self.columns = tuple(c for c in table_columns if renamed.get(c, c) in names)
        self.fields = tuple(renamed.get(c, c) for c in self.columns)
        if set(self.fields) != names:
            raise TypeError(f"{cls.__name__} fields without a column in {table.name}: "
                            f"{sorted(names - set(self.fields))}")
        enc: dict[str, Convert] = {}
        dec: dict[str, Convert] = {}
        for f in self.fields:
            kind = _enum_of(hints[f])
            if kind is not None:
                lookup = dict(kind._value2member_map_)
                if _optional(hints[f]):
                    enc[f], dec[f] = _value_or_none, functools.partial(_member_or_none, lookup)
                else:
                    enc[f], dec[f] = _VALUE, lookup.__getitem__
        enc.update(encode or {})
        dec.update(decode or {})
        self._decode = [(f, dec[f]) for f in self.fields if f in dec]
        self.datetimes = tuple(i for i, c in enumerate(self.columns)
                               if isinstance(table.c[c].type, UtcDateTime))
        self._datetime_columns = frozenset(self.columns[i] for i in self.datetimes)
        self.encoders = {i: enc[f] for i, f in enumerate(self.fields) if f in enc}
        self._row = _compile_row(self.fields, self.encoders, self.datetimes, with_dt=False)
        self._row_dt = _compile_row(self.fields, self.encoders, self.datetimes, with_dt=True)
        self._at = [table_columns.index(c) for c in self.columns]  # each field's place in a table row
        self._pick = itemgetter(*self._at)
        self._decoders = dec
        self._hints = hints

    def values(self, obj: E, dt: Callable[[datetime | None], Any] | None = None) -> tuple[Any, ...]:
        """The row of ``obj``, in :attr:`columns` order; with ``dt``, datetimes converted by it."""
        return self._row(obj, None) if dt is None else self._row_dt(obj, dt)

    def row(self, obj: E) -> dict[str, Any]:
        """The row of ``obj`` by column name (for SQLAlchemy statements)."""
        return dict(zip(self.columns, self.values(obj), strict=True))

    def load(self, values: Sequence[Any]) -> E:
        """An object from its column values, in :attr:`columns` order."""
        kw = dict(zip(self.fields, values, strict=True))
        for f, convert in self._decode:
            kw[f] = convert(kw[f])
        return self.cls(**kw)

    def load_row(self, row: Sequence[Any]) -> E:
        """An object from a row of the whole table (``select(table)``)."""
        return self.load(self._pick(row))

    def reader(self, stored_time: Callable[[Any], datetime], offset: int = 0) -> Callable[[Sequence[Any]], E]:
        """``read(row)``: an object from a row of *driver values* (the DB-API cursor's own, no SQLAlchemy
        result processing) holding the whole table's columns in table order from ``offset`` on (a join
        may put other columns before or after). ``stored_time`` turns the driver's value of a
        ``UtcDateTime`` column (not NULL) into an aware datetime: the dialect's own.

        For the listings (``GET /jobs``, a job's history): a page of 101 jobs cost ~1.1 ms through
        :meth:`load_row` and SQLAlchemy's rows (11 us a job, most of it ``cls(**kw)`` with 26 keyword
        arguments and the dict zipped for it), the largest part of ``GET /jobs?limit=100`` (py-spy,
        BENCHMARKS.md). Compiled once from the field names, like :func:`_compile_row` and for the same
        reason: ``object.__new__`` and one slot store per field, each value converted inline."""
        scope: dict[str, Any] = {"new": object.__new__, "cls": self.cls, "dt": stored_time}
        lines = []
        for field, at in zip(self.fields, self._at, strict=True):
            if not field.isidentifier():
                raise ValueError(f"not a field name: {field!r}")
            raw = f"r[{at + offset}]"
            kind = _enum_of(self._hints[field])
            decode = self._decoders.get(field)
            if kind is not None:  # a dict lookup of the stored value
                scope[f"m_{field}"] = dict(kind._value2member_map_)
                value, nullable = f"m_{field}[{raw}]", _optional(self._hints[field])
            elif decode is not None:  # (takes NULL itself where the column has it)
                scope[f"d_{field}"] = decode
                value, nullable = f"d_{field}({raw})", False
            elif self.columns[self.fields.index(field)] in self._datetime_columns:
                value, nullable = f"dt({raw})", True
            else:
                value, nullable = raw, False
            if nullable:
                value = f"(None if {raw} is None else {value})"
            lines.append(f"    obj.{field} = {value}\n")
        src = "def read(r):\n    obj = new(cls)\n" + "".join(lines) + "    return obj\n"
        exec(src, scope)
        fn: Callable[[Sequence[Any]], E] = scope["read"]
        return fn


# -------------------------------------------------------------------------------------------- jobs

def _dump_list(items: Sequence[Any]) -> str | None:
    if not items:
        return None
    return json.dumps([i.model_dump(mode="json", by_alias=True, exclude_none=True) for i in items],
                      separators=(",", ":"), ensure_ascii=False)


def _dump_notify(rules: Sequence[NotifyRule]) -> str | None:
    # the bytes JobSpec bounds (NOTIFY_MAX_BYTES: what MySQL's TEXT column holds)
    return notify_json(list(rules)).decode() if rules else None


def _list_loader(item: type[Any]) -> Convert:
    adapter = TypeAdapter(list[item])  # type: ignore[valid-type]

    @functools.lru_cache(maxsize=4096)
    def load(text: str) -> tuple[Any, ...]:
        return tuple(adapter.validate_json(text))
    return lambda text: list(load(text)) if text else []


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


JOBS: Codec[Job] = Codec(
    Job, jobs, renamed={"chain": "then"},  # `then` is a reserved word in SQL
    encode={"payload": _compact, "retry": RetryPolicy.model_dump_json, "notify": _dump_notify,
            "then": _dump_list, "exclude": _dump_list},
    decode={"payload": json.loads,
            "retry": functools.lru_cache(maxsize=1024)(RetryPolicy.model_validate_json),
            "notify": _list_loader(NotifyRule), "then": _list_loader(ChainRule),
            "exclude": _list_loader(Exclusion)})


def job_row(job: Job) -> dict[str, Any]:
    """:meth:`Codec.row` of the job, with the column derived from it: ``next_offset``, the jitter order of
    its ``next_run_at`` (the claim's order among the jobs due at one instant)."""
    row = JOBS.row(job)
    row["next_offset"] = jitter_order(job.id, job.next_run_at, job.jitter)
    return row


def _copier() -> Callable[[Job, datetime | None], Job]:
    """A copy of a Job with another ``next_run_at``, slot by slot, as code generated from the Job's
    fields (no ``__init__``, no keyword arguments, no loop): the claim copies every job it hands out, and
    this costs 0.5-1.7 us a job where a loop over the fields costs 6-14 us, ``copy.copy`` 18 us and
    ``dataclasses.replace`` 8 us (2 shared cores, Python 3.11; 1,000 claims cost 130-300 ms in
    ``bench/store_bench.py``, so the loop would add 2-5 %). Generated because it is worth that."""
    names = [f.name for f in dataclasses.fields(Job) if f.name != "next_run_at"]
    src = ("def copy(job, next_run_at):\n    new = make(Job)\n"
           + "".join(f"    new.{n} = job.{n}\n" for n in names)
           + "    new.next_run_at = next_run_at\n    return new\n")
    scope: dict[str, Any] = {"make": object.__new__, "Job": Job}
    exec(src, scope)
    fn: Callable[[Job, datetime | None], Job] = scope["copy"]
    return fn


with_next_run_at = _copier()


# -------------------------------------------------------------------------------------------- runs

RUNS: Codec[Run] = Codec(Run, runs, encode={"error": cut, "result": json_text},
                         decode={"result": lambda v: None if v is None else json.loads(v)})


class RunRows:
    """Runs as rows of ``runs``: the fields (as :data:`RUNS` encodes them), output cut to its last
    ``output_limit`` characters, and ``dispatch_due_at``, the one column that is not a field: the due time
    of a queued run not yet handed to the dispatch queue. Compiled like :data:`RUNS` (the claim inserts
    thousands a second)."""

    def __init__(self, output_limit: int) -> None:
        self.output_limit = output_limit
        self.columns = tuple(c.name for c in runs.c)
        waits_at = self.columns.index("dispatch_due_at")
        if RUNS.columns != self.columns[:waits_at] + self.columns[waits_at + 1:]:
            raise TypeError("every column of runs but dispatch_due_at holds a field of Run")
        encode = dict(RUNS.encoders)
        encode[RUNS.fields.index("output")] = self.cap
        self._row = _compile_row(RUNS.fields, encode, RUNS.datetimes, False,
                                 {waits_at: "(obj.due_at if waits else None)"})
        self._row_dt = _compile_row(RUNS.fields, encode, RUNS.datetimes, True,
                                    {waits_at: "(dt(obj.due_at) if waits else None)"})

    def cap(self, output: str) -> str:
        return output if len(output) <= self.output_limit else output[-self.output_limit:]

    def values(self, run: Run, dispatched: bool,
               dt: Callable[[datetime | None], Any] | None = None) -> tuple[Any, ...]:
        """The run's insert row in the order of ``runs``' columns, datetimes converted by ``dt``."""
        waits = run.status is RunStatus.QUEUED and not dispatched
        return self._row(run, None, waits) if dt is None else self._row_dt(run, dt, waits)

    def row(self, run: Run, dispatched: bool) -> dict[str, Any]:
        """The insert row by column name (for SQLAlchemy statements)."""
        return dict(zip(self.columns, self.values(run, dispatched), strict=True))


# ------------------------------------------------------------------------------- summaries, notices

SUMMARIES: Codec[JobSummary] = Codec(JobSummary, job_summaries)

NOTICES: Codec[Notice] = Codec(
    Notice, notices,
    encode={"target": lambda v: json.dumps(v, separators=(",", ":")), "data": _compact,
            "last_error": lambda v: cut(v, 2000), "tries": json.dumps},
    decode={"target": json.loads, "data": json.loads, "tries": json.loads})
