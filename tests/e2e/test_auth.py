"""Sign-in, tokens, refresh rotation, logout, password policy and login rate limits."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from jose import jwt

from civitas_ray.config import get_settings
from tests.conftest import PASSWORD

pytestmark = pytest.mark.e2e


async def test_login_me_and_wrong_password(client: httpx.AsyncClient, make_tenant) -> None:
    t = await make_tenant(roles=["operator"])
    r = await client.get("/api/v1/auth/me", headers=t.headers("operator"))
    assert r.status_code == 200, r.text
    me = r.json()
    assert me["role"] == "operator" and me["tenant_id"] == str(t.id)
    assert me["tenant_slug"] == t.slug
    assert "incidents:write" in me["permissions"] and "users:write" not in me["permissions"]

    bad = await client.post("/api/v1/auth/token", data={
        "username": t.users["operator"]["email"], "password": "wrong-" + PASSWORD})
    assert bad.status_code == 401
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert bad.json()["status"] == 401


async def test_no_token_and_garbage_token_are_refused(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/auth/me")
    assert r.status_code == 401 and r.json()["type"].endswith("/unauthorized")
    r = await client.get("/api/v1/auth/me", headers={"Authorization": "Bearer x.y.z"})
    assert r.status_code == 401


async def test_tampered_and_expired_tokens(client: httpx.AsyncClient, make_tenant) -> None:
    t = await make_tenant(roles=["viewer"])
    token = t.users["viewer"]["access_token"]
    claims = jwt.get_unverified_claims(token)
    # Same claims, but promoted to tenant_admin and signed with another key.
    forged = jwt.encode({**claims, "role": "tenant_admin"}, "not-the-key", algorithm="HS256")
    r = await client.get("/api/v1/users", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    s = get_settings().auth
    past = datetime.now(UTC) - timedelta(hours=2)
    expired = jwt.encode({**claims, "iat": int(past.timestamp()),
                          "exp": int((past + timedelta(minutes=15)).timestamp())},
                         s.secret_key.get_secret_value(), algorithm=s.algorithm)
    r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"].lower()
    # alg=none must never be accepted.
    none_token = jwt.encode(claims, "", algorithm="HS256").rsplit(".", 1)[0] + "."
    r = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {none_token}"})
    assert r.status_code == 401


async def test_refresh_rotation_and_reuse_detection(client: httpx.AsyncClient, make_tenant,
                                                    admin_sql) -> None:
    t = await make_tenant(roles=["analyst"])
    first = t.users["analyst"]["refresh_token"]
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert r.status_code == 200, r.text
    second = r.json()["refresh_token"]
    assert second != first
    r = await client.get("/api/v1/auth/me",
                         headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert r.status_code == 200

    # Replaying the rotated token is theft: it fails and revokes the whole family.
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert r.status_code == 401
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": second})
    assert r.status_code == 401, "the family must be revoked after reuse"
    rows = await admin_sql("select action from audit_log where tenant_id = $1 and "
                           "action like 'auth.refresh%' order by seq", t.id)
    assert [r["action"] for r in rows] == ["auth.refresh", "auth.refresh_reuse",
                                           "auth.refresh_revoked"]


async def test_refresh_tokens_are_stored_hashed(client: httpx.AsyncClient, make_tenant,
                                                admin_sql) -> None:
    t = await make_tenant(roles=["viewer"])
    token = t.users["viewer"]["refresh_token"]
    rows = await admin_sql("select token_hash from refresh_token where tenant_id = $1", t.id)
    assert rows and all(token not in r["token_hash"] for r in rows)


async def test_logout_revokes_refresh_token(client: httpx.AsyncClient, make_tenant) -> None:
    t = await make_tenant(roles=["viewer"])
    info = t.users["viewer"]
    r = await client.post("/api/v1/auth/logout", headers=t.headers("viewer"),
                          json={"refresh_token": info["refresh_token"]})
    assert r.status_code == 204
    r = await client.post("/api/v1/auth/refresh", json={"refresh_token": info["refresh_token"]})
    assert r.status_code == 401


async def test_logout_everywhere_kills_access_tokens(client: httpx.AsyncClient,
                                                     make_tenant) -> None:
    t = await make_tenant(roles=["viewer"])
    await asyncio.sleep(1.05)  # tokens carry whole seconds
    r = await client.post("/api/v1/auth/logout", headers=t.headers("viewer"),
                          json={"everywhere": True})
    assert r.status_code == 204
    r = await client.get("/api/v1/auth/me", headers=t.headers("viewer"))
    assert r.status_code == 401


@pytest.mark.parametrize("password,reason", [
    ("short1!", "at least"),
    ("password1234", "commonly used"),
    ("Password2024!", "commonly used"),
    ("aaaaaaaaaaaaaaa", "distinct"),
])
async def test_password_policy(client: httpx.AsyncClient, make_tenant, password: str,
                               reason: str) -> None:
    t = await make_tenant(roles=["tenant_admin"])
    r = await client.post("/api/v1/users", headers=t.headers("tenant_admin"), json={
        "email": f"new-{uuid.uuid4().hex[:6]}@example.org", "password": password,
        "role": "viewer"})
    assert r.status_code == 422, r.text
    assert reason in r.json()["detail"]


async def test_password_must_not_contain_email(client: httpx.AsyncClient, make_tenant) -> None:
    t = await make_tenant(roles=["tenant_admin"])
    r = await client.post("/api/v1/users", headers=t.headers("tenant_admin"), json={
        "email": "marguerite.ville@example.org", "password": "marguerite.ville-Xq7",
        "role": "viewer"})
    assert r.status_code == 422 and "e-mail" in r.json()["detail"]


async def test_login_rate_limited_per_account_and_audited(app, make_tenant, admin_sql,
                                                         redis_clean) -> None:
    t = await make_tenant(roles=["viewer"], with_key=False)
    email = t.users["viewer"]["email"]
    limit = get_settings().auth.login_max_failures
    transport = httpx.ASGITransport(app=app, client=("10.77.0.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for _ in range(limit):
            r = await c.post("/api/v1/auth/token", data={"username": email, "password": "nope"})
            assert r.status_code == 401
        # Even the right password is refused while the account is locked out.
        r = await c.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) > 0
    rows = await admin_sql("select count(*) from audit_log where tenant_id = $1 and "
                           "action = 'auth.login_failed'", t.id)
    assert rows[0]["count"] == limit


async def test_login_rate_limited_per_address(app, make_tenant, redis_clean) -> None:
    limit = get_settings().auth.login_max_failures_per_address
    transport = httpx.ASGITransport(app=app, client=("10.77.1.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for i in range(limit):
            r = await c.post("/api/v1/auth/token", data={
                "username": f"nobody{i}@example.org", "password": "whatever-it-is"})
            assert r.status_code == 401
        r = await c.post("/api/v1/auth/token", data={"username": "x@example.org",
                                                       "password": "whatever-it-is"})
        assert r.status_code == 429


async def test_password_change_signs_out(client: httpx.AsyncClient, make_tenant) -> None:
    t = await make_tenant(roles=["operator"])
    await asyncio.sleep(1.05)
    r = await client.post("/api/v1/auth/password", headers=t.headers("operator"), json={
        "current_password": PASSWORD, "new_password": "Another-Long-Phrase-77"})
    assert r.status_code == 204, r.text
    assert (await client.get("/api/v1/auth/me", headers=t.headers("operator"))).status_code == 401
    r = await client.post("/api/v1/auth/token", data={
        "username": t.users["operator"]["email"], "password": "Another-Long-Phrase-77"})
    assert r.status_code == 200
