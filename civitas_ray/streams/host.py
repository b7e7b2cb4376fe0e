"""StreamHost: the StreamEntities of one shard, their I/O and their side effects.

The Ray actor `StreamShard` is a thin shell over this class, so the whole behaviour is
testable against the real PostgreSQL and Redis without Ray. What it guarantees:
- Readings arrive here only after they are committed; applying a batch twice changes
  nothing (StreamState ignores timestamps it has applied).
- An entity is activated on its first batch or state query: from its Redis checkpoint
  plus the rows stored after it, or from the stream's recent rows in PostgreSQL alone.
  Idle entities are checkpointed and passivated; live ones are checkpointed periodically.
- Rules on a stream are evaluated on every batch; a firing or recovery is written
  (alert, incident) in one tenant transaction and its events are published after it.
- Zone deltas (latest value, anomaly, flags per stream) go to the ZoneShards in one call
  per shard per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
from sqlalchemy import text

from civitas_ray.alerts import effects
from civitas_ray.alerts import service as alerts
from civitas_ray.alerts.effects import Firing
from civitas_ray.alerts.engine import AlertTransition, RuleEvaluator
from civitas_ray.alerts.models import AlertRule
from civitas_ray.config import get_settings
from civitas_ray.db.session import tenant_session
from civitas_ray.realtime.events import Event
from civitas_ray.runtime.entities import checkpoint_and_passivate, read_checkpoints
from civitas_ray.streams.quality import MetricSpec
from civitas_ray.streams.state import StreamConfig, StreamDelta, StreamState
from civitas_ray.streams.timebase import now_us

log = logging.getLogger(__name__)

StreamKey = tuple[uuid.UUID, uuid.UUID, str]  # tenant, asset, metric
ZoneItem = tuple[uuid.UUID, uuid.UUID, StreamDelta]  # tenant, zone, member delta
ZoneSink = Callable[[list[ZoneItem]], None]


def checkpoint_key(key: StreamKey) -> str:
    return f"civitas:ckpt:stream:{key[0]}:{key[1]}:{key[2]}"


@dataclass(slots=True)
class AssetInfo:
    zone_id: uuid.UUID | None
    specs: dict[str, Any]
    loaded_at: float


@dataclass(slots=True)
class Entity:
    state: StreamState
    zone_id: uuid.UUID | None
    last_active: float = field(default_factory=time.monotonic)
    last_event: float = 0.0
    last_checkpoint: float = field(default_factory=time.monotonic)
    dirty: bool = False
    rolled_until_us: int = 0  # `telemetry.rollup` published for buckets before this


@dataclass(slots=True)
class TenantRules:
    by_stream: dict[tuple[uuid.UUID, str | None], list[AlertRule]]
    loaded_at: float


class StreamHost:
    def __init__(self, index: int = 0, n_shards: int = 1, *,
                 zone_sink: ZoneSink | None = None) -> None:
        self.index = index
        self.n_shards = n_shards
        self.settings = get_settings()
        self.entities: dict[StreamKey, Entity] = {}
        self.evaluators: dict[tuple[str, StreamKey], tuple[RuleEvaluator, Any]] = {}
        self._assets: dict[tuple[uuid.UUID, uuid.UUID], AssetInfo] = {}
        self._rules: dict[uuid.UUID, TenantRules] = {}
        self._activating: dict[StreamKey, asyncio.Future[Entity]] = {}
        self._load_slots = asyncio.Semaphore(4)
        # Batches are applied concurrently, but their side effects (alert rows, incidents,
        # events) are written one batch at a time, in the order they were evaluated.
        self._effects_lock = asyncio.Lock()
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._zone_sink = zone_sink
        self.stats = {"batches": 0, "readings": 0, "activations": 0, "rebuilt_rows": 0,
                      "passivations": 0, "alerts_fired": 0, "alerts_resolved": 0,
                      "events": 0, "errors": 0}

    # ---- lookups ---------------------------------------------------------------------
    def _tenant_lock(self, tenant_id: uuid.UUID) -> asyncio.Lock:
        lock = self._locks.get(tenant_id)
        if lock is None:
            lock = self._locks[tenant_id] = asyncio.Lock()
        return lock

    async def _asset_infos(self, tenant_id: uuid.UUID,
                           asset_ids: list[uuid.UUID]) -> dict[uuid.UUID, AssetInfo]:
        def stale() -> list[uuid.UUID]:
            now = time.monotonic()
            return [a for a in asset_ids if (i := self._assets.get((tenant_id, a))) is None
                    or now - i.loaded_at > 60]

        if stale():
            # One lookup per tenant at a time: concurrent batches wait for it instead of
            # each opening a session (the pool is small, batches are many).
            async with self._tenant_lock(tenant_id):
                missing = stale()
                if missing:
                    async with tenant_session(tenant_id) as s:
                        rows = (await s.execute(text(
                            "select id, zone_id, metrics from asset where id = any(:ids)"),
                            {"ids": missing})).all()
                    now = time.monotonic()
                    for a in missing:  # deleted or unknown: zone-less and spec-less
                        self._assets[(tenant_id, a)] = AssetInfo(None, {}, now)
                    for r in rows:
                        self._assets[(tenant_id, r[0])] = AssetInfo(r[1], r[2] or {}, now)
        return {a: self._assets[(tenant_id, a)] for a in asset_ids}

    async def _tenant_rules(self, tenant_id: uuid.UUID) -> TenantRules:
        ttl = self.settings.actors.rules_ttl_s
        cached = self._rules.get(tenant_id)
        if cached and time.monotonic() - cached.loaded_at < ttl:
            return cached
        async with self._tenant_lock(tenant_id):
            cached = self._rules.get(tenant_id)
            if cached and time.monotonic() - cached.loaded_at < ttl:
                return cached  # another batch reloaded them while this one waited
            async with tenant_session(tenant_id) as s:
                rules = await alerts.active_rules(session=s)
            by_stream: dict[tuple[uuid.UUID, str | None], list[AlertRule]] = {}
            for r in rules:
                if r.asset_id is not None:
                    by_stream.setdefault((r.asset_id, r.metric), []).append(r)
            fresh = TenantRules(by_stream, time.monotonic())
            self._rules[tenant_id] = fresh
            return fresh

    def invalidate_rules(self, tenant_id: uuid.UUID | None = None) -> None:
        if tenant_id is None:
            self._rules.clear()
        else:
            self._rules.pop(tenant_id, None)

    # ---- activation ------------------------------------------------------------------
    async def _activate(self, key: StreamKey, info: AssetInfo) -> Entity:
        return (await self._activate_many({key: info}))[key]

    async def _activate_many(self, wanted: dict[StreamKey, AssetInfo], *,
                             before: dict[StreamKey, int] | None = None
                             ) -> dict[StreamKey, Entity]:
        """Activate streams in bulk: one MGET and one query per tenant, whatever the count.

        Concurrent callers share the work (a key being loaded is awaited, not reloaded),
        and the number of loads in flight is bounded so a burst of new streams never
        exhausts the Redis or database pools. `before` bounds the rows read per stream:
        a batch that activates its stream is applied afterwards as new readings (rules,
        zone deltas and events see it), not swallowed by the rebuild.
        """
        out: dict[StreamKey, Entity] = {}
        waits: dict[StreamKey, asyncio.Future[Entity]] = {}
        mine: dict[StreamKey, AssetInfo] = {}
        loop = asyncio.get_running_loop()
        for key, info in wanted.items():
            if (entity := self.entities.get(key)) is not None:
                out[key] = entity
            elif (pending := self._activating.get(key)) is not None:
                waits[key] = pending
            else:
                mine[key] = info
                self._activating[key] = loop.create_future()
        if mine:
            try:
                async with self._load_slots:
                    loaded = await self._load_many(mine, before or {})
            except BaseException as exc:
                for key in mine:
                    fut = self._activating.pop(key)
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: waiters see it, nobody logs it as lost
                raise
            for key, entity in loaded.items():
                self.entities[key] = entity
                self._activating.pop(key).set_result(entity)
                out[key] = entity
        for key, fut in waits.items():
            out[key] = await fut
        return out

    async def _load_many(self, wanted: dict[StreamKey, AssetInfo],
                         before: dict[StreamKey, int]) -> dict[StreamKey, Entity]:
        keys = list(wanted)
        raws = await read_checkpoints([checkpoint_key(k) for k in keys])
        checkpoints: dict[StreamKey, dict[str, Any]] = {}
        for key, raw in zip(keys, raws, strict=True):
            if raw:
                try:
                    checkpoints[key] = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    log.warning("unreadable checkpoint", extra={"stream": checkpoint_key(key)})
        rows: dict[StreamKey, list[tuple[datetime, float]]] = {k: [] for k in keys}
        a = self.settings.actors
        by_tenant: dict[uuid.UUID, list[StreamKey]] = {}
        for key in keys:
            by_tenant.setdefault(key[0], []).append(key)
        for tenant_id, tkeys in by_tenant.items():
            since, until = [], []
            for k in tkeys:
                latest = (checkpoints.get(k) or {}).get("latest")
                since.append(datetime.fromtimestamp(latest[0] / 1e6, UTC) if latest else None)
                bound = before.get(k)
                until.append(datetime.fromtimestamp(bound / 1e6, UTC) if bound else None)
            # One plain lower bound for all of them lets the hypertable skip every older
            # chunk at execution (a per-row coalesce would open each chunk per stream,
            # which years of imported history make very slow).
            window_start = datetime.now(UTC) - timedelta(days=a.rebuild_history_days)
            floor = min([window_start, *(t for t in since if t is not None)])
            async with tenant_session(tenant_id) as s:
                # After a checkpoint: every row newer than it. Without: the stream's most
                # recent rows within the history window (enough for the week profile).
                result = await s.execute(text(
                    "select k.a, k.m, r.ts, r.value from unnest(cast(:a as uuid[]), "
                    "cast(:m as text[]), cast(:s as timestamptz[]), cast(:u as timestamptz[])) "
                    "as k(a, m, s, u) cross join lateral (select ts, value from telemetry t "
                    " where t.asset_id = k.a and t.metric = k.m and t.ts > :f "
                    " and t.ts > coalesce(k.s, cast(:w as timestamptz)) "
                    " and (k.u is null or t.ts < k.u) "
                    " order by t.ts desc limit case when k.s is null then :n else 100000 end"
                    ") r"),
                    {"a": [k[1] for k in tkeys], "m": [k[2] for k in tkeys], "s": since,
                     "u": until, "f": floor, "w": window_start,
                     "n": max(a.rebuild_recent_readings, 4096)})
                for asset_id, metric, ts, value in result.all():
                    rows[(tenant_id, asset_id, metric)].append((ts, value))
        out: dict[StreamKey, Entity] = {}
        for key in keys:
            found = sorted(rows[key])
            ts = np.fromiter((int(r[0].timestamp() * 1_000_000) for r in found), np.int64,
                             len(found))
            vals = np.fromiter((r[1] for r in found), np.float64, len(found))
            info = wanted[key]
            spec = MetricSpec.from_dict(info.specs.get(key[2]))
            try:
                state = StreamState.rebuild(ts, vals, asset_id=str(key[1]), metric=key[2],
                                            spec=spec, config=StreamConfig(),
                                            checkpoint=checkpoints.get(key))
            except (KeyError, ValueError, TypeError):
                log.warning("unusable checkpoint, rebuilding from the database",
                            extra={"stream": checkpoint_key(key)})
                state = StreamState.rebuild(ts, vals, asset_id=str(key[1]), metric=key[2],
                                            spec=spec, config=StreamConfig())
            self.stats["activations"] += 1
            self.stats["rebuilt_rows"] += len(found)
            # Rollups start with the live readings, not with the rebuilt history.
            bucket = int(self.settings.actors.rollup_bucket_s * 1_000_000)
            live_from = before.get(key, now_us())
            out[key] = Entity(state=state, zone_id=info.zone_id,
                              rolled_until_us=live_from // bucket * bucket)
        return out

    # ---- the hot path ------------------------------------------------------------------
    async def apply(self, tenant: np.ndarray, asset: np.ndarray, codes: np.ndarray,
                    names: list[str], ts_us: np.ndarray, values: np.ndarray) -> int:
        """Apply committed readings; returns the number of streams touched."""
        self.stats["batches"] += 1
        self.stats["readings"] += int(ts_us.size)
        key = np.empty(ts_us.size, dtype=[("t", "V16"), ("a", "V16"), ("m", "<i4")])
        key["t"], key["a"], key["m"] = tenant, asset, codes
        uniq, inverse = np.unique(key, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
        groups: list[tuple[StreamKey, np.ndarray]] = []
        for g, k in enumerate(uniq):
            sk = (uuid.UUID(bytes=bytes(k["t"])), uuid.UUID(bytes=bytes(k["a"])),
                  names[int(k["m"])])
            groups.append((sk, order[bounds[g]:bounds[g + 1]]))
        zone_deltas, events, transitions = await self._evaluate_batch(groups, ts_us, values)
        if zone_deltas and self._zone_sink is not None:
            self._zone_sink(zone_deltas)
        await self._effects(transitions, events)
        return len(groups)

    async def _evaluate_batch(self, groups: list[tuple[StreamKey, np.ndarray]],
                              ts_us: np.ndarray, values: np.ndarray,
                              ) -> tuple[list[ZoneItem], dict[uuid.UUID, list[Event]],
                                         list[Firing]]:
        """Apply each stream's readings; collect zone deltas, events and rule firings."""
        by_tenant: dict[uuid.UUID, list[uuid.UUID]] = {}
        for (t, a, _), _sel in groups:
            by_tenant.setdefault(t, []).append(a)
        infos: dict[tuple[uuid.UUID, uuid.UUID], AssetInfo] = {}
        for t, assets in by_tenant.items():
            for a, info in (await self._asset_infos(t, list(set(assets)))).items():
                infos[(t, a)] = info
        # Activate every new stream of the batch concurrently, then apply in order.
        fresh = {sk: sel for sk, sel in groups if sk not in self.entities}
        await self._activate_many({sk: infos[(sk[0], sk[1])] for sk in fresh},
                                  before={sk: int(ts_us[sel].min()) for sk, sel in fresh.items()})
        # Everything the evaluation needs is fetched first: the loop below never
        # suspends, so a batch is evaluated whole, before any later one.
        tenant_rules = {t: await self._tenant_rules(t) for t in by_tenant}
        now = now_us()
        zone_deltas: list[ZoneItem] = []
        events: dict[uuid.UUID, list[Event]] = {}
        transitions: list[Firing] = []
        for sk, sel in groups:
            entity = self.entities[sk]
            entity.last_active = time.monotonic()
            info = infos[(sk[0], sk[1])]
            entity.zone_id = info.zone_id
            rules = self._stream_rules(tenant_rules[sk[0]], sk)
            if rules and sel.size > 1:
                # A stream with rules sees every reading, in time order: a crossing and
                # its recovery committed in one batch must both count.
                steps = [sel[i:i + 1] for i in np.argsort(ts_us[sel], kind="stable")]
            else:
                steps = [sel]
            for step in steps:
                delta = entity.state.apply(ts_us[step], values[step])
                if not delta.changed:
                    continue
                entity.dirty = True
                if info.zone_id is not None:
                    zone_deltas.append(self._zone_delta(sk, info.zone_id, delta))
                self._stream_event(sk, entity, delta, events)
                if rules:
                    transitions.extend(self._evaluate_rules(sk, entity, rules, now))
        return zone_deltas, events, transitions

    @staticmethod
    def _zone_delta(sk: StreamKey, zone_id: uuid.UUID, d: StreamDelta) -> ZoneItem:
        return (sk[0], zone_id, d)

    def _stream_event(self, sk: StreamKey, entity: Entity, delta: StreamDelta,
                      events: dict[uuid.UUID, list[Event]]) -> None:
        """At most one update per stream per interval, at once when flags or anomaly move."""
        urgent = bool(delta.raised or delta.cleared or delta.is_anomaly)
        now = time.monotonic()
        interval = self.settings.actors.stream_event_min_interval_s
        if not urgent and now - entity.last_event < interval:
            return
        entity.last_event = now
        events.setdefault(sk[0], []).append(
            Event(type="stream.update", channel=f"stream:{sk[1]}/{sk[2]}", data=delta.to_dict()))

    async def _effects(self, firings: list[Firing],
                       events: dict[uuid.UUID, list[Event]]) -> None:
        """Write rule transitions, then publish; transitions in evaluation order.

        Only batches with transitions queue on the (FIFO) lock, taken with no suspension
        after their evaluation: a recovery can never be written before the firing it
        ends, and plain state updates never wait behind alert writes.
        """
        if not firings:
            await effects.publish_all(events, self.stats)
            return
        async with self._effects_lock:
            await effects.apply(firings, events, self.stats)
            await effects.publish_all(events, self.stats)

    @staticmethod
    def _stream_rules(rules: TenantRules, sk: StreamKey) -> list[AlertRule]:
        return [*rules.by_stream.get((sk[1], sk[2]), []),
                *rules.by_stream.get((sk[1], None), [])]

    async def _rules_for(self, sk: StreamKey) -> list[AlertRule]:
        return self._stream_rules(await self._tenant_rules(sk[0]), sk)

    def _evaluate_rules(self, sk: StreamKey, entity: Entity, rules: list[AlertRule],
                        now_us: int) -> list[Firing]:
        out = []
        for rule in rules:
            ev = self._evaluator(sk, rule)
            horizon = float(rule.condition.get("within_seconds", 0)) \
                if rule.condition.get("type") == "forecast" else 0.0
            inp = entity.state.rule_input(now_us, forecast_s=horizon)
            transition = ev.observe(inp)  # ignores an observation it has already seen
            if transition is not None:
                out.append(self._firing(sk, transition, rule))
        return out

    def _firing(self, sk: StreamKey, tr: AlertTransition, rule: AlertRule) -> Firing:
        entity = self.entities.get(sk)
        return Firing(tenant_id=sk[0], transition=tr, rule=rule, asset_id=sk[1],
                      zone_id=entity.zone_id if entity else None, metric=sk[2],
                      subject=f"{sk[1]}/{sk[2]}")

    def _evaluator(self, sk: StreamKey, rule: AlertRule) -> RuleEvaluator:
        key = (str(rule.id), sk)
        held = self.evaluators.get(key)
        if held is not None and held[1] == rule.updated_at:
            return held[0]
        ev = RuleEvaluator(rule_id=str(rule.id), subject=f"{sk[1]}/{sk[2]}",
                           condition=rule.condition, severity=rule.severity,  # type: ignore[arg-type]
                           for_seconds=float(rule.for_seconds))
        if held is not None:  # a changed rule keeps its firing state across the edit
            ev.state, ev.started_at_us = held[0].state, held[0].started_at_us
        self.evaluators[key] = (ev, rule.updated_at)
        return ev

    # ---- queries and housekeeping ------------------------------------------------------
    async def snapshot(self, tenant_id: uuid.UUID, asset_id: uuid.UUID, metric: str, *,
                       window: int = 100, horizon_s: float = 3600.0) -> dict[str, Any] | None:
        sk = (tenant_id, asset_id, metric)
        entity = self.entities.get(sk)
        if entity is None:
            info = (await self._asset_infos(tenant_id, [asset_id]))[asset_id]
            if info.zone_id is None and not info.specs and not await self._has_rows(sk):
                return None
            entity = await self._activate(sk, info)
        entity.last_active = time.monotonic()
        if entity.state.latest is None:
            return None
        return entity.state.snapshot(now_us(), window=window, horizon_s=horizon_s)

    async def _has_rows(self, sk: StreamKey) -> bool:
        async with tenant_session(sk[0]) as s:
            return (await s.execute(text(
                "select 1 from telemetry where asset_id = :a and metric = :m limit 1"),
                {"a": sk[1], "m": sk[2]})).first() is not None

    async def housekeeping(self, *, force_checkpoint: bool = False) -> dict[str, int]:
        """Gap checks, rule hold timers, checkpoints and passivation of idle entities."""
        a = self.settings.actors
        now = time.monotonic()
        t_us = now_us()
        events: dict[uuid.UUID, list[Event]] = {}
        transitions: list[Firing] = []
        tenant_rules = {t: await self._tenant_rules(t) for t in {k[0] for k in self.entities}}
        for sk, entity in list(self.entities.items()):
            self._rollups(sk, entity, t_us, events)
            delta = entity.state.check_gap(t_us)
            if delta.raised or delta.cleared:
                entity.dirty = True
                self._stream_event(sk, entity, delta, events)
                rules = self._stream_rules(tenant_rules[sk[0]], sk)
                transitions.extend(self._evaluate_rules(sk, entity, rules, t_us))
        for (rule_id, sk), (ev, _) in list(self.evaluators.items()):
            tr = ev.tick(t_us)
            if tr is not None and sk in self.entities and sk[0] in tenant_rules:
                rule = next((r for rs in tenant_rules[sk[0]].by_stream.values() for r in rs
                             if str(r.id) == rule_id), None)
                if rule is not None:
                    transitions.append(self._firing(sk, tr, rule))
        await self._effects(transitions, events)
        done = await checkpoint_and_passivate(
            self.entities, self.evaluators, key_of=checkpoint_key, now=now, settings=a,
            ttl_s=int(a.rebuild_history_days * 86400), force=force_checkpoint)
        self.stats["passivations"] += done["passivated"]
        return done

    def _rollups(self, sk: StreamKey, entity: Entity, now_us: int,
                 events: dict[uuid.UUID, list[Event]]) -> None:
        """One `telemetry.rollup` event per stream per closed bucket (count/avg/min/max/last)."""
        bucket = int(self.settings.actors.rollup_bucket_s * 1_000_000)
        closed = now_us // bucket * bucket
        if closed <= entity.rolled_until_us:
            return
        ts, vals = entity.state.window()
        sel = (ts >= entity.rolled_until_us) & (ts < closed)
        entity.rolled_until_us = closed
        if not sel.any():
            return
        t, v = ts[sel], vals[sel]
        keys = t // bucket * bucket
        for b in np.unique(keys):
            part = v[keys == b]
            events.setdefault(sk[0], []).append(Event(
                type="telemetry.rollup", channel=f"stream:{sk[1]}/{sk[2]}", data={
                    "asset_id": str(sk[1]), "metric": sk[2],
                    "bucket": datetime.fromtimestamp(int(b) / 1e6, UTC).isoformat(),
                    "seconds": bucket // 1_000_000, "count": int(part.size),
                    "avg": float(part.mean()), "min": float(part.min()),
                    "max": float(part.max()), "last": float(part[-1])}))

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "shards": self.n_shards, "entities": len(self.entities),
                "evaluators": len(self.evaluators), **self.stats}

