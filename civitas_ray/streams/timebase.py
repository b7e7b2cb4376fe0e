"""Time helpers for stream state: tenant-local week positions, sampling interval, ISO text.

Timestamps everywhere in `civitas_ray.streams` are epoch microseconds (int64, UTC).
Seasonality is local to the tenant (traffic peaks at 08:00 local time, DST or not), so
the week position of a reading is computed through the tenant's zoneinfo offsets. The
offsets are looked up vectorised from a table of transitions built once per zone.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from datetime import UTC, datetime
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

US_PER_S = 1_000_000
US_PER_HOUR = 3_600 * US_PER_S
US_PER_DAY = 24 * US_PER_HOUR
US_PER_WEEK = 7 * US_PER_DAY
# 1970-01-01 was a Thursday; shifting by three days puts Monday 00:00 at position 0.
_MONDAY_SHIFT_US = 3 * US_PER_DAY
_SECONDS_PER_DAY = 86_400

I64Array = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]


class TzCalendar:
    """Hour-of-week positions of UTC instants in one IANA time zone.

    Shared by every stream of a tenant (see `calendar_for`); the transition table
    covers the years seen so far and grows when a reading falls outside it.
    """

    def __init__(self, tz: str = "UTC") -> None:
        self.name = tz
        self._zone = ZoneInfo(tz)  # raises ZoneInfoNotFoundError for unknown names
        self._lock = threading.Lock()
        self._years: tuple[int, int] | None = None
        self._trans_s: I64Array = np.zeros(0, dtype=np.int64)
        self._offs_us: I64Array = np.zeros(0, dtype=np.int64)
        self._fixed_us: int | None = 0 if tz in ("UTC", "Etc/UTC") else None

    def _offset_s(self, epoch_s: int) -> int:
        off = datetime.fromtimestamp(epoch_s, self._zone).utcoffset()
        return int(off.total_seconds()) if off is not None else 0

    def _build(self, y0: int, y1: int) -> None:
        """Find every offset change in [y0, y1] by daily sampling and bisection."""
        start = int(datetime(y0, 1, 1, tzinfo=UTC).timestamp()) - _SECONDS_PER_DAY
        end = int(datetime(y1 + 1, 1, 1, tzinfo=UTC).timestamp()) + _SECONDS_PER_DAY
        trans = [start]
        offs = [self._offset_s(start)]
        prev_s, prev_off = start, offs[0]
        for day_s in range(start + _SECONDS_PER_DAY, end + 1, _SECONDS_PER_DAY):
            off = self._offset_s(day_s)
            if off != prev_off:
                lo, hi = prev_s, day_s  # offset(lo) == prev_off, offset(hi) == off
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if self._offset_s(mid) == prev_off:
                        lo = mid
                    else:
                        hi = mid
                trans.append(hi)
                offs.append(off)
                prev_off = off
            prev_s = day_s
        self._trans_s = np.asarray(trans, dtype=np.int64)
        self._offs_us = np.asarray(offs, dtype=np.int64) * US_PER_S
        self._years = (y0, y1)

    def offsets_us(self, ts_us: I64Array) -> I64Array:
        """UTC offset (microseconds) in effect at each instant."""
        if self._fixed_us is not None or ts_us.size == 0:
            return np.full(ts_us.shape, self._fixed_us or 0, dtype=np.int64)
        lo_y = datetime.fromtimestamp(int(ts_us.min()) // US_PER_S, UTC).year
        hi_y = datetime.fromtimestamp(int(ts_us.max()) // US_PER_S, UTC).year
        years = self._years
        if years is None or lo_y < years[0] or hi_y > years[1]:
            with self._lock:
                years = self._years
                if years is None or lo_y < years[0] or hi_y > years[1]:
                    span = (lo_y, hi_y) if years is None else (min(lo_y, years[0]),
                                                                 max(hi_y, years[1]))
                    self._build(*span)
        idx = np.searchsorted(self._trans_s, ts_us // US_PER_S, side="right") - 1
        return self._offs_us[idx]

    def week_hours(self, ts_us: I64Array) -> F64Array:
        """Local position in the week in hours, Monday 00:00 = 0.0, in [0, 168)."""
        local = ts_us + self.offsets_us(ts_us) + _MONDAY_SHIFT_US
        hours: F64Array = np.remainder(local, US_PER_WEEK).astype(np.float64) / US_PER_HOUR
        return hours

    def local_naive_to_utc_us(self, naive_us: I64Array) -> I64Array:
        """UTC instants for wall-clock times in this zone (CSV exports without offsets).

        Two fixed-point passes; an ambiguous wall time (DST fall-back) takes the first
        occurrence, a skipped one (spring-forward) lands just after the jump.
        """
        guess = naive_us - self.offsets_us(naive_us)
        return naive_us - self.offsets_us(guess)


@lru_cache(maxsize=256)
def calendar_for(tz: str) -> TzCalendar:
    """One calendar per zone name, shared by all streams in the process."""
    return TzCalendar(tz)


class IntervalEstimator:
    """The usual sampling interval of a stream: the median of its recent positive gaps.

    A median ignores the gaps and bursts that real feeds have; 64 recent steps keep it
    cheap and let it follow a sensor that changes its reporting rate.
    """

    SIZE = 64

    def __init__(self, default_s: float | None = None) -> None:
        self.default_s = default_s
        self._steps: list[float] = []
        self._estimate: float | None = default_s

    @property
    def seconds(self) -> float | None:
        """The estimate, or None until two readings (or a default) are known."""
        return self._estimate

    def update(self, ts_us: I64Array, last_us: int | None) -> None:
        """Learn readings sorted by time, `last_us` being the one before them."""
        tail = ts_us[-(self.SIZE + 1):].tolist()
        if last_us is not None and len(tail) <= self.SIZE:
            tail.insert(0, last_us)
        new = [(b - a) / US_PER_S for a, b in itertools.pairwise(tail) if b > a]
        if not new:
            return
        self._steps = (self._steps + new)[-self.SIZE:]
        self._estimate = statistics.median(self._steps)

    def state_dict(self) -> dict[str, object]:
        return {"default_s": self.default_s, "steps": list(self._steps)}

    @classmethod
    def from_state_dict(cls, d: dict[str, object]) -> IntervalEstimator:
        default = d.get("default_s")
        est = cls(float(default) if isinstance(default, int | float) else None)
        steps = d.get("steps") or []
        assert isinstance(steps, list)
        est._steps = [float(s) for s in steps]
        if est._steps:
            est._estimate = statistics.median(est._steps)
        return est


def iso_utc(ts_us: I64Array) -> list[str]:
    """ISO 8601 UTC text (`Z`), to the second unless sub-second digits are present."""
    if ts_us.size == 0:
        return []
    unit: Literal["s", "us"] = "s" if not np.any(ts_us % US_PER_S) else "us"
    stamps: npt.NDArray[np.datetime64] = ts_us.astype("datetime64[us]")
    return [t + "Z" for t in np.datetime_as_string(stamps, unit=unit).tolist()]


def iso_one(ts_us: int | None) -> str | None:
    """ISO text for one optional instant."""
    if ts_us is None:
        return None
    return iso_utc(np.asarray([ts_us], dtype=np.int64))[0]


def now_us() -> int:
    """Wall-clock time in epoch microseconds, the unit of every timestamp here."""
    return time.time_ns() // 1000
