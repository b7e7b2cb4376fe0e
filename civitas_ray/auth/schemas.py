"""Token and identity shapes at the API edge."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, Field


class TokenPair(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_token: str
    refresh_expires_in: int


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=10, max_length=200)


class LogoutRequest(BaseModel):
    refresh_token: str | None = Field(None, max_length=200)
    everywhere: bool = Field(False, description="Revoke every session of the account")


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=256)
    new_password: str = Field(max_length=256)


class Me(BaseModel):
    kind: str
    id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_slug: str | None = None
    label: str
    role: str | None
    permissions: list[str]
