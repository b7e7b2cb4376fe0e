"""GTFS static import: a feed zip streamed into a new version, checked row by row, then
switched on in one transaction so readers never see a half-loaded schedule.

How a version is made:
1. a `transit_feed_version` row is committed with status `importing` (visible to pollers);
2. one transaction, in the tenant's RLS context, streams every file from the zip (parsed
   in a worker thread, a batch ahead of the database) into the tables under the new
   version id, assigns stops to zones with one spatial UPDATE, and at its end flips
   `transit_feed.active_version_id` and retires the previous version;
3. the retired version's rows are deleted in a later transaction (its metadata stays).
Readers keep the old version until step 2 commits: the new rows are invisible until then.

Validation: a bad row (missing required field, bad coordinate or time, unknown reference,
duplicate key) is skipped and listed as {file, row, field, message}, where `row` is the
CSV record number (header = 1). Fatal, nothing imported and the active version kept: not
a zip, a required file or required column missing, or a required table left empty.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import logging
import re
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.db.session import tenant_session
from civitas_ray.errors import Conflict, NotFound, ValidationFailed
from civitas_ray.transit.models import TransitFeed, TransitFeedVersion

log = logging.getLogger(__name__)

REQUIRED_FILES = ("agency.txt", "stops.txt", "routes.txt", "trips.txt", "stop_times.txt")
BATCH_ROWS = 20_000
MAX_LISTED_ERRORS = 1_000
MAX_ID_LENGTH = 255
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
# Tables of one version, children first (the order old versions are deleted in).
VERSION_TABLES = ("gtfs_stop_time", "gtfs_trip", "gtfs_shape", "gtfs_calendar_date",
                  "gtfs_calendar", "gtfs_stop", "gtfs_route", "gtfs_agency")


class FeedRefused(ValidationFailed):
    """The feed cannot be imported at all; `errors` says why, the active version stays."""

    title, type_slug = "GTFS feed refused", "gtfs-feed-refused"


@dataclass
class ErrorLog:
    """Row errors: every one counted, the first `limit` listed."""

    limit: int = MAX_LISTED_ERRORS
    listed: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    by_file: dict[str, int] = field(default_factory=dict)

    def add(self, file: str, row: int | None, fld: str | None, message: str) -> None:
        self.total += 1
        self.by_file[file] = self.by_file.get(file, 0) + 1
        if len(self.listed) < self.limit:
            self.listed.append({"file": file, "row": row, "field": fld, "message": message})


@dataclass
class ImportOutcome:
    version_id: uuid.UUID
    version: int
    status: str
    counts: dict[str, Any]
    errors: list[dict[str, Any]]
    elapsed_s: float


@dataclass
class _Feed:
    """What the parsers learn on the way: ids for reference checks, dates, time zone."""

    zf: zipfile.ZipFile
    errors: ErrorLog
    counts: dict[str, int] = field(default_factory=dict)
    agencies: set[str] = field(default_factory=set)
    routes: set[str] = field(default_factory=set)
    stops: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    trips: set[str] = field(default_factory=set)
    timezone: str | None = None
    first_date: date | None = None
    last_date: date | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def span(self, d: date) -> None:
        self.first_date = d if self.first_date is None else min(self.first_date, d)
        self.last_date = d if self.last_date is None else max(self.last_date, d)


class _Fatal(Exception):
    def __init__(self, file: str, fld: str | None, message: str) -> None:
        super().__init__(message)
        self.error = {"file": file, "row": None, "field": fld, "message": message}


# --- field parsing ------------------------------------------------------------------

_TIME = re.compile(r"^\s*(\d{1,3}):([0-5]\d):([0-5]\d)\s*$")


def time_to_seconds(value: str) -> int:
    """'H:MM:SS' / 'HH:MM:SS' after the service day's start; hours may pass 24."""
    m = _TIME.match(value)
    if m is None:
        raise ValueError(f"'{value}' is not a time HH:MM:SS")
    return int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])


def parse_date(value: str) -> date:
    if len(value) != 8 or not value.isdigit():
        raise ValueError(f"'{value}' is not a date YYYYMMDD")
    return date(int(value[:4]), int(value[4:6]), int(value[6:]))


def _int(value: str, lo: int, hi: int) -> int:
    n = int(value)
    if not lo <= n <= hi:
        raise ValueError(f"{n} is not in {lo}..{hi}")
    return n


def _coordinate(value: str, limit: float) -> float:
    x = float(value)
    if not -limit <= x <= limit:  # also refuses NaN
        raise ValueError(f"{value} is outside -{limit:g}..{limit:g}")
    return x


class _Reader:
    """One CSV file of the zip: header lookups and records numbered like a spreadsheet."""

    def __init__(self, feed: _Feed, name: str, required: tuple[str, ...]) -> None:
        self.name, self.feed = name, feed
        self._raw = feed.zf.open(name)
        stream = io.TextIOWrapper(self._raw, encoding="utf-8-sig", newline="")
        self._csv = csv.reader(stream)
        self.header = [h.strip() for h in next(self._csv, [])]
        self.col = {h: i for i, h in enumerate(self.header)}
        missing = [c for c in required if c not in self.col]
        if missing:
            raise _Fatal(name, missing[0], f"required column '{missing[0]}' is missing")

    def records(self) -> Iterator[tuple[int, list[str]]]:
        try:
            for n, row in enumerate(self._csv, start=2):
                if row and any(row):
                    yield n, row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _Fatal(self.name, None, f"unreadable CSV: {exc}") from exc
        finally:
            self._raw.close()

    def getter(self, name: str) -> Callable[[list[str]], str]:
        i = self.col.get(name)
        if i is None:
            return lambda row: ""
        return lambda row: row[i].strip() if i < len(row) else ""

    def error(self, row: int, fld: str | None, message: str) -> None:
        self.feed.errors.add(self.name, row, fld, message)

    def ident(self, row: int, fld: str, value: str) -> bool:
        """A required id: present and short enough."""
        if not value:
            self.error(row, fld, f"required field '{fld}' is empty")
            return False
        if len(value) > MAX_ID_LENGTH:
            self.error(row, fld, f"longer than {MAX_ID_LENGTH} characters")
            return False
        return True


Batch = list[list[Any]]


def _batches(columns: int) -> tuple[Batch, Callable[[], bool]]:
    cols: Batch = [[] for _ in range(columns)]
    return cols, lambda: len(cols[0]) >= BATCH_ROWS


def _flush(cols: Batch) -> Batch:
    out = [list(c) for c in cols]
    for c in cols:
        c.clear()
    return out


# --- one parser per file: each yields column batches for its table --------------------

def _agency(feed: _Feed) -> Iterator[Batch]:
    r = _Reader(feed, "agency.txt", ("agency_name", "agency_timezone"))
    g = {k: r.getter(k) for k in ("agency_id", "agency_name", "agency_url", "agency_timezone",
                                  "agency_lang", "agency_phone")}
    cols: Batch = [[] for _ in range(6)]
    for n, row in r.records():
        aid, name, tz = g["agency_id"](row), g["agency_name"](row), g["agency_timezone"](row)
        if len(aid) > MAX_ID_LENGTH:
            r.error(n, "agency_id", f"longer than {MAX_ID_LENGTH} characters")
            continue
        if not name:
            r.error(n, "agency_name", "required field 'agency_name' is empty")
            continue
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            r.error(n, "agency_timezone", f"'{tz}' is not an IANA time zone")
            continue
        if aid in feed.agencies:
            r.error(n, "agency_id", f"duplicate agency_id '{aid}'")
            continue
        feed.agencies.add(aid)
        feed.timezone = feed.timezone or tz
        for c, v in zip(cols, (aid, name, g["agency_url"](row) or None, tz,
                               g["agency_lang"](row) or None, g["agency_phone"](row) or None),
                        strict=True):
            c.append(v)
    yield cols


def _routes(feed: _Feed) -> Iterator[Batch]:
    r = _Reader(feed, "routes.txt", ("route_id", "route_type"))
    names = ("route_id", "agency_id", "route_short_name", "route_long_name", "route_desc",
             "route_type", "route_url", "route_color", "route_text_color", "route_sort_order")
    g = [r.getter(k) for k in names]
    cols, full = _batches(len(names))
    for n, row in r.records():
        v = [get(row) for get in g]
        if not r.ident(n, "route_id", v[0]):
            continue
        if v[1] and v[1] not in feed.agencies:
            r.error(n, "agency_id", f"unknown agency_id '{v[1]}'")
            continue
        if not v[1] and len(feed.agencies) > 1:
            r.error(n, "agency_id", "required when the feed has several agencies")
            continue
        if not v[2] and not v[3]:
            r.error(n, "route_short_name", "route_short_name or route_long_name is required")
            continue
        try:
            route_type = _int(v[5], 0, 1702)
        except ValueError as exc:
            r.error(n, "route_type", f"not a route type: {exc}")
            continue
        try:
            sort_order = _int(v[9], 0, 2**31 - 1) if v[9] else None
        except ValueError as exc:
            r.error(n, "route_sort_order", f"not a non-negative integer: {exc}")
            continue
        if v[0] in feed.routes:
            r.error(n, "route_id", f"duplicate route_id '{v[0]}'")
            continue
        feed.routes.add(v[0])
        agency = (v[1] or next(iter(feed.agencies), "")) or None
        row_out = [v[0], agency, v[2] or None, v[3] or None, v[4] or None, route_type,
                   v[6] or None, v[7] or None, v[8] or None, sort_order]
        for c, x in zip(cols, row_out, strict=True):
            c.append(x)
        if full():
            yield _flush(cols)
    yield cols


def _stops(feed: _Feed) -> Iterator[Batch]:
    r = _Reader(feed, "stops.txt", ("stop_id",))
    names = ("stop_id", "stop_code", "stop_name", "stop_desc", "stop_lat", "stop_lon",
             "zone_id", "parent_station", "location_type", "wheelchair_boarding",
             "platform_code")
    g = [r.getter(k) for k in names]
    cols, full = _batches(len(names))
    for n, row in r.records():
        v = [get(row) for get in g]
        if not r.ident(n, "stop_id", v[0]):
            continue
        try:
            location_type = _int(v[8], 0, 4) if v[8] else 0
        except ValueError as exc:
            r.error(n, "location_type", f"not a location type: {exc}")
            continue
        lat = lon = None
        if v[4] or v[5] or location_type <= 2:
            # Stops, stations and entrances need a position; nodes may have one.
            try:
                lat = _coordinate(v[4], 90.0)
            except ValueError as exc:
                r.error(n, "stop_lat", f"bad latitude: {exc}" if v[4] else
                        "required field 'stop_lat' is empty")
                continue
            try:
                lon = _coordinate(v[5], 180.0)
            except ValueError as exc:
                r.error(n, "stop_lon", f"bad longitude: {exc}" if v[5] else
                        "required field 'stop_lon' is empty")
                continue
        try:
            wheelchair = _int(v[9], 0, 2) if v[9] else None
        except ValueError as exc:
            r.error(n, "wheelchair_boarding", f"not 0, 1 or 2: {exc}")
            continue
        if v[0] in feed.stops:
            r.error(n, "stop_id", f"duplicate stop_id '{v[0]}'")
            continue
        feed.stops.add(v[0])
        row_out = [v[0], v[1] or None, v[2] or None, v[3] or None, lat, lon, v[6] or None,
                   v[7] or None, location_type, wheelchair, v[10] or None]
        for c, x in zip(cols, row_out, strict=True):
            c.append(x)
        if full():
            yield _flush(cols)
    yield cols


_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _calendar(feed: _Feed) -> Iterator[Batch]:
    r = _Reader(feed, "calendar.txt", ("service_id", *_DAYS, "start_date", "end_date"))
    g = [r.getter(k) for k in ("service_id", *_DAYS, "start_date", "end_date")]
    cols, full = _batches(10)
    seen: set[str] = set()
    for n, row in r.records():
        v = [get(row) for get in g]
        if not r.ident(n, "service_id", v[0]):
            continue
        bad = next((d for d, x in zip(_DAYS, v[1:8], strict=True) if x not in ("0", "1")),
                   None)
        if bad:
            r.error(n, bad, f"'{v[_DAYS.index(bad) + 1]}' is not 0 or 1")
            continue
        try:
            start = parse_date(v[8])
        except ValueError as exc:
            r.error(n, "start_date", str(exc))
            continue
        try:
            end = parse_date(v[9])
        except ValueError as exc:
            r.error(n, "end_date", str(exc))
            continue
        if v[0] in seen:
            r.error(n, "service_id", f"duplicate service_id '{v[0]}'")
            continue
        seen.add(v[0])
        feed.services.add(v[0])
        feed.span(start)
        feed.span(end)
        for c, x in zip(cols, [v[0], *(x == "1" for x in v[1:8]), start, end], strict=True):
            c.append(x)
        if full():
            yield _flush(cols)
    yield cols


def _calendar_dates(feed: _Feed) -> Iterator[Batch]:
    r = _Reader(feed, "calendar_dates.txt", ("service_id", "date", "exception_type"))
    g = [r.getter(k) for k in ("service_id", "date", "exception_type")]
    cols, full = _batches(3)
    seen: set[tuple[str, date]] = set()
    for n, row in r.records():
        sid, day, kind = (get(row) for get in g)
        if not r.ident(n, "service_id", sid):
            continue
        try:
            d = parse_date(day)
        except ValueError as exc:
            r.error(n, "date", str(exc))
            continue
        if kind not in ("1", "2"):
            r.error(n, "exception_type", f"'{kind}' is not 1 (added) or 2 (removed)")
            continue
        if (sid, d) in seen:
            r.error(n, "date", f"duplicate date {day} for service_id '{sid}'")
            continue
        seen.add((sid, d))
        feed.services.add(sid)
        if kind == "1":
            feed.span(d)
        for c, x in zip(cols, (sid, d, int(kind)), strict=True):
            c.append(x)
        if full():
            yield _flush(cols)
    yield cols


def _trips(feed: _Feed) -> Iterator[Batch]:
    r = _Reader(feed, "trips.txt", ("route_id", "service_id", "trip_id"))
    names = ("trip_id", "route_id", "service_id", "trip_headsign", "trip_short_name",
             "direction_id", "block_id", "shape_id", "wheelchair_accessible")
    g = [r.getter(k) for k in names]
    cols, full = _batches(len(names))
    for n, row in r.records():
        v = [get(row) for get in g]
        if not r.ident(n, "trip_id", v[0]):
            continue
        if not r.ident(n, "route_id", v[1]) or not r.ident(n, "service_id", v[2]):
            continue
        if v[1] not in feed.routes:
            r.error(n, "route_id", f"unknown route_id '{v[1]}'")
            continue
        if v[2] not in feed.services:
            r.error(n, "service_id", f"unknown service_id '{v[2]}'")
            continue
        try:
            direction = _int(v[5], 0, 1) if v[5] else None
        except ValueError as exc:
            r.error(n, "direction_id", f"not 0 or 1: {exc}")
            continue
        try:
            wheelchair = _int(v[8], 0, 2) if v[8] else None
        except ValueError as exc:
            r.error(n, "wheelchair_accessible", f"not 0, 1 or 2: {exc}")
            continue
        if v[0] in feed.trips:
            r.error(n, "trip_id", f"duplicate trip_id '{v[0]}'")
            continue
        feed.trips.add(v[0])
        row_out = [v[0], v[1], v[2], v[3] or None, v[4] or None, direction, v[6] or None,
                   v[7] or None, wheelchair]
        for c, x in zip(cols, row_out, strict=True):
            c.append(x)
        if full():
            yield _flush(cols)
    yield cols


def _stop_times(feed: _Feed) -> Iterator[Batch]:
    r = _Reader(feed, "stop_times.txt", ("trip_id", "stop_id", "stop_sequence"))
    names = ("trip_id", "stop_sequence", "stop_id", "arrival_time", "departure_time",
             "stop_headsign", "pickup_type", "drop_off_type", "shape_dist_traveled",
             "timepoint")
    g = [r.getter(k) for k in names]
    cols, full = _batches(len(names))
    trips, stops = feed.trips, feed.stops
    seen: set[tuple[str, int]] = set()
    for n, row in r.records():
        v = [get(row) for get in g]
        trip, stop = v[0], v[2]
        if trip not in trips:
            r.error(n, "trip_id", f"unknown trip_id '{trip}'" if trip
                    else "required field 'trip_id' is empty")
            continue
        if stop not in stops:
            r.error(n, "stop_id", f"unknown stop_id '{stop}'" if stop
                    else "required field 'stop_id' is empty")
            continue
        try:
            seq = _int(v[1], 0, 2**31 - 1)
        except ValueError as exc:
            r.error(n, "stop_sequence", f"not a non-negative integer: {exc}")
            continue
        try:
            arr = time_to_seconds(v[3]) if v[3] else None
        except ValueError as exc:
            r.error(n, "arrival_time", str(exc))
            continue
        try:
            dep = time_to_seconds(v[4]) if v[4] else None
        except ValueError as exc:
            r.error(n, "departure_time", str(exc))
            continue
        try:
            pickup = _int(v[6], 0, 3) if v[6] else None
            drop_off = _int(v[7], 0, 3) if v[7] else None
            dist = float(v[8]) if v[8] else None
            timepoint = _int(v[9], 0, 1) if v[9] else None
        except ValueError as exc:
            r.error(n, "pickup_type/drop_off_type/shape_dist_traveled/timepoint", str(exc))
            continue
        key = (trip, seq)
        if key in seen:
            r.error(n, "stop_sequence", f"duplicate stop_sequence {seq} in trip '{trip}'")
            continue
        seen.add(key)
        row_out = (trip, seq, stop, arr if arr is not None else dep,
                   dep if dep is not None else arr, v[5] or None, pickup, drop_off, dist,
                   timepoint)
        for c, x in zip(cols, row_out, strict=True):
            c.append(x)
        if full():
            yield _flush(cols)
    yield cols


def _shapes(feed: _Feed) -> Iterator[Batch]:
    r = _Reader(feed, "shapes.txt",
                ("shape_id", "shape_pt_lat", "shape_pt_lon", "shape_pt_sequence"))
    g = [r.getter(k) for k in ("shape_id", "shape_pt_lat", "shape_pt_lon",
                                "shape_pt_sequence")]
    points: dict[str, list[tuple[int, float, float]]] = {}
    first_row: dict[str, int] = {}
    for n, row in r.records():
        sid, lat_s, lon_s, seq_s = (get(row) for get in g)
        if not r.ident(n, "shape_id", sid):
            continue
        try:
            lat = _coordinate(lat_s, 90.0)
        except ValueError as exc:
            r.error(n, "shape_pt_lat", f"bad latitude: {exc}")
            continue
        try:
            lon = _coordinate(lon_s, 180.0)
        except ValueError as exc:
            r.error(n, "shape_pt_lon", f"bad longitude: {exc}")
            continue
        try:
            seq = _int(seq_s, 0, 2**31 - 1)
        except ValueError as exc:
            r.error(n, "shape_pt_sequence", f"not a non-negative integer: {exc}")
            continue
        points.setdefault(sid, []).append((seq, lon, lat))
        first_row.setdefault(sid, n)
    feed.counts["shape_points"] = sum(len(p) for p in points.values())
    cols, full = _batches(3)
    for sid, pts in points.items():
        if len(pts) < 2:
            r.error(first_row[sid], "shape_id", f"shape '{sid}' has fewer than 2 points")
            continue
        pts.sort()
        wkt = "LINESTRING(" + ",".join(f"{lon!r} {lat!r}" for _, lon, lat in pts) + ")"
        for c, x in zip(cols, (sid, wkt, len(pts)), strict=True):
            c.append(x)
        if full():
            yield _flush(cols)
    yield cols


def _feed_info(feed: _Feed) -> None:
    if "feed_info.txt" not in feed.zf.namelist():
        return
    r = _Reader(feed, "feed_info.txt", ())
    g = {k: r.getter(k) for k in ("feed_start_date", "feed_end_date", "feed_version")}
    for n, row in r.records():
        for key in ("feed_start_date", "feed_end_date"):
            if g[key](row):
                try:
                    feed.info[key] = parse_date(g[key](row))
                except ValueError as exc:
                    r.error(n, key, str(exc))
        feed.info["feed_version"] = g["feed_version"](row)[:200] or None
        break


# --- SQL: one INSERT ... SELECT FROM unnest(...) per batch ----------------------------

_SQL: dict[str, str] = {
    "agency": """insert into gtfs_agency (tenant_id, version_id, agency_id, name, url, timezone,
  lang, phone) select $1, $2, * from unnest($3::text[], $4::text[], $5::text[], $6::text[],
  $7::text[], $8::text[])""",
    "routes": """insert into gtfs_route (tenant_id, version_id, route_id, agency_id, short_name,
  long_name, description, route_type, url, color, text_color, sort_order)
  select $1, $2, * from unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
  $8::int[], $9::text[], $10::text[], $11::text[], $12::int[])""",
    "stops": """insert into gtfs_stop (tenant_id, version_id, stop_id, code, name, description,
  geom, fare_zone_id, parent_station, location_type, wheelchair_boarding, platform_code)
  select $1, $2, u.id, u.code, u.name, u.descr,
  case when u.lat is null then null else st_setsrid(st_makepoint(u.lon, u.lat), 4326) end,
  u.fare, u.parent, u.lt, u.wc, u.plat
  from unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::float8[], $8::float8[],
  $9::text[], $10::text[], $11::int2[], $12::int2[], $13::text[])
  as u(id, code, name, descr, lat, lon, fare, parent, lt, wc, plat)""",
    "calendar": """insert into gtfs_calendar (tenant_id, version_id, service_id, monday,
  tuesday, wednesday, thursday, friday, saturday, sunday, start_date, end_date)
  select $1, $2, * from unnest($3::text[], $4::bool[], $5::bool[], $6::bool[], $7::bool[],
  $8::bool[], $9::bool[], $10::bool[], $11::date[], $12::date[])""",
    "calendar_dates": """insert into gtfs_calendar_date (tenant_id, version_id, service_id,
  date, exception_type) select $1, $2, * from unnest($3::text[], $4::date[], $5::int2[])""",
    "trips": """insert into gtfs_trip (tenant_id, version_id, trip_id, route_id, service_id,
  headsign, trip_short_name, direction_id, block_id, shape_id, wheelchair_accessible)
  select $1, $2, * from unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
  $8::int2[], $9::text[], $10::text[], $11::int2[])""",
    "stop_times": """insert into gtfs_stop_time (tenant_id, version_id, trip_id, stop_sequence,
  stop_id, arrival_s, departure_s, stop_headsign, pickup_type, drop_off_type,
  shape_dist_traveled, timepoint)
  select $1, $2, * from unnest($3::text[], $4::int[], $5::text[], $6::int[], $7::int[],
  $8::text[], $9::int2[], $10::int2[], $11::float8[], $12::int2[])""",
    "shapes": """insert into gtfs_shape (tenant_id, version_id, shape_id, geom, points)
  select $1, $2, u.id, st_geomfromtext(u.wkt, 4326), u.n
  from unnest($3::text[], $4::text[], $5::int[]) as u(id, wkt, n)""",
}

# Files in dependency order: (count key, file, parser, required).
_FILES: tuple[tuple[str, str, Callable[[_Feed], Iterator[Batch]], bool], ...] = (
    ("agency", "agency.txt", _agency, True),
    ("routes", "routes.txt", _routes, True),
    ("stops", "stops.txt", _stops, True),
    ("calendar", "calendar.txt", _calendar, False),
    ("calendar_dates", "calendar_dates.txt", _calendar_dates, False),
    ("trips", "trips.txt", _trips, True),
    ("stop_times", "stop_times.txt", _stop_times, True),
    ("shapes", "shapes.txt", _shapes, False),
)

_ASSIGN_ZONES = """
with hit as (
  select s.stop_id, (array_agg(z.id order by st_area(geography(z.geom)), z.id))[1] as zone_id
  from gtfs_stop s join zone z on z.tenant_id = :t and z.deleted_at is null
    and st_covers(z.geom, s.geom)
  where s.version_id = :v and s.geom is not null
  group by s.stop_id)
update gtfs_stop s set zone_id = hit.zone_id from hit
where s.version_id = :v and s.stop_id = hit.stop_id"""


def open_zip(source: Path | bytes) -> zipfile.ZipFile:
    """The feed's zip, or FeedRefused; GTFS files may sit in one top-level folder."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FeedRefused("Not a GTFS zip file", errors=[
            {"file": None, "row": None, "field": None, "message": f"not a zip file: {exc}"}],
        ) from exc
    return zf


def _missing_files(zf: zipfile.ZipFile) -> list[dict[str, Any]]:
    names = set(zf.namelist())
    errors = [{"file": f, "row": None, "field": None, "message": "required file is missing"}
              for f in REQUIRED_FILES if f not in names]
    if "calendar.txt" not in names and "calendar_dates.txt" not in names:
        errors.append({"file": "calendar.txt", "row": None, "field": None,
                       "message": "calendar.txt or calendar_dates.txt is required"})
    return errors


def first_agency_name(source: Path | bytes) -> str | None:
    """The first agency's name (the default feed name of the CLI)."""
    zf = open_zip(source)
    if "agency.txt" not in zf.namelist():
        return None
    with zf.open("agency.txt") as raw:
        rows = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        first = next(rows, None)
    return (first or {}).get("agency_name", "").strip() or None


def sha256_of(source: Path | bytes) -> str:
    h = hashlib.sha256()
    if isinstance(source, bytes):
        h.update(source)
    else:
        with source.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, inside its transaction and RLS context."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def _load(session: AsyncSession, feed: _Feed, *, tenant_id: uuid.UUID,
                version_id: uuid.UUID) -> None:
    """Every file into the new version; parsing runs a batch ahead in a worker thread."""
    db = await _driver(session)
    names = set(feed.zf.namelist())
    for key, name, parser, required in _FILES:
        if not required and name not in names:
            feed.counts[key] = 0
            continue
        batches = parser(feed)
        loaded = 0
        pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
        while True:
            batch = await pending
            if batch is None:
                break
            pending = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            if batch[0]:
                await db.execute(_SQL[key], tenant_id, version_id, *batch)
                loaded += len(batch[0])
        feed.counts[key] = loaded
        if required and loaded == 0:
            raise _Fatal(name, None, f"no valid rows in {name}")
    if feed.counts.get("calendar", 0) + feed.counts.get("calendar_dates", 0) == 0:
        raise _Fatal("calendar.txt", None, "no valid service in calendar.txt or "
                     "calendar_dates.txt")
    await asyncio.to_thread(_feed_info, feed)


async def create_version(*, tenant_id: uuid.UUID, feed_id: uuid.UUID,
                         sha256: str) -> tuple[uuid.UUID, int]:
    """Commit a new `importing` version of the feed (the next number)."""
    async with tenant_session(tenant_id) as s:
        found = (await s.execute(text("select 1 from transit_feed where id = :f"),
                                 {"f": feed_id})).first()
        if found is None:
            raise NotFound(f"Transit feed {feed_id} not found")
        row = (await s.execute(text(
            "insert into transit_feed_version (tenant_id, feed_id, version, sha256) "
            "select :t, :f, coalesce(max(version), 0) + 1, :h from transit_feed_version "
            "where feed_id = :f returning id, version"),
            {"t": tenant_id, "f": feed_id, "h": sha256})).one()
    return row[0], row[1]


async def _fail(tenant_id: uuid.UUID, version_id: uuid.UUID, counts: dict[str, Any],
                errors: list[dict[str, Any]]) -> None:
    import json

    async with tenant_session(tenant_id) as s:
        await s.execute(text(
            "update transit_feed_version set status = 'failed', counts = cast(:c as jsonb), "
            "errors = cast(:e as jsonb) where id = :v"),
            {"v": version_id, "c": json.dumps(counts), "e": json.dumps(errors)})


async def import_feed(*, tenant_id: uuid.UUID, feed_id: uuid.UUID, source: Path | bytes,
                      version: tuple[uuid.UUID, int] | None = None,
                      max_errors: int = MAX_LISTED_ERRORS) -> ImportOutcome:
    """Import a GTFS zip as the feed's next version and activate it, or refuse it.

    Raises FeedRefused (after recording the version as failed) when the feed is fatally
    broken, Conflict when another import of the feed holds its lock."""
    started = time.perf_counter()
    if version is None:
        sha = await asyncio.to_thread(sha256_of, source)
        version = await create_version(tenant_id=tenant_id, feed_id=feed_id, sha256=sha)
    version_id, number = version
    errors = ErrorLog(limit=max_errors)
    counts: dict[str, Any] = {}
    try:
        zf = await asyncio.to_thread(open_zip, source)
        missing = _missing_files(zf)
        if missing:
            raise FeedRefused("Required GTFS files are missing", errors=missing)
        feed = _Feed(zf=zf, errors=errors, counts=counts)
        async with tenant_session(tenant_id) as s:
            locked = (await s.execute(text(
                "select pg_try_advisory_xact_lock(hashtextextended(cast(:f as text), 6))"),
                {"f": str(feed_id)})).scalar_one()
            if not locked:
                raise Conflict(f"Another import of feed {feed_id} is running")
            await _load(s, feed, tenant_id=tenant_id, version_id=version_id)
            zoned = (await s.execute(text(_ASSIGN_ZONES), {"t": tenant_id, "v": version_id}))
            counts["stops_in_zones"] = zoned.rowcount  # type: ignore[attr-defined]
            counts["rows"] = sum(v for k, v in counts.items()
                                 if k in ("agency", "routes", "stops", "calendar",
                                          "calendar_dates", "trips", "stop_times",
                                          "shape_points"))
            counts["errors"] = errors.total
            counts["errors_by_file"] = errors.by_file
            elapsed = time.perf_counter() - started
            counts["elapsed_s"] = round(elapsed, 3)
            counts["rows_per_s"] = round(counts["rows"] / elapsed) if elapsed > 0 else None
            previous = await _activate(s, feed, counts=counts, tenant_id=tenant_id,
                                       feed_id=feed_id, version_id=version_id)
    except _Fatal as exc:
        listed = [exc.error, *errors.listed][:max_errors]
        await _fail(tenant_id, version_id, counts, listed)
        raise FeedRefused(f"{exc.error['file']}: {exc.error['message']}",
                          errors=listed, version_id=str(version_id)) from exc
    except FeedRefused as exc:
        await _fail(tenant_id, version_id, counts, exc.errors or [])
        raise
    except Conflict as exc:
        await _fail(tenant_id, version_id, counts, [
            {"file": None, "row": None, "field": None, "message": exc.detail}])
        raise
    except Exception as exc:
        log.exception("gtfs import failed", extra={"version_id": str(version_id)})
        await _fail(tenant_id, version_id, counts, [
            {"file": None, "row": None, "field": None, "message": f"import failed: {exc}"}])
        raise
    except asyncio.CancelledError:
        await asyncio.shield(_fail(tenant_id, version_id, counts, [
            {"file": None, "row": None, "field": None, "message": "import cancelled"}]))
        raise
    if previous is not None:
        await delete_version_rows(tenant_id=tenant_id, version_id=previous)
    elapsed = time.perf_counter() - started
    log.info("gtfs version imported", extra={
        "tenant_id": str(tenant_id), "feed_id": str(feed_id), "version_id": str(version_id),
        "version": number, "rows": counts["rows"], "errors": errors.total,
        "elapsed_s": round(elapsed, 3)})
    return ImportOutcome(version_id=version_id, version=number, status="ready", counts=counts,
                         errors=errors.listed, elapsed_s=elapsed)


async def _activate(s: AsyncSession, feed: _Feed, *, counts: dict[str, Any],
                    tenant_id: uuid.UUID, feed_id: uuid.UUID,
                    version_id: uuid.UUID) -> uuid.UUID | None:
    """Mark the version ready and make it the feed's active one; retire the previous."""
    import json

    previous = (await s.execute(text(
        "select active_version_id from transit_feed where id = :f for no key update"),
        {"f": feed_id})).scalar_one()
    await s.execute(text(
        "update transit_feed_version set status = 'ready', activated_at = now(), "
        "counts = cast(:c as jsonb), errors = cast(:e as jsonb), feed_start_date = :s, "
        "feed_end_date = :en, agency_timezone = :tz, feed_version = :fv where id = :v"),
        {"v": version_id, "c": json.dumps(counts), "e": json.dumps(feed.errors.listed),
         "s": feed.info.get("feed_start_date", feed.first_date),
         "en": feed.info.get("feed_end_date", feed.last_date), "tz": feed.timezone,
         "fv": feed.info.get("feed_version")})
    await s.execute(text(
        "update transit_feed set active_version_id = :v, updated_at = now() where id = :f"),
        {"v": version_id, "f": feed_id})
    if previous is not None:
        await s.execute(text(
            "update transit_feed_version set status = 'retired' where id = :p"),
            {"p": previous})
    return previous


async def delete_version_rows(*, tenant_id: uuid.UUID, version_id: uuid.UUID) -> None:
    """Drop a retired version's schedule rows; its version record (counts, errors) stays."""
    async with tenant_session(tenant_id) as s:
        for table in VERSION_TABLES:
            await s.execute(text(f"delete from {table} where version_id = :v"),
                            {"v": version_id})


# --- feed records -----------------------------------------------------------------------

async def create_feed(*, session: AsyncSession, tenant_id: uuid.UUID, name: str,
                      realtime_urls: dict[str, Any] | None = None, poll_interval_s: int = 30,
                      settings: dict[str, Any] | None = None) -> TransitFeed:
    """A new feed; a name the tenant already uses is a Conflict."""
    exists = (await session.execute(select(TransitFeed.id).where(
        TransitFeed.tenant_id == tenant_id, TransitFeed.name == name))).first()
    if exists is not None:
        raise Conflict(f"A transit feed named '{name}' already exists")
    feed = TransitFeed(tenant_id=tenant_id, name=name, kind="gtfs",
                       realtime_urls=realtime_urls or {}, poll_interval_s=poll_interval_s,
                       settings=settings or {})
    session.add(feed)
    await session.flush()
    await session.refresh(feed)
    return feed


async def get_feed(*, session: AsyncSession, tenant_id: uuid.UUID,
                   feed_id: uuid.UUID) -> TransitFeed:
    feed = (await session.execute(select(TransitFeed).where(
        TransitFeed.tenant_id == tenant_id, TransitFeed.id == feed_id))).scalar_one_or_none()
    if feed is None:
        raise NotFound(f"Transit feed {feed_id} not found")
    return feed


async def feed_by_name(*, session: AsyncSession, tenant_id: uuid.UUID,
                       name: str) -> TransitFeed | None:
    return (await session.execute(select(TransitFeed).where(
        TransitFeed.tenant_id == tenant_id, TransitFeed.name == name))).scalar_one_or_none()


async def list_feeds(*, session: AsyncSession, tenant_id: uuid.UUID) -> list[TransitFeed]:
    return list((await session.execute(select(TransitFeed).where(
        TransitFeed.tenant_id == tenant_id).order_by(TransitFeed.name))).scalars())


async def list_versions(*, session: AsyncSession, tenant_id: uuid.UUID,
                        feed_id: uuid.UUID) -> list[TransitFeedVersion]:
    return list((await session.execute(select(TransitFeedVersion).where(
        TransitFeedVersion.tenant_id == tenant_id, TransitFeedVersion.feed_id == feed_id)
        .order_by(TransitFeedVersion.version.desc()))).scalars())


async def get_version(*, session: AsyncSession, tenant_id: uuid.UUID,
                      version_id: uuid.UUID) -> TransitFeedVersion:
    v = (await session.execute(select(TransitFeedVersion).where(
        TransitFeedVersion.tenant_id == tenant_id, TransitFeedVersion.id == version_id))
    ).scalar_one_or_none()
    if v is None:
        raise NotFound(f"Feed version {version_id} not found")
    return v
