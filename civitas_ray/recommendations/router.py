"""/api/v1/recommendations: what the recommender proposed, and what operators made of it."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from civitas_ray.auth.deps import AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.recommendations import service
from civitas_ray.recommendations.models import Recommendation
from civitas_ray.recommendations.schemas import (
    AcceptRequest,
    OutcomeRequest,
    RecommendationFilter,
    RecommendationRead,
    RecommendationStatus,
    RejectRequest,
)
from civitas_ray.schemas import Page, page_of

router = APIRouter(prefix="/recommendations", tags=["recommendations"])

LIFECYCLE = ("`proposed` → `accepted` or `rejected`, once (409 otherwise); an accepted "
             "recommendation then records its outcome. Every change is audited.")


async def valid_recommendation(ctx: AuthDep, recommendation_id: uuid.UUID) -> Recommendation:
    """One of the caller's tenant; another tenant's id is a plain 404."""
    return await service.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                 recommendation_id=recommendation_id)


RecommendationDep = Annotated[Recommendation, Depends(valid_recommendation)]


@router.get("", response_model=Page[RecommendationRead], summary="List recommendations",
            description="Newest run first, by rank within a run. `status` may be repeated.",
            **needs(Perm.RECOMMENDATIONS_READ))
async def list_recommendations(
    ctx: AuthDep,
    status_: Annotated[list[RecommendationStatus] | None, Query(alias="status")] = None,
    zone_id: uuid.UUID | None = None, incident_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, object]:
    filters = RecommendationFilter(status=status_, zone_id=zone_id, incident_id=incident_id)
    rows, total = await service.list_(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                      filters=filters, limit=limit, offset=offset)
    return page_of(rows, total=total, limit=limit, offset=offset)


@router.get("/{recommendation_id}", response_model=RecommendationRead,
            summary="One recommendation", **needs(Perm.RECOMMENDATIONS_READ))
async def get_recommendation(rec: RecommendationDep) -> Recommendation:
    return rec


@router.post("/{recommendation_id}/accept", response_model=RecommendationRead,
             summary="Accept a recommendation", description=LIFECYCLE,
             **needs(Perm.RECOMMENDATIONS_DECIDE))
async def accept_recommendation(ctx: AuthDep, rec: RecommendationDep,
                                body: AcceptRequest | None = None) -> Recommendation:
    return await service.accept(session=ctx.session, rec=rec,
                                note=body.note if body else None, actor=ctx.actor)


@router.post("/{recommendation_id}/reject", response_model=RecommendationRead,
             summary="Reject a recommendation, with the reason", description=LIFECYCLE,
             **needs(Perm.RECOMMENDATIONS_DECIDE))
async def reject_recommendation(ctx: AuthDep, rec: RecommendationDep,
                                body: RejectRequest) -> Recommendation:
    return await service.reject(session=ctx.session, rec=rec, reason=body.reason,
                                actor=ctx.actor)


@router.post("/{recommendation_id}/outcome", response_model=RecommendationRead,
             summary="Record what happened after an accepted recommendation",
             description="`effective` or `ineffective`, with notes; 409 unless accepted. "
                         "A later call corrects the outcome (the audit keeps both).",
             **needs(Perm.RECOMMENDATIONS_DECIDE))
async def record_outcome(ctx: AuthDep, rec: RecommendationDep,
                         body: OutcomeRequest) -> Recommendation:
    return await service.record_outcome(session=ctx.session, rec=rec, result=body.result,
                                        notes=body.notes, actor=ctx.actor)
