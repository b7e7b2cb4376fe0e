"""Live transit state of one feed (vehicles, per-trip delays, zone KPIs), Ray-free and DB-free.

`TransitState` is the entity a TransitShard host keeps per (tenant, feed): the latest
position of every vehicle with its zone, the latest delay of every trip at each upcoming
stop, and from those the transit KPIs of each zone. `ZoneLocator` answers "which zone is
this point in" for many points at once (shapely STRtree), built once per tenant.

Guarantees: applying a batch twice changes nothing (a vehicle keeps its newest fix by
timestamp; a trip's stop delays are replaced only by a feed at least as new); a zone's
KPIs are computed from the state, never accumulated, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

# On time: no more than 1 minute early and no more than 5 minutes late (the usual
# transit-agency definition; configurable per feed through settings.on_time_window_s).
ON_TIME_EARLY_S = 60.0
ON_TIME_LATE_S = 300.0


class ZoneLocator:
    """Point-in-polygon for many points at once against a tenant's zones."""

    def __init__(self, zones: Sequence[tuple[str, BaseGeometry]]) -> None:
        self.zone_ids = [z[0] for z in zones]
        self._tree = STRtree([z[1] for z in zones]) if zones else None

    def __len__(self) -> int:
        return len(self.zone_ids)

    def locate(self, lon: np.ndarray, lat: np.ndarray) -> list[str | None]:
        """The zone id covering each point (the first by zone order when zones overlap)."""
        out: list[str | None] = [None] * len(lon)
        if self._tree is None or not len(lon):
            return out
        ok = np.isfinite(lon) & np.isfinite(lat)
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            return out
        points = shapely.points(lon[idx], lat[idx])
        pairs = self._tree.query(points, predicate="covered_by")
        # pairs[0]: point positions, pairs[1]: zone positions; keep the lowest zone each.
        best: dict[int, int] = {}
        for p, z in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True):
            if p not in best or z < best[p]:
                best[p] = z
        for p, z in best.items():
            out[int(idx[p])] = self.zone_ids[z]
        return out


@dataclass(slots=True)
class Vehicle:
    vehicle_id: str
    ts: float
    lat: float | None
    lon: float | None
    bearing: float | None
    speed: float | None
    occupancy: str | None
    status: str | None
    trip_id: str | None
    route_id: str | None
    stop_id: str | None
    zone_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"vehicle_id": self.vehicle_id, "ts": self.ts, "lat": self.lat, "lon": self.lon,
                "bearing": self.bearing, "speed": self.speed, "occupancy": self.occupancy,
                "status": self.status, "trip_id": self.trip_id, "route_id": self.route_id,
                "stop_id": self.stop_id, "zone_id": self.zone_id}


@dataclass(slots=True)
class TripTable:
    """Predictions of many trips as integer-coded columns, one row per (trip, stop).

    Codes belong to one static version (`version`): trips and stops are the index's
    positions, `key` is route << 32 | stop, zones index `zone_names`.
    """

    version: str
    zone_names: list[str]
    trip: np.ndarray  # int64
    key: np.ndarray  # int64
    zone: np.ndarray  # int32, -1: in no zone
    predicted: np.ndarray  # epoch s
    delay: np.ndarray  # s, NaN unknown
    feed_ts: float = 0.0

    @classmethod
    def empty(cls, feed_ts: float = 0.0) -> TripTable:
        i = np.zeros(0, dtype=np.int64)
        return cls("", [], i, i, np.zeros(0, np.int32), np.zeros(0), np.zeros(0), feed_ts)

    def __len__(self) -> int:
        return int(self.trip.size)

    def take(self, mask: np.ndarray) -> TripTable:
        return TripTable(self.version, self.zone_names, self.trip[mask], self.key[mask],
                         self.zone[mask], self.predicted[mask], self.delay[mask], self.feed_ts)

    def zones(self) -> set[str]:
        return {self.zone_names[z] for z in np.unique(self.zone).tolist() if z >= 0}

    def trips(self) -> int:
        return int(np.unique(self.trip).size)

    @staticmethod
    def concat(a: TripTable, b: TripTable) -> TripTable:
        return TripTable(
            b.version, b.zone_names, np.concatenate([a.trip, b.trip]),
            np.concatenate([a.key, b.key]), np.concatenate([a.zone, b.zone]),
            np.concatenate([a.predicted, b.predicted]), np.concatenate([a.delay, b.delay]),
            feed_ts=max(a.feed_ts, b.feed_ts))


@dataclass(slots=True)
class ZoneKpis:
    zone_id: str
    vehicles: int
    trips: int
    mean_delay_s: float | None
    on_time_share: float | None
    headway_cv: float | None  # coefficient of variation of predicted headways (0 = regular)

    def as_dict(self) -> dict[str, Any]:
        return {"zone_id": self.zone_id, "vehicles": self.vehicles, "trips": self.trips,
                "mean_delay_s": self.mean_delay_s, "on_time_share": self.on_time_share,
                "headway_cv": self.headway_cv}


@dataclass(slots=True)
class TransitState:
    tenant_id: str
    feed_id: str
    on_time_early_s: float = ON_TIME_EARLY_S
    on_time_late_s: float = ON_TIME_LATE_S
    vehicles: dict[str, Vehicle] = field(default_factory=dict)
    trips: TripTable = field(default_factory=TripTable.empty)
    last_feed_ts: float = 0.0
    applied_entities: int = 0

    def apply_vehicles(self, rows: Iterable[Vehicle]) -> set[str]:
        """Keep each vehicle's newest fix; return the zones whose vehicle set changed."""
        touched: set[str] = set()
        for v in rows:
            old = self.vehicles.get(v.vehicle_id)
            if old is not None and old.ts >= v.ts:
                continue
            self.vehicles[v.vehicle_id] = v
            self.applied_entities += 1
            if old is not None and old.zone_id:
                touched.add(old.zone_id)
            if v.zone_id:
                touched.add(v.zone_id)
        return touched

    def apply_trips(self, table: TripTable, *, full_dataset: bool) -> set[str]:
        """Take a newer feed's predictions: a full dataset replaces them all, a differential
        one replaces the trips it names. Returns the zones whose predictions changed."""
        if table.feed_ts < self.last_feed_ts:
            return set()
        old = self.trips
        if full_dataset or old.version != table.version:
            touched = old.zones() | table.zones()
            self.trips = table
        else:
            replaced = np.isin(old.trip, table.trip)
            touched = old.take(replaced).zones() | table.zones()
            self.trips = TripTable.concat(old.take(~replaced), table)
        self.last_feed_ts = table.feed_ts
        self.applied_entities += table.trips()
        return touched

    def zone_kpis(self, zone_ids: Iterable[str]) -> list[ZoneKpis]:
        """Vehicles, trips, mean delay, on-time share and headway regularity per zone,
        computed from the state over numpy columns (one pass, no per-stop Python)."""
        wanted = sorted(set(zone_ids))
        if not wanted:
            return []
        vehicles = dict.fromkeys(wanted, 0)
        for v in self.vehicles.values():
            if v.zone_id in vehicles:
                vehicles[v.zone_id] += 1
        t = self.trips
        # Map the table's zone codes to positions in `wanted` (-1: not asked for).
        code = {z: i for i, z in enumerate(wanted)}
        remap = np.asarray([code.get(z, -1) for z in t.zone_names] + [-1], dtype=np.int64)
        zc = remap[t.zone]  # a zone of -1 reads the trailing -1
        keep = zc >= 0
        zc, delay, pred = zc[keep], t.delay[keep], t.predicted[keep]
        n = len(wanted)
        ok = np.isfinite(delay)
        count = np.bincount(zc[ok], minlength=n)
        total = np.bincount(zc[ok], weights=delay[ok], minlength=n)
        on_time = (delay >= -self.on_time_early_s) & (delay <= self.on_time_late_s) & ok
        punctual = np.bincount(zc[on_time], minlength=n)
        # Trips per zone: distinct (zone, trip) pairs.
        pair = np.unique(zc * (1 << 40) + t.trip[keep])
        trips = np.bincount(pair >> 40, minlength=n)
        # Headway regularity: per (zone, route, stop), the CV of the gaps between predicted
        # arrivals; a zone's figure is the mean over its stops with 3+ arrivals.
        cv_sum: np.ndarray = np.zeros(n)
        cv_n: np.ndarray = np.zeros(n)
        fin = np.isfinite(pred)
        if fin.sum() >= 3:
            z, k, p = zc[fin], t.key[keep][fin], pred[fin]
            order = np.lexsort((p, k, z))
            z, k, p = z[order], k[order], p[order]
            same = (z[1:] == z[:-1]) & (k[1:] == k[:-1])
            gz, gk, gv = z[1:][same], k[1:][same], np.diff(p)[same]
            if gv.size:
                # Groups are runs of equal (zone, key) in this sorted order.
                brk = np.r_[True, (gz[1:] != gz[:-1]) | (gk[1:] != gk[:-1])]
                grp = np.cumsum(brk) - 1
                g_n = np.bincount(grp)
                g_mean = np.bincount(grp, weights=gv) / g_n
                g_var = np.bincount(grp, weights=gv * gv) / g_n - g_mean ** 2
                g_zone = gz[brk]
                valid = (g_n >= 2) & (g_mean > 0)
                cv = np.sqrt(np.maximum(g_var[valid], 0)) / g_mean[valid]
                cv_sum = np.bincount(g_zone[valid], weights=cv, minlength=n)
                cv_n = np.bincount(g_zone[valid], minlength=n).astype(float)
        return [ZoneKpis(
            zone_id=z, vehicles=vehicles[z], trips=int(trips[i]),
            mean_delay_s=float(total[i] / count[i]) if count[i] else None,
            on_time_share=float(punctual[i] / count[i]) if count[i] else None,
            headway_cv=float(cv_sum[i] / cv_n[i]) if cv_n[i] else None)
            for i, z in enumerate(wanted)]

    def vehicles_snapshot(self, zone_id: str | None = None) -> list[dict[str, Any]]:
        return [v.as_dict() for v in self.vehicles.values()
                if zone_id is None or v.zone_id == zone_id]
