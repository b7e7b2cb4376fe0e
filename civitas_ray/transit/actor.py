"""TransitShard: the Ray host of the live transit state of a share of the feeds (a thin shell).

Why a host of its own rather than vehicles inside ZoneShards: a feed message is one
batch for one feed, whatever zones its vehicles are in; keeping a feed's vehicles and
trips together makes that batch one Ray call and lets a vehicle cross zones without a
hand-over. Feeds are placed on shards by rendezvous hashing of the feed id, like zones.

Persisted: nothing of its own; every row it sees was committed before it got it.
Rebuilt on (re)start: lazily per feed, the latest position of each vehicle of the last
hour from transit_vehicle_position; trip predictions come back with the next feed message
(a few seconds to a minute), which replaces them wholesale anyway.
Publishes: one coalesced `transit.vehicles` event per feed message on `transit:vehicles`
(the feed's whole vehicle set: a state channel) and `transit.kpis` on `zone:<id>` for
every zone whose vehicles or predictions changed.
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Any

import ray
from sqlalchemy import text

from civitas_ray.config import get_settings
from civitas_ray.db.session import tenant_session
from civitas_ray.realtime import relay
from civitas_ray.realtime.events import Event
from civitas_ray.runtime import registry
from civitas_ray.transit.vehicles import TransitState, TripTable, Vehicle

log = logging.getLogger(__name__)

TRANSIT_SHARDS = 1
FeedKey = tuple[str, str]  # tenant, feed


class TransitHost:
    def __init__(self, index: int = 0) -> None:
        self.index = index
        self.feeds: dict[FeedKey, TransitState] = {}
        self.stats: dict[str, int] = {"batches": 0, "entities": 0, "events": 0, "errors": 0,
                                      "rebuilds": 0}

    async def _state(self, tenant_id: str, feed_id: str,
                     settings: dict[str, Any]) -> TransitState:
        key = (tenant_id, feed_id)
        state = self.feeds.get(key)
        if state is None:
            window = settings.get("on_time_window_s") or [60.0, 300.0]
            state = TransitState(tenant_id, feed_id, on_time_early_s=float(window[0]),
                                 on_time_late_s=float(window[1]))
            state.apply_vehicles(await self._rebuild(tenant_id, feed_id))
            self.feeds[key] = state
        return state

    async def _rebuild(self, tenant_id: str, feed_id: str) -> list[Vehicle]:
        try:
            async with tenant_session(uuid.UUID(tenant_id)) as s:
                rows = (await s.execute(text(
                    "select distinct on (vehicle_id) vehicle_id, extract(epoch from ts), lat, "
                    "lon, bearing, speed, occupancy_status, current_status, trip_id, route_id, "
                    "stop_id, zone_id::text from transit_vehicle_position where feed_id = :f "
                    "and ts > now() - interval '1 hour' order by vehicle_id, ts desc"),
                    {"f": uuid.UUID(feed_id)})).all()
        except Exception:
            self.stats["errors"] += 1
            log.exception("transit state rebuild failed", extra={"feed_id": feed_id})
            return []
        self.stats["rebuilds"] += 1
        return [Vehicle(r[0], float(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                        r[10], r[11]) for r in rows]

    async def apply(self, tenant_id: str, feed_id: str, settings: dict[str, Any],
                    vehicles: list[Vehicle], trips: TripTable,
                    full_dataset: bool) -> dict[str, int]:
        state = await self._state(tenant_id, feed_id, settings)
        before = state.applied_entities
        touched = state.apply_vehicles(vehicles)
        if len(trips) or full_dataset:
            touched |= state.apply_trips(trips, full_dataset=full_dataset)
        feed_ts = trips.feed_ts
        self.stats["batches"] += 1
        self.stats["entities"] += state.applied_entities - before
        events: list[Event] = []
        if vehicles:
            events.append(Event("transit.vehicles", "transit:vehicles", {
                "feed_id": feed_id, "feed_ts": feed_ts,
                "vehicles": state.vehicles_snapshot()}))
        for kpi in state.zone_kpis(touched):
            events.append(Event("transit.kpis", f"zone:{kpi.zone_id}",
                                {"feed_id": feed_id, "feed_ts": feed_ts, **kpi.as_dict()}))
        if events:
            try:
                await relay.send(uuid.UUID(tenant_id), events)
                self.stats["events"] += len(events)
            except Exception:
                self.stats["errors"] += 1
                log.exception("transit events not published", extra={"feed_id": feed_id})
        return {"vehicles": len(state.vehicles), "trips": state.trips.trips(),
                "zones": len(touched), "events": len(events)}

    async def vehicles(self, tenant_id: str, feed_id: str,
                       zone_id: str | None = None) -> list[dict[str, Any]]:
        state = await self._state(tenant_id, feed_id, {})
        return state.vehicles_snapshot(zone_id)

    async def zone_kpis(self, tenant_id: str, feed_id: str,
                        zone_ids: list[str]) -> list[dict[str, Any]]:
        state = await self._state(tenant_id, feed_id, {})
        return [k.as_dict() for k in state.zone_kpis(zone_ids)]

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "feeds": len(self.feeds), **self.stats}


@ray.remote
class TransitShard:
    def __init__(self, index: int) -> None:
        self.host = TransitHost(index)

    async def apply(self, tenant_id: str, feed_id: str, settings: dict[str, Any],
                    vehicles: list[Vehicle], trips: TripTable,
                    full_dataset: bool) -> dict[str, int]:
        return await self.host.apply(tenant_id, feed_id, settings, vehicles, trips,
                                     full_dataset)

    async def vehicles(self, tenant_id: str, feed_id: str,
                       zone_id: str | None = None) -> list[dict[str, Any]]:
        return await self.host.vehicles(tenant_id, feed_id, zone_id)

    async def zone_kpis(self, tenant_id: str, feed_id: str,
                        zone_ids: list[str]) -> list[dict[str, Any]]:
        return await self.host.zone_kpis(tenant_id, feed_id, zone_ids)

    async def info(self) -> dict[str, Any]:
        return {**self.host.info(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid()}


_handles: dict[tuple[str, str], Any] = {}


def transit_shard(index: int) -> Any:
    """The named, detached shard (created on first use, restarted by Ray), like the
    registry's stream and zone shards."""
    s = get_settings()
    name = f"transit-shard-{index}"
    key = (s.ray.namespace, name)
    if key not in _handles:
        _handles[key] = TransitShard.options(  # type: ignore[attr-defined]  # a Ray actor class
            name=name, namespace=s.ray.namespace, get_if_exists=True, lifetime="detached",
            max_restarts=-1, max_task_retries=-1, num_cpus=s.actors.shard_num_cpus,
            max_concurrency=64).remote(index)
    return _handles[key]


def transit_shard_for(feed_id: uuid.UUID) -> Any:
    return transit_shard(registry.owner(feed_id.bytes, TRANSIT_SHARDS))
