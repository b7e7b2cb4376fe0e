"""ZoneHost: the ZoneEntities of one shard, their rebuild, rules and events.

What it guarantees:
- Member deltas arrive after their readings are committed; applying one twice changes
  nothing (ZoneState orders deltas by stream time and version).
- A zone is activated on its first delta or state query: from its Redis checkpoint, or
  rebuilt from PostgreSQL (each member stream's latest reading, hourly aggregates for
  the zone forecast) when there is none.
- Zone rules (`zone_id` set) are evaluated on the zone's aggregates after each batch;
  their transitions open/update/resolve incidents like stream rules do.
- `zone.state` events are published at most once per interval per zone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import text

from civitas_ray.alerts import effects
from civitas_ray.alerts import service as alerts
from civitas_ray.alerts.effects import Firing
from civitas_ray.alerts.engine import RuleEvaluator
from civitas_ray.alerts.models import AlertRule
from civitas_ray.config import get_settings
from civitas_ray.db.session import tenant_session
from civitas_ray.realtime.events import Event
from civitas_ray.runtime.entities import checkpoint_and_passivate, read_checkpoints
from civitas_ray.streams.state import StreamDelta
from civitas_ray.streams.timebase import now_us
from civitas_ray.zones.state import LearnedForecast, ZoneConfig, ZoneState

log = logging.getLogger(__name__)

ZoneKey = tuple[uuid.UUID, uuid.UUID]  # tenant, zone


def checkpoint_key(key: ZoneKey) -> str:
    return f"civitas:ckpt:zone:{key[0]}:{key[1]}"


@dataclass(slots=True)
class ZoneEntity:
    state: ZoneState
    last_active: float = field(default_factory=time.monotonic)
    last_event: float = 0.0
    last_checkpoint: float = field(default_factory=time.monotonic)
    dirty: bool = False


class ZoneHost:
    def __init__(self, index: int = 0, n_shards: int = 1) -> None:
        self.index = index
        self.n_shards = n_shards
        self.settings = get_settings()
        self.entities: dict[ZoneKey, ZoneEntity] = {}
        self.evaluators: dict[tuple[str, ZoneKey, str], tuple[RuleEvaluator, Any]] = {}
        self._rules: dict[uuid.UUID, tuple[float, list[AlertRule]]] = {}
        self._activating: dict[ZoneKey, asyncio.Future[ZoneEntity | None]] = {}
        self._load_slots = asyncio.Semaphore(4)
        # Batches are applied concurrently, but their side effects (alert rows, incidents,
        # events) are written one batch at a time, in the order they were evaluated.
        self._effects_lock = asyncio.Lock()
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self.stats: dict[str, int] = {"batches": 0, "deltas": 0, "activations": 0,
                                      "events": 0, "errors": 0, "learned_forecasts": 0,
                                      "learned_errors": 0}
        self._learned_at = 0.0

    async def _zone_rules(self, tenant_id: uuid.UUID, zone_id: uuid.UUID) -> list[AlertRule]:
        ttl = self.settings.actors.rules_ttl_s
        cached = self._rules.get(tenant_id)
        if cached is None or time.monotonic() - cached[0] > ttl:
            lock = self._locks.setdefault(tenant_id, asyncio.Lock())
            async with lock:  # one reload per tenant, however many batches want it
                cached = self._rules.get(tenant_id)
                if cached is None or time.monotonic() - cached[0] > ttl:
                    async with tenant_session(tenant_id) as s:
                        rules = [r for r in await alerts.active_rules(session=s) if r.zone_id]
                    cached = self._rules[tenant_id] = (time.monotonic(), rules)
        return [r for r in cached[1] if r.zone_id == zone_id]

    def invalidate_rules(self, tenant_id: uuid.UUID | None = None) -> None:
        if tenant_id is None:
            self._rules.clear()
        else:
            self._rules.pop(tenant_id, None)

    async def _activate(self, key: ZoneKey, *, must_exist: bool) -> ZoneEntity | None:
        entity = self.entities.get(key)
        if entity is not None:
            return entity
        pending = self._activating.get(key)
        if pending is not None:
            return await pending
        fut: asyncio.Future[ZoneEntity | None] = asyncio.get_running_loop().create_future()
        self._activating[key] = fut
        try:
            async with self._load_slots:  # bounded: a burst of zones cannot drain the pools
                loaded = await self._load(key, must_exist=must_exist)
            if loaded is not None:
                self.entities[key] = loaded
            fut.set_result(loaded)
            return loaded
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            self._activating.pop(key, None)

    async def _load(self, key: ZoneKey, *, must_exist: bool) -> ZoneEntity | None:
        tenant_id, zone_id = key
        async with tenant_session(tenant_id) as s:
            tz = (await s.execute(text(
                "select coalesce(t.settings->>'timezone', 'UTC') from zone z join tenant t "
                "on t.id = z.tenant_id where z.id = :z and z.deleted_at is null"),
                {"z": zone_id})).scalar()
            if tz is None and must_exist:
                return None
            [raw] = await read_checkpoints([checkpoint_key(key)])
            if raw:
                try:
                    state = ZoneState.restore(orjson.loads(raw))
                    self.stats["activations"] += 1
                    return ZoneEntity(state=state)
                except (KeyError, ValueError, TypeError):
                    log.warning("unusable zone checkpoint", extra={"zone": str(zone_id)})
            # Latest reading of every member stream, and hourly history per metric.
            latest = (await s.execute(text(
                "select distinct on (t.asset_id, t.metric) t.asset_id, t.metric, t.ts, t.value "
                "from telemetry t join asset a on a.id = t.asset_id "
                "where a.zone_id = :z and a.deleted_at is null and t.ts > now() - interval '1 day' "
                "order by t.asset_id, t.metric, t.ts desc"), {"z": zone_id})).all()
            # History per metric in the zone forecaster's own terms: per bucket, each
            # member's mean, then their sum (or mean) across members.
            cfg = ZoneConfig(tz=tz or "UTC")
            history = (await s.execute(text(
                "select metric, b, sum(v), avg(v) from ("
                " select t.metric, time_bucket(make_interval(secs => :bs), t.ts) as b,"
                " t.asset_id, avg(t.value) as v from telemetry t join asset a"
                " on a.id = t.asset_id where a.zone_id = :z"
                " and t.ts > now() - make_interval(days => :d) group by 1, 2, 3) m"
                " group by 1, 2 order by 1, 2"),
                {"z": zone_id, "bs": cfg.bucket_s,
                 "d": min(self.settings.actors.rebuild_history_days, 28)})).all()
        state = ZoneState(str(tenant_id), str(zone_id), config=cfg)
        state.apply([{"asset_id": str(r[0]), "metric": r[1],
                      "ts_us": int(r[2].timestamp() * 1_000_000), "value": float(r[3])}
                     for r in latest])
        by_metric: dict[str, list[tuple[int, float]]] = {}
        for metric, bucket, total, mean in history:
            value = total if cfg.aggregate_for(metric) == "sum" else mean
            by_metric.setdefault(metric, []).append((int(bucket.timestamp() * 1e6), float(value)))
        for metric, points in by_metric.items():
            arr = np.asarray(points)
            state.seed_forecast(metric, arr[:, 0].astype(np.int64), arr[:, 1])
        self.stats["activations"] += 1
        return ZoneEntity(state=state)

    async def apply(self, items: list[tuple[uuid.UUID, uuid.UUID, StreamDelta]]) -> int:
        self.stats["batches"] += 1
        self.stats["deltas"] += len(items)
        by_zone: dict[ZoneKey, list[StreamDelta]] = {}
        for tenant_id, zone_id, delta in items:
            by_zone.setdefault((tenant_id, zone_id), []).append(delta)
        await asyncio.gather(*(self._activate(k, must_exist=False)
                               for k in by_zone if k not in self.entities))
        # Fetched first, so that the evaluation below never suspends (see StreamHost).
        rules = {key: await self._zone_rules(*key) for key in by_zone}
        now = now_us()
        events: dict[uuid.UUID, list[Event]] = {}
        firings: list[Firing] = []
        for key, deltas in by_zone.items():
            entity = self.entities.get(key)
            if entity is None:
                continue
            zd = entity.state.apply(deltas)
            entity.last_active = time.monotonic()
            if not zd.changed:
                continue
            entity.dirty = True
            firings.extend(self._evaluate(key, entity, rules[key], now))
            self._zone_event(key, entity, now, events, urgent=bool(
                zd.flags_raised or zd.flags_cleared or zd.anomalies))
        await self._effects(firings, events)
        return len(by_zone)

    async def _effects(self, firings: list[Firing],
                       events: dict[uuid.UUID, list[Event]]) -> None:
        """Transitions in evaluation order (see StreamHost._effects), then publish."""
        if not firings:
            await effects.publish_all(events, self.stats)
            return
        async with self._effects_lock:
            await effects.apply(firings, events, self.stats)
            await effects.publish_all(events, self.stats)

    def _evaluate(self, key: ZoneKey, entity: ZoneEntity, rules: list[AlertRule],
                  now_us: int) -> list[Firing]:
        out = []
        for rule in rules:
            metrics = [rule.metric] if rule.metric else entity.state.metrics()
            for metric in metrics:
                ev = self._evaluator(key, metric, rule)
                horizon = float(rule.condition.get("within_seconds", 0)) \
                    if rule.condition.get("type") == "forecast" else 0.0
                tr = ev.observe(entity.state.rule_input(metric, now_us, forecast_s=horizon),
                                now_us=now_us)
                if tr is not None:
                    out.append(Firing(tenant_id=key[0], transition=tr, rule=rule,
                                      asset_id=None, zone_id=key[1], metric=metric,
                                      subject=f"zone:{key[1]}/{metric}"))
        return out

    def _evaluator(self, key: ZoneKey, metric: str, rule: AlertRule) -> RuleEvaluator:
        k = (str(rule.id), key, metric)
        held = self.evaluators.get(k)
        if held is not None and held[1] == rule.updated_at:
            return held[0]
        ev = RuleEvaluator(rule_id=str(rule.id), subject=f"zone:{key[1]}/{metric}",
                           condition=rule.condition, severity=rule.severity,  # type: ignore[arg-type]
                           for_seconds=float(rule.for_seconds))
        if held is not None:
            ev.state, ev.started_at_us = held[0].state, held[0].started_at_us
        self.evaluators[k] = (ev, rule.updated_at)
        return ev

    def _zone_event(self, key: ZoneKey, entity: ZoneEntity, now_us: int,
                    events: dict[uuid.UUID, list[Event]], *, urgent: bool) -> None:
        now = time.monotonic()
        if not urgent and now - entity.last_event < self.settings.actors.zone_event_min_interval_s:
            return
        entity.last_event = now
        snap = entity.state.snapshot(now_us, horizon_s=0)
        events.setdefault(key[0], []).append(Event(
            type="zone.state", channel=f"zone:{key[1]}",
            data={"zone_id": str(key[1]), "kpis": snap.get("kpis"),
                  "metrics": {m: v.get("latest") for m, v in (snap.get("metrics") or {}).items()}}))

    async def snapshot(self, tenant_id: uuid.UUID, zone_id: uuid.UUID, *,
                       horizon_s: float = 3600.0, members: bool = True,
                       ) -> dict[str, Any] | None:
        entity = await self._activate((tenant_id, zone_id), must_exist=True)
        if entity is None:
            return None
        entity.last_active = time.monotonic()
        return entity.state.snapshot(now_us(), horizon_s=horizon_s, members=members)

    async def housekeeping(self, *, force_checkpoint: bool = False) -> dict[str, int]:
        a = self.settings.actors
        now = time.monotonic()
        t_us = now_us()
        firings: list[Firing] = []
        for (rule_id, key, metric), (ev, _) in list(self.evaluators.items()):
            tr = ev.tick(t_us)
            if tr is None:
                continue
            rule = next((r for r in await self._zone_rules(*key) if str(r.id) == rule_id), None)
            if rule is not None:
                firings.append(Firing(tenant_id=key[0], transition=tr, rule=rule,
                                      asset_id=None, zone_id=key[1], metric=metric,
                                      subject=f"zone:{key[1]}/{metric}"))
        events: dict[uuid.UUID, list[Event]] = {}
        await self._effects(firings, events)
        if self.entities and now - self._learned_at > a.zone_model_refresh_s:
            self._learned_at = now
            try:
                await self.refresh_learned()
            except Exception:
                self.stats["learned_errors"] += 1
                log.exception("zone model forecasts failed")
        return await checkpoint_and_passivate(
            self.entities, self.evaluators, key_of=checkpoint_key, now=now, settings=a,
            ttl_s=7 * 86400, force=force_checkpoint)

    async def refresh_learned(self, horizon_s: float = 24 * 3600.0) -> int:
        """Ask the production zone models (Forecaster) for the next `horizon_s` of every
        active zone that has one; zone rules and snapshots use them (1 to 24 h)."""
        if not self.entities:
            return 0
        async with tenant_session(None, system=True) as s:
            rows = (await s.execute(text(
                "select tenant_id, subject_key from model_version where stage = 'production' "
                "and subject_key like 'zone:%'"))).all()
        wanted: list[tuple[ZoneKey, str]] = []
        for tenant_id, key in rows:
            _, zone, metric = str(key).split(":", 2)
            zk = (tenant_id, uuid.UUID(zone))
            if zk in self.entities:
                wanted.append((zk, metric))
        if not wanted:
            return 0
        from datetime import timedelta

        from civitas_ray.ml import forecasts
        from civitas_ray.ml.data import Subject

        done = 0
        for zk, metric in wanted:
            try:
                async with tenant_session(zk[0]) as s:
                    out = await forecasts.forecast(
                        s, zk[0], Subject(None, zk[1], metric),
                        horizon=timedelta(seconds=horizon_s))
            except Exception as exc:
                self.stats["learned_errors"] += 1
                log.warning("zone model forecast failed",
                            extra={"zone": str(zk[1]), "metric": metric, "error": repr(exc)})
                continue
            pts = out["points"]
            entity = self.entities.get(zk)
            if entity is None or not pts:
                continue
            entity.state.set_learned(metric, LearnedForecast(
                model=str(out["model"]), version=int(out["version"]),
                version_id=str(out["model_version_id"]), made_at_us=now_us(),
                ts_us=np.asarray([int(p["ts"].timestamp() * 1_000_000) for p in pts],
                                 dtype=np.int64),
                mean=np.asarray([p["value"] for p in pts], dtype=np.float64),
                lower=np.asarray([p["lower"] for p in pts], dtype=np.float64),
                upper=np.asarray([p["upper"] for p in pts], dtype=np.float64),
                served_by=str(out["served_by"])))
            done += 1
        self.stats["learned_forecasts"] += done
        return done

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "shards": self.n_shards, "entities": len(self.entities),
                "evaluators": len(self.evaluators), **self.stats}
