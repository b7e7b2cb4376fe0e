"""What the files routes return: an object's description without its server-side location."""

from __future__ import annotations

from pydantic import BaseModel, Field

from civitas_ray.storage.base import StoredObject


class StoredObjectRead(BaseModel):
    key: str
    size: int = Field(ge=0)
    sha256: str | None = Field(None, description="Hex SHA-256 of the body")
    content_type: str | None = None

    @classmethod
    def of(cls, obj: StoredObject) -> StoredObjectRead:
        return cls(key=obj.key, size=obj.size, sha256=obj.sha256, content_type=obj.content_type)
