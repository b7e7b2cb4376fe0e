"""Side effects of rule transitions, shared by the stream and zone hosts.

A transition is written (alert row, incident) in its own tenant transaction; the events
it produces are returned for publishing once that transaction has committed.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from civitas_ray.alerts import service as alerts
from civitas_ray.alerts.engine import AlertTransition
from civitas_ray.alerts.models import AlertRule
from civitas_ray.db.session import tenant_session
from civitas_ray.realtime import relay
from civitas_ray.realtime.events import Event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Firing:
    """A rule transition with the subject it concerns."""

    tenant_id: uuid.UUID
    transition: AlertTransition
    rule: AlertRule
    asset_id: uuid.UUID | None
    zone_id: uuid.UUID | None
    metric: str | None
    subject: str


def message(f: Firing) -> str:
    tr = f.transition
    value = "n/a" if tr.value is None else f"{tr.value:g}"
    limit = "" if tr.threshold is None else f" (threshold {tr.threshold:g})"
    return f"{f.metric or 'value'} {tr.condition_type} on {f.subject}: {value}{limit}"


async def apply(firings: list[Firing], events: dict[uuid.UUID, list[Event]],
                stats: dict[str, int]) -> None:
    """Write each transition; append its events to `events` by tenant."""
    for f in firings:
        tr = f.transition
        at = datetime.fromtimestamp(tr.at_us / 1e6, UTC)
        try:
            async with tenant_session(f.tenant_id) as s:
                if tr.kind == "fired":
                    _, evs = await alerts.fire(
                        session=s, tenant_id=f.tenant_id, rule=f.rule, dedup_key=tr.dedup_key,
                        fired_at=at, value=tr.value, threshold=tr.threshold,
                        message=message(f), asset_id=f.asset_id, zone_id=f.zone_id,
                        metric=f.metric, data={"condition": tr.condition_type, **tr.detail})
                    stats["alerts_fired"] = stats.get("alerts_fired", 0) + bool(evs)
                else:
                    _, evs = await alerts.resolve(session=s, tenant_id=f.tenant_id,
                                                  dedup_key=tr.dedup_key, resolved_at=at,
                                                  value=tr.value)
                    stats["alerts_resolved"] = stats.get("alerts_resolved", 0) + bool(evs)
        except Exception:
            stats["errors"] = stats.get("errors", 0) + 1
            log.exception("alert transition failed", extra={"dedup_key": tr.dedup_key})
            continue
        events.setdefault(f.tenant_id, []).extend(Event(type=t, channel=c, data=d)
                                                  for t, c, d in evs)


async def publish_all(events: dict[uuid.UUID, list[Event]], stats: dict[str, int]) -> None:
    """Publish per tenant through the relay: a Redis outage delays events, never loses them."""
    for tenant_id, evs in events.items():
        if not evs:
            continue
        try:
            now = await relay.send(tenant_id, evs)
        except Exception:
            stats["errors"] = stats.get("errors", 0) + 1
            log.exception("malformed events not published", extra={"tenant_id": str(tenant_id)})
            continue
        key = "events" if now else "events_deferred"
        stats[key] = stats.get(key, 0) + len(evs)
