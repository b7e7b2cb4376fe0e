"""MQTT ingest through the bridge: one JSON reading per message, QoS 1, many devices.

Each setting (bridge processes x connections per process) gets its own Mosquitto on a
free port (private config: persistence off, no queue limit, so nothing is dropped and
other people's broker on 1883 is untouched) and its own share group and client ids.
The bridge is the real code path: `civitas mqtt-bridge -p P -c C` as OS processes
against the `civitas_bench` database.

Two modes:

- `backlog` (default): the bridge connects once (its persistent sessions and shared
  subscriptions now exist at the broker) and stops; the devices publish the whole
  backlog while it is down (the broker queues it in the sessions); then the bridge
  starts again and we time the drain. On 2 cores this measures the bridge alone: the
  publishers, which would otherwise take CPU from it, have finished.
- `live`: the bridge runs while the devices publish flat out; what the machine does
  with everything (publishers, broker, bridge, PostgreSQL) competing.

Devices are raw-socket MQTT 3.1.1 clients in `--publishers` processes, sending
pre-encoded QoS 1 PUBLISH packets (a window of unacknowledged ones) and counting the
broker's PUBACKs: a few µs of CPU a message, far below the bridge's cost.
Every message carries a distinct (asset, metric, ts), so committed rows == published
means nothing was lost or merged. The bridge's own counters (Redis heartbeat, every
0.25 s) give messages received and acknowledged; the exit status is 1 on any mismatch.

Printed per setting: the publishers' rate (broker PUBACKs), the bridge's rate
(messages / time from the bridge connected, or the first publish in live mode, to
the last PUBACK it sent) and its rate between 10 % and 90 % of the messages, the CPU
seconds each party used meanwhile (from /proc: bridge processes, PostgreSQL's ingest
connections and background processes, Mosquitto, the rest of the machine), and the
1-minute load before and after: the machine is shared, so compare with `other`.

    .venv/bin/python -m bench.mqtt_ingest [--messages 300000] [--settings 1x1,2x1,3x1,2x2]
        [--mode backlog|live] [--devices 1000] [--publishers 2]
        [--bridge-env BATCH_MAX_MESSAGES=4000 ...] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import redis

from bench import common

CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_WINDOW = 30_000  # unacked publishes per device connection; packet ids wrap at 65,535


# ---- broker ----

MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
# The backlog of an offline bridge must fit in its sessions: no per-session limit.
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 0
message_size_limit 8388608
log_dest file {log}
log_type error
log_type warning
"""


@contextmanager
def mosquitto(tmp: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A private broker on a free port, gone afterwards."""
    port = common.free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    conf.write_text(MOSQUITTO_CONF.format(port=port, log=tmp / f"mosquitto-{port}.log"))
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"mosquitto did not start on port {port}") from None
                time.sleep(0.05)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


# ---- devices: raw MQTT 3.1.1 over a socket ----

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    # Protocol "MQTT" level 4, clean session, keep-alive 0 (none: the run is short).
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: bytes, mid: int, payload: bytes) -> bytes:
    body_len = 2 + len(topic) + 2 + len(payload)
    return (b"\x32" + _varint(body_len) + len(topic).to_bytes(2, "big") + topic
            + mid.to_bytes(2, "big") + payload)


@dataclass(frozen=True, slots=True)
class Workload:
    """What the devices send: `per_device` readings from each device, one a message."""

    port: int
    slug: str
    metric: str
    devices: list[str]  # asset ids
    per_device: int
    base_ts: int  # epoch seconds of each device's first reading

    @property
    def messages(self) -> int:
        return len(self.devices) * self.per_device


def build_packets(w: Workload, publisher: int, publishers: int) -> list[bytes]:
    """This publisher's devices (every `publishers`-th), round-robin over time steps."""
    mine = w.devices[publisher::publishers]
    topics = [f"civitas/{w.slug}/telemetry/{d}".encode() for d in mine]
    packets: list[bytes] = []
    metric = w.metric.encode()
    mid = 0
    for k in range(w.per_device):
        ts = datetime.fromtimestamp(w.base_ts + k, UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        head = b'{"metric":"' + metric + b'","ts":"' + ts + b'","value":'
        for j, topic in enumerate(topics):
            mid = mid % 65_535 + 1
            value = str(round((k * 7 + j) % 1000 * 0.25, 2)).encode()
            packets.append(publish_packet(topic, mid, head + value + b"}"))
    return packets


def publisher_main(w: Workload, publisher: int, publishers: int, window: int,
                   start_at: float, out: Any) -> None:
    """One device connection: pre-encode, then send with a window of unacked QoS 1
    messages; reports (acked, first send, last ack, CPU seconds) on `out`."""
    packets = build_packets(w, publisher, publishers)
    sock = socket.create_connection(("127.0.0.1", w.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(f"bench-device-{os.getpid()}-{publisher}"))
    connack = sock.recv(4)
    if connack[:1] != b"\x20" or connack[3:4] != b"\x00":
        raise RuntimeError(f"broker refused the device connection: {connack!r}")
    n, sent, acked, pending = len(packets), 0, 0, b""
    chunk = 256
    time.sleep(max(0.0, start_at - time.time()))
    cpu0, t0 = time.process_time(), time.time()
    while acked < n:
        if sent < n and sent - acked < window:
            upto = min(n, sent + chunk, acked + window)
            sock.sendall(b"".join(packets[sent:upto]))
            sent = upto
            flags = socket.MSG_DONTWAIT
        else:
            flags = 0
        try:
            data = sock.recv(1 << 16, flags)
        except BlockingIOError:
            continue
        if not data:
            raise RuntimeError("broker closed the device connection")
        data = pending + data
        whole = len(data) - len(data) % 4
        acks = np.frombuffer(data[:whole], np.uint8)
        if whole and not (acks[::4] == 0x40).all():
            raise RuntimeError("unexpected packet from the broker (not a PUBACK)")
        acked += whole // 4
        pending = data[whole:]
    t1 = time.time()
    out.put((acked, t0, t1, time.process_time() - cpu0))
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


def start_time(w: Workload, publishers: int) -> float:
    """When every device process will have started and built its packets (~3 µs each)."""
    return time.time() + 1.0 + 0.3 * publishers + 5e-6 * w.messages / publishers


def publish_all(w: Workload, publishers: int, window: int,
                start_at: float) -> tuple[int, float, float, float]:
    """Run the device processes, sending from `start_at` on; returns (acked by the
    broker, first send, last ack, CPU seconds of sending)."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=publisher_main, args=(w, i, publishers, window, start_at, out))
             for i in range(publishers)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    return (sum(r[0] for r in results), min(r[1] for r in results),
            max(r[2] for r in results), sum(r[3] for r in results))


# ---- the bridge ----

@dataclass(slots=True)
class Bridge:
    processes: int
    connections: int
    port: int
    prefix: str
    overrides: dict[str, str]
    profile: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    redis: redis.Redis = field(default_factory=lambda: redis.Redis.from_url(
        _redis_url(), decode_responses=True))

    def start(self) -> None:
        env = {**os.environ,
               "CIVITAS_MQTT__HOST": "127.0.0.1", "CIVITAS_MQTT__PORT": str(self.port),
               "CIVITAS_MQTT__BRIDGE__SHARE_GROUP": self.prefix,
               "CIVITAS_MQTT__BRIDGE__CLIENT_ID_PREFIX": self.prefix,
               "CIVITAS_MQTT__BRIDGE__HEARTBEAT_S": "0.25",
               **{f"CIVITAS_MQTT__BRIDGE__{k.upper()}": v for k, v in self.overrides.items()}}
        prof = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        cmd = [sys.executable, *prof, "-m", "civitas_ray.cli", "mqtt-bridge",
               "-p", str(self.processes), "-c", str(self.connections)]
        self.proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        if self.proc.wait(60) != 0:
            raise RuntimeError(f"the bridge exited with {self.proc.returncode}")

    def states(self) -> list[dict[str, Any]]:
        keys = [f"civitas:{common.BENCH_DB}:mqtt:bridge:{self.prefix}-{i}"
                for i in range(self.processes)]
        return [orjson.loads(v) for v in self.redis.mget(keys) if v is not None]

    def wait_connected(self, timeout_s: float = 60) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.states()
            if len(states) == self.processes and all(
                    c["connected"] for s in states for c in s["connections"]):
                return time.time()
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bridge exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("the bridge did not connect")

    def pids(self) -> list[int]:
        """The runner and the bridge processes it spawned (children by ppid)."""
        assert self.proc is not None
        root = self.proc.pid
        kids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                    kids.append(int(entry.name))
        return [root, *kids]


def _redis_url() -> str:
    from civitas_ray.config import get_settings

    return get_settings().redis.url


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


async def postgres_pids(*, ingest: bool) -> list[int]:
    """The bridge's ingest connections, or PostgreSQL's own background processes
    (WAL writer, checkpointer, ...: shared with everyone, mostly busy with our rows)."""
    from civitas_ray.config import get_settings

    conn = await asyncpg.connect(get_settings().database.admin_dsn)
    if ingest:
        rows = await conn.fetch("select pid from pg_stat_activity where datname = $1 "
                                "and application_name = 'civitas_ingest'", common.BENCH_DB)
    else:
        rows = await conn.fetch("select pid from pg_stat_activity "
                                "where backend_type <> 'client backend'")
    await conn.close()
    return [r["pid"] for r in rows]


async def count_rows(tenant: uuid.UUID, metric: str) -> int:
    from civitas_ray.config import get_settings

    conn = await asyncpg.connect(get_settings().database.admin_dsn)
    n = await conn.fetchval("select count(*) from telemetry where tenant_id = $1 "
                            "and metric = $2", tenant, metric)
    await conn.close()
    return int(n)


# ---- one measurement ----

@dataclass(slots=True)
class Result:
    setting: str
    published: int
    pub_rate: float
    pub_cpu_us: float
    rate_steady: float  # acks/s between 10 % and 90 % of the messages
    rate_overall: float  # messages / (all acked - first message in reach of the bridge)
    rows: int
    acked: int
    received: int
    redelivered: int
    rejected: int
    # CPU seconds while the bridge worked: bridge, postgres (its ingest connections and
    # background processes), mosquitto, publishers (live mode), other (everything else
    # on the machine: other people's work, the kernel, this script)
    cpu: dict[str, float]
    drain_s: float
    load: tuple[float, float]


def _crossing(timeline: list[tuple[float, int]], level: float) -> float:
    """Interpolated time the acked count reached `level`."""
    for (t0, a0), (t1, a1) in itertools.pairwise(timeline):
        if a1 >= level:
            return t0 + (t1 - t0) * ((level - a0) / (a1 - a0) if a1 > a0 else 1.0)
    return timeline[-1][0]


def run_setting(*, tmp: Path, tenant: uuid.UUID, slug: str, devices: list[str],
                messages: int, processes: int, connections: int, mode: str, publishers: int,
                window: int, overrides: dict[str, str], profile: Path | None) -> Result:
    tag = uuid.uuid4().hex[:6]
    metric = f"bench_{tag}"
    per_device = max(1, messages // len(devices))
    load0 = os.getloadavg()[0]
    with mosquitto(tmp) as (port, broker):
        w = Workload(port=port, slug=slug, metric=metric, devices=devices,
                     per_device=per_device, base_ts=int(time.time()) - per_device - 600)
        bridge = Bridge(processes, connections, port, f"bench-{tag}", overrides)
        # Sessions and shared subscriptions first, so the broker queues for them.
        bridge.start()
        bridge.wait_connected()
        if mode == "backlog":
            bridge.stop()
            published, p0, p1, pub_cpu = publish_all(w, publishers, window,
                                                     start_time(w, publishers))
            bridge.profile = profile
            bridge.start()
        t_ready = bridge.wait_connected()
        if mode == "live":
            devices_run = ThreadPoolExecutor(1)
            t_ready = start_time(w, publishers)
            pending = devices_run.submit(publish_all, w, publishers, window, t_ready)
            time.sleep(max(0.0, t_ready - time.time()))  # their start-up is not measured
        pids = bridge.pids()
        pg_background = asyncio.run(postgres_pids(ingest=False))
        pg_background_cpu0 = cpu_s(pg_background)
        busy0 = machine_busy_s()
        broker_cpu0 = cpu_s([broker.pid])
        bridge_cpu0 = cpu_s(pids)
        timeline: list[tuple[float, int]] = [(t_ready, 0)]
        last_progress = time.monotonic()
        while True:
            states = bridge.states()
            acked = sum(s["messages_acked"] for s in states)
            if acked > timeline[-1][1]:
                last_progress = time.monotonic()
            timeline.append((time.time(), acked))
            if acked >= w.messages or time.monotonic() - last_progress > 30:
                break
            time.sleep(0.1)
        busy = machine_busy_s() - busy0
        pg_pids = asyncio.run(postgres_pids(ingest=True))
        cpu = {"bridge": cpu_s(pids) - bridge_cpu0,
               "postgres": cpu_s(pg_pids) + cpu_s(pg_background) - pg_background_cpu0,
               "mosquitto": cpu_s([broker.pid]) - broker_cpu0}
        time.sleep(0.5)  # one more heartbeat: final counters
        states = bridge.states()
        if mode == "live":
            published, p0, p1, pub_cpu = pending.result(600)
            devices_run.shutdown()
            cpu["publishers"] = pub_cpu
            t_ready = p0
        cpu["other"] = max(0.0, busy - sum(cpu.values()))
        bridge.stop()
        rows = asyncio.run(count_rows(tenant, metric))
    t_done = _crossing(timeline, w.messages)
    steady = 0.8 * w.messages / max(1e-9, _crossing(timeline, 0.9 * w.messages)
                                    - _crossing(timeline, 0.1 * w.messages))
    return Result(
        setting=f"{processes}x{connections}", published=published,
        pub_rate=published / (p1 - p0), pub_cpu_us=pub_cpu / published * 1e6,
        rate_steady=steady, rate_overall=w.messages / max(1e-9, t_done - t_ready),
        rows=rows, acked=sum(s["messages_acked"] for s in states),
        received=sum(s["messages_received"] for s in states),
        redelivered=sum(s["messages_redelivered"] for s in states),
        rejected=sum(s["messages_rejected"] + s["messages_dropped"] for s in states),
        cpu=cpu, drain_s=t_done - t_ready, load=(load0, os.getloadavg()[0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=300_000, help="per setting")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--settings", default="1x1,2x1,3x1,2x2",
                    help="bridge processes x connections per process, comma-separated")
    ap.add_argument("--mode", choices=("backlog", "live"), default="backlog")
    ap.add_argument("--publishers", type=int, default=2, help="device processes")
    ap.add_argument("--window", type=int, default=10_000,
                    help="unacked QoS 1 publishes per device connection")
    ap.add_argument("--bridge-env", nargs="*", default=[], metavar="NAME=VALUE",
                    help="bridge settings (CIVITAS_MQTT__BRIDGE__NAME), e.g. "
                         "BATCH_MAX_MESSAGES=4000")
    ap.add_argument("--profile", type=Path,
                    help="cProfile the bridge's drain into this file (use with 1x1)")
    args = ap.parse_args()
    if not 1 <= args.window <= MAX_WINDOW:
        ap.error(f"--window must be 1..{MAX_WINDOW}")
    try:
        settings = [tuple(int(x) for x in s.split("x")) for s in args.settings.split(",")]
        overrides = dict(kv.split("=", 1) for kv in args.bridge_env)
    except ValueError:
        ap.error("--settings is like 1x1,2x1 and --bridge-env like NAME=VALUE")
    if any(len(s) != 2 or min(s) < 1 for s in settings):
        ap.error("--settings is like 1x1,2x1 (processes x connections, each >= 1)")

    asyncio.run(common.ensure_database())
    tenant, assets, _ = asyncio.run(common.make_tenant_with_assets(args.devices))
    slug = asyncio.run(_slug(tenant))
    devices = [str(a) for a in assets]
    print(f"MQTT ingest, mode {args.mode}: {args.devices} devices, one JSON reading per "
          f"message, QoS 1; {args.publishers} publisher processes (raw MQTT 3.1.1, "
          f"window {args.window}); bridge settings {overrides or 'defaults'}")
    print(f"{'P x C':>5} {'published':>9} {'pub msg/s':>9} {'bridge msg/s':>12} "
          f"{'(10-90%)':>9} {'drain s':>7} {'rows':>8} {'acked':>8} {'lost':>4} "
          f"{'redeliv':>7}  CPU s: bridge / postgres / mosquitto / other  load1")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for processes, connections in settings:
            r = run_setting(tmp=Path(tmp), tenant=tenant, slug=slug, devices=devices,
                            messages=args.messages, processes=processes,
                            connections=connections, mode=args.mode,
                            publishers=args.publishers, window=args.window,
                            overrides=overrides, profile=args.profile)
            lost = r.published - r.rows
            ok = r.rows == r.published == r.acked and r.rejected == 0
            failed |= not ok
            cpu = " / ".join(f"{r.cpu.get(k, 0):.1f}" for k in
                             ("bridge", "postgres", "mosquitto", "other"))
            if "publishers" in r.cpu:
                cpu += f" (+ publishers {r.cpu['publishers']:.1f})"
            print(f"{r.setting:>5} {r.published:>9,} {r.pub_rate:>9,.0f} "
                  f"{r.rate_overall:>12,.0f} {r.rate_steady:>9,.0f} {r.drain_s:>7.1f} "
                  f"{r.rows:>8,} {r.acked:>8,} {lost:>4} {r.redelivered:>7}  {cpu}  "
                  f"{r.load[0]:.2f}->{r.load[1]:.2f}" + ("" if ok else "  <-- MISMATCH"),
                  flush=True)
            bridge_us = r.cpu["bridge"] / r.published * 1e6
            print(f"      bridge CPU {bridge_us:.0f} µs/message ({r.cpu['bridge'] / r.drain_s:.2f}"
                  f" cores), postgres {r.cpu['postgres'] / r.published * 1e6:.0f} µs/message; "
                  f"publishers {r.pub_cpu_us:.1f} µs/message; received {r.received:,}",
                  flush=True)
    print("goal: >= 20,000 messages/s through the bridge, nothing lost")
    print(f"machine: {common.machine()}")
    if failed:
        sys.exit(1)


async def _slug(tenant: uuid.UUID) -> str:
    from civitas_ray.config import get_settings

    conn = await asyncpg.connect(get_settings().database.admin_dsn)
    slug = await conn.fetchval("select slug from tenant where id = $1", tenant)
    await conn.close()
    return str(slug)


if __name__ == "__main__":
    main()
