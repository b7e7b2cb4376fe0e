"""Shared Pydantic shapes at the edges: pages, problem details."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """A page of a list; `next_offset` is null on the last page."""

    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None = None


class Problem(BaseModel):
    """RFC 7807 problem details (application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["https://civitas-ray.dev/problems/not-found"])
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


class PageParams(BaseModel):
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0)


def page_of(items: list[T], *, total: int, limit: int, offset: int) -> dict[str, Any]:
    nxt = offset + limit if offset + limit < total else None
    return {"items": items, "total": total, "limit": limit, "offset": offset, "next_offset": nxt}


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}, "description": desc}
    for code, desc in (
        (400, "Bad request"), (401, "Not authenticated"), (403, "Permission denied"),
        (404, "Not found"), (409, "Conflict"), (422, "Validation failed"),
        (429, "Rate limited"),
    )
}
