"""Pure security helpers: password policy, JWT round trip, API keys, audit hashing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from civitas_ray.audit.service import GENESIS, compute_hash, jsonable
from civitas_ray.auth.permissions import ROLE_PERMISSIONS, Perm, RoleName
from civitas_ray.auth.security import (
    create_access_token,
    decode_access_token,
    hash_password,
    new_api_key,
    password_problems,
    verify_password,
)
from civitas_ray.config import DEV_SECRET, AuthSettings, Settings
from civitas_ray.errors import Unauthorized

pytestmark = pytest.mark.unit


def test_password_hash_round_trip() -> None:
    h = hash_password("Long-Enough-Phrase-1")
    assert h.startswith("$argon2") and verify_password("Long-Enough-Phrase-1", h)
    assert not verify_password("long-enough-phrase-1", h)
    assert not verify_password("x", "not a hash")


@pytest.mark.parametrize("pw,ok", [
    ("Correct-Horse-Staple-91", True),
    ("tiny", False),
    ("qwertyuiop123", False),
    ("123412341234", False),
    ("Summer2024!!!", False),
    ("zzzzzzzzzzzzzzzz", False),
])
def test_password_policy(pw: str, ok: bool) -> None:
    assert (password_problems(pw, email="ana@example.org", min_length=12) == []) is ok


def test_password_may_not_contain_email_local_part() -> None:
    problems = password_problems("xx-jonathan-99-YY", email="jonathan@example.org", min_length=12)
    assert any("e-mail" in p for p in problems)


def test_access_token_round_trip_and_expiry() -> None:
    s = AuthSettings(secret_key=SecretStr("k" * 40))
    uid, tid = uuid.uuid4(), uuid.uuid4()
    token, _ = create_access_token(settings=s, user_id=uid, tenant_id=tid, role="viewer")
    claims = decode_access_token(token, settings=s)
    assert (claims.user_id, claims.tenant_id, claims.role) == (uid, tid, "viewer")
    old, _ = create_access_token(settings=s, user_id=uid, tenant_id=tid, role="viewer",
                                 now=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(Unauthorized):
        decode_access_token(old, settings=s)
    with pytest.raises(Unauthorized):
        decode_access_token(token, settings=AuthSettings(secret_key=SecretStr("o" * 40)))


def test_api_keys_are_unique_and_prefixed() -> None:
    keys = {new_api_key()[0] for _ in range(100)}
    assert len(keys) == 100 and all(k.startswith("cvk_") and len(k) > 40 for k in keys)


def test_audit_hash_changes_with_any_field() -> None:
    row = {"seq": 1, "action": "user.update",
           "after": jsonable({"n": 1.5, "t": datetime(2026, 1, 1)})}
    h = compute_hash(GENESIS, row)
    assert h == compute_hash(GENESIS, dict(reversed(list(row.items()))))
    assert h != compute_hash(GENESIS, {**row, "seq": 2})
    assert h != compute_hash("1" * 64, row)


def test_role_hierarchy() -> None:
    viewer, analyst, operator, tadmin, padmin = (ROLE_PERMISSIONS[r] for r in (
        RoleName.VIEWER, RoleName.ANALYST, RoleName.OPERATOR, RoleName.TENANT_ADMIN,
        RoleName.PLATFORM_ADMIN))
    assert viewer < analyst < operator < tadmin < padmin
    assert Perm.TENANTS_ADMIN in padmin and Perm.TENANTS_ADMIN not in tadmin


def test_default_secret_refused_in_production() -> None:
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Settings(environment="production")
    Settings(environment="production", auth=AuthSettings(secret_key=SecretStr("s" * 40)))
    assert Settings(environment="development").auth.secret_key.get_secret_value() == DEV_SECRET
