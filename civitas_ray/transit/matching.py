"""Match GTFS-RT trips to the active static version and compute delays, vectorised.

A `StaticIndex` holds one static version as numpy arrays (trips, their stop_times sorted
by (trip, stop_sequence), stops, service calendars); it is built once per version id
and cached per process, so a feed costs dictionary look-ups and `searchsorted`, never a
query per trip. Activating a new version changes the id, which is the invalidation.

Trip matching rule, in order:
1. exact `trip_id`;
2. the static id's *short form*, what follows its first `_` when that is a service-id
   prefix (NYCT: static `AFA21GEN-2048-Weekday-00_083950_2..S08R` has short form
   `083950_2..S08R`, which is what the realtime feed sends);
3. the *route-direction key*: both ids cut after `..N`/`..S` (origin time, route and
   direction; NYCT realtime ids often omit or vary the path code: `124900_1..N` and
   `124900_1..N03X` both match `..._124900_1..N03R`).
Steps 2 and 3 keep only candidates whose service runs on the trip's service date; when
several remain the lowest trip id wins (deterministic) and the match counts as ambiguous.
Anything else is unknown and reported, never guessed.

Delays follow the GTFS-RT spec: a StopTimeUpdate's delay is `time - scheduled` when it
gives a time, else its `delay`; a delay propagates downstream to stops that have no
update of their own, until the next update; nothing propagates upstream; SKIPPED stops
have no arrival and NO_DATA stops stop the propagation. Scheduled times are the service
day's "noon minus 12 h" in the agency timezone plus `arrival_s` (may exceed 24 h).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
from google.transit import gtfs_realtime_pb2 as pb
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from civitas_ray.transit.realtime import TripUpdates

log = logging.getLogger(__name__)

SEQ_BITS = 20  # stop_sequence < 2^20 in any real feed; keys are trip << 20 | seq
_DIRECTION_KEY = re.compile(r"^(.*?\.\.[NS])")
_SERVICE_PREFIX = re.compile(r"^[^_]*[A-Za-z-][^_]*_(\d.*)$")

STU_SKIPPED = pb.TripUpdate.StopTimeUpdate.SKIPPED
STU_NO_DATA = pb.TripUpdate.StopTimeUpdate.NO_DATA
METHOD_NONE, METHOD_EXACT, METHOD_SHORT, METHOD_DIRECTION = 0, 1, 2, 3


def short_form(trip_id: str) -> str | None:
    """What follows a service-id prefix (letters or dashes before the first `_`)."""
    m = _SERVICE_PREFIX.match(trip_id)
    return m.group(1) if m else None


def direction_key(short: str) -> str | None:
    m = _DIRECTION_KEY.match(short)
    return m.group(1) if m else None


@lru_cache(maxsize=64)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


@lru_cache(maxsize=4096)
def service_day_epoch(day: date, tz: str) -> int:
    """Epoch seconds of the service day's reference: noon local time minus 12 hours."""
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=_zone(tz))
    return int(noon.timestamp()) - 43_200


def parse_yyyymmdd(value: str) -> date | None:
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


@dataclass(slots=True)
class StaticIndex:
    """One static GTFS version, ready for matching. Build with `StaticIndex.build`."""

    version_id: str
    tz: str
    trip_ids: list[str]
    trip_route: list[str]
    trip_service: np.ndarray  # int32 index into service_ids
    service_ids: list[str]
    weekdays: np.ndarray  # bool [n_services, 7], Monday first
    svc_start: np.ndarray  # int32 date ordinals (0: no calendar row)
    svc_end: np.ndarray
    exceptions: dict[tuple[int, int], int]  # (service, date ordinal) -> 1 added / 2 removed
    st_trip: np.ndarray  # int32, sorted by (trip, seq)
    st_seq: np.ndarray
    st_stop: np.ndarray  # int32 index into stop_ids
    st_arr: np.ndarray  # int32 seconds after the service day reference
    st_dep: np.ndarray
    st_offsets: np.ndarray  # int64 [n_trips + 1]: a trip's stop_times are [o[t], o[t+1])
    stop_ids: list[str]
    stop_lat: np.ndarray
    stop_lon: np.ndarray
    stop_zone: list[str | None]
    feed_start: date | None = None
    feed_end: date | None = None
    feed_version: str | None = None
    trip_pos: dict[str, int] = field(default_factory=dict)
    stop_pos: dict[str, int] = field(default_factory=dict)
    short_pos: dict[str, list[int]] = field(default_factory=dict)
    direction_pos: dict[str, list[int]] = field(default_factory=dict)
    st_key: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    st_stop_order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    st_stop_key: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    zone_names: list[str] = field(default_factory=list)
    stop_zone_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    trip_route_code: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    built_at: float = field(default_factory=time.monotonic)

    @classmethod
    def build(cls, *, version_id: str, tz: str, trips: Sequence[tuple[str, str, str]],
              stop_times: Sequence[tuple[str, int, str, int | None, int | None]],
              stops: Sequence[tuple[str, float | None, float | None, str | None]],
              calendars: Sequence[tuple[str, Sequence[bool], date, date]],
              calendar_dates: Sequence[tuple[str, date, int]],
              feed_start: date | None = None, feed_end: date | None = None,
              feed_version: str | None = None) -> StaticIndex:
        """From rows: trips (trip_id, route_id, service_id), stop_times (trip_id, seq,
        stop_id, arrival_s, departure_s), stops (stop_id, lat, lon, zone_id), calendars
        (service_id, 7 weekday flags, start, end), calendar_dates (service_id, date, type)."""
        trip_ids = [t[0] for t in trips]
        trip_pos = {t: i for i, t in enumerate(trip_ids)}
        service_ids = sorted({t[2] for t in trips} | {c[0] for c in calendars}
                             | {d[0] for d in calendar_dates})
        service_pos = {s: i for i, s in enumerate(service_ids)}
        n_svc = len(service_ids)
        weekdays = np.zeros((n_svc, 7), dtype=bool)
        svc_start = np.zeros(n_svc, dtype=np.int32)
        svc_end = np.zeros(n_svc, dtype=np.int32)
        for sid, flags, start, end in calendars:
            i = service_pos[sid]
            weekdays[i] = np.asarray(list(flags), dtype=bool)
            svc_start[i], svc_end[i] = start.toordinal(), end.toordinal()
        exceptions = {(service_pos[sid], d.toordinal()): int(kind)
                      for sid, d, kind in calendar_dates}
        stop_ids = [s[0] for s in stops]
        stop_pos = {s: i for i, s in enumerate(stop_ids)}
        # Stop_times of unknown trips or stops cannot be matched: leave them out.
        rows = [(trip_pos[r[0]], int(r[1]), stop_pos[r[2]],
                 -1 if r[3] is None else int(r[3]), -1 if r[4] is None else int(r[4]))
                for r in stop_times if r[0] in trip_pos and r[2] in stop_pos]
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
        order = np.lexsort((arr[:, 1], arr[:, 0]))
        arr = arr[order]
        st_trip = arr[:, 0].astype(np.int32)
        index = cls(
            version_id=version_id, tz=tz, trip_ids=trip_ids,
            trip_route=[t[1] for t in trips],
            trip_service=np.asarray([service_pos[t[2]] for t in trips], dtype=np.int32),
            service_ids=service_ids, weekdays=weekdays, svc_start=svc_start, svc_end=svc_end,
            exceptions=exceptions, st_trip=st_trip, st_seq=arr[:, 1].astype(np.int32),
            st_stop=arr[:, 2].astype(np.int32), st_arr=arr[:, 3].astype(np.int32),
            st_dep=arr[:, 4].astype(np.int32),
            st_offsets=np.searchsorted(st_trip, np.arange(len(trip_ids) + 1)).astype(np.int64),
            stop_ids=stop_ids,
            stop_lat=np.asarray([math.nan if s[1] is None else s[1] for s in stops], float),
            stop_lon=np.asarray([math.nan if s[2] is None else s[2] for s in stops], float),
            stop_zone=[s[3] for s in stops], feed_start=feed_start, feed_end=feed_end,
            feed_version=feed_version,
            trip_pos=trip_pos, stop_pos=stop_pos)
        # Arrival missing: use departure, and the other way round (GTFS allows either).
        index.st_arr = np.where(index.st_arr < 0, index.st_dep, index.st_arr)
        index.st_dep = np.where(index.st_dep < 0, index.st_arr, index.st_dep)
        index.st_key = (st_trip.astype(np.int64) << SEQ_BITS) | index.st_seq.astype(np.int64)
        stop_key = (st_trip.astype(np.int64) << 32) | index.st_stop.astype(np.int64)
        index.st_stop_order = np.argsort(stop_key, kind="stable")
        index.st_stop_key = stop_key[index.st_stop_order]
        index.zone_names = sorted({z for z in index.stop_zone if z})
        zone_code = {z: i for i, z in enumerate(index.zone_names)}
        index.stop_zone_code = np.asarray([zone_code.get(z, -1) if z else -1
                                           for z in index.stop_zone], dtype=np.int32)
        route_code: dict[str, int] = {}
        index.trip_route_code = np.asarray([route_code.setdefault(r, len(route_code))
                                            for r in index.trip_route], dtype=np.int64)
        for i, trip_id in enumerate(trip_ids):
            short = short_form(trip_id)
            if short is None:
                continue
            index.short_pos.setdefault(short, []).append(i)
            key = direction_key(short)
            if key is not None:
                index.direction_pos.setdefault(key, []).append(i)
        return index

    def runs_on(self, service: int, day: date) -> bool:
        ordinal = day.toordinal()
        kind = self.exceptions.get((service, ordinal))
        if kind is not None:
            return kind == 1
        return bool(self.svc_start[service] <= ordinal <= self.svc_end[service]
                    and self.weekdays[service, day.weekday()])

    def covers(self, day: date) -> bool:
        """Whether a date falls inside the version's calendar at all."""
        if self.feed_start and self.feed_end:
            return self.feed_start <= day <= self.feed_end
        known = self.svc_start[self.svc_start > 0]
        if known.size == 0:
            return any(d == day.toordinal() for _, d in self.exceptions)
        return bool(known.min() <= day.toordinal() <= self.svc_end.max())


@dataclass(slots=True)
class TripMatch:
    trip: np.ndarray  # int32 static trip index per TripUpdate, -1: unknown
    method: np.ndarray  # int8 METHOD_*
    service_day: list[date | None]
    ambiguous: int = 0


def feed_service_date(header_ts: int | None, tz: str) -> date | None:
    if header_ts is None:
        return None
    return datetime.fromtimestamp(header_ts, _zone(tz)).date()


def match_trips(index: StaticIndex, trip_ids: Sequence[str], start_dates: Sequence[str],
                *, header_ts: int | None) -> TripMatch:
    """The static trip of each realtime trip id (see the module docstring for the rule)."""
    n = len(trip_ids)
    out = np.full(n, -1, dtype=np.int32)
    method = np.zeros(n, dtype=np.int8)
    days: list[date | None] = []
    default_day = feed_service_date(header_ts, index.tz)
    ambiguous = 0
    pos = index.trip_pos
    for i, (trip_id, start) in enumerate(zip(trip_ids, start_dates, strict=True)):
        day = parse_yyyymmdd(start) or default_day
        days.append(day)
        hit = pos.get(trip_id)
        if hit is not None:
            out[i], method[i] = hit, METHOD_EXACT
            continue
        if not trip_id:
            continue
        candidates = index.short_pos.get(trip_id)
        kind = METHOD_SHORT
        if candidates is None:
            key = direction_key(trip_id)
            candidates = index.direction_pos.get(key) if key else None
            kind = METHOD_DIRECTION
        if not candidates:
            continue
        running = [c for c in candidates
                   if day is None or index.runs_on(int(index.trip_service[c]), day)]
        if not running:
            continue
        if len(running) > 1:
            ambiguous += 1
            running.sort(key=index.trip_ids.__getitem__)
        out[i], method[i] = running[0], kind
    return TripMatch(trip=out, method=method, service_day=days, ambiguous=ambiguous)


@dataclass(slots=True)
class StopDelays:
    """Per StopTimeUpdate of matched trips: where it lands and its delays."""

    stu: np.ndarray  # int64 index into the feed's StopTimeUpdates
    trip: np.ndarray  # int32 static trip
    st_row: np.ndarray  # int64 row in the index's stop_times, -1: stop not on the trip
    seq: np.ndarray  # int32 stop_sequence (from the static trip when the feed had none)
    stop: np.ndarray  # int32 static stop, -1 unknown
    scheduled_arrival: np.ndarray  # float epoch s, NaN when unknown
    predicted_arrival: np.ndarray
    arrival_delay: np.ndarray  # float s, NaN when unknown
    departure_delay: np.ndarray


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """values[rows] where rows >= 0, else 0 (the caller masks those out)."""
    if values.size == 0:
        return np.zeros(rows.size, dtype=values.dtype)
    return values[np.maximum(rows, 0)]


def stop_delays(index: StaticIndex, trips: TripUpdates, match: TripMatch) -> StopDelays:
    """Locate every StopTimeUpdate of a matched trip on its static trip and compute delays.

    A StopTimeUpdate is placed by its stop_sequence, or (when it has none, as in NYCT) by
    the first stop_time of the trip at its stop_id.
    """
    stu_trip_rt = trips.stu_trip
    static_trip = match.trip[stu_trip_rt] if stu_trip_rt.size else np.zeros(0, np.int32)
    sel = np.flatnonzero(static_trip >= 0)
    st_trip = static_trip[sel].astype(np.int64)
    seq = trips.stu_seq[sel].astype(np.int64)
    row = np.full(sel.size, -1, dtype=np.int64)
    # By stop_sequence.
    has_seq = seq >= 0
    if has_seq.any() and index.st_key.size:
        keys = (st_trip[has_seq] << SEQ_BITS) | seq[has_seq]
        found = np.searchsorted(index.st_key, keys)
        found = np.minimum(found, index.st_key.size - 1)
        ok = index.st_key[found] == keys
        row[np.flatnonzero(has_seq)[ok]] = found[ok]
    # By stop_id where the feed gave no sequence.
    need = np.flatnonzero(~has_seq)
    stop_code = np.full(sel.size, -1, dtype=np.int64)
    stop_pos = index.stop_pos
    stop_ids = trips.stu_stop_id
    for j in need.tolist():  # only where the sequence cannot place the update
        code = stop_pos.get(stop_ids[sel[j]])
        if code is not None:
            stop_code[j] = code
    if need.size and index.st_stop_key.size:
        codes = stop_code[need]
        keys = (st_trip[need] << 32) | np.maximum(codes, 0)
        found = np.searchsorted(index.st_stop_key, keys)
        found = np.minimum(found, index.st_stop_key.size - 1)
        ok = (index.st_stop_key[found] == keys) & (codes >= 0)
        row[need[ok]] = index.st_stop_order[found[ok]]
    located = row >= 0
    seq_out = np.where(located, _take(index.st_seq, row), seq).astype(np.int32)
    stop_out = np.where(located, _take(index.st_stop, row), stop_code).astype(np.int32)
    # Scheduled epoch = service day reference + seconds from the static stop_time.
    day_ref = np.full(sel.size, math.nan)
    refs = np.asarray([math.nan if d is None else service_day_epoch(d, index.tz)
                       for d in match.service_day], dtype=np.float64)
    if refs.size:
        day_ref = refs[stu_trip_rt[sel]]
    sched_arr = np.where(located, day_ref + _take(index.st_arr, row), math.nan)
    sched_dep = np.where(located, day_ref + _take(index.st_dep, row), math.nan)
    arr_time, dep_time = trips.arr_time[sel], trips.dep_time[sel]
    arr_delay = np.where(np.isnan(arr_time), trips.arr_delay[sel], arr_time - sched_arr)
    dep_delay = np.where(np.isnan(dep_time), trips.dep_delay[sel], dep_time - sched_dep)
    rel = trips.stu_relationship[sel]
    dropped = (rel == STU_SKIPPED) | (rel == STU_NO_DATA)
    arr_delay[dropped] = math.nan
    dep_delay[dropped] = math.nan
    predicted = np.where(np.isnan(arr_time), sched_arr + arr_delay, arr_time)
    return StopDelays(stu=sel.astype(np.int64), trip=st_trip.astype(np.int32), st_row=row,
                      seq=seq_out, stop=stop_out, scheduled_arrival=sched_arr,
                      predicted_arrival=predicted, arrival_delay=arr_delay,
                      departure_delay=dep_delay)


@dataclass(frozen=True, slots=True)
class StopPrediction:
    stop_sequence: int
    stop_id: str
    scheduled_arrival: float
    scheduled_departure: float
    arrival_delay: float | None
    departure_delay: float | None
    source: str  # "update" (the feed said so), "propagated", "none", "skipped", "no_data"


def propagate(index: StaticIndex, trip: int, service_day: date,
              updates: Sequence[tuple[int, float | None, float | None, int]]) -> list[
                  StopPrediction]:
    """Every stop of a static trip with its delay, from the updates (seq, arrival delay,
    departure delay, relationship) the feed gave, propagated per the GTFS-RT spec."""
    start, end = int(index.st_offsets[trip]), int(index.st_offsets[trip + 1])
    ref = service_day_epoch(service_day, index.tz)
    by_seq = {u[0]: u for u in updates}
    carried: float | None = None
    out: list[StopPrediction] = []
    for r in range(start, end):
        seq = int(index.st_seq[r])
        upd = by_seq.get(seq)
        source = "propagated" if carried is not None else "none"
        arr = dep = carried
        if upd is not None:
            _, ua, ud, rel = upd
            if rel == STU_SKIPPED:
                out.append(StopPrediction(seq, index.stop_ids[int(index.st_stop[r])],
                                          ref + float(index.st_arr[r]),
                                          ref + float(index.st_dep[r]), None, None, "skipped"))
                continue
            if rel == STU_NO_DATA:
                carried = None
                arr = dep = None
                source = "no_data"
            else:
                arr = ua if ua is not None else (ud if ud is not None else carried)
                dep = ud if ud is not None else arr
                carried = dep
                source = "update"
        out.append(StopPrediction(seq, index.stop_ids[int(index.st_stop[r])],
                                  ref + float(index.st_arr[r]), ref + float(index.st_dep[r]),
                                  arr, dep, source))
    return out


@dataclass(slots=True)
class PropagatedDelays:
    """Every static stop of the matched trips with its delay, as columns."""

    st_row: np.ndarray  # int64 rows of the index's stop_times
    arrival_delay: np.ndarray  # NaN: no prediction
    departure_delay: np.ndarray
    from_update: np.ndarray  # bool: the feed gave this stop itself


def propagate_all(index: StaticIndex, d: StopDelays) -> PropagatedDelays:
    """`propagate` for all matched trips at once: delays carried downstream within each
    trip by a forward fill over its static stop_times (NO_DATA updates carry NaN, which
    stops the carrying; SKIPPED ones are left out and do not)."""
    placed = d.st_row >= 0
    trips = np.unique(d.trip[placed]).astype(np.int64)
    if trips.size == 0:
        e = np.zeros(0)
        return PropagatedDelays(np.zeros(0, np.int64), e, e, np.zeros(0, bool))
    starts, ends = index.st_offsets[trips], index.st_offsets[trips + 1]
    lengths = ends - starts
    base = np.repeat(np.cumsum(lengths) - lengths, lengths)  # first position of each trip
    rows = np.repeat(starts, lengths) + (np.arange(int(lengths.sum())) - base)
    arr = np.full(rows.size, math.nan)
    dep = np.full(rows.size, math.nan)
    has = np.zeros(rows.size, dtype=bool)
    # Position of each placed update: its trip's first position + its offset in the trip.
    trip_first = dict(zip(trips.tolist(), (np.cumsum(lengths) - lengths).tolist(), strict=True))
    upd = np.flatnonzero(placed)
    first = np.fromiter((trip_first[t] for t in d.trip[upd].tolist()), dtype=np.int64,
                        count=upd.size)
    pos = first + (d.st_row[upd] - index.st_offsets[d.trip[upd]])
    a_delay, d_delay = d.arrival_delay[upd], d.departure_delay[upd]
    a_delay = np.where(np.isnan(a_delay), d_delay, a_delay)
    d_delay = np.where(np.isnan(d_delay), a_delay, d_delay)
    arr[pos], dep[pos], has[pos] = a_delay, d_delay, True
    # Forward fill within each trip: the latest position with an update at or before.
    idx = np.where(has, np.arange(rows.size), -1)
    last = np.maximum.accumulate(idx)
    carried = (last >= base) & ~has
    src = np.maximum(last, 0)
    arr = np.where(carried, dep[src], arr)
    dep = np.where(carried, dep[src], dep)
    return PropagatedDelays(rows, arr, dep, has)


# --- the per-process cache of indexes, by version id --------------------------------------

_cache: dict[str, StaticIndex] = {}
_loading: dict[str, asyncio.Lock] = {}
CACHE_MAX = 8


async def load_index(session: AsyncSession, version_id: uuid.UUID) -> StaticIndex | None:
    """The index of a static version, from the cache or the database (None if unknown)."""
    key = str(version_id)
    hit = _cache.get(key)
    if hit is not None:
        return hit
    lock = _loading.setdefault(key, asyncio.Lock())
    async with lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        started = time.perf_counter()
        index = await _read_index(session, version_id)
        if index is None:
            return None
        if len(_cache) >= CACHE_MAX:
            _cache.pop(next(iter(_cache)))
        _cache[key] = index
        log.info("static index loaded", extra={
            "version_id": key, "trips": len(index.trip_ids), "stop_times": index.st_trip.size,
            "ms": round((time.perf_counter() - started) * 1000, 1)})
        return index


def forget_index(version_id: uuid.UUID | str | None = None) -> None:
    """Drop a cached index (after an activation or retirement); None drops all."""
    if version_id is None:
        _cache.clear()
    else:
        _cache.pop(str(version_id), None)


async def _read_index(session: AsyncSession, version_id: uuid.UUID) -> StaticIndex | None:
    v = {"v": version_id}
    # feed_version (feed_info.txt) read leniently: a column or a key of `counts`.
    head = (await session.execute(text(
        "select agency_timezone, feed_start_date, feed_end_date, coalesce(to_jsonb(v) ->> "
        "'feed_version', v.counts ->> 'feed_version') from transit_feed_version v "
        "where id = :v"), v)).first()
    if head is None:
        return None
    trips = (await session.execute(text(
        "select trip_id, route_id, service_id from gtfs_trip where version_id = :v"), v)).all()
    stop_times = (await session.execute(text(
        "select trip_id, stop_sequence, stop_id, arrival_s, departure_s from gtfs_stop_time "
        "where version_id = :v"), v)).all()
    stops = (await session.execute(text(
        "select stop_id, st_y(geom), st_x(geom), zone_id::text from gtfs_stop "
        "where version_id = :v"), v)).all()
    calendars = (await session.execute(text(
        "select service_id, monday, tuesday, wednesday, thursday, friday, saturday, sunday, "
        "start_date, end_date from gtfs_calendar where version_id = :v"), v)).all()
    dates = (await session.execute(text(
        "select service_id, date, exception_type from gtfs_calendar_date "
        "where version_id = :v"), v)).all()
    return StaticIndex.build(
        version_id=str(version_id), tz=head[0] or "UTC",
        trips=[tuple(r) for r in trips], stop_times=[tuple(r) for r in stop_times],
        stops=[tuple(r) for r in stops],
        calendars=[(r[0], r[1:8], r[8], r[9]) for r in calendars],
        calendar_dates=[tuple(r) for r in dates], feed_start=head[1], feed_end=head[2],
        feed_version=head[3] or None)


def utc_iso(epoch: float | None) -> str | None:
    if epoch is None or not math.isfinite(epoch):
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def as_optional(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def describe(match: TripMatch) -> dict[str, Any]:
    return {"exact": int((match.method == METHOD_EXACT).sum()),
            "short": int((match.method == METHOD_SHORT).sum()),
            "direction": int((match.method == METHOD_DIRECTION).sum()),
            "ambiguous": match.ambiguous}
