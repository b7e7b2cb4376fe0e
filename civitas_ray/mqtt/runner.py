"""Run the bridge without Ray (`civitas mqtt-bridge`): one process, or several spawned.

Each process is one `MqttIngestBridge` with its own index, so its own client ids and
persistent sessions; SIGINT/SIGTERM drain it (commit, ack) before it disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from typing import Any

from civitas_ray.config import get_settings

log = logging.getLogger(__name__)


async def serve(*, index: int, connections: int | None = None, log_every_s: float = 10.0,
                ) -> None:
    """One bridge in this process until a signal; logs its rates every `log_every_s`."""
    from civitas_ray.cache import close_redis
    from civitas_ray.db.session import dispose_engine
    from civitas_ray.mqtt.bridge import MqttIngestBridge

    bridge = MqttIngestBridge(index=index, connections=connections)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, bridge.stop)
    reporter = asyncio.create_task(_report(bridge, log_every_s))
    try:
        await bridge.run()
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        await dispose_engine()
        await close_redis()


async def _report(bridge: Any, every_s: float) -> None:
    last, t_last = 0, time.monotonic()
    while True:
        await asyncio.sleep(every_s)
        snap = bridge.snapshot()
        now = time.monotonic()
        rate = (snap["messages_acked"] - last) / (now - t_last)
        last, t_last = snap["messages_acked"], now
        log.info("mqtt bridge", extra={
            "bridge_id": snap["bridge_id"], "connected": snap["connected"],
            "acked_per_s": round(rate), "received": snap["messages_received"],
            "acked": snap["messages_acked"], "rejected": snap["messages_rejected"],
            "dropped": snap["messages_dropped"], "pending": snap["pending"],
            "reconnects": snap["reconnects"], "throttled": snap["throttled"],
            "last_error": snap["last_error"]})


def _process_main(index: int, connections: int | None) -> None:
    from civitas_ray.logging import configure

    s = get_settings()
    configure(s.log_level, json_output=s.log_json)
    asyncio.run(serve(index=index, connections=connections))


def run(*, processes: int, connections: int | None = None) -> int:
    """Run `processes` bridges until interrupted; returns the worst exit code."""
    if processes <= 1:
        asyncio.run(serve(index=0, connections=connections))
        return 0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_main, args=(i, connections),
                         name=f"civitas-mqtt-bridge-{i}") for i in range(processes)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in procs:
            p.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max((p.exitcode or 0) for p in procs)

