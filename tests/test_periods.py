"""Budget windows: the ledger's kept current windows equal the calendar's, whatever the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.periods import CurrentWindows, Period, window_at

# A zone with daylight saving: its days last 23 or 25 hours twice a year.
ZONE = ZoneInfo("Europe/Berlin")
START = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)  # 00:30 in Berlin; at 02:00 the clocks go forward


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.integers(min_value=-3 * 86_400, max_value=40 * 86_400), min_size=1, max_size=60
    ),
    period=st.sampled_from(list(Period)),
)
def test_kept_windows_equal_the_calendars_for_any_sequence_of_instants(
    steps: list[int], period: Period
) -> None:
    windows = CurrentWindows(ZONE)
    now = START
    for step in steps:  # forward, backward, across midnights, weeks, months, a DST change
        now = now + timedelta(seconds=step)
        assert windows.at(period, now) == window_at(period, now, ZONE)


def test_a_window_is_kept_to_its_last_instant_and_replaced_at_its_end() -> None:
    windows = CurrentWindows(ZONE)
    day = windows.at(Period.DAILY, START)
    assert day.label == "2026-03-29"  # a day of 23 hours
    assert day.end is not None
    assert windows.at(Period.DAILY, day.end - timedelta(microseconds=1)) is day
    after = windows.at(Period.DAILY, day.end)
    assert after.label == "2026-03-30" and after.start == day.end
    assert day.start is not None
    assert (day.end.astimezone(UTC) - day.start.astimezone(UTC)).total_seconds() == 23 * 3600
