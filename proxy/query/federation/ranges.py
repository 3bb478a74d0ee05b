"""Inclusive spans of dates and times as DICOM range keys (PS3.4 C.2.2.2.5), and cutting them.

Job: the arithmetic behind ``caps``' Study Date and Study Time splits. Dates are day
ordinals, times seconds of the day; ``None`` is an open end (``-YYYYMMDD``, ``YYYYMMDD-``).

Rule 1: a value of reduced precision means its whole period: TM ``10`` is 10:00:00 to
        10:59:59 as an upper bound (PS3.4 C.2.2.2.5.1); fractions of a second are dropped.
Rule 2: anything unreadable (ACR-NEMA ``2020.01.01``, a month 13) is None: never guessed.
Rule 3: ``split_span`` returns spans that cover the input span exactly, in order, each
        strictly narrower than it, so a split always ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Final

DATE_FLOOR: Final = date(1900, 1, 1).toordinal()       # bisection bounds without a sample
DATE_CEILING: Final = date(2099, 12, 31).toordinal()
LAST_SECOND: Final = 86_399


def split_span(lo: int | None, hi: int | None, sample: Iterable[int],
               floor: int, ceiling: int) -> list[tuple[int | None, int | None]] | None:
    """Cut the inclusive span ``lo..hi`` (None = open) into narrower spans covering it.

    With sample points inside the span, cut around them at their median; without,
    bisect (open ends bisect between ``floor`` and ``ceiling``). None when the span is a
    single point.
    """
    if lo is not None and hi is not None and lo >= hi:
        return None
    inside = sorted(v for v in sample if (lo is None or v >= lo) and (hi is None or v <= hi))
    if not inside:
        a = lo if lo is not None else min(floor, hi - 1 if hi is not None else floor)
        b = hi if hi is not None else max(ceiling, a + 1)
        mid = (a + b) // 2
        return [(lo, mid), (mid + 1, hi)]
    first, last, median = inside[0], inside[-1], inside[len(inside) // 2]
    parts: list[tuple[int | None, int | None]] = []
    if lo is None or lo < first:
        parts.append((lo, first - 1))
    if first == last:
        parts.append((first, first))
    else:
        cut = min(median, last - 1)
        parts += [(first, cut), (cut + 1, last)]
    if hi is None or hi > last:
        parts.append((last + 1, hi))
    return parts


def date_span(text: str) -> tuple[int | None, int | None] | None:
    """A DA key as (first, last) day; (None, None) for universal; None if unreadable."""
    if text in ("", "-"):
        return None, None
    first, dash, last = text.partition("-")
    if not dash:
        day = date_point(text)
        return None if day is None else (day, day)
    lo, hi = date_point(first) if first else None, date_point(last) if last else None
    if (first and lo is None) or (last and hi is None):
        return None
    return lo, hi


def date_point(text: str) -> int | None:
    """``YYYYMMDD`` as a day ordinal, or None."""
    text = text.strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:])).toordinal()
    except ValueError:
        return None


def date_range(lo: int | None, hi: int | None) -> str:
    """The DA key for a span: ``A``, ``A-B``, ``-B`` or ``A-``."""
    a = date.fromordinal(lo).strftime("%Y%m%d") if lo is not None else ""
    b = date.fromordinal(hi).strftime("%Y%m%d") if hi is not None else ""
    return a if lo is not None and lo == hi else f"{a}-{b}"


def time_span(text: str) -> tuple[int, int] | None:
    """A TM key as (first, last) second of the day (whole day if universal), or None."""
    if text in ("", "-"):
        return 0, LAST_SECOND
    first, dash, last = text.partition("-")
    if not dash:
        first = last = text
    lo = time_point(first, upper=False) if first else 0
    hi = time_point(last, upper=True) if last else LAST_SECOND
    return None if lo is None or hi is None else (lo, hi)


def time_point(text: str, upper: bool = False) -> int | None:
    """Seconds of the day; a reduced-precision value means its whole period (``upper`` end)."""
    digits = text.strip().split(".")[0]
    if len(digits) not in (2, 4, 6) or not digits.isdigit():
        return None
    hh, mm, ss = int(digits[:2]), int(digits[2:4] or -1), int(digits[4:6] or -1)
    mm = mm if mm >= 0 else (59 if upper else 0)
    ss = ss if ss >= 0 else (59 if upper else 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return min(hh * 3600 + mm * 60 + ss, LAST_SECOND)


def time_range(lo: int, hi: int) -> str:
    """The TM key ``HHMMSS-HHMMSS`` for a span of seconds."""
    def fmt(s: int) -> str:
        return f"{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}"
    return f"{fmt(lo)}-{fmt(hi)}"
