"""Password hashing and policy, JWT access tokens, opaque refresh tokens and API keys."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

from jose import JWTError, jwt
from passlib.context import CryptContext

from civitas_ray.config import AuthSettings
from civitas_ray.errors import Unauthorized, ValidationFailed

_pwd = CryptContext(schemes=["argon2"], deprecated="auto")

API_KEY_PREFIX = "cvk"


def hash_password(password: str) -> str:
    return _pwd.hash(password)


def verify_password(password: str, hashed: str) -> bool:
    try:
        return _pwd.verify(password, hashed)
    except (ValueError, TypeError):
        return False


# A real hash to verify against when the account does not exist, so that the time
# a failed login takes does not reveal which e-mail addresses have accounts.
_DUMMY_HASH = _pwd.hash("not-a-real-password-" + secrets.token_hex(8))


def burn_verify_time(password: str) -> None:
    _pwd.verify(password, _DUMMY_HASH)


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    text = resources.files("civitas_ray.auth").joinpath("common_passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines()
                     if line.strip() and not line.startswith("#"))


def password_problems(password: str, *, email: str | None, min_length: int) -> list[str]:
    """Why a password is refused (empty when it is acceptable)."""
    problems: list[str] = []
    if len(password) < min_length:
        problems.append(f"must be at least {min_length} characters long")
    if len(password) > 256:
        problems.append("must be at most 256 characters long")
    lowered = password.lower()
    if lowered in _common_passwords() or _is_common_pattern(lowered):
        problems.append("is a commonly used or breached password")
    if len(set(password)) < 5:
        problems.append("uses too few distinct characters")
    if email:
        local = email.lower().split("@", 1)[0]
        if lowered == email.lower() or (len(local) >= 4 and local in lowered):
            problems.append("must not contain the e-mail address")
    return problems


def _is_common_pattern(lowered: str) -> bool:
    # Breached lists are dominated by a common word padded with digits or repeated.
    stripped = lowered.rstrip("0123456789!@#$%.?*")
    if stripped and stripped in _common_passwords():
        return True
    return any(lowered == (word * (len(lowered) // len(word) + 1))[: len(lowered)]
               for word in ("123", "1234", "abc", "qwerty", "pass", "01"))


def check_password_policy(password: str, *, email: str | None, min_length: int) -> None:
    problems = password_problems(password, email=email, min_length=min_length)
    if problems:
        raise ValidationFailed(
            "The password does not meet the policy: " + "; ".join(problems),
            errors=[{"loc": ["password"], "msg": p, "type": "password_policy"} for p in problems],
        )


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    issued_at: datetime
    expires_at: datetime
    jti: str


def create_access_token(*, settings: AuthSettings, user_id: uuid.UUID, tenant_id: uuid.UUID,
                        role: str, now: datetime | None = None) -> tuple[str, datetime]:
    issued = now or datetime.now(UTC)
    expires = issued + timedelta(seconds=settings.access_token_ttl_s)
    claims: dict[str, Any] = {
        "sub": str(user_id), "tid": str(tenant_id), "role": role, "typ": "access",
        "iss": settings.issuer, "iat": int(issued.timestamp()), "exp": int(expires.timestamp()),
        "jti": secrets.token_hex(8),
    }
    token = jwt.encode(claims, settings.secret_key.get_secret_value(),
                       algorithm=settings.algorithm)
    return token, expires


def decode_access_token(token: str, *, settings: AuthSettings) -> AccessClaims:
    try:
        claims = jwt.decode(token, settings.secret_key.get_secret_value(),
                            algorithms=[settings.algorithm], issuer=settings.issuer,
                            options={"require_exp": True, "require_iat": True})
    except JWTError as exc:
        raise Unauthorized(f"Invalid access token: {exc}") from exc
    if claims.get("typ") != "access":
        raise Unauthorized("Not an access token")
    try:
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]), tenant_id=uuid.UUID(claims["tid"]),
            role=str(claims["role"]), issued_at=datetime.fromtimestamp(claims["iat"], UTC),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC), jti=str(claims.get("jti")),
        )
    except (KeyError, ValueError) as exc:
        raise Unauthorized("Malformed access token claims") from exc


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_refresh_token() -> tuple[str, str]:
    """An opaque token and the hash we store (the token itself is never stored)."""
    token = secrets.token_urlsafe(48)
    return token, sha256_hex(token)


def new_api_key() -> tuple[str, str, str]:
    """(full key shown once, display prefix, stored hash). Keys are 256-bit random."""
    prefix = secrets.token_hex(4)
    key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return key, prefix, sha256_hex(key)
