"""Recommendations: stored by the recommender, decided by operators, followed to an outcome.

A recommendation moves `proposed` -> `accepted` | `rejected`, once; an accepted one then
gets an outcome (effective / ineffective, with notes), which may be corrected later. Every
change is audited with its before and after. `evidence.key` identifies what a
recommendation is about (kind and subject), so a new run does not repeat an open one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.errors import Conflict, NotFound
from civitas_ray.recommendations.models import Recommendation
from civitas_ray.recommendations.schemas import (
    OutcomeResult,
    RecommendationFilter,
    RecommendationStatus,
)

S = RecommendationStatus


def snapshot(r: Recommendation) -> dict[str, Any]:
    return audit.jsonable({
        "id": r.id, "incident_id": r.incident_id, "zone_id": r.zone_id, "title": r.title,
        "rank": r.rank, "score": r.score, "status": r.status, "model": r.model,
        "key": (r.evidence or {}).get("key"), "decided_by": r.decided_by,
        "decided_at": r.decided_at, "outcome": r.outcome})


def _user_id(actor: Actor) -> uuid.UUID | None:
    return uuid.UUID(actor.id) if actor.type == "user" and actor.id else None


def _open_clause() -> Any:
    """Still in play: proposed, or accepted with no outcome yet."""
    return or_(Recommendation.status == S.PROPOSED,
               and_(Recommendation.status == S.ACCEPTED, Recommendation.outcome.is_(None)))


async def get(*, session: AsyncSession, tenant_id: uuid.UUID,
              recommendation_id: uuid.UUID) -> Recommendation | None:
    return (await session.execute(select(Recommendation).where(
        Recommendation.id == recommendation_id,
        Recommendation.tenant_id == tenant_id))).scalar_one_or_none()


async def require(*, session: AsyncSession, tenant_id: uuid.UUID,
                  recommendation_id: uuid.UUID) -> Recommendation:
    found = await get(session=session, tenant_id=tenant_id, recommendation_id=recommendation_id)
    if found is None:
        raise NotFound(f"Recommendation {recommendation_id} not found")
    return found


async def list_(*, session: AsyncSession, tenant_id: uuid.UUID, filters: RecommendationFilter,
                limit: int, offset: int) -> tuple[list[Recommendation], int]:
    """Newest run first, and within a run by rank."""
    stmt = select(Recommendation).where(Recommendation.tenant_id == tenant_id)
    if filters.status:
        stmt = stmt.where(Recommendation.status.in_([str(s) for s in filters.status]))
    if filters.zone_id is not None:
        stmt = stmt.where(Recommendation.zone_id == filters.zone_id)
    if filters.incident_id is not None:
        stmt = stmt.where(Recommendation.incident_id == filters.incident_id)
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    stmt = stmt.order_by(Recommendation.created_at.desc(), Recommendation.rank,
                         Recommendation.id)
    rows = (await session.execute(stmt.limit(limit).offset(offset))).scalars()
    return list(rows), int(total)


async def open_by_key(*, session: AsyncSession, tenant_id: uuid.UUID,
                      keys: list[str]) -> dict[str, Recommendation]:
    """Open recommendations for these evidence keys, locked against concurrent runs.

    Each key takes a transaction-scoped advisory lock first, so two runs proposing the
    same thing at once store it once.
    """
    if not keys:
        return {}
    for key in sorted(set(keys)):
        await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 13))"),
                              {"k": f"recommendation:{tenant_id}:{key}"})
    rows = (await session.execute(select(Recommendation).where(
        Recommendation.tenant_id == tenant_id, _open_clause(),
        Recommendation.evidence["key"].astext.in_(keys)))).scalars()
    return {str(r.evidence["key"]): r for r in rows}


async def create(*, session: AsyncSession, tenant_id: uuid.UUID, title: str, body: str,
                 rank: int, score: float, evidence: dict[str, Any], model: str | None,
                 incident_id: uuid.UUID | None, zone_id: uuid.UUID | None,
                 actor: Actor) -> Recommendation:
    row = Recommendation(
        id=uuid.uuid4(), tenant_id=tenant_id, incident_id=incident_id, zone_id=zone_id,
        title=title[:300], body=body, rank=rank, score=score,
        evidence=audit.jsonable(evidence), status=str(S.PROPOSED), model=model)
    session.add(row)
    await session.flush()
    await session.refresh(row)
    await audit.record(session=session, actor=actor, action="recommendation.create",
                       tenant_id=tenant_id, target_type="recommendation", target_id=row.id,
                       after={**snapshot(row), "evidence": row.evidence})
    return row


async def _decide(*, session: AsyncSession, rec: Recommendation, status: RecommendationStatus,
                  note: str | None, actor: Actor) -> Recommendation:
    if rec.status != S.PROPOSED:
        raise Conflict(f"Recommendation is already {rec.status}; only a proposed one can be "
                       f"{status}", current_status=rec.status)
    before = snapshot(rec)
    rec.status = str(status)
    rec.decided_by = _user_id(actor)
    rec.decided_at = datetime.now(UTC)
    await session.flush()
    await session.refresh(rec)
    action = "accept" if status == S.ACCEPTED else "reject"
    await audit.record(session=session, actor=actor, action=f"recommendation.{action}",
                       tenant_id=rec.tenant_id, target_type="recommendation", target_id=rec.id,
                       before=before, after=snapshot(rec), detail=note)
    return rec


async def accept(*, session: AsyncSession, rec: Recommendation, note: str | None,
                 actor: Actor) -> Recommendation:
    return await _decide(session=session, rec=rec, status=S.ACCEPTED, note=note, actor=actor)


async def reject(*, session: AsyncSession, rec: Recommendation, reason: str,
                 actor: Actor) -> Recommendation:
    """A rejection keeps its reason on the row (outcome) as well as in the audit trail."""
    rec = await _decide(session=session, rec=rec, status=S.REJECTED, note=reason, actor=actor)
    rec.outcome = {"rejected_reason": reason.strip()}
    await session.flush()
    await session.refresh(rec)
    return rec


async def record_outcome(*, session: AsyncSession, rec: Recommendation, result: OutcomeResult,
                         notes: str, actor: Actor) -> Recommendation:
    """What happened after an accepted recommendation was carried out."""
    if rec.status != S.ACCEPTED:
        raise Conflict(f"Only an accepted recommendation has an outcome; this one is "
                       f"{rec.status}", current_status=rec.status)
    before = snapshot(rec)
    rec.outcome = audit.jsonable({
        "result": str(result), "notes": notes, "recorded_by": _user_id(actor),
        "recorded_at": datetime.now(UTC)})
    await session.flush()
    await session.refresh(rec)
    await audit.record(session=session, actor=actor, action="recommendation.outcome",
                       tenant_id=rec.tenant_id, target_type="recommendation", target_id=rec.id,
                       before=before, after=snapshot(rec), detail=str(result))
    return rec
