"""Alert rules (CRUD) and the side effects of a rule firing or recovering.

`fire` and `resolve` are called by the entity hosts inside a tenant transaction; they
write the `alert` row, open or update the incident for the condition (one per ongoing
condition, keyed by the alert's dedup key) and return the events to publish once the
transaction has committed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.alerts.models import Alert, AlertRule
from civitas_ray.assets.models import Asset
from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.errors import NotFound, ValidationFailed
from civitas_ray.incidents import service as incidents
from civitas_ray.incidents.models import Incident
from civitas_ray.incidents.schemas import IncidentStatus
from civitas_ray.zones.models import Zone

RULE_ACTOR = Actor(type="system", label="alert-engine")


def rule_snapshot(rule: AlertRule) -> dict[str, Any]:
    return {
        "id": str(rule.id), "name": rule.name, "asset_id": str(rule.asset_id) if rule.asset_id
        else None, "zone_id": str(rule.zone_id) if rule.zone_id else None,
        "metric": rule.metric, "condition": rule.condition, "severity": rule.severity,
        "for_seconds": rule.for_seconds, "enabled": rule.enabled,
    }


async def _check_subject(*, session: AsyncSession, tenant_id: uuid.UUID,
                         asset_id: uuid.UUID | None, zone_id: uuid.UUID | None) -> None:
    if asset_id is None and zone_id is None:
        raise ValidationFailed("A rule needs an asset_id or a zone_id")
    if asset_id is not None and (await session.execute(select(Asset.id).where(
            Asset.id == asset_id, Asset.tenant_id == tenant_id,
            Asset.deleted_at.is_(None)))).first() is None:
        raise ValidationFailed(f"Asset {asset_id} not found", errors=[
            {"loc": ["body", "asset_id"], "msg": "unknown asset", "type": "not_found"}])
    if zone_id is not None and (await session.execute(select(Zone.id).where(
            Zone.id == zone_id, Zone.tenant_id == tenant_id,
            Zone.deleted_at.is_(None)))).first() is None:
        raise ValidationFailed(f"Zone {zone_id} not found", errors=[
            {"loc": ["body", "zone_id"], "msg": "unknown zone", "type": "not_found"}])


async def create_rule(*, session: AsyncSession, tenant_id: uuid.UUID, values: dict[str, Any],
                      actor: Actor, created_by: uuid.UUID | None) -> AlertRule:
    await _check_subject(session=session, tenant_id=tenant_id, asset_id=values.get("asset_id"),
                         zone_id=values.get("zone_id"))
    rule = AlertRule(id=uuid.uuid4(), tenant_id=tenant_id, created_by=created_by, **values)
    session.add(rule)
    await session.flush()
    await session.refresh(rule)
    await audit.record(session=session, actor=actor, action="alert_rule.create",
                       tenant_id=tenant_id, target_type="alert_rule", target_id=rule.id,
                       after=rule_snapshot(rule))
    return rule


async def get_rule(*, session: AsyncSession, rule_id: uuid.UUID,
                   include_deleted: bool = False) -> AlertRule:
    q = select(AlertRule).where(AlertRule.id == rule_id)
    if not include_deleted:
        q = q.where(AlertRule.deleted_at.is_(None))
    rule = (await session.execute(q)).scalar_one_or_none()
    if rule is None:
        raise NotFound(f"Alert rule {rule_id} not found")
    return rule


async def list_rules(*, session: AsyncSession, limit: int, offset: int,
                     asset_id: uuid.UUID | None = None, zone_id: uuid.UUID | None = None,
                     enabled: bool | None = None,
                     include_deleted: bool = False) -> tuple[list[AlertRule], int]:
    q = select(AlertRule)
    if not include_deleted:
        q = q.where(AlertRule.deleted_at.is_(None))
    if asset_id:
        q = q.where(AlertRule.asset_id == asset_id)
    if zone_id:
        q = q.where(AlertRule.zone_id == zone_id)
    if enabled is not None:
        q = q.where(AlertRule.enabled.is_(enabled))
    total = (await session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = (await session.execute(q.order_by(AlertRule.created_at, AlertRule.id)
                                  .limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def update_rule(*, session: AsyncSession, rule: AlertRule, values: dict[str, Any],
                      actor: Actor) -> AlertRule:
    before = rule_snapshot(rule)
    merged = {"asset_id": rule.asset_id, "zone_id": rule.zone_id, **values}
    await _check_subject(session=session, tenant_id=rule.tenant_id, asset_id=merged["asset_id"],
                         zone_id=merged["zone_id"])
    for key, value in values.items():
        setattr(rule, key, value)
    await session.flush()
    await session.refresh(rule)
    await audit.record(session=session, actor=actor, action="alert_rule.update",
                       tenant_id=rule.tenant_id, target_type="alert_rule", target_id=rule.id,
                       before=before, after=rule_snapshot(rule))
    return rule


async def set_rule_deleted(*, session: AsyncSession, rule: AlertRule, deleted: bool,
                           actor: Actor) -> AlertRule:
    before = rule_snapshot(rule)
    rule.deleted_at = datetime.now(UTC) if deleted else None
    await session.flush()
    await session.refresh(rule)
    await audit.record(session=session, actor=actor,
                       action="alert_rule.delete" if deleted else "alert_rule.restore",
                       tenant_id=rule.tenant_id, target_type="alert_rule", target_id=rule.id,
                       before=before, after=rule_snapshot(rule))
    return rule


async def active_rules(*, session: AsyncSession) -> list[AlertRule]:
    """Every enabled rule visible in the session's tenant context."""
    return list((await session.execute(select(AlertRule).where(
        AlertRule.enabled.is_(True), AlertRule.deleted_at.is_(None)))).scalars())


def alert_event_data(alert: Alert) -> dict[str, Any]:
    return {
        "alert_id": str(alert.id), "rule_id": str(alert.rule_id) if alert.rule_id else None,
        "incident_id": str(alert.incident_id) if alert.incident_id else None,
        "dedup_key": alert.dedup_key, "severity": alert.severity, "status": alert.status,
        "asset_id": str(alert.asset_id) if alert.asset_id else None,
        "zone_id": str(alert.zone_id) if alert.zone_id else None, "metric": alert.metric,
        "value": alert.value, "threshold": alert.threshold, "message": alert.message,
        "fired_at": alert.fired_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "data": alert.data,
    }


def _incident_data(incident: Incident, created: bool) -> dict[str, Any]:
    return {"incident_id": str(incident.id), "number": incident.number, "title": incident.title,
            "status": incident.status, "severity": incident.severity,
            "zone_id": str(incident.zone_id) if incident.zone_id else None,
            "asset_id": str(incident.asset_id) if incident.asset_id else None,
            "created": created}


async def fire(*, session: AsyncSession, tenant_id: uuid.UUID, rule: AlertRule, dedup_key: str,
               fired_at: datetime, value: float | None, threshold: float | None, message: str,
               asset_id: uuid.UUID | None, zone_id: uuid.UUID | None, metric: str | None,
               data: dict[str, Any] | None = None,
               ) -> tuple[Alert | None, list[tuple[str, str, dict[str, Any]]]]:
    """Record a firing and open/update its incident; idempotent per dedup key.

    Returns the alert (None if it was already firing) and (type, channel, data) events.
    """
    existing = (await session.execute(select(Alert).where(
        Alert.dedup_key == dedup_key, Alert.status == "firing"))).scalar_one_or_none()
    if existing is not None:
        return None, []
    alert = Alert(id=uuid.uuid4(), tenant_id=tenant_id, rule_id=rule.id, dedup_key=dedup_key,
                  asset_id=asset_id, zone_id=zone_id, metric=metric, severity=rule.severity,
                  status="firing", message=message, value=value, threshold=threshold,
                  data=data or {}, fired_at=fired_at)
    try:
        async with session.begin_nested():
            session.add(alert)
            await session.flush()
    except IntegrityError:
        return None, []  # a concurrent host fired the same condition first
    domain = "data_quality" if rule.condition.get("type") == "data_quality" else "general"
    incident, created = await incidents.open_or_update(
        session=session, tenant_id=tenant_id, dedup_key=dedup_key,
        title=f"{rule.name}: {message}", severity=rule.severity, domain=domain, source="rule",
        zone_id=zone_id, asset_id=asset_id,
        data={"alert_id": str(alert.id), "value": value, "threshold": threshold},
        actor=RULE_ACTOR)
    alert.incident_id = incident.id
    await session.flush()
    return alert, [
        ("alert.fired", "alerts", alert_event_data(alert)),
        ("incident.opened" if created else "incident.updated", "incidents",
         _incident_data(incident, created)),
    ]


async def resolve(*, session: AsyncSession, tenant_id: uuid.UUID, dedup_key: str,
                  resolved_at: datetime, value: float | None,
                  ) -> tuple[Alert | None, list[tuple[str, str, dict[str, Any]]]]:
    """Recovery: resolve the firing alert and the incident it opened (if still active)."""
    alert = (await session.execute(select(Alert).where(
        Alert.dedup_key == dedup_key, Alert.status == "firing")
        .with_for_update())).scalar_one_or_none()
    if alert is None:
        return None, []
    alert.status = "resolved"
    alert.resolved_at = resolved_at
    alert.data = {**alert.data, "recovery_value": value}
    await session.flush()
    events: list[tuple[str, str, dict[str, Any]]] = [
        ("alert.resolved", "alerts", alert_event_data(alert))]
    if alert.incident_id is not None:
        incident = (await session.execute(select(Incident).where(
            Incident.id == alert.incident_id))).scalar_one_or_none()
        if incident is not None and incident.status in ("open", "acknowledged"):
            incident = await incidents.transition(
                session=session, incident=incident, status=IncidentStatus.RESOLVED,
                actor=RULE_ACTOR, note=f"Condition recovered (value {value})")
            events.append(("incident.resolved", "incidents", _incident_data(incident, False)))
    return alert, events


async def resolve_for_rule(*, session: AsyncSession, rule_id: uuid.UUID) -> int:
    """A deleted or disabled rule stops its firing alerts."""
    result = await session.execute(update(Alert).where(
        Alert.rule_id == rule_id, Alert.status == "firing").values(
        status="resolved", resolved_at=datetime.now(UTC)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
