"""Audit trail: append a hash-chained record in the caller's transaction; verify chains.

Each chain (one per tenant, plus 'platform') is a sequence of rows where
hash = sha256(prev_hash || canonical JSON of the row). Editing, deleting or
re-ordering any row breaks every hash after it, which `verify` reports.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.audit.models import AuditLog

GENESIS = "0" * 64
PLATFORM_CHAIN = "platform"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did it: a user, a device key, or the system itself (CLI, background jobs)."""

    type: str
    id: str | None = None
    label: str | None = None
    request_id: str | None = None
    address: str | None = None


SYSTEM_ACTOR = Actor(type="system", label="civitas")


def jsonable(value: Any) -> Any:
    """The exact JSON form stored in JSONB, so hashing before and after storage agrees."""
    if value is None:
        return None
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str)


def _row_payload(r: AuditLog) -> dict[str, Any]:
    return {
        "chain": r.chain, "seq": r.seq, "tenant_id": str(r.tenant_id) if r.tenant_id else None,
        "actor_type": r.actor_type, "actor_id": r.actor_id, "actor_label": r.actor_label,
        "action": r.action, "target_type": r.target_type, "target_id": r.target_id,
        "before": r.before, "after": r.after, "request_id": r.request_id,
        "address": str(r.address) if r.address else None,
        "created_at": r.created_at.astimezone(UTC).isoformat(), "detail": r.detail,
    }


def compute_hash(prev_hash: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + _canonical(payload)).encode()).hexdigest()


async def record(
    *, session: AsyncSession, actor: Actor, action: str, tenant_id: uuid.UUID | None,
    target_type: str | None = None, target_id: Any = None,
    before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
    detail: str | None = None,
) -> AuditLog:
    """Append one audit row in the current transaction (it commits or rolls back with it)."""
    chain = str(tenant_id) if tenant_id else PLATFORM_CHAIN
    # Serialise appends per chain; the lock ends with the transaction.
    await session.execute(text("select pg_advisory_xact_lock(hashtextextended(:c, 7))"),
                          {"c": "audit:" + chain})
    last = (await session.execute(
        select(AuditLog.seq, AuditLog.hash).where(AuditLog.chain == chain)
        .order_by(AuditLog.seq.desc()).limit(1))).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    row = AuditLog(
        id=uuid.uuid4(), chain=chain, seq=seq, tenant_id=tenant_id, actor_type=actor.type,
        actor_id=actor.id, actor_label=actor.label, action=action, target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        before=jsonable(before), after=jsonable(after), request_id=actor.request_id,
        address=actor.address, created_at=datetime.now(UTC), detail=detail, prev_hash=prev,
    )
    row.hash = compute_hash(prev, _row_payload(row))
    session.add(row)
    await session.flush()
    return row


@dataclass(frozen=True, slots=True)
class ChainReport:
    chain: str
    rows: int
    ok: bool
    first_bad_seq: int | None = None
    reason: str | None = None


async def verify(*, session: AsyncSession, chain: str | None = None,
                 batch: int = 5000) -> list[ChainReport]:
    """Recompute every visible chain; report the first broken link of each."""
    chains_q = select(AuditLog.chain).distinct()
    if chain:
        chains_q = chains_q.where(AuditLog.chain == chain)
    reports = []
    for (name,) in (await session.execute(chains_q.order_by(AuditLog.chain))).all():
        reports.append(await _verify_chain(session, name, batch))
    return reports


async def _verify_chain(session: AsyncSession, chain: str, batch: int) -> ChainReport:
    prev, expected_seq, count, after_seq = GENESIS, 1, 0, 0
    while True:
        rows = (await session.execute(
            select(AuditLog).where(AuditLog.chain == chain, AuditLog.seq > after_seq)
            .order_by(AuditLog.seq).limit(batch))).scalars().all()
        if not rows:
            return ChainReport(chain=chain, rows=count, ok=True)
        for r in rows:
            count += 1
            if r.seq != expected_seq:
                return ChainReport(chain, count, False, expected_seq,
                                   f"row seq {expected_seq} is missing (next is {r.seq})")
            if r.prev_hash != prev:
                return ChainReport(chain, count, False, r.seq, "prev_hash does not link")
            if compute_hash(prev, _row_payload(r)) != r.hash:
                return ChainReport(chain, count, False, r.seq, "row content does not match hash")
            prev, expected_seq, after_seq = r.hash, r.seq + 1, r.seq
        session.expunge_all()


async def count(*, session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(AuditLog))).scalar_one())
