"""`civitas simulate`: a fleet of simulated devices sending readings at a set total rate.

Assets are created once (external ids `sim-00000`, `sim-00001`, ...) and reused by
later runs. Values come from real city series when a data directory is given (I-94
hourly traffic volume, Tetouan 10-minute power by zone), replayed with timestamps
shifted to now, or from a seasonal synthetic signal otherwise. Transports:

- `mqtt` through `mosquitto_pub -l -q 1` (C, one message per stdin line, tens of
  thousands a second): SenML records on `civitas/{tenant}/senml`, whose names carry
  the asset, since one mosquitto_pub publishes to one topic only;
- `mqtt` through a Python client (per-asset topics `civitas/{tenant}/telemetry/{asset}`,
  a few thousand a second: the demo's low rates);
- `http`: POST /api/v1/telemetry, 1000 readings a request, with a device API key.

It prints the achieved rate and the errors as it goes, and a summary at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import math
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from civitas_ray.config import Settings, get_settings

Transport = Literal["mqtt", "http"]
MqttClient = Literal["auto", "mosquitto_pub", "python"]

SIM_PREFIX = "sim-"
HTTP_BATCH = 1000
HTTP_CONCURRENCY = 4
PUB_RATE_PER_PROCESS = 30_000  # what one mosquitto_pub sustains here with QoS 1, with room
PYTHON_MQTT_MAX_RATE = 2_000  # above this, auto picks mosquitto_pub


@dataclass(frozen=True, slots=True)
class Kind:
    asset_kind: str
    metric: str
    unit: str
    max: float


KINDS = {
    "traffic": Kind("sensor", "traffic_volume", "veh/h", 10_000),
    "power": Kind("meter", "power_kw", "kW", 100_000),
}


@dataclass(slots=True)
class SimAsset:
    id: uuid.UUID
    external_id: str
    kind: str


@dataclass(slots=True)
class SimulationConfig:
    tenant: str
    assets: int = 100
    rate: float = 100.0  # readings a second, all assets together
    transport: Transport = "mqtt"
    data_dir: Path | None = None
    duration_s: float | None = None  # None: until interrupted
    api_key: str | None = None
    url: str = "http://127.0.0.1:8000"
    mqtt_client: MqttClient = "auto"
    center: tuple[float, float] = (-73.9855, 40.7580)  # lon, lat (Midtown Manhattan)
    spread_km: float = 8.0
    report_every_s: float = 5.0


@dataclass(slots=True)
class SimulationReport:
    sent: int = 0
    elapsed_s: float = 0.0
    errors: int = 0
    rejected: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s else 0.0

    def error(self, message: str, count: int = 1) -> None:
        self.errors += count
        if len(self.error_samples) < 10:
            self.error_samples.append(message[:300])


# ---- series ----

def _timeseries_dir(data_dir: Path) -> Path:
    return data_dir / "timeseries" if (data_dir / "timeseries").is_dir() else data_dir


def load_series(data_dir: Path) -> dict[str, list[np.ndarray]]:
    """Real series: I-94 traffic volume (hourly), Tetouan power of zones 1-3 (10 min)."""
    d = _timeseries_dir(data_dir)
    traffic_csv = d / "metro_interstate_traffic_volume_I94_2012-2018.csv"
    power_csv = d / "tetouan_city_power_consumption_10min_2017.csv"
    for path in (traffic_csv, power_csv):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (pass the shared data directory)")
    with traffic_csv.open(newline="") as f:
        traffic = np.array([float(r["traffic_volume"]) for r in csv.DictReader(f)])
    with power_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    power = [np.array([float(r[f"Zone {z} Power Consumption"]) for r in rows])
             for z in (1, 2, 3)]
    return {"traffic": [traffic], "power": power}


def synthetic_series(*, seed: int = 0, days: int = 28) -> dict[str, list[np.ndarray]]:
    """Daily and weekly seasonality with noise, hourly traffic and 10-minute power."""
    rng = np.random.default_rng(seed)
    h = np.arange(days * 24, dtype=float)
    rush = (np.exp(-((h % 24 - 8) ** 2) / 4) + np.exp(-((h % 24 - 17) ** 2) / 5))
    weekday = np.where((h // 24) % 7 < 5, 1.0, 0.65)
    traffic = np.maximum(0, 600 + 4500 * rush * weekday + rng.normal(0, 150, h.size))
    m = np.arange(days * 144, dtype=float) / 6  # hours, 10-minute steps
    daily = 1 + 0.35 * np.sin(2 * np.pi * (m % 24 - 9) / 24) + 0.15 * np.exp(
        -((m % 24 - 20) ** 2) / 6)
    power = [np.maximum(0, base * daily + rng.normal(0, base * 0.03, m.size))
             for base in (30_000.0, 18_000.0, 22_000.0)]
    return {"traffic": [np.round(traffic)], "power": power}


class ReadingSource:
    """Readings round-robin over the assets, each stepping through its own series.

    The reading numbered g is due at t0 + g / rate: that is its timestamp, so the
    timestamps are now (shifted from the series' own), distinct per asset, and
    increasing, however the sends are grouped.
    """

    def __init__(self, assets: list[SimAsset], series: dict[str, list[np.ndarray]], *,
                 rate: float, t0_us: int) -> None:
        self.assets = assets
        self.rate = rate
        self.t0_us = t0_us
        self.next = 0
        flat, starts, lengths = [], [], []
        pos = 0
        for kind in sorted(series):
            for s in series[kind]:
                flat.append(s)
                starts.append(pos)
                lengths.append(len(s))
                pos += len(s)
        self._values = np.concatenate(flat)
        index_of = {}
        i = 0
        for kind in sorted(series):
            index_of[kind] = list(range(i, i + len(series[kind])))
            i += len(series[kind])
        n = len(assets)
        seen: dict[str, int] = {}
        which = []  # the j-th asset of a kind replays series j of that kind (cycling)
        for a in assets:
            j = seen[a.kind] = seen.get(a.kind, -1) + 1
            which.append(index_of[a.kind][j % len(index_of[a.kind])])
        self._start = np.array(starts, dtype=np.int64)[which]
        self._len = np.array(lengths, dtype=np.int64)[which]
        # Each asset starts somewhere else in its series, so neighbours differ.
        self._offset = (np.arange(n, dtype=np.int64) * 7919) % self._len

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(asset index, ts in epoch µs, value) of the next `count` readings."""
        g = np.arange(self.next, self.next + count, dtype=np.int64)
        self.next += count
        n = len(self.assets)
        a = g % n
        step = g // n
        values = self._values[self._start[a] + (self._offset[a] + step) % self._len[a]]
        ts = self.t0_us + (g * (1e6 / self.rate)).astype(np.int64)
        return a, ts, values


# ---- assets ----

async def ensure_assets(*, tenant: str, count: int, center: tuple[float, float] = (
        -73.9855, 40.7580), spread_km: float = 8.0) -> tuple[uuid.UUID, list[SimAsset]]:
    """The tenant's id and `count` simulated assets, creating those that are missing."""
    from sqlalchemy import select

    from civitas_ray.assets import service as assets
    from civitas_ray.assets.models import Asset
    from civitas_ray.assets.schemas import AssetCreate, MetricRange
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import tenant_session
    from civitas_ray.tenants import service as tenants

    async with tenant_session(None, system=True) as session:
        t = await tenants.get_by_slug(session=session, slug=tenant)
    if t is None:
        raise LookupError(f"no tenant '{tenant}' (create it: civitas admin create-tenant)")
    wanted = [f"{SIM_PREFIX}{i:05d}" for i in range(count)]
    found: dict[str, uuid.UUID] = {}
    async with tenant_session(t.id) as session:
        for chunk in _chunks(wanted, 5000):
            rows = await session.execute(select(Asset.external_id, Asset.id).where(
                Asset.tenant_id == t.id, Asset.external_id.in_(chunk),
                Asset.deleted_at.is_(None)))
            found.update({ext: aid for ext, aid in rows.all() if ext is not None})
    missing = [i for i, ext in enumerate(wanted) if ext not in found]
    for chunk in _chunks(missing, 200):
        async with tenant_session(t.id) as session:
            for i in chunk:
                kind = _kind_of(i)
                spec = KINDS[kind]
                lon, lat = _position(i, center, spread_km)
                a = await assets.create(session=session, tenant_id=t.id, actor=SYSTEM_ACTOR,
                                        data=AssetCreate(
                    name=f"Simulated {spec.metric.replace('_', ' ')} {i}",
                    kind=spec.asset_kind, external_id=wanted[i],
                    metrics={spec.metric: MetricRange(unit=spec.unit, min=0, max=spec.max)},
                    properties={"simulated": True},
                    geometry={"type": "Point", "coordinates": [lon, lat]}))
                found[wanted[i]] = a.id
    return t.id, [SimAsset(found[ext], ext, _kind_of(i)) for i, ext in enumerate(wanted)]


def _kind_of(i: int) -> str:
    return "traffic" if i % 2 == 0 else "power"


def _position(i: int, center: tuple[float, float], spread_km: float) -> tuple[float, float]:
    """A fixed point per asset, spread uniformly over a disc around the centre."""
    rng = np.random.default_rng(i)
    r = spread_km * math.sqrt(rng.random())
    theta = 2 * math.pi * rng.random()
    lat = center[1] + (r * math.sin(theta)) / 111.32
    lon = center[0] + (r * math.cos(theta)) / (111.32 * math.cos(math.radians(center[1])))
    return round(lon, 6), round(lat, 6)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


async def create_api_key(*, tenant_id: uuid.UUID) -> str:
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import set_context, tenant_session
    from civitas_ray.users import service as users
    from civitas_ray.users.schemas import ApiKeyCreate

    async with tenant_session(None, system=True) as session:
        await set_context(session, tenant_id=tenant_id)
        _, key = await users.create_api_key(
            session=session, tenant_id=tenant_id, actor=SYSTEM_ACTOR, created_by=None,
            data=ApiKeyCreate(name=f"civitas simulate {time.strftime('%Y-%m-%d %H:%M')}"))
    return key


# ---- transports ----

def _ts_text(us: int) -> str:
    """Epoch seconds with exact microseconds (a float would round some of them)."""
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


class MosquittoPubSink:
    """SenML lines into `mosquitto_pub -l -q 1` processes, round-robin.

    mosquitto_pub 2.0 stops at end of input when the last message id (they wrap at
    65535) is acknowledged, so more than 65535 lines queued at the end may be cut
    short: lines are written at the target rate, never far ahead of the broker.
    """

    def __init__(self, *, settings: Settings, topic: str, names: list[bytes],
                 processes: int) -> None:
        self._settings = settings
        self._topic = topic
        self._names = names  # per asset: b'[{"n":"sim-00001/traffic_volume","t":'
        self._n = processes
        self._procs: list[asyncio.subprocess.Process] = []
        self._rr = 0

    async def start(self) -> None:
        m = self._settings.mqtt
        cmd = [shutil.which("mosquitto_pub") or "mosquitto_pub", "-h", m.host, "-p",
               str(m.port), "-q", "1", "-t", self._topic, "-l", "-M", "1000", "--quiet"]
        if m.username:
            cmd += ["-u", m.username]
            if m.password:
                cmd += ["-P", m.password.get_secret_value()]
        for _ in range(self._n):
            self._procs.append(await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))

    async def send(self, a: np.ndarray, ts: np.ndarray, v: np.ndarray,
                   report: SimulationReport) -> None:
        names = self._names
        lines = b"".join(
            names[i] + _ts_text(t).encode() + b',"v":' + repr(x).encode() + b"}]\n"
            for i, t, x in zip(a.tolist(), ts.tolist(), v.tolist(), strict=True))
        proc = self._procs[self._rr % self._n]
        self._rr += 1
        if proc.returncode is not None or proc.stdin is None:
            report.error(f"mosquitto_pub exited with {proc.returncode}", len(a))
            return
        proc.stdin.write(lines)
        try:
            await proc.stdin.drain()  # back-pressure: a slow broker slows us down
        except (BrokenPipeError, ConnectionResetError) as exc:
            report.error(f"mosquitto_pub: {exc}", len(a))

    async def close(self, report: SimulationReport) -> None:
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in self._procs:
            _, err = await proc.communicate()
            if proc.returncode:
                report.error(f"mosquitto_pub exited with {proc.returncode}: "
                             f"{err.decode(errors='replace').strip()[:200]}")


class PythonMqttSink:
    """One QoS 1 publish a reading on the asset's own telemetry topic."""

    def __init__(self, *, settings: Settings, topics: list[str], metrics: list[str]) -> None:
        self._settings = settings
        self._topics = topics
        self._metrics = metrics
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()

    async def start(self) -> None:
        import aiomqtt

        m = self._settings.mqtt
        self._client = aiomqtt.Client(
            m.host, m.port, username=m.username,
            password=m.password.get_secret_value() if m.password else None,
            max_inflight_messages=1000)
        self._client.pending_calls_threshold = 100_000  # many publishes in flight is the point
        await self._stack.enter_async_context(self._client)

    async def send(self, a: np.ndarray, ts: np.ndarray, v: np.ndarray,
                   report: SimulationReport) -> None:
        async def one(i: int, t: int, x: float) -> None:
            body = b'{"metric":"%s","ts":%s,"value":%s}' % (
                self._metrics[i].encode(), _ts_text(t).encode(), repr(x).encode())
            await self._client.publish(self._topics[i], body, qos=1)

        results = await asyncio.gather(
            *(one(i, t, x) for i, t, x in zip(a.tolist(), ts.tolist(), v.tolist(),
                                               strict=True)), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                report.error(f"publish: {r}")

    async def close(self, report: SimulationReport) -> None:
        await self._stack.aclose()


class HttpSink:
    """Batches of up to 1000 readings a POST, a few requests in flight."""

    def __init__(self, *, url: str, api_key: str, refs: list[str], metrics: list[str]) -> None:
        import httpx

        self._client = httpx.AsyncClient(base_url=url, headers={"X-API-Key": api_key},
                                         timeout=30.0)
        self._refs = refs
        self._metrics = metrics
        self._slots = asyncio.Semaphore(HTTP_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        return None

    async def send(self, a: np.ndarray, ts: np.ndarray, v: np.ndarray,
                   report: SimulationReport) -> None:
        refs, metrics = self._refs, self._metrics
        for s in range(0, len(a), HTTP_BATCH):
            readings = [{"asset_id": refs[i], "metric": metrics[i], "ts": t / 1e6, "value": x}
                        for i, t, x in zip(a[s:s + HTTP_BATCH].tolist(),
                                           ts[s:s + HTTP_BATCH].tolist(),
                                           v[s:s + HTTP_BATCH].tolist(), strict=True)]
            await self._slots.acquire()  # back-pressure: at most a few POSTs in flight
            task = asyncio.create_task(self._post(readings, report))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _post(self, readings: list[dict[str, Any]], report: SimulationReport) -> None:
        try:
            r = await self._client.post("/api/v1/telemetry", content=orjson.dumps(
                {"readings": readings}), headers={"Content-Type": "application/json"})
            if r.status_code == 202:
                report.rejected += len(r.json().get("rejected", []))
            else:
                report.error(f"HTTP {r.status_code}: {r.text[:200]}", len(readings))
        except Exception as exc:
            report.error(f"POST failed: {type(exc).__name__}: {exc}", len(readings))
        finally:
            self._slots.release()

    async def close(self, report: SimulationReport) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()


# ---- the run ----

def pick_mqtt_client(choice: MqttClient, rate: float) -> Literal["mosquitto_pub", "python"]:
    if choice != "auto":
        return choice
    if shutil.which("mosquitto_pub") and rate > PYTHON_MQTT_MAX_RATE:
        return "mosquitto_pub"
    return "python"


async def simulate(cfg: SimulationConfig, *, settings: Settings | None = None,
                   out: Callable[[str], None] = print,
                   stop: asyncio.Event | None = None) -> SimulationReport:
    """Create or reuse the assets, then send `cfg.rate` readings a second until
    `cfg.duration_s` has passed or `stop` is set (SIGINT/SIGTERM set it too)."""
    s = settings or get_settings()
    if cfg.rate <= 0 or cfg.assets <= 0:
        raise ValueError("rate and assets must be positive")
    tenant_id, fleet = await ensure_assets(tenant=cfg.tenant, count=cfg.assets,
                                           center=cfg.center, spread_km=cfg.spread_km)
    series = load_series(cfg.data_dir) if cfg.data_dir else synthetic_series()
    source_name = f"real series from {_timeseries_dir(cfg.data_dir)}" if cfg.data_dir \
        else "a synthetic seasonal signal"
    metrics = [KINDS[a.kind].metric for a in fleet]
    sink: Any
    if cfg.transport == "http":
        key = cfg.api_key or await create_api_key(tenant_id=tenant_id)
        sink = HttpSink(url=cfg.url, api_key=key, refs=[a.external_id for a in fleet],
                        metrics=metrics)
        how = f"HTTP POST {cfg.url}/api/v1/telemetry"
    elif pick_mqtt_client(cfg.mqtt_client, cfg.rate) == "mosquitto_pub":
        topic = f"{s.mqtt.bridge.topic_prefix}/{cfg.tenant}/senml"
        names = [f'[{{"n":"{a.external_id}/{m}","t":'.encode()
                 for a, m in zip(fleet, metrics, strict=True)]
        sink = MosquittoPubSink(settings=s, topic=topic, names=names,
                                processes=max(1, math.ceil(cfg.rate / PUB_RATE_PER_PROCESS)))
        how = f"MQTT QoS 1 (mosquitto_pub) SenML on {topic}"
    else:
        prefix = f"{s.mqtt.bridge.topic_prefix}/{cfg.tenant}/telemetry"
        sink = PythonMqttSink(settings=s, topics=[f"{prefix}/{a.external_id}" for a in fleet],
                              metrics=metrics)
        how = f"MQTT QoS 1 on {prefix}/<asset>"
    out(f"simulating {len(fleet)} assets of tenant {cfg.tenant} at {cfg.rate:g} readings/s "
        f"over {how}, from {source_name}")

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    report = SimulationReport()
    await sink.start()
    source = ReadingSource(fleet, series, rate=cfg.rate, t0_us=time.time_ns() // 1000)
    tick = 0.01
    per_tick_max = max(1, math.ceil(cfg.rate * 0.25))  # never burst more than 1/4 s
    t0 = time.monotonic()
    next_report, last_sent, last_t = t0 + cfg.report_every_s, 0, t0
    try:
        while not stop.is_set():
            now = time.monotonic()
            elapsed = now - t0
            if cfg.duration_s is not None and elapsed >= cfg.duration_s:
                break
            due = min(int(elapsed * cfg.rate) - report.sent, per_tick_max)
            if due > 0:
                a, ts, v = source.take(due)
                await sink.send(a, ts, v, report)
                report.sent += due
            if now >= next_report:
                out(f"  {elapsed:6.1f} s  sent {report.sent:,}  "
                    f"{(report.sent - last_sent) / (now - last_t):,.0f}/s  "
                    f"errors {report.errors:,}  rejected {report.rejected:,}")
                next_report, last_sent, last_t = now + cfg.report_every_s, report.sent, now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await stop.wait()
    finally:
        await sink.close(report)  # waits until everything sent is delivered
        report.elapsed_s = time.monotonic() - t0
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    out(f"sent {report.sent:,} readings in {report.elapsed_s:.1f} s: {report.rate:,.0f}/s "
        f"achieved (target {cfg.rate:,.0f}/s); errors {report.errors:,}; "
        f"rejected {report.rejected:,}")
    for sample in report.error_samples:
        out(f"  error: {sample}")
    return report
