"""Pure state of the MQTT bridge: in-order acknowledgements, counters, back-off.

No I/O here, so each piece is unit-tested without a broker or a database.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any


class Delivery:
    """One QoS 1/2 message of one connection, waiting for its commit before the ack."""

    __slots__ = ("done", "mid", "qos")

    def __init__(self, mid: int, qos: int) -> None:
        self.mid = mid
        self.qos = qos
        self.done = False


class AckWindow:
    """Releases acknowledgements in the order the messages arrived on a connection.

    MQTT (v3.1.1 and v5, section 4.6) wants PUBACKs in the order of the PUBLISHes,
    while batches commit concurrently and may finish out of order: a message that
    is done waits behind an earlier one still being committed.
    """

    def __init__(self) -> None:
        self._order: deque[Delivery] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def received(self, mid: int, qos: int) -> Delivery:
        d = Delivery(mid, qos)
        self._order.append(d)
        return d

    def complete(self, delivery: Delivery) -> list[Delivery]:
        """Mark one message done; returns those now ready to ack, oldest first."""
        delivery.done = True
        ready: list[Delivery] = []
        order = self._order
        while order and order[0].done:
            ready.append(order.popleft())
        return ready


def backoff_delay(attempt: int, *, base_s: float, cap_s: float,
                  rng: random.Random | None = None) -> float:
    """Exponential back-off with "equal jitter": half fixed, half random.

    The fixed half keeps a floor under each wait (no hammering a broker that is coming
    back); the random half spreads many bridges so they do not reconnect in step.
    """
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 30)))
    r = rng or random
    return ceiling / 2 + r.uniform(0, ceiling / 2)


class RateLimit:
    """At most `per_s` events a second; says how many were suppressed meanwhile."""

    def __init__(self, per_s: int, clock: Any = time.monotonic) -> None:
        self._per_s = per_s
        self._clock = clock
        self._window = -1.0
        self._count = 0
        self.suppressed = 0

    def allow(self) -> bool:
        now = int(self._clock())
        if now != self._window:
            self._window, self._count = now, 0
        if self._count < self._per_s:
            self._count += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


@dataclass(slots=True)
class ConnectionState:
    client_id: str
    connected: bool = False
    connected_at: float | None = None
    generation: int = 0  # one per successful connection: acks never cross connections
    failures: int = 0  # consecutive failed attempts (drives the back-off)
    next_retry_in_s: float | None = None


@dataclass(slots=True)
class BridgeStats:
    """Counters of one bridge process, published as its heartbeat for /readyz."""

    bridge_id: str
    started_at: float = field(default_factory=time.time)
    messages_received: int = 0
    messages_acked: int = 0
    messages_redelivered: int = 0  # DUP flag set: the broker resent after a lost ack
    messages_rejected: int = 0  # malformed as a whole (topic, JSON, shape): acked, reported
    messages_dropped: int = 0  # unknown tenant: acked and counted, never stored
    readings_accepted: int = 0
    readings_rejected: int = 0
    unknown_assets: int = 0
    batches: int = 0
    ingest_retries: int = 0  # batches the database refused for now (back-pressure, outage)
    reconnects: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_batch_latency_ms: float = 0.0  # first receive -> commit of the last batch
    reading_age_s: float | None = None  # now - newest reading ts at its commit
    throttled: bool = False  # a batch is waiting for the database

    def error(self, message: str) -> None:
        self.last_error = message[:500]
        self.last_error_at = time.time()

    def snapshot(self, connections: list[ConnectionState], pending: int) -> dict[str, Any]:
        out = asdict(self)
        out["connections"] = [asdict(c) for c in connections]
        out["connected"] = any(c.connected for c in connections)
        out["pending"] = pending  # received, not yet acknowledged
        out["heartbeat_at"] = time.time()
        return out
