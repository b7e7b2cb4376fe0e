"""The MQTT ingest bridge against the real Mosquitto and the test database.

The bridge class runs in the test's event loop. Each test has its own tenant, share
group and client ids, so a bridge a developer runs on the same broker takes nothing
from these tests. The broker outage test runs a second Mosquitto of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from civitas_ray.config import MqttBridgeSettings, get_settings
from civitas_ray.mqtt import health
from civitas_ray.mqtt.bridge import MqttIngestBridge
from civitas_ray.telemetry.ingest import Ingestor
from tests.e2e.test_telemetry_ingest import make_assets, stored

pytestmark = pytest.mark.e2e

BROKER = get_settings().mqtt


def cfg(**overrides: Any) -> MqttBridgeSettings:
    tag = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "share_group": f"test-{tag}", "client_id_prefix": f"civitas-test-{tag}",
        "batch_max_delay_ms": 5, "reconnect_min_s": 0.1, "reconnect_max_s": 0.8,
        "drain_timeout_s": 0.5, "session_expiry_s": 60, "heartbeat_s": 0.3,
        "retry_max_s": 0.2}
    return MqttBridgeSettings(**{**base, **overrides})


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(settings: MqttBridgeSettings, *, port: int | None = None,
                  ingestor: Ingestor | None = None, wait: bool = True, index: int = 0,
                  ) -> AsyncIterator[MqttIngestBridge]:
    bridge = MqttIngestBridge(bridge_settings=settings, port=port, ingestor=ingestor,
                              index=index)
    task = asyncio.create_task(bridge.run())
    try:
        if wait:
            await until(lambda: bridge.snapshot()["connected"] or task.done(), what="connect")
            if task.done():
                task.result()
        yield bridge
    finally:
        bridge.stop()
        await asyncio.wait_for(task, 10)


async def publish(messages: list[tuple[str, Any]], *, port: int = BROKER.port,
                  qos: int = 1) -> None:
    """QoS 1 publishes from a device-like client; returns once the broker has them all."""
    async with aiomqtt.Client(BROKER.host, port) as c:
        for topic, payload in messages:
            body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
            await c.publish(topic, body, qos=qos)


def reading(metric: str, ts: datetime, value: float, **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "ts": ts.isoformat().replace("+00:00", "Z"), "value": value,
            **extra}


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


@pytest.mark.parametrize("fast_decode", [True, False], ids=["lean-decode", "paho-decode"])
async def test_telemetry_topic_payload_shapes_and_batching(make_tenant, admin_sql,
                                                           fast_decode: bool) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    a, b = await make_assets(admin_sql, t.id, 2)
    t0 = now()
    async with running(cfg(fast_decode=fast_decode)) as bridge:
        await publish([
            (f"civitas/{t.slug}/telemetry/{a['id']}", reading("level", t0, 1.5, quality=2)),
            (f"civitas/{t.slug}/telemetry/{b['external_id']}",
             [reading("level", t0, 2.0), reading("level", t0 + timedelta(seconds=1), 2.5)]),
            (f"civitas/{t.slug}/telemetry/{b['external_id']}",
             {"readings": [reading("flow", t0, 7.0)]}),
        ])
        # Many devices at once: 300 single-reading messages in one go (C client).
        lines = "\n".join(orjson.dumps(reading("count", t0 + timedelta(seconds=i), i)).decode()
                          for i in range(300))
        subprocess.run(["mosquitto_pub", "-h", BROKER.host, "-p", str(BROKER.port), "-q", "1",
                        "-t", f"civitas/{t.slug}/telemetry/{a['external_id']}", "-l"],
                       input=lines + "\n", text=True, check=True, timeout=20)
        await until(lambda: bridge.stats.messages_acked == 303, what="303 acks")
        snap = bridge.snapshot()
    assert snap["readings_accepted"] == 304 and snap["readings_rejected"] == 0
    assert snap["batches"] < 100, "messages are committed in batches, not one by one"
    [row] = await stored(admin_sql, a["id"], "level")
    assert (row["value"], row["quality"], row["ts"]) == (1.5, 2, t0)
    assert [r["value"] for r in await stored(admin_sql, b["id"], "level")] == [2.0, 2.5]
    assert len(await stored(admin_sql, b["id"], "flow")) == 1
    assert len(await stored(admin_sql, a["id"], "count")) == 300


async def test_a_backlog_read_in_large_chunks_loses_nothing(make_tenant, admin_sql,
                                                            own_broker: OwnBroker) -> None:
    """A backlog arrives as a stream of packets read 64 KiB at a time (paho_ext's lean
    reader): packets cut at a chunk's end, and one larger than a chunk, all decoded."""
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    settings = cfg()
    async with running(settings, port=own_broker.port):
        pass  # the session and its subscriptions now wait at the broker
    t0 = now() - timedelta(hours=1)
    lines = [orjson.dumps(reading("m", t0 + timedelta(seconds=i), i)).decode()
             for i in range(3000)]
    big = [reading("big", t0 + timedelta(seconds=i), i) for i in range(2000)]  # ~130 KB
    lines.insert(1500, orjson.dumps(big).decode())
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(own_broker.port), "-q", "1",
                    "-t", f"civitas/{t.slug}/telemetry/{a['id']}", "-l"],
                   input="\n".join(lines) + "\n", text=True, check=True, timeout=30)
    async with running(settings, port=own_broker.port) as bridge:
        await until(lambda: bridge.stats.messages_acked == 3001, what="3001 acks")
        snap = bridge.snapshot()
    assert snap["readings_accepted"] == 5000 and snap["messages_rejected"] == 0
    assert [r["value"] for r in await stored(admin_sql, a["id"], "m")] == \
        [float(i) for i in range(3000)]
    assert len(await stored(admin_sql, a["id"], "big")) == 2000


async def test_senml_topics(make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    a, b = await make_assets(admin_sql, t.id, 2)
    base = now().timestamp()
    async with running(cfg()) as bridge:
        await publish([
            (f"civitas/{t.slug}/senml", [
                {"bn": f"{a['external_id']}/", "bt": base, "n": "temperature", "v": 21.5},
                {"n": "temperature", "t": 60, "v": 21.75},
                {"bn": f"urn:dev:{b['id']}/", "n": "humidity", "v": 40}]),
            (f"civitas/{t.slug}/senml/{b['external_id']}", [
                {"bt": base, "n": "temperature", "v": 19.0}, {"n": "pressure", "v": 1013}]),
        ])
        await until(lambda: bridge.stats.messages_acked == 2)
    temps = await stored(admin_sql, a["id"], "temperature")
    assert [(r["ts"].timestamp() - base, r["value"]) for r in temps] == [(0, 21.5), (60, 21.75)]
    assert [r["value"] for r in await stored(admin_sql, b["id"], "humidity")] == [40.0]
    assert [r["value"] for r in await stored(admin_sql, b["id"], "temperature")] == [19.0]
    assert len(await stored(admin_sql, b["id"], "pressure")) == 1


async def test_bad_messages_are_rejected_alone_and_reported(make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    [other] = await make_assets(admin_sql, t.id, 1)
    t0 = now()
    topic = f"civitas/{t.slug}/telemetry/{a['external_id']}"
    reports: list[tuple[str, dict[str, Any]]] = []
    async with aiomqtt.Client(BROKER.host, BROKER.port) as listener:
        await listener.subscribe(f"civitas/{t.slug}/rejected/#", qos=1)

        async def listen() -> None:
            async for m in listener.messages:
                reports.append((str(m.topic), orjson.loads(m.payload)))

        listening = asyncio.create_task(listen())
        async with running(cfg()) as bridge:
            await publish([
                (topic, reading("m", t0, 1)),
                (topic, b"{not json"),
                (topic, reading("m", t0 + timedelta(seconds=1), 2)),
                (topic, b'"a string"'),
                (topic, [reading("m", t0 + timedelta(seconds=2), 3),
                         reading("m", t0 + timedelta(seconds=3), "high"),
                         {**reading("m", t0 + timedelta(seconds=4), 4),
                          "asset_id": other["id"]}]),
                (f"civitas/{t.slug}/senml", [{"n": "no-separator", "v": 1}]),
                (topic, reading("m", t0 + timedelta(seconds=5), 5)),
            ])
            await until(lambda: bridge.stats.messages_acked == 7)
            await until(lambda: len(reports) == 4, what="4 rejection reports")
            snap = bridge.snapshot()
        listening.cancel()
    assert [r["value"] for r in await stored(admin_sql, a["id"])] == [1.0, 2.0, 3.0, 5.0]
    assert await stored(admin_sql, other["id"]) == []
    assert snap["messages_rejected"] == 2 and snap["readings_accepted"] == 4
    assert snap["readings_rejected"] == 3
    rejected_topic = f"civitas/{t.slug}/rejected/telemetry/{a['external_id']}"
    whole = [p for tp, p in reports if tp == rejected_topic and "reason" in p]
    assert len(whole) == 2 and "not valid JSON" in whole[0]["reason"]
    [partial] = [p for tp, p in reports if tp == rejected_topic and "rejected" in p]
    assert partial["accepted"] == 1
    reasons = {x["index"]: x["reason"] for x in partial["rejected"]}
    assert "number" in reasons[1] and "of asset" in reasons[2]
    [senml] = [p for tp, p in reports if tp == f"civitas/{t.slug}/rejected/senml"]
    assert "<asset>/<metric>" in senml["rejected"][0]["reason"]


@contextlib.asynccontextmanager
async def rejection_reports(slug: str) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """Collects what the bridge publishes under the tenant's `rejected/#` subtree."""
    reports: list[tuple[str, dict[str, Any]]] = []
    async with aiomqtt.Client(BROKER.host, BROKER.port) as listener:
        await listener.subscribe(f"civitas/{slug}/rejected/#", qos=1)

        async def listen() -> None:
            async for m in listener.messages:
                reports.append((str(m.topic), orjson.loads(m.payload)))

        listening = asyncio.create_task(listen())
        try:
            yield reports
        finally:
            listening.cancel()


async def test_single_reading_messages_are_parsed_together_and_rejected_alone(
        make_tenant, admin_sql) -> None:
    """One batch of one-reading messages from several devices, bad ones among them:
    each bad message gets its own report (reading 0), every other reading is stored."""
    t = await make_tenant(roles=["operator"], with_key=False)
    devices = await make_assets(admin_sql, t.id, 3)
    a, b = devices[0], devices[1]
    t0 = now()
    topic = {d["id"]: f"civitas/{t.slug}/telemetry/{d['external_id']}" for d in devices}
    good = [(topic[d["id"]], reading("m", t0 + timedelta(seconds=i), i))
            for i in range(12) for d in devices]
    bad = {
        "value": (topic[a["id"]], reading("m", t0 + timedelta(seconds=50), "high")),
        "future": (topic[b["id"]], reading("m", t0 + timedelta(days=2), 1)),
        "other asset": (topic[a["id"]], {**reading("m", t0 + timedelta(seconds=51), 1),
                                          "asset_id": b["id"]}),
        "unknown": (f"civitas/{t.slug}/telemetry/no-such-device", reading("m", t0, 1)),
    }
    listed = (topic[b["id"]], [reading("n", t0, 1.5), reading("n", t0, "x")])
    messages = [*good[:10], bad["value"], *good[10:20], listed, bad["other asset"],
                *good[20:30], bad["future"], bad["unknown"], *good[30:]]
    async with (rejection_reports(t.slug) as reports,
                running(cfg(batch_max_delay_ms=300)) as bridge):
        await publish(messages)
        await until(lambda: bridge.stats.messages_acked == len(messages))
        await until(lambda: len(reports) == 5, what="5 rejection reports")
        snap = bridge.snapshot()
    assert snap["readings_accepted"] == len(good) + 1 and snap["messages_rejected"] == 0
    assert snap["unknown_assets"] == 1 and snap["pending"] == 0
    assert snap["batches"] <= 4, "the messages were committed together"
    for d in devices:
        values = [r["value"] for r in await stored(admin_sql, d["id"], "m")]
        assert values == [float(i) for i in range(12)]
    assert [r["value"] for r in await stored(admin_sql, b["id"], "n")] == [1.5]
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for tp, payload in reports:
        by_topic.setdefault(tp, []).append(payload)
    rejected_a = by_topic[f"civitas/{t.slug}/rejected/telemetry/{a['external_id']}"]
    assert sorted(r["rejected"][0]["reason"].split()[0] for r in rejected_a) == ["this", "value"]
    assert all(r["accepted"] == 0 and r["rejected"][0]["index"] == 0 for r in rejected_a)
    rejected_b = by_topic[f"civitas/{t.slug}/rejected/telemetry/{b['external_id']}"]
    [future] = [r for r in rejected_b if r["accepted"] == 0]
    assert "future" in future["rejected"][0]["reason"]
    [partial] = [r for r in rejected_b if r["accepted"] == 1]
    assert partial["rejected"][0]["index"] == 1
    [unknown] = by_topic[f"civitas/{t.slug}/rejected/telemetry/no-such-device"]
    assert "unknown asset" in unknown["rejected"][0]["reason"]


async def test_a_poison_message_is_isolated_from_its_batch(make_tenant, admin_sql,
                                                           monkeypatch) -> None:
    """The ingest path fails on one message (a bug, not the database being busy): the
    batch is retried message by message, the culprit is rejected, the rest stored."""
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    ingestor = Ingestor()
    real_ingest = ingestor.ingest

    async def ingest(*, tenant_id: uuid.UUID, parsed: Any, **kw: Any) -> Any:
        if (parsed.value == 666).any():
            raise RuntimeError("poison")
        return await real_ingest(tenant_id=tenant_id, parsed=parsed, **kw)

    monkeypatch.setattr(ingestor, "ingest", ingest)
    t0 = now()
    topic = f"civitas/{t.slug}/telemetry/{a['id']}"
    values = [1, 2, 666, 3, 4]
    try:
        async with (rejection_reports(t.slug) as reports,
                    running(cfg(batch_max_delay_ms=300), ingestor=ingestor) as bridge):
            await publish([(topic, reading("m", t0 + timedelta(seconds=i), v))
                           for i, v in enumerate(values)])
            await until(lambda: bridge.stats.messages_acked == len(values))
            await until(lambda: len(reports) == 1, what="the poison's report")
            snap = bridge.snapshot()
    finally:
        await ingestor.close()
    assert [r["value"] for r in await stored(admin_sql, a["id"])] == [1.0, 2.0, 3.0, 4.0]
    assert snap["messages_rejected"] == 1 and snap["readings_accepted"] == 4
    [(_, report)] = reports
    assert report["reason"] == "internal error: RuntimeError"


async def test_unknown_tenant_and_asset_are_counted_and_acked(make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    t0 = now()
    async with running(cfg()) as bridge:
        await publish([
            (f"civitas/no-such-{uuid.uuid4().hex[:8]}/telemetry/x", reading("m", t0, 1)),
            (f"civitas/{t.slug}/telemetry/not-an-asset", reading("m", t0, 1)),
            (f"civitas/{t.slug}/telemetry/{a['id']}", reading("m", t0, 1)),
        ])
        await until(lambda: bridge.stats.messages_acked == 3)
        snap = bridge.snapshot()
    assert snap["messages_dropped"] == 1 and snap["unknown_assets"] == 1
    assert snap["readings_accepted"] == 1 and snap["pending"] == 0
    assert len(await stored(admin_sql, a["id"])) == 1


async def test_duplicates_are_stored_once(make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    t0 = now()
    topic = f"civitas/{t.slug}/telemetry/{a['id']}"
    async with running(cfg()) as bridge:
        await publish([(topic, reading("m", t0, 1)), (topic, reading("m", t0, 1)),
                       (topic, [reading("m", t0, 1), reading("m", t0, 1)])])
        await until(lambda: bridge.stats.messages_acked == 3)
        await publish([(topic, reading("m", t0, 1))])  # a later batch: already stored
        await until(lambda: bridge.stats.messages_acked == 4)
    assert len(await stored(admin_sql, a["id"])) == 1


async def test_ack_only_after_commit_and_redelivery_after_restart(make_tenant, admin_sql,
                                                                  monkeypatch) -> None:
    """A bridge stopped between receive and commit never acked: the broker resends the
    message to the restarted bridge (same client id, persistent session), stored once."""
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    settings = cfg()
    stuck = Ingestor()
    await stuck.start()
    assert stuck.writer is not None
    never = asyncio.Event()

    async def hang(rows: Any) -> None:  # the database never answers
        await never.wait()

    monkeypatch.setattr(stuck.writer, "_commit", hang)
    try:
        async with running(settings, ingestor=stuck) as first:
            await publish([(f"civitas/{t.slug}/telemetry/{a['id']}", reading("m", now(), 7))])
            await until(lambda: first.stats.messages_received == 1)
            await asyncio.sleep(0.3)
            assert first.snapshot()["pending"] == 1 and first.stats.messages_acked == 0
    finally:
        await stuck.close()
    assert await stored(admin_sql, a["id"]) == []
    # Published while no bridge runs: queued in the bridge's persistent session.
    await publish([(f"civitas/{t.slug}/telemetry/{a['id']}",
                    reading("m", now() + timedelta(seconds=1), 8))])
    async with running(settings) as second:
        await until(lambda: second.stats.messages_acked == 2, what="redelivered and acked")
        assert second.stats.messages_redelivered == 1
    assert [r["value"] for r in await stored(admin_sql, a["id"])] == [7.0, 8.0]


async def test_commit_without_ack_is_redelivered_and_stored_once(make_tenant, admin_sql,
                                                                 monkeypatch) -> None:
    """Committed but not acked (a crash in between): the resent message adds no row."""
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    settings = cfg()
    async with running(settings) as first:
        monkeypatch.setattr(first, "_ack", lambda item: None)
        await publish([(f"civitas/{t.slug}/telemetry/{a['id']}", reading("m", now(), 3))])
        await until(lambda: first.stats.readings_accepted == 1)
    assert len(await stored(admin_sql, a["id"])) == 1
    async with running(settings) as second:
        await until(lambda: second.stats.messages_acked == 1)
        assert second.stats.messages_redelivered == 1
    assert len(await stored(admin_sql, a["id"])) == 1


async def test_flow_control_under_backpressure(make_tenant, admin_sql, monkeypatch) -> None:
    """While the writer refuses (Backpressure) nothing is acked, and the broker sends no
    more than Receive Maximum; once the database keeps up, everything lands."""
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    ingestor = Ingestor()
    await ingestor.start()
    assert ingestor.writer is not None
    monkeypatch.setattr(ingestor.writer, "_max_pending", 0)
    t0 = now()
    try:
        async with running(cfg(receive_maximum=3), ingestor=ingestor) as bridge:
            await publish([(f"civitas/{t.slug}/telemetry/{a['id']}",
                            reading("m", t0 + timedelta(seconds=i), i)) for i in range(10)])
            await until(lambda: bridge.stats.ingest_retries >= 3)
            snap = bridge.snapshot()
            assert snap["throttled"] and snap["messages_acked"] == 0
            assert snap["messages_received"] == 3 and snap["pending"] == 3
            monkeypatch.undo()
            await until(lambda: bridge.stats.messages_acked == 10)
            assert not bridge.stats.throttled
    finally:
        await ingestor.close()
    assert len(await stored(admin_sql, a["id"])) == 10


async def test_retired_bridge_leaves_the_group(make_tenant, admin_sql) -> None:
    """A bridge stopped for good (fewer processes) unsubscribes and ends its session;
    otherwise the broker would keep queueing its share of the traffic for it."""
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    settings = cfg()
    t0 = now()
    async with running(settings, index=0) as stays:
        async with running(settings, index=1) as goes:
            goes.stop(retire=True)
        await publish([(f"civitas/{t.slug}/telemetry/{a['id']}",
                        reading("m", t0 + timedelta(seconds=i), i)) for i in range(10)])
        await until(lambda: stays.stats.messages_acked == 10, what="all 10 to the survivor")
    assert len(await stored(admin_sql, a["id"])) == 10


async def test_state_in_redis_for_readiness(make_tenant, client) -> None:
    settings = cfg()
    async with running(settings) as bridge:
        await until(lambda: _has_state(bridge.bridge_id), what="heartbeat")
        live, _ = await health.bridge_states()
        [mine] = [b for b in live if b["bridge_id"] == bridge.bridge_id]
        assert mine["connected"] and mine["connections"][0]["connected"]
        r = await client.get("/readyz")
        assert "mqtt_bridge" in r.json()["checks"]
    live, silent = await health.bridge_states()
    assert bridge.bridge_id not in {b["bridge_id"] for b in live} | {m for m, _ in silent}


async def _has_state(bridge_id: str) -> bool:
    live, _ = await health.bridge_states()
    return any(b["bridge_id"] == bridge_id and b["connected"] for b in live)


# ---- a broker of our own, to take away ----

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnBroker:
    """A Mosquitto on a private port, with persistence, that a test may stop."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        self.port = _free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir}/\n"
            f"log_dest none\n{extra_conf}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its sessions and exits
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Any:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed (scripts/setup.sh installs it)")
    tmp_path.chmod(0o777)  # mosquitto drops to its own user when started as root
    # A backlog larger than Mosquitto's default session queue (1,000) must fit.
    broker = OwnBroker(tmp_path, "max_queued_messages 0\n")
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.slow
async def test_broker_outage_reconnects_and_loses_nothing(make_tenant, admin_sql,
                                                          own_broker: OwnBroker) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    [a] = await make_assets(admin_sql, t.id, 1)
    topic = f"civitas/{t.slug}/telemetry/{a['id']}"
    t0 = now()
    async with running(cfg(), port=own_broker.port) as bridge:
        await publish([(topic, reading("m", t0 + timedelta(seconds=i), i)) for i in range(5)],
                      port=own_broker.port)
        await until(lambda: bridge.stats.messages_acked == 5)

        own_broker.stop()
        await until(lambda: not bridge.snapshot()["connected"], what="disconnected")
        await asyncio.sleep(1.0)  # a few refused attempts, backing off
        snap = bridge.snapshot()
        assert snap["last_error"] and snap["connections"][0]["failures"] >= 2
        assert snap["connections"][0]["next_retry_in_s"] is not None

        own_broker.start()
        # Mosquitto 2.0 does not restore shared subscriptions from its persistence file:
        # the bridge subscribes again on every connection, then the rest can flow.
        await until(lambda: bridge.snapshot()["connected"], what="reconnected")
        await publish([(topic, reading("m", t0 + timedelta(seconds=i), i))
                       for i in range(5, 10)], port=own_broker.port)
        await until(lambda: bridge.stats.messages_acked == 10, what="all acked")
        assert bridge.stats.reconnects == 1
    assert [r["value"] for r in await stored(admin_sql, a["id"])] == [float(i) for i in range(10)]
