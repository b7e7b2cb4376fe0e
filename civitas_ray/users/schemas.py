"""User and API-key shapes at the API edge."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from civitas_ray.auth.permissions import RoleName


class UserCreate(BaseModel):
    email: EmailStr
    password: str = Field(min_length=1, max_length=256)
    role: RoleName = RoleName.VIEWER
    full_name: str = Field("", max_length=200)


class UserUpdate(BaseModel):
    full_name: str | None = Field(None, max_length=200)
    role: RoleName | None = None
    is_active: bool | None = None
    password: str | None = Field(None, min_length=1, max_length=256)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    email: str
    full_name: str
    role: str
    is_active: bool
    last_login_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    asset_ids: list[uuid.UUID] | None = Field(
        None, description="Restrict the key to these assets (all of the tenant's when absent)")
    expires_at: datetime | None = None


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    asset_ids: list[uuid.UUID] | None = None
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The secret key; shown once, store it now")
