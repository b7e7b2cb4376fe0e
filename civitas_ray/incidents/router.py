"""/api/v1/incidents: the tenant's incidents, their lifecycle and their timeline."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, status

from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.incidents import service
from civitas_ray.incidents.models import Incident, IncidentEvent
from civitas_ray.incidents.schemas import (
    AssignRequest,
    CommentCreate,
    IncidentCreate,
    IncidentDomain,
    IncidentEventRead,
    IncidentFilter,
    IncidentRead,
    IncidentSeverity,
    IncidentStatus,
    IncidentUpdate,
    TransitionRequest,
)
from civitas_ray.realtime import relay
from civitas_ray.realtime.events import Event
from civitas_ray.schemas import Page, page_of

router = APIRouter(prefix="/incidents", tags=["incidents"])

IncidentSort = Literal["opened_at", "-opened_at", "severity", "-severity", "number", "-number"]

LIFECYCLE = ("Lifecycle: `open` → `acknowledged` → `resolved` → `closed`; `open` → `resolved` "
             "directly; `resolved` → `open` reopens. `closed` is final. Any other move is "
             "refused with 409 and the list of allowed next states.")


def _announce(ctx: AuthContext, incident: Incident, event_type: str) -> Incident:
    """Publish the change on the tenant's `incidents` channel once it has committed."""
    tenant_id = ctx.principal.tenant_id
    data = service.snapshot(incident)

    async def go() -> None:
        await relay.send(tenant_id, [Event(type=event_type, channel="incidents", data=data)])

    ctx.after_commit(go)
    return incident


async def valid_incident(ctx: AuthDep, incident_id: uuid.UUID) -> Incident:
    """A live incident of the caller's tenant; another tenant's id is a plain 404."""
    return await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                 incident_id=incident_id)


IncidentDep = Annotated[Incident, Depends(valid_incident)]


@router.get("", response_model=Page[IncidentRead], summary="List incidents",
            description="Filter, search and sort the tenant's incidents; newest first by "
                        "default. `status` may be repeated.", **needs(Perm.INCIDENTS_READ))
async def list_incidents(
    ctx: AuthDep,
    status_: Annotated[list[IncidentStatus] | None, Query(alias="status")] = None,
    severity: IncidentSeverity | None = None, domain: IncidentDomain | None = None,
    zone_id: uuid.UUID | None = None, asset_id: uuid.UUID | None = None,
    assignee_id: uuid.UUID | None = None,
    q: Annotated[str | None, Query(max_length=200,
                                   description="Search title and description")] = None,
    opened_since: Annotated[datetime | None, Query(description="Inclusive")] = None,
    opened_until: Annotated[datetime | None, Query(description="Exclusive")] = None,
    include_deleted: bool = False, sort: IncidentSort = "-opened_at",
    limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, object]:
    filters = IncidentFilter(
        status=status_, severity=severity, domain=domain, zone_id=zone_id, asset_id=asset_id,
        assignee_id=assignee_id, q=q, opened_since=opened_since, opened_until=opened_until,
        include_deleted=include_deleted)
    rows, total = await service.list_(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                      filters=filters, sort=sort, limit=limit, offset=offset)
    return page_of(rows, total=total, limit=limit, offset=offset)


@router.post("", response_model=IncidentRead, status_code=status.HTTP_201_CREATED,
             summary="Open an incident",
             description="Opens a manual incident; zone and asset must belong to the tenant.",
             **needs(Perm.INCIDENTS_WRITE))
async def create_incident(ctx: AuthDep, body: IncidentCreate) -> Incident:
    incident = await service.create(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                    data=body, actor=ctx.actor)
    return _announce(ctx, incident, "incident.opened")


@router.get("/{incident_id}", response_model=IncidentRead, summary="One incident",
            **needs(Perm.INCIDENTS_READ))
async def get_incident(incident: IncidentDep) -> Incident:
    return incident


@router.patch("/{incident_id}", response_model=IncidentRead, summary="Change an incident",
              description="Partial update; the timeline records the fields that changed. "
                          "Status moves through `/transition`, the assignee through `/assign`.",
              **needs(Perm.INCIDENTS_WRITE))
async def update_incident(ctx: AuthDep, incident: IncidentDep, body: IncidentUpdate) -> Incident:
    incident = await service.update(session=ctx.session, incident=incident, data=body,
                                    actor=ctx.actor)
    return _announce(ctx, incident, "incident.updated")


@router.delete("/{incident_id}", response_model=IncidentRead,
               summary="Soft-delete an incident",
               description="Hides the incident from lists; restorable. An unresolved one "
                           "keeps absorbing alerts for its dedup key.",
               **needs(Perm.INCIDENTS_WRITE))
async def delete_incident(ctx: AuthDep, incident: IncidentDep) -> Incident:
    incident = await service.set_deleted(session=ctx.session, incident=incident, deleted=True,
                                         actor=ctx.actor)
    return _announce(ctx, incident, "incident.deleted")


@router.post("/{incident_id}/restore", response_model=IncidentRead,
             summary="Undo an incident's deletion", **needs(Perm.INCIDENTS_WRITE))
async def restore_incident(ctx: AuthDep, incident_id: uuid.UUID) -> Incident:
    incident = await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                     incident_id=incident_id, include_deleted=True)
    incident = await service.set_deleted(session=ctx.session, incident=incident,
                                         deleted=False, actor=ctx.actor)
    return _announce(ctx, incident, "incident.restored")


@router.post("/{incident_id}/assign", response_model=IncidentRead,
             summary="Assign (or unassign) an incident",
             description="The assignee must be a live, active user of the tenant (else 422); "
                         "`null` unassigns.", **needs(Perm.INCIDENTS_WRITE))
async def assign_incident(ctx: AuthDep, incident: IncidentDep, body: AssignRequest) -> Incident:
    incident = await service.assign(session=ctx.session, incident=incident,
                                    assignee_id=body.assignee_id, note=body.note,
                                    actor=ctx.actor)
    return _announce(ctx, incident, "incident.assigned")


@router.post("/{incident_id}/comments", response_model=IncidentEventRead,
             status_code=status.HTTP_201_CREATED, summary="Comment on an incident",
             description="Appends a `comment` event to the timeline.",
             **needs(Perm.INCIDENTS_WRITE))
async def comment_incident(ctx: AuthDep, incident: IncidentDep,
                           body: CommentCreate) -> IncidentEvent:
    event = await service.comment(session=ctx.session, incident=incident, body=body.body,
                                  actor=ctx.actor)
    _announce(ctx, incident, "incident.commented")
    return event


@router.post("/{incident_id}/transition", response_model=IncidentRead,
             summary="Change an incident's status", description=LIFECYCLE,
             **needs(Perm.INCIDENTS_WRITE))
async def transition_incident(ctx: AuthDep, incident: IncidentDep,
                              body: TransitionRequest) -> Incident:
    incident = await service.transition(session=ctx.session, incident=incident,
                                        status=body.status, note=body.note, actor=ctx.actor)
    kind = "reopened" if incident.status == IncidentStatus.OPEN else incident.status
    return _announce(ctx, incident, f"incident.{kind}")


@router.get("/{incident_id}/timeline", response_model=Page[IncidentEventRead],
            summary="An incident's timeline",
            description="Every event (created, status changes, assignments, comments, updates, "
                        "alerts), oldest first.", **needs(Perm.INCIDENTS_READ))
async def incident_timeline(
    ctx: AuthDep, incident: IncidentDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, object]:
    rows, total = await service.timeline(session=ctx.session, incident=incident, limit=limit,
                                         offset=offset)
    return page_of(rows, total=total, limit=limit, offset=offset)

