"""/api/v1/alert-rules (CRUD) and /api/v1/alerts (what fired, what is firing)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from sqlalchemy import func, select

from civitas_ray.alerts import service
from civitas_ray.alerts.models import Alert, AlertRule
from civitas_ray.alerts.schemas import (
    AlertRead,
    AlertRuleCreate,
    AlertRuleRead,
    AlertRuleUpdate,
)
from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.runtime import live
from civitas_ray.schemas import Page, page_of

rules_router = APIRouter(prefix="/alert-rules", tags=["alerts"])
alerts_router = APIRouter(prefix="/alerts", tags=["alerts"])


def _reload_rules(ctx: AuthContext) -> None:
    tenant_id = ctx.principal.tenant_id

    async def go() -> None:
        live.invalidate_rules(tenant_id)

    ctx.after_commit(go)


def _default_name(body: AlertRuleCreate) -> str:
    cond = body.condition.root.model_dump(exclude_none=True)
    kind = cond.pop("type", "threshold")
    detail = " ".join(f"{k}={v}" for k, v in cond.items())
    return f"{body.metric or 'any metric'} {kind} {detail}"[:200]


@rules_router.get("", response_model=Page[AlertRuleRead], summary="List alert rules",
                  **needs(Perm.INCIDENTS_READ))
async def list_rules(ctx: AuthDep, asset_id: uuid.UUID | None = None,
                     zone_id: uuid.UUID | None = None, enabled: bool | None = None,
                     include_deleted: bool = False,
                     limit: Annotated[int, Query(ge=1, le=500)] = 50,
                     offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, object]:
    rows, total = await service.list_rules(session=ctx.session, limit=limit, offset=offset,
                                           asset_id=asset_id, zone_id=zone_id, enabled=enabled,
                                           include_deleted=include_deleted)
    return page_of(rows, total=total, limit=limit, offset=offset)


@rules_router.post(
    "", response_model=AlertRuleRead, status_code=status.HTTP_201_CREATED,
    summary="Create an alert rule",
    description="Conditions: threshold `{\"op\": \">\", \"threshold\": 5000}`, rate of change "
                "`{\"type\": \"rate\", ...}`, anomaly score, forecast crossing (\"will exceed "
                "X within N s\") and data quality, each with optional `hysteresis`; "
                "`for_seconds` is the hold time. A firing rule opens (or updates) one "
                "incident per ongoing condition; recovery resolves the alert.",
    **needs(Perm.INCIDENTS_WRITE))
async def create_rule(ctx: AuthDep, body: AlertRuleCreate) -> AlertRule:
    values = body.model_dump(exclude={"condition", "name"})
    values["condition"] = body.condition.root.model_dump(exclude_none=True)
    values["name"] = body.name or _default_name(body)
    rule = await service.create_rule(
        session=ctx.session, tenant_id=ctx.principal.tenant_id, values=values, actor=ctx.actor,
        created_by=ctx.principal.id if ctx.principal.kind == "user" else None)
    _reload_rules(ctx)
    return rule


@rules_router.get("/{rule_id}", response_model=AlertRuleRead, summary="One alert rule",
                  **needs(Perm.INCIDENTS_READ))
async def get_rule(ctx: AuthDep, rule_id: uuid.UUID) -> AlertRule:
    return await service.get_rule(session=ctx.session, rule_id=rule_id)


@rules_router.patch("/{rule_id}", response_model=AlertRuleRead, summary="Change an alert rule",
                    **needs(Perm.INCIDENTS_WRITE))
async def update_rule(ctx: AuthDep, rule_id: uuid.UUID, body: AlertRuleUpdate) -> AlertRule:
    rule = await service.get_rule(session=ctx.session, rule_id=rule_id)
    values = body.model_dump(exclude_unset=True, exclude={"condition"})
    if body.condition is not None:
        values["condition"] = body.condition.root.model_dump(exclude_none=True)
    if values.get("enabled") is False:
        await service.resolve_for_rule(session=ctx.session, rule_id=rule.id)
    rule = await service.update_rule(session=ctx.session, rule=rule, values=values,
                                     actor=ctx.actor)
    _reload_rules(ctx)
    return rule


@rules_router.delete("/{rule_id}", response_model=AlertRuleRead,
                     summary="Soft-delete an alert rule (its firing alerts resolve)",
                     **needs(Perm.INCIDENTS_WRITE))
async def delete_rule(ctx: AuthDep, rule_id: uuid.UUID) -> AlertRule:
    rule = await service.get_rule(session=ctx.session, rule_id=rule_id)
    await service.resolve_for_rule(session=ctx.session, rule_id=rule.id)
    rule = await service.set_rule_deleted(session=ctx.session, rule=rule, deleted=True,
                                          actor=ctx.actor)
    _reload_rules(ctx)
    return rule


@rules_router.post("/{rule_id}/restore", response_model=AlertRuleRead,
                   summary="Undo an alert rule's deletion", **needs(Perm.INCIDENTS_WRITE))
async def restore_rule(ctx: AuthDep, rule_id: uuid.UUID) -> AlertRule:
    rule = await service.get_rule(session=ctx.session, rule_id=rule_id, include_deleted=True)
    rule = await service.set_rule_deleted(session=ctx.session, rule=rule, deleted=False,
                                          actor=ctx.actor)
    _reload_rules(ctx)
    return rule


@alerts_router.get("", response_model=Page[AlertRead], summary="Alerts, newest first",
                   **needs(Perm.INCIDENTS_READ))
async def list_alerts(ctx: AuthDep, status_: Annotated[
                          Literal["firing", "resolved"] | None, Query(alias="status")] = None,
                      rule_id: uuid.UUID | None = None, asset_id: uuid.UUID | None = None,
                      zone_id: uuid.UUID | None = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 50,
                      offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, object]:
    q = select(Alert)
    for col, val in ((Alert.status, status_), (Alert.rule_id, rule_id),
                     (Alert.asset_id, asset_id), (Alert.zone_id, zone_id)):
        if val is not None:
            q = q.where(col == val)
    total = (await ctx.session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = (await ctx.session.execute(q.order_by(Alert.fired_at.desc(), Alert.id)
                                      .limit(limit).offset(offset))).scalars().all()
    return page_of(list(rows), total=int(total), limit=limit, offset=offset)
