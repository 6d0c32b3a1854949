"""Schedule expressions and when they fire.

``parse_schedule(expression, timezone)`` is the one way in. It understands

* cron with 5 fields (``m h dom mon dow``) or 6 with seconds first (``s m h dom mon dow``), with lists,
  ranges, steps, month and weekday names, ``?`` as ``*`` in the day fields, 7 as Sunday;
* the macros ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``),
  ``@hourly``;
* ``@every <duration>`` (``30s``, ``5m``, ``1h30m``, ``2d``, ``250ms``), anchored at ``anchor``;
* ``@at <ISO-8601 time>`` for one run (a time without an offset is read in the job's time zone);
* ``None`` or an empty string: manual only, never fires by itself.

Cron is evaluated in the job's IANA time zone with Debian cron's daylight-saving rules:

* a job is *wildcard* when its minute or its hour field starts with ``*`` (Debian's ``MIN_STAR |
  HR_STAR``: ``*/15 2 * * *``, ``0 */2 * * *``, ``30 * * * *``), else *fixed-time* (``30 2 * * *``,
  ``0,30 1,2 * * *``);
* clocks jump forward: a fixed-time job whose time falls in the gap runs once, at the first instant
  after the gap (02:30 -> 03:00); a wildcard job simply has no slots in the gap;
* clocks fall back: a fixed-time job runs once, in the first occurrence of the repeated wall time; a
  wildcard job runs in both occurrences.

Cron matching is done here rather than with croniter (the tests use croniter as an oracle in UTC) because
croniter applies neither rule and the scheduler calls ``next_after`` once per fired slot, so it must be
cheap: a parsed expression is cached and matching works on precomputed sorted value sets.
"""

from __future__ import annotations

import bisect
import calendar
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidSchedule

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "ManualSchedule",
    "OneOffSchedule",
    "Schedule",
    "fire_times",
    "parse_duration",
    "parse_schedule",
    "parse_timezone",
]

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu",
                        "Zulu", "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0", "GMT0",
                        "Etc/Greenwich", "Greenwich"})
_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)


class Schedule(Protocol):
    """When a job fires. ``next_after(t)`` is the first fire time strictly after the aware datetime ``t``
    (as an aware UTC datetime), or ``None`` when the schedule will never fire again."""

    @property
    def expression(self) -> str | None: ...

    def next_after(self, t: datetime) -> datetime | None: ...


# --------------------------------------------------------------------------------------------- helpers


def parse_timezone(name: str) -> ZoneInfo:
    """The IANA zone called ``name``; ``InvalidSchedule`` (field ``timezone``) when there is none."""
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidSchedule(str(name), f"unknown time zone {name!r} (use an IANA name such as "
                              "'Europe/Berlin' or 'UTC')", field="timezone") from None


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    if not name or name != name.strip():
        raise ValueError(name)
    return ZoneInfo(name)


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``5m``, ``1h30m``, ``2d``, ``250ms`` (units may be combined, largest first)."""
    s = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit (ms, s, m, h, d, w), "
                         "e.g. '30s', '5m' or '1h30m'")
    if total <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too long") from None


# ------------------------------------------------------------------------------------------------ cron


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None


_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 7, _WEEKDAYS),
)


def _parse_value(text: str, f: _Field) -> int:
    if f.names and text.lower() in f.names:
        return f.names[text.lower()]
    if not text.isdigit():
        hint = f" or a name ({', '.join(f.names)})" if f.names else ""
        raise ValueError(f"{f.name} field: {text!r} is not a number{hint}")
    v = int(text)
    if not f.low <= v <= f.high:
        raise ValueError(f"{f.name} field: value {v} is out of range {f.low}-{f.high}")
    return v


def _parse_field(text: str, f: _Field) -> tuple[int, ...]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"{f.name} field: empty list item in {text!r}")
        base, _, step_text = item.partition("/")
        step = 1
        if _:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{f.name} field: step must be a positive integer, got {step_text!r}")
            step = int(step_text)
        if base in ("*", "?"):
            if base == "?" and f.name not in ("day-of-month", "day-of-week"):
                raise ValueError(f"{f.name} field: '?' is only allowed in the day fields")
            lo, hi = f.low, f.high
        elif "-" in base:
            a, _, b = base.partition("-")
            lo, hi = _parse_value(a, f), _parse_value(b, f)
            if lo > hi:
                raise ValueError(f"{f.name} field: range {base!r} runs backwards")
        else:
            lo = _parse_value(base, f)
            hi = f.high if _ else lo
        values.update(range(lo, hi + 1, step))
    if f.name == "day-of-week" and 7 in values:
        values.discard(7)
        values.add(0)
    if f.name == "day-of-week" and text.startswith("*") and "/" not in text:
        values = set(range(7))
    return tuple(sorted(values))


class _CronFields:
    """Parsed cron fields and a matcher on naive (wall-clock) datetimes."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.seconds, self.minutes, self.hours, self.doms, self.months, self.dows = (
            _parse_field(text, f) for text, f in zip(fields, _FIELDS, strict=True)
        )
        self.dom_star = fields[3].startswith(("*", "?"))
        self.dow_star = fields[5].startswith(("*", "?"))
        # Debian cron's MIN_STAR | HR_STAR: a minute or hour field starting with "*" makes the job a
        # wildcard one (no slots in a spring-forward gap, both passes of a fall-back fold)
        self.fixed_time = not (fields[1].startswith("*") or fields[2].startswith("*"))
        self._dom_set = frozenset(self.doms)
        self._dow_set = frozenset(self.dows)
        self._month_set = frozenset(self.months)
        if self.dow_star and not self.dom_star:
            longest = max(calendar.monthrange(2000, m)[1] for m in self.months)  # 2000: Feb has 29
            if self.doms[0] > longest:
                raise ValueError(f"day-of-month {self.doms[0]} never occurs in the chosen month(s)")

    def _day_ok(self, d: datetime) -> bool:
        if d.month not in self._month_set:
            return False
        dom_ok = d.day in self._dom_set
        dow_ok = (d.weekday() + 1) % 7 in self._dow_set
        if self.dom_star or self.dow_star:
            return dom_ok and dow_ok
        return dom_ok or dow_ok

    @staticmethod
    def _next(values: tuple[int, ...], v: int) -> int | None:
        i = bisect.bisect_left(values, v)
        return values[i] if i < len(values) else None

    def next_match(self, start: datetime, inclusive: bool) -> datetime | None:
        """The first matching naive datetime at or after (``inclusive``) or strictly after ``start``."""
        t = start.replace(microsecond=0)
        if not inclusive or start.microsecond:
            t += _SECOND
        limit_year = t.year + 30
        while t.year <= limit_year:
            if t.month not in self._month_set:
                m = self._next(self.months, t.month)
                t = datetime(t.year, m, 1) if m else datetime(t.year + 1, self.months[0], 1)
                continue
            if not self._day_ok(t):
                t = datetime(t.year, t.month, t.day) + _DAY
                continue
            if t.hour not in self.hours:
                h = self._next(self.hours, t.hour)
                t = t.replace(hour=h, minute=0, second=0) if h is not None else (
                    datetime(t.year, t.month, t.day) + _DAY)
                continue
            if t.minute not in self.minutes:
                m = self._next(self.minutes, t.minute)
                t = t.replace(minute=m, second=0) if m is not None else (
                    t.replace(minute=0, second=0) + timedelta(hours=1))
                continue
            if t.second not in self.seconds:
                s = self._next(self.seconds, t.second)
                t = t.replace(second=s) if s is not None else t.replace(second=0) + timedelta(minutes=1)
                continue
            return t
        return None


@lru_cache(maxsize=4096)
def _cron_fields(normalized: str) -> _CronFields:
    return _CronFields(normalized.split(" "))


def _naive(t: datetime) -> datetime:
    return t.replace(tzinfo=None)


class CronSchedule:
    """A cron expression evaluated in one time zone (see the module docstring for the DST rules)."""

    __slots__ = ("_f", "_last", "_utc", "expression", "timezone", "tz")

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        text = " ".join(expression.split())
        text = _MACROS.get(text.lower(), text)
        parts = text.split(" ")
        if len(parts) == 5:
            parts.insert(0, "0")
        elif len(parts) != 6:
            raise InvalidSchedule(expression, f"cron expression must have 5 fields (minute hour "
                                  f"day-of-month month day-of-week) or 6 (seconds first), got {len(parts)}")
        try:
            self._f = _cron_fields(" ".join(parts))
        except ValueError as exc:
            raise InvalidSchedule(expression, str(exc)) from None
        self.expression = expression
        self.timezone = timezone
        self.tz: tzinfo = parse_timezone(timezone)
        self._utc = timezone in _UTC_NAMES
        # the last (after, next) asked: the jobs sharing this schedule ask for the same slot's successor
        # one after the other (one tuple, replaced whole: safe to read from the store's threads)
        self._last: tuple[datetime, datetime | None] | None = None

    @property
    def fixed_time(self) -> bool:
        """Not a wildcard job in Debian cron's sense (neither minute nor hour field starts with ``*``)."""
        return self._f.fixed_time

    def __repr__(self) -> str:
        return f"CronSchedule({self.expression!r}, {self.timezone!r})"

    def _offset(self, t: datetime) -> timedelta:
        off = t.astimezone(self.tz).utcoffset()
        assert off is not None
        return off

    def next_after(self, t: datetime) -> datetime | None:
        last = self._last
        if last is not None and last[0] == t:
            return last[1]
        try:
            nxt = self._next_after(t)
        except (OverflowError, ValueError):  # the next match would be past year 9999: there is none
            nxt = None
        self._last = (t, nxt)
        return nxt

    def _next_after(self, t: datetime) -> datetime | None:
        t = t.astimezone(UTC)
        f = self._f
        if self._utc:
            w = f.next_match(_naive(t), inclusive=False)
            return None if w is None else w.replace(tzinfo=UTC)
        cur, inclusive, min_wall = t, False, None
        if f.fixed_time and t.astimezone(self.tz).fold == 1:
            # t is in the second occurrence of a repeated hour: fixed-time slots there already ran.
            b = self._transition(t - timedelta(hours=6), t)
            if b is not None:
                min_wall = _naive(b + self._offset(b - _SECOND))
        for _ in range(1000):
            o = self._offset(cur)
            wall = _naive(cur + o)
            if min_wall is not None and min_wall > wall:
                w = f.next_match(min_wall, inclusive=True)
            else:
                w = f.next_match(wall, inclusive)
            if w is None:
                return None
            cand = (w - o).replace(tzinfo=UTC)
            b = self._transition(cur, cand)
            if b is None:
                return cand
            o2 = self._offset(b)
            if o2 > o:  # spring forward: wall times in [b+o, b+o2) do not exist
                if f.fixed_time:
                    g = f.next_match(_naive(b + o), inclusive=True)
                    if g is not None and g < _naive(b + o2):
                        return b
                min_wall = None
            else:  # fall back: wall times in [b+o2, b+o) repeat; fixed-time jobs ran in the first pass
                min_wall = _naive(b + o) if f.fixed_time else None
            cur, inclusive = b, True
        raise RuntimeError(f"no fire time found for {self!r} after {t}")  # pragma: no cover

    def _transition(self, start: datetime, end: datetime) -> datetime | None:
        """The first instant in (start, end] whose UTC offset differs from ``start``'s, if any."""
        o = self._offset(start)
        lo = start
        while lo < end:
            hi = min(lo + _DAY, end)
            if self._offset(hi) != o:
                a, b = int(lo.timestamp()), int(hi.timestamp()) + (hi.microsecond > 0)
                while b - a > 1:
                    mid = (a + b) // 2
                    if self._offset(datetime.fromtimestamp(mid, UTC)) == o:
                        a = mid
                    else:
                        b = mid
                return datetime.fromtimestamp(b, UTC)
            lo = hi
        return None


# ------------------------------------------------------------------------------- interval and one-off

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class IntervalSchedule:
    """Fires every ``interval``, at ``anchor + k * interval`` (the anchor sets the phase)."""

    __slots__ = ("_anchor_us", "_step_us", "anchor", "expression", "interval")

    def __init__(self, expression: str, interval: timedelta, anchor: datetime | None = None) -> None:
        self.expression = expression
        self.interval = interval
        self.anchor = (anchor or _EPOCH).astimezone(UTC)
        self._step_us = interval // timedelta(microseconds=1)
        self._anchor_us = (self.anchor - _EPOCH) // timedelta(microseconds=1)

    def next_after(self, t: datetime) -> datetime | None:
        t_us = (t - _EPOCH) // timedelta(microseconds=1)
        if t_us < self._anchor_us:
            return self.anchor
        k = (t_us - self._anchor_us) // self._step_us + 1
        try:
            return _EPOCH + timedelta(microseconds=self._anchor_us + k * self._step_us)
        except OverflowError:  # past year 9999: it never fires again
            return None

    def __repr__(self) -> str:
        return f"IntervalSchedule({self.expression!r}, anchor={self.anchor.isoformat()})"


class OneOffSchedule:
    """Fires once, at ``at``."""

    __slots__ = ("at", "expression")

    def __init__(self, expression: str, at: datetime) -> None:
        self.expression = expression
        self.at = at.astimezone(UTC)

    def next_after(self, t: datetime) -> datetime | None:
        return self.at if self.at > t else None

    def __repr__(self) -> str:
        return f"OneOffSchedule({self.at.isoformat()})"


class ManualSchedule:
    """Never fires by itself: the job runs only when triggered."""

    expression: str | None = None

    def next_after(self, t: datetime) -> datetime | None:
        return None

    def __repr__(self) -> str:
        return "ManualSchedule()"


MANUAL = ManualSchedule()


def parse_schedule(
    expression: str | None, timezone: str = "UTC", *, anchor: datetime | None = None
) -> Schedule:
    """Parse a schedule expression (see the module docstring) evaluated in the IANA zone ``timezone``.

    ``anchor`` sets the phase of ``@every`` schedules (default: the Unix epoch, i.e. whole multiples).
    Raises :class:`~chronos_core.errors.InvalidSchedule` saying what is wrong.
    """
    tz = parse_timezone(timezone)
    if expression is None or not expression.strip():
        return MANUAL
    text = expression.strip()
    head, _, rest = text.partition(" ")
    head_l = head.lower()
    if head_l == "@every":
        try:
            interval = parse_duration(rest)
        except ValueError as exc:
            raise InvalidSchedule(expression, str(exc)) from None
        if interval < timedelta(milliseconds=10):
            raise InvalidSchedule(expression, "@every interval must be at least 10ms")
        return IntervalSchedule(text, interval, anchor)
    if head_l == "@at":
        try:
            at = datetime.fromisoformat(rest.strip())
        except ValueError:
            raise InvalidSchedule(expression, f"@at needs an ISO-8601 time such as "
                                  f"'2027-01-01T09:00:00+01:00', got {rest.strip()!r}") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=tz)
        try:
            return OneOffSchedule(text, at)
        except OverflowError:  # e.g. 0001-01-01T00:00+14:00 is before the first representable UTC time
            raise InvalidSchedule(expression, "@at time is out of the supported range (years 1-9999 in UTC)"
                                  ) from None
    if head_l.startswith("@") and head_l not in _MACROS:
        raise InvalidSchedule(expression, f"unknown schedule macro {head!r}; use one of "
                              f"{', '.join(sorted(_MACROS))}, @every <duration> or @at <time>")
    return CronSchedule(text, timezone)


def fire_times(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The schedule's next ``count`` fire times strictly after ``after``: fewer when it ends (or would go
    past year 9999). What the schedule previews show."""
    times: list[datetime] = []
    t = after
    with contextlib.suppress(OverflowError, ValueError):  # past year 9999: no more times
        while len(times) < count:
            nxt = schedule.next_after(t)
            if nxt is None:
                break
            times.append(nxt)
            t = nxt
    return times
