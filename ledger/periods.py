"""Budget periods as calendar windows in a time zone: where a window starts, ends and its name."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo


class Period(StrEnum):
    MINUTE = "minute"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    TOTAL = "total"


@dataclass(frozen=True, slots=True)
class Window:
    """One period's current window: [start, end) in the ledger's zone; None for the total period."""

    period: Period
    label: str
    start: datetime | None
    end: datetime | None

    def seconds_left(self, now: datetime) -> int | None:
        """Whole seconds until the window resets (rounded up), or None when it never does."""
        if self.end is None:
            return None
        left = (self.end - now).total_seconds()
        return max(1, int(left) + (0 if left == int(left) else 1))


def window_at(period: Period, now: datetime, zone: ZoneInfo) -> Window:
    """The window of `period` containing the instant `now` (an aware datetime)."""
    if period is Period.TOTAL:
        return Window(period, "total", None, None)
    if period is Period.MINUTE:
        start = now.astimezone(UTC).replace(second=0, microsecond=0)
        return Window(period, start.strftime("%Y-%m-%dT%H:%M"), start, start + timedelta(minutes=1))
    local = now.astimezone(zone)
    day = local.date()
    if period is Period.DAILY:
        first, after, label = day, day + timedelta(days=1), day.isoformat()
    elif period is Period.WEEKLY:
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
        label = f"{first.isocalendar().year}-W{first.isocalendar().week:02d}"
    else:
        first = day.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
        label = first.strftime("%Y-%m")
    return Window(period, label, _midnight(first, zone), _midnight(after, zone))


class CurrentWindows:
    """`window_at` for a clock that moves forward: each period's window is worked out once and
    kept while the instants asked about fall inside it (a reserve asks for every budget's)."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self._kept: dict[Period, Window] = {}

    def at(self, period: Period, now: datetime) -> Window:
        kept = self._kept.get(period)
        if kept is not None and _inside(kept, now):
            return kept
        found = window_at(period, now, self.zone)
        self._kept[period] = found
        return found


def _inside(window: Window, now: datetime) -> bool:
    if window.start is None or window.end is None:
        return window.period is Period.TOTAL
    return window.start <= now < window.end


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # Normalised through UTC so that the offset is right (a day may last 23 or 25 hours).
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC).astimezone(zone)
