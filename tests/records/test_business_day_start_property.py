"""records.business_date with a day start, against an independent implementation (hypothesis), and
TAPTOUCH_BUSINESS_DAY_START's parsing.

The independent rule reads the wall clock off zoneinfo and does the subtraction on naive
wall-clock values, field by field: the business date is the local date of (local wall-clock time
minus the start), so on a DST day the start follows the clock on the wall.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="taptouch-hypothesis-"))  # nothing written into the checkout

from pipelines import settings as run_settings  # noqa: E402
from pipelines.warehouse import records  # noqa: E402

ZONES = [
    "UTC",
    "Australia/Sydney",
    "Australia/Perth",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Pacific/Chatham",
    "America/New_York",
    "America/St_Johns",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kathmandu",
    "Pacific/Kiritimati",
    "America/Santiago",
]


def independent(at: datetime, tz: str, start_minutes: int) -> date:
    wall = at.astimezone(ZoneInfo(tz))
    minutes = wall.hour * 60 + wall.minute
    if (minutes, wall.second, wall.microsecond) >= (start_minutes, 0, 0):
        return date(wall.year, wall.month, wall.day)
    return date(wall.year, wall.month, wall.day) - timedelta(days=1)


@settings(max_examples=3000, deadline=None)
@given(
    at=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)),
    tz=st.sampled_from(ZONES),
    start=st.integers(min_value=0, max_value=12 * 60 - 1),
)
def test_business_date_matches_an_independent_rule(at, tz, start):
    assert records.business_date(at, tz, timedelta(minutes=start)) == independent(at, tz, start)


# DST nights, minute by minute: Sydney's clocks go 02:00 -> 03:00 on 2026-10-04 and 03:00 -> 02:00
# on 2026-04-05; New York's 02:00 -> 03:00 on 2026-03-08 and 02:00 -> 01:00 on 2026-11-01
@pytest.mark.parametrize(
    "tz,night",
    [
        ("Australia/Sydney", "2026-10-03T14:00Z"),
        ("Australia/Sydney", "2026-04-04T13:00Z"),
        ("America/New_York", "2026-03-08T04:00Z"),
        ("America/New_York", "2026-11-01T03:00Z"),
    ],
)
@pytest.mark.parametrize("start", [0, 90, 150, 240, 719])
def test_dst_nights_minute_by_minute(tz, night, start):
    first = datetime.fromisoformat(night)
    for minute in range(0, 8 * 60):
        at = first + timedelta(minutes=minute, seconds=59)
        assert records.business_date(at, tz, timedelta(minutes=start)) == independent(at, tz, start)


def test_the_first_representable_date_is_the_floor():
    # a record may say year 1: before that day's start there is no earlier date to give
    assert records.business_date(datetime(1, 1, 1, 1, tzinfo=UTC), "UTC", timedelta(hours=4)) == date.min
    assert records.business_date(datetime(1, 1, 1, 4, tzinfo=UTC), "UTC", timedelta(hours=4)) == date(1, 1, 1)
    assert records.business_date(datetime(1, 1, 2, 3, tzinfo=UTC), "UTC", timedelta(hours=4)) == date(1, 1, 1)


def test_a_sale_at_0130_counts_toward_the_night_before():
    at = datetime(2026, 10, 2, 15, 30, tzinfo=UTC)  # 01:30 AEST on Saturday 2026-10-03
    assert records.business_date(at, "Australia/Sydney") == date(2026, 10, 3)
    assert records.business_date(at, "Australia/Sydney", timedelta(hours=4)) == date(2026, 10, 2)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("", timedelta(0)),
        ("00:00", timedelta(0)),
        ("04:00", timedelta(hours=4)),
        ("4:30", timedelta(hours=4, minutes=30)),
        (" 11:59 ", timedelta(hours=11, minutes=59)),
    ],
)
def test_the_setting_reads_hh_mm(monkeypatch, raw, expected):
    monkeypatch.setenv("TAPTOUCH_BUSINESS_DAY_START", raw)
    assert run_settings.business_day_start() == expected


@pytest.mark.parametrize("raw", ["12:00", "23:00", "4", "04:60", "-1:00", "04:00:00", "4am", "04h00", "٠٤:٠٠"])
def test_a_bad_setting_names_the_variable_and_the_range(monkeypatch, raw):
    monkeypatch.setenv("TAPTOUCH_BUSINESS_DAY_START", raw)
    with pytest.raises(run_settings.SettingError) as err:
        run_settings.business_day_start()
    assert "TAPTOUCH_BUSINESS_DAY_START" in str(err.value) and "00:00 to 11:59" in str(err.value)
