"""Schedule semantics: parsing, cron matching (croniter as an oracle in UTC), DST rules, intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from chronos_core import InvalidSchedule, parse_duration, parse_schedule
from chronos_core.schedules import CronSchedule, IntervalSchedule, ManualSchedule, OneOffSchedule


def fires(expr: str, tz: str, start_local: str, n: int) -> list[str]:
    """The next n fire times after a local wall time, as local ISO strings with their offsets."""
    zone = ZoneInfo(tz)
    t = datetime.fromisoformat(start_local).replace(tzinfo=zone).astimezone(UTC)
    schedule = parse_schedule(expr, tz)
    out = []
    for _ in range(n):
        nxt = schedule.next_after(t)
        assert nxt is not None
        assert nxt > t
        t = nxt
        out.append(t.astimezone(zone).isoformat())
    return out


# ------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("* * * *", "must have 5 fields"),
        ("* * * * * * *", "got 7"),
        ("61 * * * *", "minute field: value 61 is out of range 0-59"),
        ("* 24 * * *", "hour field: value 24 is out of range 0-23"),
        ("60 * * * * *", "second field: value 60 is out of range 0-59"),
        ("* * 0 * *", "day-of-month field: value 0 is out of range 1-31"),
        ("* * * 13 *", "month field: value 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week field: value 8 is out of range 0-7"),
        ("*/0 * * * *", "minute field: step must be a positive integer"),
        ("5-1 * * * *", "range '5-1' runs backwards"),
        ("* * * foo *", "month field: 'foo' is not a number or a name"),
        ("1,,2 * * * *", "empty list item"),
        ("? * * * *", "'?' is only allowed in the day fields"),
        ("0 0 30 2 *", "day-of-month 30 never occurs"),
        ("@fortnightly", "unknown schedule macro '@fortnightly'"),
        ("@every", "invalid duration"),
        ("@every 0s", "must be greater than zero"),
        ("@every 5 parsecs", "invalid duration"),
        ("@every 1ms", "at least 10ms"),
        ("@at tomorrow", "@at needs an ISO-8601 time"),
    ],
)
def test_invalid_expressions_say_what_is_wrong(expr: str, reason: str) -> None:
    with pytest.raises(InvalidSchedule) as exc:
        parse_schedule(expr)
    assert reason in str(exc.value)
    assert exc.value.errors[0].loc == ("schedule",)
    assert exc.value.errors[0].pointer == "/schedule"


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "utc ", "../etc/passwd"])
def test_unknown_time_zone_points_at_the_timezone_field(tz: str) -> None:
    with pytest.raises(InvalidSchedule) as exc:
        parse_schedule("* * * * *", tz)
    assert exc.value.errors[0].loc == ("timezone",)
    assert "unknown time zone" in exc.value.reason


def test_kinds() -> None:
    assert isinstance(parse_schedule(None), ManualSchedule)
    assert isinstance(parse_schedule("  "), ManualSchedule)
    assert isinstance(parse_schedule("@daily"), CronSchedule)
    assert isinstance(parse_schedule("@every 30s"), IntervalSchedule)
    assert isinstance(parse_schedule("@at 2027-01-01T09:00:00+01:00"), OneOffSchedule)


def test_manual_never_fires() -> None:
    assert parse_schedule(None).next_after(datetime(2030, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("250ms", 0.25), ("1w", 604800),
     ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


# ------------------------------------------------------------------------------------------ matching


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        ("*/15 * * * * *", "2026-01-01T00:00:00", ["00:00:15", "00:00:30", "00:00:45", "00:01:00"]),
        ("0 9 * * mon-fri", "2026-01-02T10:00:00", ["2026-01-05T09:00", "2026-01-06T09:00"]),
        ("@hourly", "2026-01-01T00:30:00", ["01:00:00", "02:00:00"]),
        ("@daily", "2026-01-01T00:00:00", ["2026-01-02T00:00", "2026-01-03T00:00"]),
        ("@weekly", "2026-01-01T00:00:00", ["2026-01-04T00:00", "2026-01-11T00:00"]),  # Sundays
        ("@monthly", "2026-01-15T00:00:00", ["2026-02-01T00:00", "2026-03-01T00:00"]),
        ("@yearly", "2026-06-01T00:00:00", ["2027-01-01T00:00", "2028-01-01T00:00"]),
        ("0 0 29 2 *", "2026-01-01T00:00:00", ["2028-02-29T00:00", "2032-02-29T00:00"]),
        ("0 12 13 * 5", "2026-02-01T00:00:00", ["2026-02-06T12:00", "2026-02-13T12:00"]),  # dom OR dow
        ("0 0 * * 7", "2026-01-01T00:00:00", ["2026-01-04T00:00"]),  # 7 is Sunday
        ("30 8 1 jan,jul *", "2026-02-01T00:00:00", ["2026-07-01T08:30", "2027-01-01T08:30"]),
    ],
)
def test_cron_fire_times(expr: str, start: str, expected: list[str]) -> None:
    got = fires(expr, "UTC", start, len(expected))
    for g, e in zip(got, expected, strict=True):
        assert e in g, (g, e)


def test_next_after_is_strict_and_ignores_microseconds() -> None:
    s = parse_schedule("* * * * * *")
    t = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    assert s.next_after(t) == t + timedelta(seconds=1)
    assert s.next_after(t + timedelta(microseconds=1)) == t + timedelta(seconds=1)
    assert s.next_after(t - timedelta(microseconds=1)) == t


_field = st.sampled_from
_cron_parts = st.tuples(
    _field(["0", "*/7", "5,35", "10-20/3", "*"]),  # second
    _field(["*", "0", "*/15", "1-5", "7,29,59"]),  # minute
    _field(["*", "0", "*/6", "9-17", "23"]),  # hour
    _field(["*", "1", "15", "28-31", "1,10,20"]),  # dom
    _field(["*", "2", "1-6", "*/4", "12"]),  # month
    _field(["*", "0", "1-5", "6", "0,3"]),  # dow
)


@settings(max_examples=300, deadline=None)
@given(parts=_cron_parts,
       start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)))
def test_cron_agrees_with_croniter_in_utc(parts: tuple[str, ...], start: datetime) -> None:
    expr = " ".join(parts)
    t = start.replace(tzinfo=UTC)
    ours = parse_schedule(expr, "UTC").next_after(t)
    theirs = croniter(expr, t, second_at_beginning=True).get_next(datetime)
    assert ours == theirs


@settings(max_examples=200, deadline=None)
@given(parts=_cron_parts, start=st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2080, 1, 1)),
       tz=st.sampled_from(["Asia/Tokyo", "Asia/Kolkata", "Etc/GMT+5"]))
def test_cron_agrees_with_croniter_in_zones_without_dst(parts: tuple[str, ...], start: datetime,
                                                        tz: str) -> None:
    expr = " ".join(parts)
    zone = ZoneInfo(tz)
    t = start.replace(tzinfo=zone)
    ours = parse_schedule(expr, tz).next_after(t)
    theirs = croniter(expr, t, second_at_beginning=True).get_next(datetime)
    assert ours == theirs


@settings(max_examples=200, deadline=None)
@given(parts=_cron_parts, start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
       tz=st.sampled_from(["America/New_York", "Europe/Berlin", "Australia/Lord_Howe"]))
def test_fire_times_are_strictly_increasing_and_match_in_local_time(parts: tuple[str, ...], start: datetime,
                                                                     tz: str) -> None:
    expr = " ".join(parts)
    schedule = parse_schedule(expr, tz)
    t = start.replace(tzinfo=UTC)
    nxt = schedule.next_after(t)
    assert nxt is not None and nxt > t
    again = schedule.next_after(nxt)
    assert again is not None and again > nxt


# ----------------------------------------------------------------------------- daylight-saving time

# America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
# Europe/Berlin:    2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
# Australia/Lord_Howe (30-minute shift): 2026-04-05 02:00 -> 01:30; 2026-10-04 02:00 -> 02:30.


@pytest.mark.parametrize(
    ("expr", "tz", "start", "expected"),
    [
        # spring forward, fixed hour in the gap: once, at the first instant after the gap
        ("30 2 * * *", "America/New_York", "2026-03-07T12:00",
         ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
        ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00",
         ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
        ("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00",
         ["2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
        # several fixed times in one gap still run once
        ("0,20,40 2 * * *", "America/New_York", "2026-03-08T01:00",
         ["2026-03-08T03:00:00-04:00", "2026-03-09T02:00:00-04:00"]),
        # spring forward, wildcard hour: no slots in the gap
        ("*/30 * * * *", "America/New_York", "2026-03-08T01:00",
         ["2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00"]),
        ("0 */2 * * *", "America/New_York", "2026-03-08T00:00",
         ["2026-03-08T04:00:00-04:00", "2026-03-08T06:00:00-04:00"]),
        ("*/10 * * * *", "Australia/Lord_Howe", "2026-10-04T01:40",
         ["2026-10-04T01:50:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T02:40:00+11:00"]),
        # fall back, fixed hour in the repeated hour: once, in the first occurrence
        ("30 1 * * *", "America/New_York", "2026-10-31T12:00",
         ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
        ("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00",
         ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
        ("45 1 * * *", "Australia/Lord_Howe", "2026-04-04T12:00",
         ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
        # fall back, wildcard hour: both occurrences
        ("30 * * * *", "America/New_York", "2026-11-01T00:00",
         ["2026-11-01T00:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00",
          "2026-11-01T02:30:00-05:00"]),
        ("*/15 * * * *", "Europe/Berlin", "2026-10-25T02:40",
         ["2026-10-25T02:45:00+02:00", "2026-10-25T02:00:00+01:00", "2026-10-25T02:15:00+01:00"]),
        ("*/10 * * * *", "Australia/Lord_Howe", "2026-04-05T01:40",
         ["2026-04-05T01:50:00+11:00", "2026-04-05T01:30:00+10:30", "2026-04-05T01:40:00+10:30"]),
    ],
)
def test_debian_cron_dst_rules(expr: str, tz: str, start: str, expected: list[str]) -> None:
    assert fires(expr, tz, start, len(expected)) == expected


# A wildcard *minute* field makes a job wildcard too (Debian's MIN_STAR | HR_STAR), whatever its hour field.
@pytest.mark.parametrize(
    ("expr", "tz", "start", "expected"),
    [
        # spring forward: the slots in the gap do not exist, nothing runs at the end of the gap
        ("*/15 1,2 * * *", "America/New_York", "2026-03-08T00:50",
         ["2026-03-08T01:00:00-05:00", "2026-03-08T01:15:00-05:00", "2026-03-08T01:30:00-05:00",
          "2026-03-08T01:45:00-05:00", "2026-03-09T01:00:00-04:00"]),
        ("*/20 2 * * *", "Europe/Berlin", "2026-03-28T12:00",
         ["2026-03-30T02:00:00+02:00", "2026-03-30T02:20:00+02:00"]),
        ("*/15 2 * * *", "Australia/Lord_Howe", "2026-10-04T01:50",
         ["2026-10-04T02:30:00+11:00", "2026-10-04T02:45:00+11:00", "2026-10-05T02:00:00+11:00"]),
        # fall back: both passes of the repeated hour
        ("*/15 1,2 * * *", "America/New_York", "2026-11-01T00:50",
         ["2026-11-01T01:00:00-04:00", "2026-11-01T01:15:00-04:00", "2026-11-01T01:30:00-04:00",
          "2026-11-01T01:45:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T01:15:00-05:00",
          "2026-11-01T01:30:00-05:00", "2026-11-01T01:45:00-05:00", "2026-11-01T02:00:00-05:00",
          "2026-11-01T02:15:00-05:00", "2026-11-01T02:30:00-05:00", "2026-11-01T02:45:00-05:00",
          "2026-11-02T01:00:00-05:00"]),
        ("*/20 2 * * *", "Europe/Berlin", "2026-10-25T01:50",
         ["2026-10-25T02:00:00+02:00", "2026-10-25T02:20:00+02:00", "2026-10-25T02:40:00+02:00",
          "2026-10-25T02:00:00+01:00", "2026-10-25T02:20:00+01:00", "2026-10-25T02:40:00+01:00",
          "2026-10-26T02:00:00+01:00"]),
        ("*/15 1 * * *", "Australia/Lord_Howe", "2026-04-05T00:50",
         ["2026-04-05T01:00:00+11:00", "2026-04-05T01:15:00+11:00", "2026-04-05T01:30:00+11:00",
          "2026-04-05T01:45:00+11:00", "2026-04-05T01:30:00+10:30", "2026-04-05T01:45:00+10:30",
          "2026-04-06T01:00:00+10:30"]),
        # with seconds first: the minute field is the second one
        ("0 */30 2 * * *", "America/New_York", "2026-03-08T01:50",
         ["2026-03-09T02:00:00-04:00"]),
        # the same hours with fixed minutes are fixed-time: once at the end of the gap, once per fold
        ("0,30 1,2 * * *", "America/New_York", "2026-03-08T00:50",
         ["2026-03-08T01:00:00-05:00", "2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00",
          "2026-03-09T01:00:00-04:00"]),
        ("0,30 1,2 * * *", "America/New_York", "2026-11-01T00:50",
         ["2026-11-01T01:00:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-01T02:00:00-05:00",
          "2026-11-01T02:30:00-05:00", "2026-11-02T01:00:00-05:00"]),
    ],
)
def test_a_wildcard_minute_field_makes_a_wildcard_job(expr: str, tz: str, start: str,
                                                      expected: list[str]) -> None:
    assert fires(expr, tz, start, len(expected)) == expected


def test_wildcard_means_minute_or_hour_field_starting_with_a_star() -> None:
    def fixed(expr: str) -> bool:
        schedule = parse_schedule(expr, "America/New_York")
        assert isinstance(schedule, CronSchedule)
        return schedule.fixed_time

    assert fixed("30 2 * * *") and fixed("0,30 1,2 * * *") and fixed("@daily") and fixed("5-10 2 * * *")
    assert not fixed("*/15 2 * * *") and not fixed("* 2 * * *") and not fixed("0 */2 * * *")
    assert not fixed("30 * * * *") and not fixed("@hourly") and not fixed("0 */30 2 * * *")
    assert fixed("*/5 30 2 * * *")  # seconds are not a cron field in Debian: minute and hour decide


def test_croniter_alone_gets_both_dst_cases_wrong() -> None:
    """Documents why the core evaluates cron itself (DESIGN.md section 2)."""
    zone = ZoneInfo("America/New_York")
    it = croniter("30 1 * * *", datetime(2026, 11, 1, 0, 0, tzinfo=zone))
    assert [it.get_next(datetime).isoformat() for _ in range(2)] == [
        "2026-11-01T01:30:00-04:00", "2026-11-01T01:30:00-05:00"]  # twice on fall-back
    assert fires("30 1 * * *", "America/New_York", "2026-11-01T00:00", 2) == [
        "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]
    it = croniter("0 */2 * * *", datetime(2026, 3, 8, 0, 0, tzinfo=zone))
    assert it.get_next(datetime).isoformat() == "2026-03-08T03:00:00-04:00"  # a slot in the gap
    assert fires("0 */2 * * *", "America/New_York", "2026-03-08T00:00", 1) == ["2026-03-08T04:00:00-04:00"]


def test_starting_inside_the_second_occurrence_of_a_repeated_hour() -> None:
    zone = ZoneInfo("America/New_York")
    t = datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=zone)
    fixed = parse_schedule("30 1 * * *", "America/New_York").next_after(t)
    wild = parse_schedule("30 * * * *", "America/New_York").next_after(t)
    assert fixed is not None and wild is not None
    assert fixed.astimezone(zone).isoformat() == "2026-11-02T01:30:00-05:00"
    assert wild.astimezone(zone).isoformat() == "2026-11-01T01:30:00-05:00"


# ------------------------------------------------------------------------------ interval and one-off


def test_every_is_anchored() -> None:
    anchor = datetime(2026, 1, 1, 0, 0, 0, 250_000, tzinfo=UTC)
    s = parse_schedule("@every 1s", anchor=anchor)
    assert s.next_after(anchor - timedelta(hours=1)) == anchor
    assert s.next_after(anchor) == anchor + timedelta(seconds=1)
    assert s.next_after(anchor + timedelta(seconds=10, milliseconds=100)) == anchor + timedelta(seconds=11)


@given(seconds=st.integers(1, 100_000), offset_us=st.integers(0, 10**12))
def test_every_next_after_is_the_first_multiple_past_t(seconds: int, offset_us: int) -> None:
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    s = parse_schedule(f"@every {seconds}s", anchor=anchor)
    t = anchor + timedelta(microseconds=offset_us)
    nxt = s.next_after(t)
    assert nxt is not None
    assert t < nxt <= t + timedelta(seconds=seconds)
    assert (nxt - anchor) % timedelta(seconds=seconds) == timedelta(0)


def test_at_fires_once_and_reads_naive_times_in_the_job_zone() -> None:
    s = parse_schedule("@at 2027-01-01T09:00:00", "Europe/Berlin")
    at = datetime(2027, 1, 1, 8, 0, tzinfo=UTC)
    assert s.next_after(at - timedelta(seconds=1)) == at
    assert s.next_after(at) is None
    explicit = parse_schedule("@at 2027-01-01T09:00:00+01:00", "America/New_York")
    assert explicit.next_after(at - timedelta(days=1)) == at


def test_fire_times_stop_where_the_schedule_ends_and_before_year_9999() -> None:
    from datetime import UTC, datetime

    from chronos_core.schedules import fire_times, parse_schedule

    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    assert fire_times(parse_schedule("@every 1h", "UTC"), t0, 3) == [
        datetime(2030, 1, 1, h, tzinfo=UTC) for h in (1, 2, 3)]
    assert fire_times(parse_schedule("@at 2030-06-01T00:00:00Z", "UTC"), t0, 5) == [
        datetime(2030, 6, 1, tzinfo=UTC)]
    assert fire_times(parse_schedule(None, "UTC"), t0, 5) == []
    late = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert len(fire_times(parse_schedule("* * * * *", "UTC"), late, 5)) <= 1
