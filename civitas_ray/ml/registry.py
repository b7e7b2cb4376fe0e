"""The model registry: versions per (tenant, name, subject), stages, artifacts, promotion.

Stages: `candidate` (trained, backtested) -> `shadow` (scored beside production, not
served) -> `production` (served; at most one per name and subject) -> `archived`.
A version whose backtest did not beat seasonal-naive is never promoted. Rollback puts
the previously promoted version back in production and archives the current one.
Artifacts are stored through `civitas_ray.storage` under the tenant's prefix; the row
keeps their URI and SHA-256. Every stage change is audited.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.errors import Conflict, NotFound, ValidationFailed
from civitas_ray.ml.models import MODELS, ForecastModel
from civitas_ray.ml.registry_models import ModelVersion
from civitas_ray.storage import get_storage
from civitas_ray.storage.errors import ObjectNotFound
from civitas_ray.storage.keys import tenant_key

STAGES = ("candidate", "shadow", "production", "archived")


def subject_key(*, asset_id: uuid.UUID | None, zone_id: uuid.UUID | None,
                metric: str) -> str:
    """`asset:<uuid>:<metric>` for a stream, `zone:<uuid>:<metric>` for a zone series."""
    if (asset_id is None) == (zone_id is None):
        raise ValidationFailed("give exactly one of asset_id and zone_id")
    return f"asset:{asset_id}:{metric}" if asset_id else f"zone:{zone_id}:{metric}"


def snapshot(v: ModelVersion) -> dict[str, Any]:
    return {"id": str(v.id), "name": v.name, "kind": v.kind, "version": v.version,
            "stage": v.stage, "subject_key": v.subject_key}


async def create_version(
    session: AsyncSession, *, tenant_id: uuid.UUID, name: str, kind: str,
    subject: dict[str, Any], key: str, model: ForecastModel, metrics: dict[str, Any],
    training_start: datetime | None, training_end: datetime | None,
    created_by: uuid.UUID | None, actor: Actor | None = None,
) -> ModelVersion:
    """Store the artifact, then the row (a candidate), in the caller's transaction.

    Version numbers are taken under a transaction-level advisory lock per name and
    subject, so two trainings finishing together get consecutive numbers.
    """
    await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 11))"),
                          {"k": f"{tenant_id}:{name}:{key}"})
    current = (await session.execute(
        select(func.max(ModelVersion.version)).where(
            ModelVersion.tenant_id == tenant_id, ModelVersion.name == name,
            ModelVersion.subject_key == key))).scalar()
    version = int(current or 0) + 1
    blob = model.to_bytes()
    stored = await get_storage().put(
        tenant_key(tenant_id, "models", name, key.replace(":", "_"), f"v{version}.json.gz"),
        blob, content_type="application/gzip",
        metadata={"model": name, "kind": kind, "version": str(version)})
    row = ModelVersion(
        tenant_id=tenant_id, name=name, kind=kind, subject_key=key, subject=subject,
        freq=model.spec.freq, version=version, stage="candidate",
        features=list(model.feature_names),
        params={**_jsonable(model.params), "spec": model.spec.to_dict(),
                "artifact_sha256": stored.sha256, "artifact_key": stored.key,
                "artifact_bytes": stored.size},
        metrics=metrics, training_start=training_start, training_end=training_end,
        artifact_uri=stored.uri, created_by=created_by)
    session.add(row)
    await session.flush()
    if actor is not None:
        await audit.record(session=session, actor=actor, action="model.create",
                           tenant_id=tenant_id, target_type="model_version",
                           target_id=row.id, after=snapshot(row))
    return row


class ArtifactUnusable(Conflict):
    """A version's stored model is missing, altered or unreadable."""


async def load_model(row: ModelVersion) -> ForecastModel:
    """The fitted model of a version, from its stored artifact, checked against its digest.

    Raises ArtifactUnusable (409) when the artifact is gone, altered or unreadable.
    """
    cls = MODELS.get(row.kind)
    if cls is None:
        raise ArtifactUnusable(f"unknown model kind {row.kind!r}")
    key = str(row.params.get("artifact_key") or "")
    if not key:
        raise ArtifactUnusable(f"model version {row.version} has no artifact")
    try:
        blob = await get_storage().get(key)
    except ObjectNotFound as exc:
        raise ArtifactUnusable(f"the artifact of version {row.version} is missing "
                               f"({row.artifact_uri})") from exc
    want = row.params.get("artifact_sha256")
    if want and hashlib.sha256(blob).hexdigest() != want:
        raise ArtifactUnusable(f"the artifact of version {row.version} does not match its "
                               "recorded SHA-256: it was altered or corrupted")
    try:
        return cls.from_bytes(blob)
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise ArtifactUnusable(f"the artifact of version {row.version} cannot be loaded: "
                               f"{exc}") from exc


async def require(session: AsyncSession, tenant_id: uuid.UUID,
                  version_id: uuid.UUID) -> ModelVersion:
    row = await session.get(ModelVersion, version_id)
    if row is None or row.tenant_id != tenant_id:
        raise NotFound("model version not found")
    return row


async def list_versions(session: AsyncSession, tenant_id: uuid.UUID, *,
                        name: str | None = None, kind: str | None = None,
                        stage: str | None = None, key: str | None = None,
                        limit: int = 100, offset: int = 0) -> tuple[list[ModelVersion], int]:
    q = select(ModelVersion).where(ModelVersion.tenant_id == tenant_id)
    if name:
        q = q.where(ModelVersion.name == name)
    if kind:
        q = q.where(ModelVersion.kind == kind)
    if stage:
        q = q.where(ModelVersion.stage == stage)
    if key:
        q = q.where(ModelVersion.subject_key == key)
    total = (await session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = (await session.execute(q.order_by(
        ModelVersion.name, ModelVersion.subject_key, ModelVersion.version.desc())
        .limit(limit).offset(offset))).scalars().all()
    return list(rows), int(total)


async def _current(session: AsyncSession, row: ModelVersion, stage: str) -> ModelVersion | None:
    return (await session.execute(select(ModelVersion).where(
        ModelVersion.tenant_id == row.tenant_id, ModelVersion.name == row.name,
        ModelVersion.subject_key == row.subject_key, ModelVersion.stage == stage)
        .with_for_update())).scalar_one_or_none()


def _check_promotable(row: ModelVersion) -> None:
    if row.stage == "production":
        raise Conflict("this version is already in production")
    if not row.metrics.get("beats_seasonal_naive"):
        m = row.metrics.get("backtest", {})
        raise Conflict("not promoted: its backtest did not beat the seasonal-naive baseline "
                       f"(model {m.get('model', {}).get('mae')}, seasonal-naive "
                       f"{m.get('seasonal_naive', {}).get('mae')} MAE)")


async def promote(session: AsyncSession, *, tenant_id: uuid.UUID, version_id: uuid.UUID,
                  actor: Actor) -> tuple[ModelVersion, ModelVersion | None]:
    """Make a version production; the one it replaces is archived. Returns (new, old)."""
    row = await require(session, tenant_id, version_id)
    _check_promotable(row)
    await load_model(row)  # a version that cannot be served is never promoted
    await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 12))"),
                          {"k": f"{tenant_id}:{row.name}:{row.subject_key}"})
    old = await _current(session, row, "production")
    before = snapshot(row)
    if old is not None:
        old.stage = "archived"
        await session.flush()
    row.stage = "production"
    row.promoted_at = datetime.now(UTC)
    await session.flush()
    await audit.record(session=session, actor=actor, action="model.promote",
                       tenant_id=tenant_id, target_type="model_version", target_id=row.id,
                       before=before, after={**snapshot(row),
                                             "replaced": str(old.id) if old else None})
    return row, old


async def shadow(session: AsyncSession, *, tenant_id: uuid.UUID, version_id: uuid.UUID,
                 actor: Actor) -> ModelVersion:
    """Score a candidate beside production (the previous shadow goes back to candidate)."""
    row = await require(session, tenant_id, version_id)
    if row.stage != "candidate":
        raise Conflict(f"only a candidate can go into shadow (this one is {row.stage})")
    await load_model(row)
    await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 12))"),
                          {"k": f"{tenant_id}:{row.name}:{row.subject_key}"})
    old = await _current(session, row, "shadow")
    if old is not None:
        old.stage = "candidate"
        await session.flush()
    row.stage = "shadow"
    await session.flush()
    await audit.record(session=session, actor=actor, action="model.shadow", tenant_id=tenant_id,
                       target_type="model_version", target_id=row.id, after=snapshot(row))
    return row


async def rollback(session: AsyncSession, *, tenant_id: uuid.UUID, version_id: uuid.UUID,
                   actor: Actor) -> tuple[ModelVersion, ModelVersion]:
    """Take a production version out; the previously promoted one serves again.

    Returns (restored, retired). Refused when nothing was promoted before it.
    """
    row = await require(session, tenant_id, version_id)
    if row.stage != "production":
        raise Conflict(f"only the production version can be rolled back (this one is "
                       f"{row.stage})")
    await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:k, 12))"),
                          {"k": f"{tenant_id}:{row.name}:{row.subject_key}"})
    previous = (await session.execute(select(ModelVersion).where(
        ModelVersion.tenant_id == tenant_id, ModelVersion.name == row.name,
        ModelVersion.subject_key == row.subject_key, ModelVersion.stage == "archived",
        ModelVersion.promoted_at.is_not(None), ModelVersion.id != row.id)
        .order_by(ModelVersion.promoted_at.desc()).limit(1))).scalar_one_or_none()
    if previous is None:
        raise Conflict("nothing to roll back to: no earlier version was in production")
    await load_model(previous)  # roll back only to a version that can serve
    row.stage = "archived"
    await session.flush()
    previous.stage = "production"
    previous.promoted_at = datetime.now(UTC)
    await session.flush()
    await audit.record(session=session, actor=actor, action="model.rollback",
                       tenant_id=tenant_id, target_type="model_version", target_id=row.id,
                       before=snapshot(row), after=snapshot(previous))
    return previous, row


async def serving_versions(session: AsyncSession, *, tenant_id: uuid.UUID | None = None,
                           ) -> list[ModelVersion]:
    """Production and shadow versions (all tenants in a system session): what a
    Forecaster replica loads."""
    q = select(ModelVersion).where(ModelVersion.stage.in_(("production", "shadow")))
    if tenant_id is not None:
        q = q.where(ModelVersion.tenant_id == tenant_id)
    return list((await session.execute(q)).scalars().all())


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        out[k] = v if isinstance(v, str | int | float | bool) or v is None else str(v)
    return out
