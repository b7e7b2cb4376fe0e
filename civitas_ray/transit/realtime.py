"""GTFS-Realtime: decode a FeedMessage into columns, and the ingest path that uses them.

Decoding walks the protobuf once and lays every TripUpdate, StopTimeUpdate and
VehiclePosition out as numpy columns (NaN / -1 for absent fields), so matching, delays
and storage are vectorised and no Python object per stop survives the parse.
Extensions (the MTA's NYCT ones) are unknown fields to the bindings: they are skipped,
never an error. Alerts stay as small dicts: a feed carries a handful.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import shapely
from google.protobuf.message import DecodeError
from google.transit import gtfs_realtime_pb2 as pb
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit.service import Actor
from civitas_ray.errors import NotFound, ValidationFailed
from civitas_ray.incidents import service as incidents
from civitas_ray.incidents.models import Incident
from civitas_ray.incidents.schemas import IncidentStatus
from civitas_ray.realtime import relay
from civitas_ray.realtime.events import Event
from civitas_ray.transit import health, matching
from civitas_ray.transit.schemas_rt import GtfsRtIngestRead, IncidentCounts, MatchCounts
from civitas_ray.transit.vehicles import TripTable, Vehicle, ZoneLocator

log = logging.getLogger(__name__)

MAX_FEED_BYTES = 64 * 1024 * 1024
_NAN = math.nan

# Enum names as GTFS-RT writes them, for storage and the API.
TRIP_RELATIONSHIP = {v.number: v.name for v in
                     pb.TripDescriptor.DESCRIPTOR.enum_types_by_name[
                         "ScheduleRelationship"].values}
STOP_RELATIONSHIP = {v.number: v.name for v in
                     pb.TripUpdate.StopTimeUpdate.DESCRIPTOR.enum_types_by_name[
                         "ScheduleRelationship"].values}
VEHICLE_STATUS = {v.number: v.name for v in
                  pb.VehiclePosition.DESCRIPTOR.enum_types_by_name["VehicleStopStatus"].values}
OCCUPANCY = {v.number: v.name for v in
             pb.VehiclePosition.DESCRIPTOR.enum_types_by_name["OccupancyStatus"].values}
TRIP_CANCELED = pb.TripDescriptor.CANCELED
TRIP_ADDED = pb.TripDescriptor.ADDED


@dataclass(slots=True)
class TripUpdates:
    """One row per TripUpdate (`trip_*`) and one per StopTimeUpdate (`stu_*`)."""

    trip_id: list[str] = field(default_factory=list)
    start_date: list[str] = field(default_factory=list)  # YYYYMMDD or ""
    start_time: list[str] = field(default_factory=list)
    route_id: list[str] = field(default_factory=list)
    relationship: list[int] = field(default_factory=list)
    vehicle_id: list[str] = field(default_factory=list)
    trip_delay: list[float] = field(default_factory=list)  # TripUpdate.delay, NaN if absent
    stu_trip: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    stu_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # -1: absent
    stu_stop_id: list[str] = field(default_factory=list)  # "" when absent
    arr_time: np.ndarray = field(default_factory=lambda: np.zeros(0))  # epoch s, NaN absent
    arr_delay: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dep_time: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dep_delay: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stu_relationship: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    def __len__(self) -> int:
        return len(self.trip_id)


@dataclass(slots=True)
class VehiclePositions:
    vehicle_id: list[str] = field(default_factory=list)
    label: list[str] = field(default_factory=list)
    trip_id: list[str] = field(default_factory=list)
    route_id: list[str] = field(default_factory=list)
    start_date: list[str] = field(default_factory=list)
    stop_id: list[str] = field(default_factory=list)
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0))  # epoch s (header ts if absent)
    lat: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN: no position
    lon: np.ndarray = field(default_factory=lambda: np.zeros(0))
    bearing: np.ndarray = field(default_factory=lambda: np.zeros(0))
    speed: np.ndarray = field(default_factory=lambda: np.zeros(0))  # m/s
    occupancy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # -1 absent
    status: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # -1 absent
    stop_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.vehicle_id)


@dataclass(slots=True)
class ParsedFeed:
    header_ts: int | None
    gtfs_version: str
    incrementality: str
    entities: int
    trips: TripUpdates
    vehicles: VehiclePositions
    alerts: list[dict[str, Any]]
    deleted: int = 0
    sha256: str = ""
    feed_version: str = ""  # FeedHeader.feed_version: the static feed_version it was made for


def _translated(ts: Any) -> str:
    """The English (or first) translation of a TranslatedString."""
    best = ""
    for t in ts.translation:
        if not best or t.language in ("en", "en-US", ""):
            best = t.text
            if t.language in ("en", "en-US"):
                break
    return best


def _alert(entity_id: str, a: Any) -> dict[str, Any]:
    informed = []
    for ie in a.informed_entity:
        item: dict[str, Any] = {}
        for name in ("agency_id", "route_id", "stop_id"):
            if ie.HasField(name):
                item[name] = getattr(ie, name)
        if ie.HasField("route_type"):
            item["route_type"] = ie.route_type
        if ie.HasField("trip"):
            item["trip"] = {k: getattr(ie.trip, k) for k in
                            ("trip_id", "route_id", "start_date", "start_time")
                            if ie.trip.HasField(k)}
        informed.append(item)
    periods = [{"start": p.start if p.HasField("start") else None,
                "end": p.end if p.HasField("end") else None} for p in a.active_period]
    return {
        "id": entity_id,
        "cause": pb.Alert.Cause.Name(a.cause) if a.HasField("cause") else None,
        "effect": pb.Alert.Effect.Name(a.effect) if a.HasField("effect") else None,
        "header": _translated(a.header_text),
        "description": _translated(a.description_text),
        "url": _translated(a.url),
        "informed_entities": informed,
        "active_periods": periods,
    }


def parse_feed(payload: bytes) -> ParsedFeed:
    """Decode a binary FeedMessage; ValidationFailed if it is not one."""
    if not payload:
        raise ValidationFailed("Empty body: expected a binary GTFS-RT FeedMessage")
    if len(payload) > MAX_FEED_BYTES:
        raise ValidationFailed(f"Feed larger than {MAX_FEED_BYTES} bytes")
    msg = pb.FeedMessage()
    try:
        msg.ParseFromString(payload)
    except DecodeError as exc:
        raise ValidationFailed(f"Not a GTFS-RT FeedMessage: {exc}") from None
    if not msg.HasField("header") or not msg.header.gtfs_realtime_version:
        raise ValidationFailed("Not a GTFS-RT FeedMessage: the header (gtfs_realtime_version) "
                               "is missing")
    header = msg.header
    header_ts = int(header.timestamp) if header.HasField("timestamp") else None
    tu = TripUpdates()
    vp = VehiclePositions()
    alerts: list[dict[str, Any]] = []
    stu_trip: list[int] = []
    stu_seq: list[int] = []
    arr_t: list[float] = []
    arr_d: list[float] = []
    dep_t: list[float] = []
    dep_d: list[float] = []
    stu_rel: list[int] = []
    v_ts: list[float] = []
    v_lat: list[float] = []
    v_lon: list[float] = []
    v_bear: list[float] = []
    v_speed: list[float] = []
    v_occ: list[int] = []
    v_status: list[int] = []
    v_seq: list[int] = []
    deleted = 0
    fallback_ts = float(header_ts) if header_ts is not None else _NAN
    for entity in msg.entity:
        if entity.is_deleted:
            deleted += 1
            continue
        if entity.HasField("trip_update"):
            t = entity.trip_update
            trip = t.trip
            index = len(tu.trip_id)
            tu.trip_id.append(trip.trip_id)
            tu.start_date.append(trip.start_date)
            tu.start_time.append(trip.start_time)
            tu.route_id.append(trip.route_id)
            tu.relationship.append(trip.schedule_relationship)
            tu.vehicle_id.append(t.vehicle.id)
            tu.trip_delay.append(float(t.delay) if t.HasField("delay") else _NAN)
            for s in t.stop_time_update:
                # Getters answer 0 for absent fields: HasField only settles a real 0.
                # A time of 0 (1970) is never a prediction, so it means absent.
                stu_trip.append(index)
                seq = s.stop_sequence
                stu_seq.append(seq if seq or s.HasField("stop_sequence") else -1)
                tu.stu_stop_id.append(s.stop_id)
                ev = s.arrival
                value = ev.time
                arr_t.append(float(value) if value else _NAN)
                value = ev.delay
                arr_d.append(float(value) if value or ev.HasField("delay") else _NAN)
                ev = s.departure
                value = ev.time
                dep_t.append(float(value) if value else _NAN)
                value = ev.delay
                dep_d.append(float(value) if value or ev.HasField("delay") else _NAN)
                stu_rel.append(s.schedule_relationship)
        if entity.HasField("vehicle"):
            v = entity.vehicle
            vd = v.vehicle
            vp.vehicle_id.append(vd.id or vd.label or v.trip.trip_id or entity.id)
            vp.label.append(vd.label)
            vp.trip_id.append(v.trip.trip_id)
            vp.route_id.append(v.trip.route_id)
            vp.start_date.append(v.trip.start_date)
            vp.stop_id.append(v.stop_id)
            v_ts.append(float(v.timestamp) if v.HasField("timestamp") else fallback_ts)
            if v.HasField("position"):
                p = v.position
                v_lat.append(p.latitude)
                v_lon.append(p.longitude)
                v_bear.append(p.bearing if p.HasField("bearing") else _NAN)
                v_speed.append(p.speed if p.HasField("speed") else _NAN)
            else:
                v_lat.append(_NAN)
                v_lon.append(_NAN)
                v_bear.append(_NAN)
                v_speed.append(_NAN)
            v_occ.append(v.occupancy_status if v.HasField("occupancy_status") else -1)
            v_status.append(v.current_status if v.HasField("current_status") else -1)
            v_seq.append(v.current_stop_sequence if v.HasField("current_stop_sequence") else -1)
        if entity.HasField("alert"):
            alerts.append(_alert(entity.id, entity.alert))
    tu.stu_trip = np.asarray(stu_trip, dtype=np.int32)
    tu.stu_seq = np.asarray(stu_seq, dtype=np.int32)
    tu.arr_time = np.asarray(arr_t, dtype=np.float64)
    tu.arr_delay = np.asarray(arr_d, dtype=np.float64)
    tu.dep_time = np.asarray(dep_t, dtype=np.float64)
    tu.dep_delay = np.asarray(dep_d, dtype=np.float64)
    tu.stu_relationship = np.asarray(stu_rel, dtype=np.int8)
    vp.ts = np.asarray(v_ts, dtype=np.float64)
    vp.lat = np.asarray(v_lat, dtype=np.float64)
    vp.lon = np.asarray(v_lon, dtype=np.float64)
    vp.bearing = np.asarray(v_bear, dtype=np.float64)
    vp.speed = np.asarray(v_speed, dtype=np.float64)
    vp.occupancy = np.asarray(v_occ, dtype=np.int8)
    vp.status = np.asarray(v_status, dtype=np.int8)
    vp.stop_seq = np.asarray(v_seq, dtype=np.int32)
    return ParsedFeed(
        header_ts=header_ts, gtfs_version=header.gtfs_realtime_version,
        incrementality=pb.FeedHeader.Incrementality.Name(header.incrementality),
        entities=len(msg.entity), trips=tu, vehicles=vp, alerts=alerts, deleted=deleted,
        sha256=hashlib.sha256(payload).hexdigest(), feed_version=header.feed_version)


# --- the ingest path: one feed message, from bytes to rows, incidents and state ----------

# A feed is "mismatched" when fewer than this share of its trips match the active version.
MISMATCH_SHARE = 0.5
DEFAULT_STALE_AFTER_S = 300.0
UNMATCHED_LISTED = 200  # unknown trip ids returned in full up to this many
ZONES_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class FeedRef:
    """What the ingest path needs to know about a transit_feed row."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    active_version_id: uuid.UUID | None
    settings: dict[str, Any]
    poll_interval_s: float | None = None


@dataclass(slots=True)
class Analysis:
    """A decoded feed matched against its static version: everything but I/O."""

    feed: ParsedFeed
    match: matching.TripMatch | None
    delays: matching.StopDelays | None
    index: matching.StaticIndex | None
    mismatched: bool
    mismatch_reason: str | None
    unmatched_ids: list[str]
    vehicle_zone: list[str | None]
    vehicle_trip: np.ndarray  # int32 static trip per vehicle, -1 unknown


def analyse(payload: bytes, index: matching.StaticIndex | None,
            locator: ZoneLocator | None) -> Analysis:
    """Parse, match and compute delays (CPU only: callers run it off the event loop)."""
    return analyse_parsed(parse_feed(payload), index, locator)


def analyse_parsed(feed: ParsedFeed, index: matching.StaticIndex | None,
                   locator: ZoneLocator | None) -> Analysis:
    """`analyse` for an already decoded feed."""
    tu = feed.trips
    vp = feed.vehicles
    zones: list[str | None] = (locator.locate(vp.lon, vp.lat) if locator is not None
                               else [None] * len(vp))
    if index is None:
        ids = sorted({t for t in tu.trip_id if t})
        return Analysis(feed, None, None, None, bool(len(tu)),
                        "no active static version" if len(tu) else None, ids, zones,
                        np.full(len(vp), -1, dtype=np.int32))
    match = matching.match_trips(index, tu.trip_id, tu.start_date, header_ts=feed.header_ts)
    # Trips the feed adds (ADDED) are not in any static schedule: not "unknown".
    added = np.asarray(tu.relationship, dtype=np.int32) == TRIP_ADDED
    considered = ~added & np.asarray([bool(t) for t in tu.trip_id], dtype=bool)
    unmatched_mask = considered & (match.trip < 0)
    unmatched_ids = sorted({tu.trip_id[i] for i in np.flatnonzero(unmatched_mask)})
    share = float((match.trip[considered] >= 0).mean()) if considered.any() else 1.0
    reasons = []
    days = [d for d in match.service_day if d is not None]
    outside = sum(not index.covers(d) for d in days)
    if considered.any() and share < MISMATCH_SHARE:
        reasons.append(f"only {share:.0%} of the feed's trips are in the active static version "
                       f"{index.version_id}")
    if days and outside > len(days) / 2:
        reasons.append(f"{outside} of {len(days)} service dates are outside its calendar")
    if feed.feed_version and index.feed_version and feed.feed_version != index.feed_version:
        reasons.append(f"the header's feed_version '{feed.feed_version}' is not the static "
                       f"version's '{index.feed_version}'")
    reason = "; ".join(reasons) or None
    mismatched = reason is not None
    if mismatched:
        # Never half-matched: a feed from another version gets no schedule at all, and
        # every one of its trips is reported unmatched (the reason gives the share).
        match.trip[:] = -1
        match.method[:] = matching.METHOD_NONE
        unmatched_ids = sorted({tu.trip_id[i] for i in np.flatnonzero(considered)})
    delays = matching.stop_delays(index, tu, match)
    vehicle_match = matching.match_trips(index, vp.trip_id, vp.start_date,
                                         header_ts=feed.header_ts)
    if mismatched:
        vehicle_match.trip[:] = -1
    return Analysis(feed, match, delays, index, mismatched, reason, unmatched_ids, zones,
                    vehicle_match.trip)


_zones: dict[uuid.UUID, tuple[float, ZoneLocator]] = {}


async def zone_locator(session: AsyncSession, tenant_id: uuid.UUID) -> ZoneLocator:
    """The tenant's live zones, smallest first (the smallest covering zone wins, as for
    assets), cached for ZONES_TTL_S."""
    hit = _zones.get(tenant_id)
    if hit is not None and time.monotonic() - hit[0] < ZONES_TTL_S:
        return hit[1]
    rows = (await session.execute(text(
        "select id::text, st_asbinary(geom) from zone where tenant_id = :t "
        "and deleted_at is null order by st_area(geom), id"), {"t": tenant_id})).all()
    locator = ZoneLocator([(r[0], shapely.from_wkb(bytes(r[1]))) for r in rows])
    _zones[tenant_id] = (time.monotonic(), locator)
    return locator


def forget_zones(tenant_id: uuid.UUID | None = None) -> None:
    if tenant_id is None:
        _zones.clear()
    else:
        _zones.pop(tenant_id, None)


async def get_feed(*, session: AsyncSession, tenant_id: uuid.UUID, name: str) -> FeedRef:
    row = (await session.execute(text(
        "select id, name, active_version_id, settings, poll_interval_s from transit_feed "
        "where tenant_id = :t and name = :n"), {"t": tenant_id, "n": name})).first()
    if row is None:
        raise NotFound(f"No transit feed named '{name}': create it first "
                       "(POST /api/v1/mobility/feeds)")
    return FeedRef(id=row[0], tenant_id=tenant_id, name=row[1], active_version_id=row[2],
                   settings=dict(row[3] or {}), poll_interval_s=row[4])


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(x) else x for x in values.tolist()]


def _text_or_none(values: Sequence[str]) -> list[str | None]:
    return [v or None for v in values]


def _iso_date(value: str) -> str | None:
    d = matching.parse_yyyymmdd(value)
    return d.isoformat() if d else None


@dataclass(slots=True)
class Prepared:
    """Rows and live-state batches derived from an Analysis (built off the event loop).

    Row columns go to PostgreSQL as arrays; times travel as epoch floats and absent
    numbers as NaN, converted in SQL, so no Python object is made per value.
    """

    vehicle_rows: list[list[Any]]
    trip_rows: list[list[Any]]
    vehicles: list[Vehicle]
    trips: TripTable


def prepare(a: Analysis, *, feed_ts: float) -> Prepared:
    """Columns for the hypertables and the batches for the live state, vectorised."""
    feed = a.feed
    tu, vp = feed.trips, feed.vehicles
    index = a.index
    tz = index.tz if index is not None else "UTC"
    default_day = matching.feed_service_date(int(feed_ts), tz)
    # Vehicles: few per feed (hundreds), plain lists are fine.
    occupancy = [OCCUPANCY.get(int(x)) if x >= 0 else None for x in vp.occupancy.tolist()]
    status = [VEHICLE_STATUS.get(int(x)) if x >= 0 else None for x in vp.status.tolist()]
    v_trip = [index.trip_ids[t] if index is not None and t >= 0 else (vp.trip_id[i] or None)
              for i, t in enumerate(a.vehicle_trip.tolist())]
    lat, lon = _nan_to_none(vp.lat), _nan_to_none(vp.lon)
    bearing, speed = _nan_to_none(vp.bearing), _nan_to_none(vp.speed)
    ts = np.where(np.isnan(vp.ts), feed_ts, vp.ts).tolist()
    vehicle_rows: list[list[Any]] = [
        list(vp.vehicle_id), ts, v_trip, _text_or_none(vp.route_id),
        [_iso_date(s) for s in vp.start_date], lat, lon, bearing, speed, occupancy,
        _text_or_none(vp.stop_id), status, [z or None for z in a.vehicle_zone]]
    vehicles = [Vehicle(vehicle_id=vp.vehicle_id[i], ts=ts[i], lat=lat[i], lon=lon[i],
                        bearing=bearing[i], speed=speed[i], occupancy=occupancy[i],
                        status=status[i], trip_id=v_trip[i], route_id=vp.route_id[i] or None,
                        stop_id=vp.stop_id[i] or None, zone_id=a.vehicle_zone[i])
                for i in range(len(vp))]
    # Stop time updates: every one is stored; matched ones carry the schedule.
    n = tu.stu_trip.size
    seq = tu.stu_seq.astype(np.int64)
    if n:  # without a sequence (NYCT) a row is keyed by its position in its trip's list
        starts = np.r_[0, np.flatnonzero(np.diff(tu.stu_trip)) + 1]
        ordinal = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        seq = np.where(seq >= 0, seq, ordinal)
    sched = np.full(n, math.nan)
    arr_delay = tu.arr_delay.copy()
    dep_delay = tu.dep_delay.copy()
    predicted = np.where(np.isnan(tu.arr_time), tu.dep_time, tu.arr_time)
    static_trip = np.full(n, -1, dtype=np.int64)
    d = a.delays
    if d is not None and d.stu.size:
        located = d.st_row >= 0
        rows = d.stu[located]
        seq[rows] = d.seq[located]
        sched[rows] = d.scheduled_arrival[located]
        arr_delay[d.stu] = d.arrival_delay
        dep_delay[d.stu] = d.departure_delay
        predicted[rows] = d.predicted_arrival[located]
        static_trip[d.stu] = d.trip
    # Per trip (thousands), then spread to its stop rows (tens of thousands).
    trip_names = list(tu.trip_id)
    days = a.match.service_day if a.match is not None else [None] * len(tu)
    trip_day = [(day or matching.parse_yyyymmdd(tu.start_date[t]) or default_day)
                for t, day in enumerate(days)]
    trip_day_text = np.asarray([x.isoformat() if x else "" for x in trip_day] or [""])
    trip_route = np.asarray([r or "" for r in tu.route_id] or [""])
    if index is not None and a.match is not None:
        for t in np.flatnonzero(a.match.trip >= 0).tolist():
            trip_names[t] = index.trip_ids[a.match.trip[t]]
    trip_name_arr = np.asarray(trip_names or [""])
    stu_trip = tu.stu_trip
    rel = np.asarray([STOP_RELATIONSHIP.get(i, "SCHEDULED") for i in range(4)])
    # A trip repeated in one message (NYCT does this) keeps its first update only.
    seen: set[tuple[str, str]] = set()
    repeats = []
    for t, key in enumerate(zip(trip_names, trip_day_text.tolist(), strict=False)):
        if key in seen:
            repeats.append(t)
        seen.add(key)
    keep = ~np.isin(stu_trip, repeats) if repeats else np.ones(n, dtype=bool)
    kept_trip = stu_trip[keep]
    stop_id_arr = np.asarray(tu.stu_stop_id or [""])
    trip_rows = [
        trip_name_arr[kept_trip].tolist(), trip_day_text[kept_trip].tolist(),
        trip_route[kept_trip].tolist(), seq[keep].tolist(), stop_id_arr[:n][keep].tolist(),
        arr_delay[keep].tolist(), dep_delay[keep].tolist(), predicted[keep].tolist(),
        sched[keep].tolist(), rel[np.clip(tu.stu_relationship[keep], 0, 3)].tolist()]
    # Live state: the located stops of matched trips, with their zones, as codes.
    table = TripTable.empty(feed_ts)
    if index is not None and d is not None and d.stu.size:
        sel = np.flatnonzero(d.st_row >= 0)
        trip, stop = d.trip[sel].astype(np.int64), d.stop[sel].astype(np.int64)
        table = TripTable(
            version=index.version_id, zone_names=index.zone_names, trip=trip,
            key=(index.trip_route_code[trip] << 32) | stop, zone=index.stop_zone_code[stop],
            predicted=d.predicted_arrival[sel], delay=d.arrival_delay[sel], feed_ts=feed_ts)
    return Prepared(vehicle_rows=vehicle_rows, trip_rows=trip_rows, vehicles=vehicles,
                    trips=table)


_VEHICLE_SQL = """
insert into transit_vehicle_position (tenant_id, feed_id, vehicle_id, ts, trip_id, route_id,
  start_date, lat, lon, bearing, speed, occupancy_status, stop_id, current_status, zone_id)
select $1, $2, u.vid, to_timestamp(u.ts), u.trip, u.route, u.day::date, u.lat, u.lon,
  u.bearing, u.speed, u.occ, u.stop, u.status, u.zone::uuid
from unnest($3::text[], $4::float8[], $5::text[], $6::text[], $7::text[], $8::float8[],
  $9::float8[], $10::float8[], $11::float8[], $12::text[], $13::text[], $14::text[],
  $15::text[]) as u(vid, ts, trip, route, day, lat, lon, bearing, speed, occ, stop, status,
  zone)
on conflict do nothing"""

# Absent numbers arrive as NaN and leave as NULL.
_TRIP_SQL = """
insert into transit_trip_update (tenant_id, feed_id, feed_ts, trip_id, start_date, route_id,
  stop_sequence, stop_id, arrival_delay_s, departure_delay_s, predicted_arrival,
  scheduled_arrival, schedule_relationship)
select $1, $2, to_timestamp($3), u.trip, u.day::date, nullif(u.route, ''), u.seq,
  nullif(u.stop, ''), round(nullif(u.arr, 'NaN'))::int, round(nullif(u.dep, 'NaN'))::int,
  to_timestamp(nullif(u.pred, 'NaN')), to_timestamp(nullif(u.sched, 'NaN')), u.rel
from unnest($4::text[], $5::text[], $6::text[], $7::int[], $8::text[], $9::float8[],
  $10::float8[], $11::float8[], $12::float8[], $13::text[]) as u(trip, day, route, seq, stop,
  arr, dep, pred, sched, rel)
on conflict do nothing"""


async def _driver(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, in its transaction and tenant context."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def store(session: AsyncSession, feed: FeedRef, p: Prepared, *,
                feed_ts: float) -> dict[str, int]:
    """Insert the rows (RLS applies: the session is the tenant's); duplicates are skipped."""
    conn = await _driver(session)
    out = {"vehicle_position": 0, "trip_update": 0}
    if p.vehicle_rows and p.vehicle_rows[0]:
        status = await conn.execute(_VEHICLE_SQL, feed.tenant_id, feed.id, *p.vehicle_rows)
        out["vehicle_position"] = int(status.rsplit(" ", 1)[-1])
    if p.trip_rows and p.trip_rows[0]:
        status = await conn.execute(_TRIP_SQL, feed.tenant_id, feed.id, feed_ts, *p.trip_rows)
        out["trip_update"] = int(status.rsplit(" ", 1)[-1])
    return out


_MAJOR_EFFECTS = {"NO_SERVICE", "REDUCED_SERVICE", "SIGNIFICANT_DELAYS", "DETOUR", "STOP_MOVED"}


def alert_dedup_key(feed_id: uuid.UUID, alert_id: str) -> str:
    """`gtfs-rt:<feed>:<alert id>`, the id hashed when it would not fit the column."""
    if len(alert_id) > 120:
        alert_id = "sha256:" + hashlib.sha256(alert_id.encode()).hexdigest()
    return f"gtfs-rt:{feed_id}:{alert_id}"


def _alert_zone(alert: dict[str, Any], index: matching.StaticIndex | None) -> uuid.UUID | None:
    if index is None:
        return None
    for entity in alert["informed_entities"]:
        pos = index.stop_pos.get(entity.get("stop_id", ""))
        if pos is not None and index.stop_zone[pos]:
            return uuid.UUID(index.stop_zone[pos])
    return None


async def sync_alerts(session: AsyncSession, feed: FeedRef, parsed: ParsedFeed,
                      index: matching.StaticIndex | None, actor: Actor,
                      ) -> tuple[IncidentCounts, list[Event]]:
    """Open or update one mobility incident per alert (dedup by feed + alert id), with its
    informed entities and active periods in `properties`; resolve the incidents of alerts
    a full-dataset feed no longer carries. An unchanged alert writes nothing."""
    counts = IncidentCounts()
    events: list[Event] = []
    keys: set[str] = set()
    for alert in parsed.alerts:
        key = alert_dedup_key(feed.id, alert["id"])
        keys.add(key)
        digest = hashlib.sha256(orjson.dumps(alert, option=orjson.OPT_SORT_KEYS)).hexdigest()
        current = (await session.execute(select(Incident).where(
            Incident.tenant_id == feed.tenant_id, Incident.dedup_key == key,
            Incident.status.in_(("open", "acknowledged"))))).scalar_one_or_none()
        if current is not None and current.properties.get("gtfs_rt_digest") == digest:
            counts.unchanged += 1
            continue
        title = alert["header"] or alert["description"] or f"Transit alert {alert['id']}"
        severity = "major" if alert["effect"] in _MAJOR_EFFECTS else "minor"
        incident, created = await incidents.open_or_update(
            session=session, tenant_id=feed.tenant_id, dedup_key=key,
            title=f"{feed.name}: {title}", severity=severity, domain="mobility",
            source="gtfs-rt", zone_id=_alert_zone(alert, index), data={"alert": alert},
            actor=actor)
        incident.properties = {**incident.properties, "gtfs_rt_digest": digest,
                               "feed": feed.name, "feed_id": str(feed.id), **alert}
        if alert["description"] and not incident.description:
            incident.description = alert["description"]
        await session.flush()
        await session.refresh(incident)
        if created:
            counts.opened += 1
        else:
            counts.updated += 1
        events.append(Event("incident.opened" if created else "incident.updated", "incidents",
                            incidents.snapshot(incident)))
    if parsed.incrementality == "FULL_DATASET":
        gone = (await session.execute(select(Incident).where(
            Incident.tenant_id == feed.tenant_id, Incident.source == "gtfs-rt",
            Incident.dedup_key.like(f"gtfs-rt:{feed.id}:%"),
            Incident.status.in_(("open", "acknowledged"))))).scalars().all()
        for incident in gone:
            if incident.dedup_key in keys:
                continue
            incident = await incidents.transition(
                session=session, incident=incident, status=IncidentStatus.RESOLVED,
                actor=actor, note="The alert is no longer in the feed")
            counts.resolved += 1
            events.append(Event("incident.resolved", "incidents", incidents.snapshot(incident)))
    return counts, events


@dataclass(slots=True)
class IngestResult:
    report: GtfsRtIngestRead
    prepared: Prepared | None
    events: list[Event]
    full_dataset: bool
    feed_ts: float


async def ingest(*, session: AsyncSession, feed: FeedRef, payload: bytes, actor: Actor,
                 received_at: float | None = None) -> IngestResult:
    """Decode, match, store and turn alerts into incidents, in the caller's transaction.

    The caller commits, then calls `after_commit` (health, live state, events): nothing
    reaches Redis or the actors before the rows it describes are durable.
    """
    started = time.perf_counter()
    received = received_at if received_at is not None else time.time()
    index = None
    if feed.active_version_id is not None:
        index = await matching.load_index(session, feed.active_version_id)
    locator = await zone_locator(session, feed.tenant_id)
    previous_ts = await health.last_header_ts(feed.id)
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    a = await asyncio.to_thread(analyse, payload, index, locator)
    parsed = a.feed
    feed_ts = float(parsed.header_ts) if parsed.header_ts else received
    age = received - feed_ts
    stale_after = float(feed.settings.get("stale_after_s", DEFAULT_STALE_AFTER_S))
    prepared = await asyncio.to_thread(prepare, a, feed_ts=feed_ts)
    timings["decode_match"], mark = (time.perf_counter() - mark) * 1000, time.perf_counter()
    rows = await store(session, feed, prepared, feed_ts=feed_ts)
    timings["store"], mark = (time.perf_counter() - mark) * 1000, time.perf_counter()
    counts, events = await sync_alerts(session, feed, parsed, index, actor)
    timings["alerts"] = (time.perf_counter() - mark) * 1000
    match = a.match
    tu = parsed.trips
    matched = int((match.trip >= 0).sum()) if match is not None else 0
    report = GtfsRtIngestRead(
        feed=feed.name, feed_id=feed.id, version_id=feed.active_version_id if index else None,
        feed_ts=datetime.fromtimestamp(parsed.header_ts, UTC) if parsed.header_ts else None,
        age_s=round(age, 1) if parsed.header_ts else None,
        stale=parsed.header_ts is None or age > stale_after or parsed.header_ts < previous_ts,
        incrementality=parsed.incrementality, entities=parsed.entities,
        trip_updates=len(tu), stop_time_updates=int(tu.stu_trip.size),
        duplicate_trip_updates=len(tu) - len(set(zip(tu.trip_id, tu.start_date, strict=True))),
        vehicles=len(parsed.vehicles), alerts=len(parsed.alerts), matched=matched,
        unmatched=a.unmatched_ids[:UNMATCHED_LISTED], unmatched_count=len(a.unmatched_ids),
        match=MatchCounts(**matching.describe(match)) if match is not None else MatchCounts(),
        mismatched=a.mismatched, mismatch_reason=a.mismatch_reason,
        vehicles_matched=int((a.vehicle_trip >= 0).sum()),
        vehicles_in_zones=sum(z is not None for z in a.vehicle_zone), rows=rows,
        incidents=counts, state_updated=False, duration_ms=0.0,
        timings_ms={k: round(v, 1) for k, v in timings.items()})
    report.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    return IngestResult(report=report, prepared=prepared, events=events,
                        # Vehicles, trip updates and alerts usually come as separate
                        # full datasets: only one with trip updates replaces predictions.
                        full_dataset=parsed.incrementality == "FULL_DATASET" and len(tu) > 0,
                        feed_ts=feed_ts)


async def after_commit(feed: FeedRef, result: IngestResult, *, source: str) -> None:
    """Health in Redis, incident events, then the live state (when Ray is up)."""
    r = result.report
    try:
        await health.record_ingest(
            feed.id, tenant_id=feed.tenant_id, name=feed.name,
            header_ts=int(r.feed_ts.timestamp()) if r.feed_ts else None,
            entities=r.entities, matched=r.matched, unmatched=r.unmatched_count,
            stale=r.stale, mismatched=r.mismatched, source=source)
    except Exception:
        log.exception("could not record GTFS-RT health", extra={"feed": feed.name})
    if result.events:
        try:
            await relay.send(feed.tenant_id, result.events)
        except Exception:  # the incidents are committed; their events are not the truth
            log.exception("incident events not published", extra={"feed": feed.name})
    r.state_updated, r.state_detail = await update_state(feed, result)


async def update_state(feed: FeedRef, result: IngestResult) -> tuple[bool, str | None]:
    """Hand the batch to the feed's TransitShard: one Ray call per feed message."""
    import ray

    if not ray.is_initialized():
        return False, "Ray is not running in this process: stored, live state not updated"
    p = result.prepared
    if p is None:
        return False, "nothing to apply"
    from civitas_ray.transit.actor import transit_shard_for

    try:
        await transit_shard_for(feed.id).apply.remote(
            str(feed.tenant_id), str(feed.id), feed.settings, p.vehicles, p.trips,
            result.full_dataset)
    except Exception as exc:  # the rows are committed: the shard rebuilds from them
        log.exception("transit shard update failed", extra={"feed": feed.name})
        return False, f"live state update failed: {type(exc).__name__}"
    return True, None
