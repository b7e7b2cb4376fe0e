"""WebSocket fan-out: N clients of one tenant subscribed to `alerts`, events published
through `civitas_ray.realtime.events.publish` at a steady rate.

One run: the FastAPI app under uvicorn in this process (no Ray needed: the hub reads the
tenant's Redis stream), `--procs` spawned client processes holding `--clients` sockets
in all (the clients' CPU stays out of the server's process, but all share the 2 cores),
one publisher process (spawned) sending `--batch` events every `--period` seconds for
`--seconds`. Each event carries its publication time; each client records, per event,
now - that time. Reported: events/s delivered (sum over clients), the delay
percentiles, and the server's RSS per connected client.

    .venv/bin/python -m bench.ws_fanout [--clients 2000] [--rate 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import resource
import socket
import time
import uuid
from typing import Any

import numpy as np

from bench import common

PASSWORD = "bench-Password-123"  # noqa: S105 (a throwaway bench user)


def raise_nofile(want: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `want` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def client_proc(url: str, token: str, n: int, ready: Any, stop: Any, out: Any) -> None:
    """`n` sockets subscribed to `alerts`; count events and sample delays until stop_at."""
    import orjson
    import websockets

    raise_nofile(n + 256)

    async def one(i: int, counts: list[int], delays: list[float], opened: list[Any]) -> None:
        ws = await websockets.connect(url.replace("http", "ws") + "/ws?token=" + token,
                                      max_size=None, open_timeout=60, ping_interval=None)
        opened.append(ws)
        assert orjson.loads(await ws.recv())["type"] == "authenticated"
        await ws.send(orjson.dumps({"type": "subscribe", "channels": ["alerts"]}).decode())
        while True:
            msg = orjson.loads(await ws.recv())
            if isinstance(msg, dict) and msg.get("type") == "subscribed":
                break
        counts[0] += 1
        sample = i % 10 == 0  # delays from every 10th client keep the lists small
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                now = time.time()
                frame = orjson.loads(raw)
                for m in frame if isinstance(frame, list) else [frame]:
                    if m.get("channel") == "alerts":
                        counts[1] += 1
                        if sample:
                            delays.append(now - m["data"]["t"])

    async def main() -> None:
        counts = [0, 0]
        delays: list[float] = []
        opened: list[Any] = []
        tasks = []
        for i in range(n):  # connect in waves so the server's accept queue keeps up
            tasks.append(asyncio.create_task(one(i, counts, delays, opened)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        deadline = time.time() + 120
        while counts[0] < n and time.time() < deadline:
            if any(t.done() and t.exception() for t in tasks):
                break
            await asyncio.sleep(0.1)
        failed = sum(1 for t in tasks if t.done() and t.exception())
        ready.put((counts[0], failed))
        await asyncio.to_thread(stop.wait)
        out.put((counts[1], delays))
        for ws in opened:
            with contextlib.suppress(Exception):
                await ws.close()
        for t in tasks:
            t.cancel()

    asyncio.run(main())


def publisher_proc(tenant: str, rate: float, batch: int, seconds: float, out: Any) -> None:
    """`batch` events per `events.publish` call at `rate` events/s; report what was sent."""
    from civitas_ray.realtime.events import Event, publish

    async def go() -> tuple[int, float, int]:
        t = uuid.UUID(tenant)
        sent = late = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            now = time.time()
            await publish(t, [Event("alert.fired", "alerts",
                                    {"t": now, "seq": sent + i, "severity": "minor"})
                              for i in range(batch)])
            sent += batch
            wait = sent / rate - (time.perf_counter() - start)
            late += wait < 0
            await asyncio.sleep(max(0.0, wait))
        return sent, time.perf_counter() - start, late

    out.put(asyncio.run(go()))


async def make_user() -> tuple[uuid.UUID, str]:
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import set_context, tenant_session
    from civitas_ray.users import service as users
    from civitas_ray.users.schemas import UserCreate

    tenant, _, _ = await common.make_tenant_with_assets(1)
    email = f"viewer.{uuid.uuid4().hex[:8]}@example.org"
    async with tenant_session(None, system=True) as s:
        await set_context(s, tenant_id=tenant)
        await users.create(session=s, tenant_id=tenant, actor=SYSTEM_ACTOR,
                           data=UserCreate(email=email, password=PASSWORD, role="operator"))
    return tenant, email


async def run(args: argparse.Namespace) -> None:
    import httpx
    import uvicorn

    from civitas_ray.api.app import create_app
    limit = raise_nofile(args.clients + 1024)
    clients = min(args.clients, limit - 512)
    if clients < args.clients:
        print(f"RLIMIT_NOFILE {limit}: clients reduced to {clients}")
    await common.ensure_database()
    tenant, email = await make_user()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(), lifespan="on", log_config=None,
                                           access_log=False, log_level="warning",
                                           backlog=4096, ws_max_queue=64))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            raise RuntimeError("the server did not start")
        await asyncio.sleep(0.01)
    procs: list[Any] = []
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            r = await c.post("/api/v1/auth/token", data={"username": email,
                                                         "password": PASSWORD})
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
        base_rss = rss_mib()
        ctx = mp.get_context("spawn")
        ready, out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        per = [clients // args.procs + (i < clients % args.procs) for i in range(args.procs)]
        t_connect = time.time()
        for n in per:
            p = ctx.Process(target=client_proc, args=(url, token, n, ready, stop, out),
                            daemon=True)
            p.start()
            procs.append(p)
        connected = failed = 0
        for _ in procs:
            c_ok, c_failed = await asyncio.to_thread(ready.get, True, 300)
            connected += c_ok
            failed += c_failed
        connect_s = time.time() - t_connect
        await asyncio.sleep(1.0)
        conn_rss = rss_mib()
        print(f"{connected} clients connected and subscribed in {connect_s:.1f} s "
              f"({failed} failed); server RSS {base_rss:.0f} -> {conn_rss:.0f} MiB",
              flush=True)

        q_pub = ctx.Queue()
        pub = ctx.Process(target=publisher_proc,
                          args=(str(tenant), args.rate, args.batch, args.seconds, q_pub))
        pub.start()
        sent, pub_s, late = await asyncio.to_thread(q_pub.get, True, args.seconds + 60)
        pub.join(10)
        await asyncio.sleep(args.drain)  # what is still in flight gets delivered
        peak_rss = rss_mib()
        stop.set()  # every client process reports its counts and delay samples
        delivered = 0
        delays: list[float] = []
        for _ in procs:
            got, d = await asyncio.to_thread(out.get, True, 120)
            delivered += got
            delays.extend(d)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(10)
        server.should_exit = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, 30)
        sock.close()

    expected = sent * connected
    ms = np.asarray(delays) * 1e3
    elapsed = pub_s + args.drain
    print(f"\n{connected} clients, published {sent} events in {pub_s:.1f} s "
          f"({sent / pub_s:,.0f}/s in batches of {args.batch}; publisher late {late} times)")
    print(f"delivered {delivered:,} of {expected:,} client-events "
          f"({delivered / max(expected, 1):.1%}): {delivered / elapsed:,.0f} events/s "
          f"delivered in total (over {elapsed:.1f} s incl. {args.drain:.0f} s drain)")
    if ms.size:
        p50, p99 = np.percentile(ms, [50, 99])
        print(f"delivery delay (publish -> client), sampled on 10 % of clients: "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ms.max():.1f} ms")
    print(f"server RSS per client: {(conn_rss - base_rss) * 1024 / max(connected, 1):.1f} KiB "
          f"after connecting; peak while publishing {peak_rss:.0f} MiB")
    print(f"machine: {common.machine()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--rate", type=float, default=50.0, help="events/s published")
    ap.add_argument("--batch", type=int, default=5, help="events per publish call")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--drain", type=float, default=3.0)
    args = ap.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
