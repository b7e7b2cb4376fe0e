"""Tenants, users and device API keys through the HTTP API."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


async def test_platform_admin_manages_tenants(client: httpx.AsyncClient, make_tenant) -> None:
    p = await make_tenant(roles=["platform_admin"])
    h = p.headers("platform_admin")
    slug = "city-" + uuid.uuid4().hex[:6]
    r = await client.post("/api/v1/tenants", headers=h, json={"slug": slug, "name": "Gotham"})
    assert r.status_code == 201, r.text
    tid = r.json()["id"]
    r = await client.post("/api/v1/tenants", headers=h, json={"slug": slug, "name": "Again"})
    assert r.status_code == 409
    r = await client.post("/api/v1/tenants", headers=h, json={"slug": "Bad Slug!", "name": "x"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"][-1] == "slug"
    r = await client.patch(f"/api/v1/tenants/{tid}", headers=h, json={"name": "Gotham City"})
    assert r.json()["name"] == "Gotham City"
    r = await client.delete(f"/api/v1/tenants/{tid}", headers=h)
    assert r.status_code == 200 and r.json()["deleted_at"]
    listed = (await client.get("/api/v1/tenants", headers=h, params={"limit": 500})).json()
    assert tid not in {t["id"] for t in listed["items"]}
    r = await client.post(f"/api/v1/tenants/{tid}/restore", headers=h)
    assert r.status_code == 200 and r.json()["deleted_at"] is None


async def test_user_lifecycle(client: httpx.AsyncClient, make_tenant) -> None:
    t = await make_tenant(roles=["tenant_admin"])
    h = t.headers("tenant_admin")
    email = f"Olga.{uuid.uuid4().hex[:6]}@Example.org"
    r = await client.post("/api/v1/users", headers=h, json={
        "email": email, "password": PASSWORD, "role": "operator", "full_name": "Olga"})
    assert r.status_code == 201, r.text
    user = r.json()
    assert user["email"] == email.lower() and "password" not in str(user)
    # Duplicate e-mail (case-insensitive) is a conflict.
    r = await client.post("/api/v1/users", headers=h, json={
        "email": email.upper(), "password": PASSWORD, "role": "viewer"})
    assert r.status_code == 409
    # A tenant admin cannot mint platform admins.
    r = await client.post("/api/v1/users", headers=h, json={
        "email": f"x{uuid.uuid4().hex[:6]}@example.org", "password": PASSWORD,
        "role": "platform_admin"})
    assert r.status_code == 403
    r = await client.get("/api/v1/users", headers=h, params={"role": "operator"})
    assert [u["email"] for u in r.json()["items"]] == [email.lower()]
    r = await client.get("/api/v1/users", headers=h, params={"sort": "-email", "limit": 1})
    assert r.json()["total"] == 2 and len(r.json()["items"]) == 1

    tok = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert tok.status_code == 200
    op_headers = {"Authorization": f"Bearer {tok.json()['access_token']}"}
    r = await client.patch(f"/api/v1/users/{user['id']}", headers=h, json={"is_active": False})
    assert r.status_code == 200 and r.json()["is_active"] is False
    # Disabling an account cuts its live tokens and its sign-in.
    assert (await client.get("/api/v1/auth/me", headers=op_headers)).status_code == 401
    r = await client.post("/api/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert r.status_code == 401

    r = await client.delete(f"/api/v1/users/{user['id']}", headers=h)
    assert r.status_code == 200 and r.json()["deleted_at"]
    assert (await client.get(f"/api/v1/users/{user['id']}", headers=h)).status_code == 404
    r = await client.post(f"/api/v1/users/{user['id']}/restore", headers=h)
    assert r.status_code == 200 and r.json()["deleted_at"] is None
    r = await client.delete(f"/api/v1/users/{t.users['tenant_admin']['id']}", headers=h)
    assert r.status_code == 403


async def test_api_keys(client: httpx.AsyncClient, make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["tenant_admin"], with_key=False)
    h = t.headers("tenant_admin")
    r = await client.post("/api/v1/api-keys", headers=h, json={"name": "bus fleet"})
    assert r.status_code == 201
    created = r.json()
    key = created["key"]
    assert key.startswith("cvk_") and created["scopes"] == ["telemetry:ingest"]
    stored = await admin_sql("select key_hash from api_key where id = $1",
                             uuid.UUID(created["id"]))
    assert key not in stored[0]["key_hash"]
    me = await client.get("/api/v1/auth/me", headers={"X-API-Key": key})
    assert me.status_code == 200 and me.json()["kind"] == "api_key"
    assert me.json()["permissions"] == ["telemetry:ingest"]
    # A device key reads nothing else.
    assert (await client.get("/api/v1/users", headers={"X-API-Key": key})).status_code == 403
    # The ingest path caches keys briefly: prime that cache before revoking.
    r = await client.post("/api/v1/telemetry", headers={"X-API-Key": key},
                          json={"readings": []})
    assert r.status_code == 202
    listed = (await client.get("/api/v1/api-keys", headers=h)).json()
    assert "key" not in listed["items"][0]
    r = await client.delete(f"/api/v1/api-keys/{created['id']}", headers=h)
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert (await client.get("/api/v1/auth/me", headers={"X-API-Key": key})).status_code == 401
    r = await client.post("/api/v1/telemetry", headers={"X-API-Key": key},
                          json={"readings": []})
    assert r.status_code == 401, "a revoked key must stop ingesting at once in this process"


def test_cli_bootstrap_prints_key_last(migrated_db: str) -> None:
    slug = "cli-" + uuid.uuid4().hex[:6]

    def civitas(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "civitas_ray.cli", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    assert civitas("admin", "create-tenant", slug).returncode == 0
    out = civitas("admin", "create-user", "--tenant", slug, "--email", f"a@{slug}.org",
                  "--role", "tenant_admin", "--password", PASSWORD)
    assert out.returncode == 0, out.stderr
    weak = civitas("admin", "create-user", "--tenant", slug, "--email", f"b@{slug}.org",
                   "--password", "password1234")
    assert weak.returncode == 1 and "commonly used" in weak.stderr
    out = civitas("admin", "create-api-key", "--tenant", slug, "--name", "meters")
    assert out.returncode == 0
    key = out.stdout.split()[-1]
    assert key.startswith("cvk_")
    assert civitas("admin", "create-tenant", slug).returncode == 1


async def test_problem_json_for_unknown_route_and_bad_uuid(client: httpx.AsyncClient,
                                                           make_tenant) -> None:
    t = await make_tenant(roles=["tenant_admin"])
    r = await client.get("/api/v1/users/not-a-uuid", headers=t.headers("tenant_admin"))
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["errors"][0]["loc"] == ["path", "user_id"] and body["request_id"]
    r = await client.get("/api/v1/nope")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
