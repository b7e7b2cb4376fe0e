"""Incidents: a status state machine, an append-only timeline, and alert de-duplication.

Every mutation appends its timeline event and its audit row in the caller's transaction,
so an incident, its history and its audit trail commit (or roll back) together.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import case, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.assets.models import Asset
from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.auth.models import AppUser
from civitas_ray.errors import Conflict, NotFound, ValidationFailed
from civitas_ray.incidents.models import Incident, IncidentEvent
from civitas_ray.incidents.schemas import (
    SEVERITY_RANK,
    IncidentCreate,
    IncidentDomain,
    IncidentEventKind,
    IncidentEventRead,
    IncidentFilter,
    IncidentRead,
    IncidentSeverity,
    IncidentStatus,
    IncidentUpdate,
)
from civitas_ray.zones.models import Zone

S = IncidentStatus

# The whole lifecycle in one place: resolved -> open is a reopen; closed is final.
TRANSITIONS: Mapping[IncidentStatus, frozenset[IncidentStatus]] = {
    S.OPEN: frozenset({S.ACKNOWLEDGED, S.RESOLVED}),
    S.ACKNOWLEDGED: frozenset({S.RESOLVED}),
    S.RESOLVED: frozenset({S.CLOSED, S.OPEN}),
    S.CLOSED: frozenset(),
}

# The timestamp each target status stamps; a reopen clears the later ones instead.
STAMPS: Mapping[IncidentStatus, str] = {
    S.ACKNOWLEDGED: "acknowledged_at", S.RESOLVED: "resolved_at", S.CLOSED: "closed_at",
}

# Statuses in which an incident holds its dedup key (mirrors uq_incident_tenant_id_dedup_key_open).
ACTIVE: tuple[str, ...] = (S.OPEN, S.ACKNOWLEDGED)

SORTABLE = {
    "opened_at": Incident.opened_at,
    "number": Incident.number,
    "severity": case(SEVERITY_RANK, value=Incident.severity, else_=-1),
}


def allowed_next(current: IncidentStatus) -> list[IncidentStatus]:
    """The legal next statuses, in lifecycle order (stable for messages and clients)."""
    return [s for s in IncidentStatus if s in TRANSITIONS[current]]


def check_transition(current: IncidentStatus, target: IncidentStatus) -> None:
    """Pure guard of the state machine; the Conflict names what would have been legal."""
    if target in TRANSITIONS[current]:
        return
    allowed = allowed_next(current)
    hint = (f"allowed next: {', '.join(allowed)}" if allowed
            else f"'{current}' is final, no further transition is allowed")
    raise Conflict(f"An incident cannot go from '{current}' to '{target}'; {hint}",
                   allowed=[str(s) for s in allowed])


def snapshot(incident: Incident) -> dict[str, object]:
    return IncidentRead.model_validate(incident).model_dump(mode="json")


def event_snapshot(event: IncidentEvent) -> dict[str, object]:
    return IncidentEventRead.model_validate(event).model_dump(mode="json")


def _user_id(actor: Actor) -> uuid.UUID | None:
    """Only users are app_user rows; device keys and the system leave the column empty."""
    return uuid.UUID(actor.id) if actor.type == "user" and actor.id else None


async def _check_refs(*, session: AsyncSession, tenant_id: uuid.UUID,
                      zone_id: uuid.UUID | None, asset_id: uuid.UUID | None) -> None:
    """A foreign key would accept another tenant's zone; the tenant filter does not."""
    if zone_id is not None:
        found = (await session.execute(select(Zone.id).where(
            Zone.id == zone_id, Zone.tenant_id == tenant_id, Zone.deleted_at.is_(None)))).first()
        if found is None:
            raise ValidationFailed(f"Zone {zone_id} does not exist in this tenant",
                                   errors=[{"loc": ["body", "zone_id"], "msg": "unknown zone"}])
    if asset_id is not None:
        found = (await session.execute(select(Asset.id).where(
            Asset.id == asset_id, Asset.tenant_id == tenant_id,
            Asset.deleted_at.is_(None)))).first()
        if found is None:
            raise ValidationFailed(f"Asset {asset_id} does not exist in this tenant",
                                   errors=[{"loc": ["body", "asset_id"], "msg": "unknown asset"}])


async def _append(*, session: AsyncSession, incident: Incident, kind: IncidentEventKind,
                  actor: Actor, body: str = "", data: dict[str, Any] | None = None,
                  ) -> IncidentEvent:
    event = IncidentEvent(id=uuid.uuid4(), tenant_id=incident.tenant_id,
                          incident_id=incident.id, kind=str(kind), actor_id=_user_id(actor),
                          body=body, data=audit.jsonable(data) or {})
    session.add(event)
    await session.flush()
    await session.refresh(event)
    return event


async def get(*, session: AsyncSession, tenant_id: uuid.UUID, incident_id: uuid.UUID,
              include_deleted: bool = False) -> Incident | None:
    q = select(Incident).where(Incident.id == incident_id, Incident.tenant_id == tenant_id)
    if not include_deleted:
        q = q.where(Incident.deleted_at.is_(None))
    return (await session.execute(q)).scalar_one_or_none()


async def require(*, session: AsyncSession, tenant_id: uuid.UUID, incident_id: uuid.UUID,
                  include_deleted: bool = False) -> Incident:
    incident = await get(session=session, tenant_id=tenant_id, incident_id=incident_id,
                         include_deleted=include_deleted)
    if incident is None:
        raise NotFound(f"Incident {incident_id} not found")
    return incident


async def list_(*, session: AsyncSession, tenant_id: uuid.UUID, filters: IncidentFilter,
                limit: int, offset: int, sort: str = "-opened_at") -> tuple[list[Incident], int]:
    stmt = select(Incident).where(Incident.tenant_id == tenant_id)
    if not filters.include_deleted:
        stmt = stmt.where(Incident.deleted_at.is_(None))
    if filters.status:
        stmt = stmt.where(Incident.status.in_([str(s) for s in filters.status]))
    for column, value in ((Incident.severity, filters.severity),
                          (Incident.domain, filters.domain), (Incident.zone_id, filters.zone_id),
                          (Incident.asset_id, filters.asset_id),
                          (Incident.assignee_id, filters.assignee_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    if filters.q:
        stmt = stmt.where(Incident.title.icontains(filters.q, autoescape=True)
                          | Incident.description.icontains(filters.q, autoescape=True))
    if filters.opened_since is not None:
        stmt = stmt.where(Incident.opened_at >= filters.opened_since)
    if filters.opened_until is not None:
        stmt = stmt.where(Incident.opened_at < filters.opened_until)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    col = SORTABLE[sort.lstrip("-")]
    # Number breaks ties so pages never overlap or skip rows.
    stmt = stmt.order_by(col.desc() if sort.startswith("-") else col.asc(),
                         Incident.number.desc())
    rows = (await session.execute(stmt.limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def _insert(*, session: AsyncSession, tenant_id: uuid.UUID, data: IncidentCreate,
                  actor: Actor, source: str, dedup_key: str | None,
                  event_data: dict[str, Any]) -> Incident:
    await _check_refs(session=session, tenant_id=tenant_id, zone_id=data.zone_id,
                      asset_id=data.asset_id)
    incident = Incident(
        id=uuid.uuid4(), tenant_id=tenant_id, title=data.title, description=data.description,
        domain=str(data.domain), severity=str(data.severity), status=str(S.OPEN),
        source=source, dedup_key=dedup_key, zone_id=data.zone_id, asset_id=data.asset_id,
        created_by=_user_id(actor), properties=data.properties)
    session.add(incident)
    await session.flush()
    await session.refresh(incident)
    await _append(session=session, incident=incident, kind=IncidentEventKind.CREATED,
                  actor=actor, body=incident.title, data=event_data)
    await audit.record(session=session, actor=actor, action="incident.create",
                       tenant_id=tenant_id, target_type="incident", target_id=incident.id,
                       after=snapshot(incident))
    return incident


async def create(*, session: AsyncSession, tenant_id: uuid.UUID, data: IncidentCreate,
                 actor: Actor) -> Incident:
    """A manual incident, opened now, with a 'created' event."""
    return await _insert(session=session, tenant_id=tenant_id, data=data, actor=actor,
                         source="manual", dedup_key=None,
                         event_data={"source": "manual", "severity": str(data.severity)})


async def update(*, session: AsyncSession, incident: Incident, data: IncidentUpdate,
                 actor: Actor) -> Incident:
    """Apply a partial change; the 'update' event lists only fields whose value changed."""
    changes = data.model_dump(exclude_unset=True)
    await _check_refs(session=session, tenant_id=incident.tenant_id,
                      zone_id=changes.get("zone_id"), asset_id=changes.get("asset_id"))
    before = snapshot(incident)
    for key, value in changes.items():
        setattr(incident, key, value)
    await session.flush()
    await session.refresh(incident)
    after = snapshot(incident)
    changed = {k: {"from": before[k], "to": after[k]} for k in changes if before[k] != after[k]}
    if not changed:
        return incident
    await _append(session=session, incident=incident, kind=IncidentEventKind.UPDATE,
                  actor=actor, data={"changed": changed})
    await audit.record(session=session, actor=actor, action="incident.update",
                       tenant_id=incident.tenant_id, target_type="incident",
                       target_id=incident.id, before=before, after=after)
    return incident


async def set_deleted(*, session: AsyncSession, incident: Incident, deleted: bool,
                      actor: Actor) -> Incident:
    """Soft delete keeps the row (and its dedup key, if still active) for the record."""
    before = snapshot(incident)
    incident.deleted_at = datetime.now(UTC) if deleted else None
    await session.flush()
    await session.refresh(incident)
    await audit.record(session=session, actor=actor,
                       action="incident.delete" if deleted else "incident.restore",
                       tenant_id=incident.tenant_id, target_type="incident",
                       target_id=incident.id, before=before, after=snapshot(incident))
    return incident


async def assign(*, session: AsyncSession, incident: Incident, assignee_id: uuid.UUID | None,
                 actor: Actor, note: str | None = None) -> Incident:
    """Hand the incident to a live, active user of its tenant (None unassigns)."""
    if assignee_id is not None:
        user = (await session.execute(select(AppUser.id).where(
            AppUser.id == assignee_id, AppUser.tenant_id == incident.tenant_id,
            AppUser.deleted_at.is_(None), AppUser.is_active.is_(True)))).first()
        if user is None:
            raise ValidationFailed(
                f"User {assignee_id} is not an active user of this tenant",
                errors=[{"loc": ["body", "assignee_id"], "msg": "unknown or inactive user"}])
    if assignee_id == incident.assignee_id:
        return incident
    before = snapshot(incident)
    incident.assignee_id = assignee_id
    await session.flush()
    await session.refresh(incident)
    await _append(session=session, incident=incident, kind=IncidentEventKind.ASSIGNMENT,
                  actor=actor, body=note or "",
                  data={"from": before["assignee_id"], "to": assignee_id})
    await audit.record(session=session, actor=actor, action="incident.assign",
                       tenant_id=incident.tenant_id, target_type="incident",
                       target_id=incident.id, before=before, after=snapshot(incident))
    return incident


async def comment(*, session: AsyncSession, incident: Incident, body: str,
                  actor: Actor) -> IncidentEvent:
    event = await _append(session=session, incident=incident, kind=IncidentEventKind.COMMENT,
                          actor=actor, body=body)
    await audit.record(session=session, actor=actor, action="incident.comment",
                       tenant_id=incident.tenant_id, target_type="incident",
                       target_id=incident.id, after=event_snapshot(event))
    return event


async def transition(*, session: AsyncSession, incident: Incident, status: IncidentStatus,
                     actor: Actor, note: str | None = None) -> Incident:
    """Move along the state machine, stamping the time; a reopen clears the later stamps."""
    current = IncidentStatus(incident.status)
    check_transition(current, status)
    if status == S.OPEN and incident.dedup_key is not None:
        holder = await _active_for_key(session=session, tenant_id=incident.tenant_id,
                                       dedup_key=incident.dedup_key)
        if holder is not None and holder.id != incident.id:
            raise Conflict(f"Incident #{holder.number} already tracks '{incident.dedup_key}'; "
                           f"work on it instead of reopening this one")
    before = snapshot(incident)
    incident.status = str(status)
    if status == S.OPEN:
        incident.acknowledged_at = incident.resolved_at = None
    else:
        setattr(incident, STAMPS[status], datetime.now(UTC))
    await session.flush()
    await session.refresh(incident)
    await _append(session=session, incident=incident, kind=IncidentEventKind.STATUS_CHANGE,
                  actor=actor, body=note or "", data={"from": current, "to": status})
    await audit.record(session=session, actor=actor, action="incident.transition",
                       tenant_id=incident.tenant_id, target_type="incident",
                       target_id=incident.id, before=before, after=snapshot(incident),
                       detail=f"{current} -> {status}")
    return incident


async def timeline(*, session: AsyncSession, incident: Incident, limit: int,
                   offset: int) -> tuple[list[IncidentEvent], int]:
    stmt = select(IncidentEvent).where(IncidentEvent.incident_id == incident.id,
                                       IncidentEvent.tenant_id == incident.tenant_id)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    rows = (await session.execute(stmt.order_by(IncidentEvent.created_at, IncidentEvent.id)
                                  .limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def _active_for_key(*, session: AsyncSession, tenant_id: uuid.UUID,
                          dedup_key: str) -> Incident | None:
    """Deleted rows count too: the unique index that this mirrors ignores deleted_at."""
    return (await session.execute(select(Incident).where(
        Incident.tenant_id == tenant_id, Incident.dedup_key == dedup_key,
        Incident.status.in_(ACTIVE)))).scalar_one_or_none()


E = TypeVar("E", IncidentSeverity, IncidentDomain)


def _coerce(enum: type[E], value: str, field: str) -> E:
    try:
        return enum(value)
    except ValueError:
        raise ValidationFailed(f"Unknown {field} '{value}'") from None


async def open_or_update(
    *, session: AsyncSession, tenant_id: uuid.UUID, dedup_key: str, title: str,
    severity: IncidentSeverity | str, domain: IncidentDomain | str, source: str,
    zone_id: uuid.UUID | None = None, asset_id: uuid.UUID | None = None,
    data: dict[str, Any] | None = None, actor: Actor,
) -> tuple[Incident, bool]:
    """One active incident per ongoing condition: the alert engine's single entry point.

    An open or acknowledged incident with this key gets an 'alert' event (and the higher
    severity, never a lower one); otherwise a new incident opens. Returns the incident and
    whether it was created. Calls for one key are serialised by a transaction-scoped
    advisory lock, so concurrent alerts never race to insert twice.
    """
    sev = _coerce(IncidentSeverity, severity, "severity")
    dom = _coerce(IncidentDomain, domain, "domain")
    if not 1 <= len(source) <= 16 or not 1 <= len(dedup_key) <= 200:
        raise ValidationFailed("source must be 1-16 characters and dedup_key 1-200")
    await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 11))"),
                          {"k": f"incident:{tenant_id}:{dedup_key}"})
    existing = await _active_for_key(session=session, tenant_id=tenant_id, dedup_key=dedup_key)
    if existing is None:
        new = IncidentCreate(title=title[:300], domain=dom, severity=sev, zone_id=zone_id,
                             asset_id=asset_id)
        incident = await _insert(
            session=session, tenant_id=tenant_id, data=new, actor=actor, source=source,
            dedup_key=dedup_key,
            event_data={"source": source, "severity": str(sev), "alert": data or {}})
        return incident, True

    before = snapshot(existing)
    event_data: dict[str, Any] = {"severity": str(sev), "alert": data or {}}
    if SEVERITY_RANK[sev] > SEVERITY_RANK[existing.severity]:
        event_data["raised"] = {"from": existing.severity, "to": str(sev)}
        existing.severity = str(sev)
        await session.flush()
        await session.refresh(existing)
    await _append(session=session, incident=existing, kind=IncidentEventKind.ALERT,
                  actor=actor, body=title, data=event_data)
    await audit.record(session=session, actor=actor, action="incident.alert",
                       tenant_id=tenant_id, target_type="incident", target_id=existing.id,
                       before=before, after=snapshot(existing), detail=dedup_key)
    return existing, False
