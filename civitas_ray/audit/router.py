"""/api/v1/audit: the tenant's audit trail, filtered and paginated, and its verification."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from civitas_ray.audit import service
from civitas_ray.audit.models import AuditLog
from civitas_ray.audit.schemas import AuditRead, ChainReportRead
from civitas_ray.auth.deps import AuthDep, needs, platform_scope
from civitas_ray.auth.permissions import Perm
from civitas_ray.schemas import Page, page_of

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("", response_model=Page[AuditRead], summary="Search the audit trail",
            **needs(Perm.AUDIT_READ))
async def list_audit(
    ctx: AuthDep,
    action: Annotated[str | None, Query(max_length=64, description="Exact action or a "
                                        "prefix ending in '.', e.g. `auth.`")] = None,
    actor_id: Annotated[str | None, Query(max_length=64)] = None,
    target_type: Annotated[str | None, Query(max_length=64)] = None,
    target_id: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None, until: datetime | None = None,
    all_tenants: Annotated[bool, Query(description="Platform admins: every chain")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, object]:
    if all_tenants:
        await platform_scope(ctx)
    q = select(AuditLog)
    if action:
        q = q.where(AuditLog.action.startswith(action) if action.endswith(".")
                    else AuditLog.action == action)
    for col, val in ((AuditLog.actor_id, actor_id), (AuditLog.target_type, target_type),
                     (AuditLog.target_id, target_id)):
        if val is not None:
            q = q.where(col == val)
    if since:
        q = q.where(AuditLog.created_at >= since)
    if until:
        q = q.where(AuditLog.created_at < until)
    total = (await ctx.session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = (await ctx.session.execute(
        q.order_by(AuditLog.created_at.desc(), AuditLog.seq.desc()).limit(limit).offset(offset)
    )).scalars().all()
    return page_of(list(rows), total=int(total), limit=limit, offset=offset)


@router.get("/verify", response_model=list[ChainReportRead],
            summary="Recompute the hash chain and report the first tampered row",
            **needs(Perm.AUDIT_READ))
async def verify_audit(ctx: AuthDep) -> list[dict[str, object]]:
    reports = await service.verify(session=ctx.session, chain=str(ctx.principal.tenant_id))
    return [asdict(r) for r in reports]
