"""The MQTT ingest bridge: shared subscriptions in, group-committed readings out, PUBACK last.

Guarantees (docs/mqtt.md):
- A QoS 1 message is acknowledged only after its accepted readings are committed by
  the shared ingest path (`Ingestor.ingest`), or after it was judged unusable (bad
  topic, bad JSON, unknown tenant: acked, counted, reported), never before.
- Nothing unacknowledged is lost: sessions are persistent (fixed client ids,
  clean start off, a session expiry), so the broker resends what a stopped or crashed
  bridge never acked. A resent reading is stored once: the writer drops rows already
  stored.
- Flow control: the broker sends a connection at most `receive_maximum` unacked
  messages (MQTT v5 Receive Maximum). When the database falls behind, batches wait
  and retry, acks stop, and the backlog stays at the broker, not in this process.
- One bad message never holds back the others: it is rejected alone.

Many messages make one `Ingestor.ingest` call per tenant (collected for a few ms or up
to `batch_max_messages`), and batches overlap so parsing runs while the writer commits.
Per-message work is kept small (bench/mqtt_ingest.py): single-reading messages of a
batch are parsed together into columns, the PUBACKs a commit releases go out as one
write, and paho reads the socket in large chunks (paho_ext).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiomqtt
import asyncpg
import numpy as np
import orjson
import sqlalchemy.exc
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from civitas_ray.config import MqttBridgeSettings, Settings, get_settings
from civitas_ray.db.session import tenant_session
from civitas_ray.feeds.signals import parse_signal_message
from civitas_ray.mqtt import health, paho_ext
from civitas_ray.mqtt.state import (
    AckWindow,
    BridgeStats,
    ConnectionState,
    Delivery,
    RateLimit,
    backoff_delay,
)
from civitas_ray.mqtt.topics import Route, TopicError, parse_topic, subscriptions
from civitas_ray.telemetry.ingest import Ingestor, IngestOutcome
from civitas_ray.telemetry.parse import (
    ParsedReadings,
    PayloadError,
    parse_json_batch,
    parse_readings,
    parse_senml,
)
from civitas_ray.telemetry.writer import Backpressure
from civitas_ray.tenants import service as tenants

log = logging.getLogger(__name__)
T = TypeVar("T")

# Worth retrying: the database is busy, away or restarting. Anything else is a bug or
# a poison message, and is isolated message by message instead of retried forever.
TRANSIENT: tuple[type[BaseException], ...] = (
    Backpressure, OSError, ConnectionError, TimeoutError,
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
    sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError,
)
_ROUTE_CACHE_MAX = 100_000


class _Link:
    """One MQTT connection (one attempt); its acks are valid on it alone."""

    __slots__ = ("alive", "client", "consumer", "flushing", "outbox", "window")

    def __init__(self, consumer: _Consumer, client: aiomqtt.Client) -> None:
        self.consumer = consumer
        self.client = client
        self.window = AckWindow()
        self.alive = False
        self.outbox: list[Delivery] = []  # committed, in order, PUBACK not yet queued
        self.flushing = False


@dataclass(slots=True)
class _Consumer:
    index: int
    state: ConnectionState
    link: _Link | None = None


@dataclass(slots=True)
class _Item:
    link: _Link
    delivery: Delivery | None  # None for QoS 0: nothing to acknowledge
    topic: bytes
    payload: bytes
    received_at: float
    route: Route | None = None

    @property
    def topic_text(self) -> str:
        return self.topic.decode(errors="replace")[:200]


@dataclass(slots=True)
class _Part:
    """The readings of one message, or of a run of single-reading messages parsed
    together; `sizes` says how many readings (batch indexes) each message had."""

    items: list[_Item]
    parsed: ParsedReadings
    sizes: list[int]


class _Abandoned(Exception):
    """Every connection that delivered these messages is gone: the broker resends them."""


class TenantResolver:
    """Tenant slug -> id, cached; unknown slugs are cached too, for less time."""

    def __init__(self, *, ttl_s: float, unknown_ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl = ttl_s
        self._unknown_ttl = unknown_ttl_s
        self._max = max_entries
        self._cache: dict[str, tuple[uuid.UUID | None, float]] = {}

    async def resolve(self, slug: str) -> uuid.UUID | None:
        now = time.monotonic()
        hit = self._cache.get(slug)
        if hit is not None and now < hit[1]:
            return hit[0]
        async with tenant_session(None, system=True) as session:
            tenant = await tenants.get_by_slug(session=session, slug=slug)
        tenant_id = tenant.id if tenant is not None else None
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[slug] = (tenant_id, now + (self._ttl if tenant_id else self._unknown_ttl))
        return tenant_id


def connect_properties(s: MqttBridgeSettings) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = s.receive_maximum
    props.SessionExpiryInterval = s.session_expiry_s
    return props


def _keep(parsed: ParsedReadings, keep: np.ndarray, reason: str) -> ParsedReadings:
    """The readings where `keep` holds; the others become rejections with `reason`."""
    idx = np.flatnonzero(keep)
    dropped = [(int(parsed.index[i]), reason) for i in np.flatnonzero(~keep)]
    return ParsedReadings(
        index=parsed.index[idx], asset_ref=[parsed.asset_ref[i] for i in idx],
        metric=[parsed.metric[i] for i in idx], ts_us=parsed.ts_us[idx],
        value=parsed.value[idx], quality=parsed.quality[idx],
        rejected=parsed.rejected + dropped, total=parsed.total)


def merge(parts: Sequence[ParsedReadings]) -> tuple[ParsedReadings, np.ndarray]:
    """One ParsedReadings for many messages, and where each message's readings start.

    Indexes become batch-wide (message start + index in the message), so a rejection
    returned by the ingest path maps back to its message and reading.
    """
    totals = np.fromiter((p.total for p in parts), np.int64, len(parts))
    starts = np.concatenate(([0], np.cumsum(totals)[:-1])).astype(np.int64)
    if len(parts) == 1:
        return parts[0], starts
    asset_ref: list[str] = []
    metric: list[str] = []
    rejected: list[tuple[int, str]] = []
    for p, start in zip(parts, starts.tolist(), strict=True):
        asset_ref += p.asset_ref
        metric += p.metric
        rejected += [(start + i, r) for i, r in p.rejected]
    merged = ParsedReadings(
        index=np.concatenate([p.index.astype(np.int64) + s for p, s in zip(parts, starts,
                                                                           strict=True)]),
        asset_ref=asset_ref, metric=metric,
        ts_us=np.concatenate([p.ts_us for p in parts]),
        value=np.concatenate([p.value for p in parts]),
        quality=np.concatenate([p.quality for p in parts]),
        rejected=rejected, total=int(totals.sum()))
    return merged, starts


class MqttIngestBridge:
    """One bridge process: `connections` MQTT consumers feeding one batching pipeline.

    Run it with `await bridge.run()` (returns after `stop()`); the Ray actor and the
    `civitas mqtt-bridge` command are thin shells over this class.
    """

    def __init__(self, settings: Settings | None = None, *, index: int = 0,
                 connections: int | None = None, ingestor: Ingestor | None = None,
                 bridge_settings: MqttBridgeSettings | None = None,
                 host: str | None = None, port: int | None = None) -> None:
        self.settings = settings or get_settings()
        self.cfg = bridge_settings or self.settings.mqtt.bridge
        self.host = host or self.settings.mqtt.host
        self.port = port or self.settings.mqtt.port
        self.bridge_id = f"{self.cfg.client_id_prefix}-{index}"
        self._own_ingestor = ingestor is None
        self.ingestor = ingestor or Ingestor(self.settings)
        self.tenants = TenantResolver(ttl_s=self.cfg.tenant_cache_ttl_s,
                                      unknown_ttl_s=self.cfg.unknown_tenant_ttl_s)
        n = connections if connections is not None else self.cfg.connections
        self._consumers = [
            _Consumer(i, ConnectionState(client_id=f"{self.bridge_id}-{i}")) for i in range(n)]
        self.stats = BridgeStats(bridge_id=self.bridge_id)
        self._topics = subscriptions(prefix=self.cfg.topic_prefix,
                                     share_group=self.cfg.share_group or None)
        self._routes: dict[bytes, Route] = {}
        self._buf: list[_Item] = []
        self._first_at = 0.0
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._slots = asyncio.Semaphore(self.cfg.max_concurrent_batches)
        self._batches: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()  # stop taking batches; drain
        self._retire = False  # on stop, also unsubscribe and end the sessions
        self._leave = asyncio.Event()  # then disconnect
        self._beat = asyncio.Event()  # a connection came or went: heartbeat now
        self._reject_log = RateLimit(self.cfg.rejection_log_per_s)
        self._error_log = RateLimit(5)
        self.running = False

    # ---- lifecycle ----

    def stop(self, *, retire: bool = False) -> None:
        """Ask `run()` to drain and return; call it from the bridge's own loop.

        By default the sessions stay at the broker, which queues messages for them
        until this bridge (same index, same client ids) comes back. `retire=True` is
        for a bridge that will not come back (fewer processes than before): it
        unsubscribes, takes in what the broker still holds for it, and ends its
        sessions, or they would keep receiving a share of the traffic (the broker
        counts offline members of a shared subscription) until they expire.
        """
        self._retire = self._retire or retire
        self._stop.set()

    async def run(self) -> None:
        """Connect, consume and ingest until `stop()`; then drain, ack and disconnect."""
        self.running = True
        try:
            await self.ingestor.start()
        except TRANSIENT as exc:  # the database is away: batches will retry until it is back
            self.stats.error(f"database: {type(exc).__name__}: {exc}")
            log.warning("mqtt bridge starts without the database", extra={"error": repr(exc)})
        consumers = [asyncio.create_task(self._consume(c), name=f"mqtt-consumer-{c.index}")
                     for c in self._consumers]
        batcher = asyncio.create_task(self._batcher(), name="mqtt-batcher")
        heartbeat = asyncio.create_task(self._heartbeat(), name="mqtt-heartbeat")
        log.info("mqtt bridge started", extra={"bridge_id": self.bridge_id, "host": self.host,
                                               "port": self.port, "topics": self._topics})
        try:
            await self._stop.wait()
            if self._retire:
                await self._unsubscribe_and_empty()
        finally:
            batcher.cancel()
            await asyncio.gather(batcher, return_exceptions=True)
            await self._drain()
            self._leave.set()
            await asyncio.gather(*consumers, return_exceptions=True)
            # Ended by the flag, not cancelled: redis-py 8.1 can swallow a cancellation
            # that lands in a command, and the task would then never end.
            self._beat.set()
            await asyncio.gather(heartbeat, return_exceptions=True)
            with contextlib.suppress(Exception):
                await health.clear_state(self.bridge_id)
            if self._own_ingestor:
                await self.ingestor.close()
            self.running = False
            log.info("mqtt bridge stopped", extra=self.snapshot())

    async def _unsubscribe_and_empty(self) -> None:
        links = [c.link for c in self._consumers if c.link is not None and c.link.alive]
        await asyncio.gather(*(link.client.unsubscribe(self._topics) for link in links),
                             return_exceptions=True)
        # What the broker queued for these sessions still arrives: take it until quiet.
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        seen = -1
        while time.monotonic() < deadline and (
                seen != self.stats.messages_received or self._buf or self.pending):
            seen = self.stats.messages_received
            await asyncio.sleep(0.25)
        log.info("mqtt bridge retired: unsubscribed", extra={"bridge_id": self.bridge_id})

    async def _drain(self) -> None:
        """Commit and ack what was received; whatever misses the deadline is resent later."""
        if self._buf:
            batch, self._buf = self._buf, []
            self._spawn(batch)
        if self._batches:
            _, late = await asyncio.wait(self._batches, timeout=self.cfg.drain_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def snapshot(self) -> dict[str, Any]:
        return self.stats.snapshot([c.state for c in self._consumers], self.pending)

    @property
    def pending(self) -> int:
        return sum(len(c.link.window) for c in self._consumers if c.link and c.link.alive)

    # ---- MQTT side ----

    def _client(self, consumer: _Consumer) -> _Link:
        m = self.settings.mqtt
        client = aiomqtt.Client(
            self.host, self.port, identifier=consumer.state.client_id,
            username=m.username, password=m.password.get_secret_value() if m.password else None,
            protocol=aiomqtt.ProtocolVersion.V5, clean_start=False,
            keepalive=self.cfg.keepalive_s, properties=connect_properties(self.cfg), timeout=10)
        link = _Link(consumer, client)
        # PUBACK after commit: aiomqtt 2.5 has no manual-ack option, paho has (paho_ext).
        paho_ext.enable_manual_ack(client)
        # Messages go straight from paho into our batch, skipping aiomqtt's per-message
        # queue and task; optionally skipping paho's costly PUBLISH decoding too.
        paho_ext.route_publishes(
            client, lambda topic, mid, qos, dup, payload: self._on_publish(
                link, topic, mid, qos, dup, payload), fast=self.cfg.fast_decode)
        return link

    def _on_publish(self, link: _Link, topic: bytes, mid: int, qos: int, dup: bool,
                    payload: bytes) -> None:
        # Runs in paho's read callback, inside the event loop: it must never raise.
        self.stats.messages_received += 1
        if dup:
            self.stats.messages_redelivered += 1
        now = time.monotonic()
        delivery = link.window.received(mid, qos) if qos else None
        if not self._buf:
            self._first_at = now
            self._has_data.set()
        self._buf.append(_Item(link, delivery, topic, payload, now))
        if len(self._buf) >= self.cfg.batch_max_messages:
            self._full.set()

    async def _consume(self, consumer: _Consumer) -> None:
        """Keep one connection up: connect, subscribe, wait; back off and retry on loss."""
        state = consumer.state
        while not self._leave.is_set():
            link = self._client(consumer)
            try:
                async with link.client:
                    link.alive = True  # a resumed session may resend before SUBACK
                    consumer.link = link
                    codes = await link.client.subscribe([(t, 1) for t in self._topics])
                    refused = [str(c) for c in codes if getattr(c, "value", c) >= 0x80]
                    if refused:
                        raise aiomqtt.MqttError(f"subscription refused: {', '.join(refused)} "
                                                f"for {self._topics}")
                    state.connected, state.connected_at = True, time.time()
                    state.next_retry_in_s = None
                    self._beat.set()
                    if state.generation:
                        self.stats.reconnects += 1
                    state.generation += 1
                    state.failures = 0
                    log.info("mqtt connected", extra={"client_id": state.client_id,
                                                      "generation": state.generation})
                    await self._until_gone(link.client)
                    if self._retire:
                        await paho_ext.end_session(link.client)
            except Exception as exc:
                self.stats.error(f"{state.client_id}: {exc}")
                if self._error_log.allow():
                    log.warning("mqtt connection lost or refused",
                                exc_info=not isinstance(exc, aiomqtt.MqttError),
                                extra={"client_id": state.client_id, "error": str(exc),
                                       "failures": state.failures})
            finally:
                link.alive = False
                state.connected = False
                self._beat.set()
            if self._leave.is_set():
                break
            delay = backoff_delay(state.failures, base_s=self.cfg.reconnect_min_s,
                                  cap_s=self.cfg.reconnect_max_s)
            state.failures += 1
            state.next_retry_in_s = round(delay, 3)
            await _wait(self._leave, delay)

    async def _until_gone(self, client: aiomqtt.Client) -> None:
        # Our on_message bypasses aiomqtt's queue, so its iterator only ever wakes up to
        # raise MqttError when the connection drops.
        lost = asyncio.ensure_future(anext(client.messages))
        leave = asyncio.ensure_future(self._leave.wait())
        try:
            await asyncio.wait({lost, leave}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (lost, leave):
                task.cancel()
        if lost.done() and not lost.cancelled():
            lost.result()

    def _ack(self, item: _Item) -> None:
        link, delivery = item.link, item.delivery
        if delivery is None or not link.alive:
            return  # QoS 0, or a dead connection: the broker will resend it
        ready = link.window.complete(delivery)
        if ready:
            # Every ack released in this step of the loop goes out in one write.
            link.outbox += ready
            if not link.flushing:
                link.flushing = True
                asyncio.get_running_loop().call_soon(self._flush_acks, link)

    def _flush_acks(self, link: _Link) -> None:
        link.flushing = False
        ready, link.outbox = link.outbox, []
        if ready and link.alive:
            paho_ext.ack_many(link.client, [(d.mid, d.qos) for d in ready])
            self.stats.messages_acked += len(ready)

    def _publish(self, item: _Item, topic: str, payload: dict[str, Any]) -> None:
        if self.cfg.publish_rejections and item.link.alive:
            paho_ext.publish_nowait(item.link.client, topic, orjson.dumps(payload))

    # ---- batching ----

    async def _batcher(self) -> None:
        delay = self.cfg.batch_max_delay_ms / 1000
        while True:
            await self._has_data.wait()
            wait = delay - (time.monotonic() - self._first_at)
            if len(self._buf) < self.cfg.batch_max_messages and wait > 0:
                await _wait(self._full, wait)
            # Bounded concurrency: while the database is slow, the buffer grows only to
            # what the broker may send unacked, then the broker holds the rest.
            await self._slots.acquire()
            batch, self._buf = self._buf, []
            self._has_data.clear()
            self._full.clear()
            if batch:
                self._spawn(batch, acquired=True)
            else:
                self._slots.release()

    def _spawn(self, batch: list[_Item], *, acquired: bool = False) -> None:
        task = asyncio.create_task(self._process(batch))
        self._batches.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._batches.discard(t)
            if acquired:
                self._slots.release()
            if not t.cancelled() and t.exception() is not None:
                log.error("mqtt batch failed", exc_info=t.exception())

        task.add_done_callback(done)

    async def _process(self, batch: list[_Item]) -> None:
        by_tenant: dict[str, list[_Item]] = {}
        for item in batch:
            try:
                route = self._routes.get(item.topic)
                if route is None:
                    route = parse_topic(item.topic.decode(), prefix=self.cfg.topic_prefix)
                    if len(self._routes) >= _ROUTE_CACHE_MAX:
                        self._routes.clear()
                    self._routes[item.topic] = route
            except (TopicError, UnicodeDecodeError) as exc:
                self._reject_message(item, f"bad topic: {exc}")
                continue
            item.route = route
            by_tenant.setdefault(route.tenant_slug, []).append(item)
        await asyncio.gather(*(self._ingest_tenant(slug, items)
                               for slug, items in by_tenant.items()))
        self.stats.batches += 1
        self.stats.last_batch_latency_ms = round((time.monotonic() - batch[0].received_at)
                                                 * 1000, 1)

    async def _retrying(self, items: list[_Item], call: Callable[[], Awaitable[T]], *,
                        transient: tuple[type[BaseException], ...] = TRANSIENT) -> T:
        """`call()` until it succeeds, backing off; raises _Abandoned once no message of
        `items` can be acked anymore (their connections are gone)."""
        attempt = 0
        while True:
            try:
                result = await call()
                self.stats.throttled = False
                return result
            except transient as exc:
                self.stats.ingest_retries += 1
                self.stats.throttled = True
                self.stats.error(f"ingest: {type(exc).__name__}: {exc}")
                if self._error_log.allow():
                    log.warning("mqtt batch waits for the database",
                                extra={"error": repr(exc), "messages": len(items),
                                       "attempt": attempt})
                cap = self.cfg.retry_max_s
                if isinstance(exc, Backpressure):
                    cap = min(cap, exc.retry_after_s)
            if not any(i.link.alive for i in items):
                raise _Abandoned
            await asyncio.sleep(backoff_delay(attempt, base_s=0.05, cap_s=cap))
            attempt += 1

    async def _ingest_tenant(self, slug: str, items: list[_Item]) -> None:
        try:
            # A slug lookup cannot be poisoned by a payload: retry whatever goes wrong.
            tenant_id = await self._retrying(items, lambda: self.tenants.resolve(slug),
                                             transient=(Exception,))
            if tenant_id is None:
                self.stats.messages_dropped += len(items)
                if self._reject_log.allow():
                    log.info("mqtt messages for an unknown tenant dropped",
                             extra={"tenant_slug": slug, "messages": len(items)})
                for item in items:
                    self._ack(item)
                return
            parts = self._parse_all(items)
            if parts:
                await self._ingest_isolating(tenant_id, parts)
        except _Abandoned:
            log.info("mqtt batch abandoned: its connections closed before the commit; "
                     "the broker resends it", extra={"messages": len(items)})

    async def _ingest_isolating(self, tenant_id: uuid.UUID, parts: list[_Part]) -> None:
        try:
            await self._ingest_parts(tenant_id, parts)
        except _Abandoned:
            raise
        except Exception:
            # Not the database being busy: a poison message or a bug. Retry each message
            # alone so that one cannot hold back the others, then give up on the culprit.
            log.exception("mqtt batch failed; retrying message by message",
                          extra={"tenant_id": str(tenant_id), "messages": len(parts)})
            alone = itertools.chain.from_iterable(
                [p] if len(p.items) == 1 else filter(None, map(self._parse, p.items))
                for p in parts)
            for part in alone:
                try:
                    await self._ingest_parts(tenant_id, [part])
                except _Abandoned:
                    raise
                except Exception as exc:
                    log.exception("mqtt message could not be ingested")
                    self._reject_message(part.items[0], f"internal error: {type(exc).__name__}")

    def _parse_all(self, items: list[_Item]) -> list[_Part]:
        """Parts in arrival order; runs of single-reading telemetry messages parse as one.

        Most devices send one reading a message. Parsing each alone builds numpy
        columns per message, the largest cost per message in a profile; a run of them
        is decoded one by one and parsed column-wise in one go, with the same checks
        and the same reasons (`parse_readings`). Anything else (lists, `readings`,
        SenML, bad JSON, another asset) takes the per-message path.
        """
        parts: list[_Part] = []
        run: list[_Item] = []
        docs: list[dict[str, Any]] = []
        limit = self.settings.ingest.max_body_bytes

        def close_run() -> None:
            if docs:
                parsed = parse_readings(docs, max_readings=len(docs))
                parts.append(_Part(run.copy(), parsed, [1] * len(docs)))
                run.clear()
                docs.clear()

        for item in items:
            route = item.route
            assert route is not None
            if route.kind == "telemetry" and len(item.payload) <= limit:
                try:
                    doc = orjson.loads(item.payload)
                except orjson.JSONDecodeError:
                    doc = None
                # The topic's asset, unless the reading names one (then it must match).
                if (type(doc) is dict and "readings" not in doc
                        and doc.setdefault("asset_id", route.asset) == route.asset):
                    run.append(item)
                    docs.append(doc)
                    continue
            close_run()
            part = self._parse(item)
            if part is not None:
                parts.append(part)
        close_run()
        return parts

    def _parse(self, item: _Item) -> _Part | None:
        route = item.route
        assert route is not None
        payload = item.payload
        ingest = self.settings.ingest
        if len(payload) > ingest.max_body_bytes:
            self._reject_message(item, f"payload exceeds {ingest.max_body_bytes} bytes")
            return None
        try:
            if route.kind == "senml":
                parsed = parse_senml(payload, max_readings=ingest.max_batch_readings,
                                     default_asset=route.asset)
            elif route.kind == "signals":
                parsed = parse_signal_message(payload, default_controller=route.asset)
            else:
                parsed = parse_json_batch(payload, max_readings=ingest.max_batch_readings,
                                          default_asset=route.asset)
        except PayloadError as exc:
            self._reject_message(item, str(exc))
            return None
        except Exception as exc:  # a parser bug must not stall the connection's acks
            log.exception("mqtt payload could not be parsed", extra={"topic": route.topic})
            self._reject_message(item, f"internal error: {type(exc).__name__}")
            return None
        if route.asset is not None and parsed.asset_ref.count(route.asset) != len(parsed):
            keep = np.fromiter((a == route.asset for a in parsed.asset_ref), bool, len(parsed))
            parsed = _keep(parsed, keep, f"this topic carries readings of asset "
                           f"{route.asset!r} only")
        return _Part([item], parsed, [parsed.total])

    async def _ingest_parts(self, tenant_id: uuid.UUID, parts: list[_Part]) -> None:
        merged, _ = merge([p.parsed for p in parts])
        items = [i for p in parts for i in p.items]
        sizes = np.fromiter(itertools.chain.from_iterable(p.sizes for p in parts), np.int64,
                            len(items))
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        outcome: IngestOutcome = await self._retrying(
            items, lambda: self.ingestor.ingest(tenant_id=tenant_id, parsed=merged))
        self.stats.readings_accepted += outcome.accepted
        if len(merged):
            age = time.time() - float(merged.ts_us.max()) / 1e6
            self.stats.reading_age_s = round(age, 3)
        by_item: dict[int, list[tuple[int, str]]] = {}
        if outcome.rejected:
            self.stats.readings_rejected += len(outcome.rejected)
            idx = np.fromiter((i for i, _ in outcome.rejected), np.int64, len(outcome.rejected))
            owner = np.searchsorted(starts, idx, side="right") - 1
            for (i, reason), k in zip(outcome.rejected, owner.tolist(), strict=True):
                by_item.setdefault(k, []).append((i - int(starts[k]), reason))
                if reason.startswith("unknown asset"):
                    self.stats.unknown_assets += 1
        for k, item in enumerate(items):
            rejected = by_item.get(k)
            if rejected:
                self._report(item, rejected, accepted=int(sizes[k]) - len(rejected))
            self._ack(item)

    # ---- rejections ----

    def _reject_message(self, item: _Item, reason: str) -> None:
        """The whole message is unusable: count it, say why, ack it (resending won't help)."""
        self.stats.messages_rejected += 1
        route = item.route
        if self._reject_log.allow():
            log.info("mqtt message rejected", extra={"topic": item.topic_text,
                                                     "reason": reason})
        if route is not None:
            self._publish(item, route.rejected_topic, {
                "topic": route.topic, "accepted": 0, "reason": reason})
        self._ack(item)

    def _report(self, item: _Item, rejected: list[tuple[int, str]], *, accepted: int) -> None:
        route = item.route
        assert route is not None
        if self._reject_log.allow():
            log.info("mqtt readings rejected", extra={
                "topic": route.topic, "accepted": accepted, "rejected": len(rejected),
                "reasons": [f"#{i}: {r}" for i, r in rejected[:5]]})
        self._publish(item, route.rejected_topic, {
            "topic": route.topic, "accepted": accepted,
            "rejected": [{"index": i, "reason": r} for i, r in rejected[:1000]]})

    # ---- state ----

    async def _heartbeat(self) -> None:
        ttl = health.heartbeat_ttl_s(self.cfg.heartbeat_s)
        while not self._leave.is_set():
            try:
                await health.publish_state(self.snapshot(), ttl_s=ttl)
            except Exception as exc:
                if self._error_log.allow():
                    log.warning("mqtt bridge heartbeat not written", extra={"error": repr(exc)})
            suppressed = self._reject_log.take_suppressed()
            if suppressed:
                log.info("mqtt rejections not logged (rate limit)",
                         extra={"suppressed": suppressed})
            if not self._leave.is_set():
                await _wait(self._beat, self.cfg.heartbeat_s)
                self._beat.clear()


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Event or timeout. Not asyncio.wait_for: on 3.11 it can swallow a cancellation
    that races with the event, and a stopping bridge would then never stop."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
        return True
    except TimeoutError:
        return False

