"""Put an LLM answer on the tenant's hash-chained audit trail, without its content.

The record says which backend and model answered, in which mode, from which passages
(sent, dropped, cited), with what usage and after how many attempts, plus hashes of the
prompt and the answer: enough to show later what an agent relied on, without copying
retrieved text or the answer into the audit log.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.ai.llm.base import Completion
from civitas_ray.audit import service as audit
from civitas_ray.audit.models import AuditLog

ACTION = "llm.completion"


async def record_completion(
    *, session: AsyncSession, tenant_id: uuid.UUID | None, actor: audit.Actor,
    completion: Completion, purpose: str, target_type: str | None = None,
    target_id: object = None,
) -> AuditLog:
    """Append one `llm.completion` row in the caller's transaction."""
    if not purpose.strip():
        raise ValueError("purpose must say what the completion was for")
    after = {
        **completion.audit, "backend": completion.backend, "model": completion.model,
        "mode": completion.mode, "cited": completion.cited, "usage": completion.usage,
        "finish_reason": completion.finish_reason, "purpose": purpose,
    }
    return await audit.record(
        session=session, actor=actor, action=ACTION, tenant_id=tenant_id,
        target_type=target_type or "llm", target_id=target_id or completion.backend,
        after=after, detail=f"{completion.mode} answer by {completion.backend}/{completion.model}")
