"""Every route, every role: generated from the OpenAPI schema, so new routes are covered.

Each operation declares `x-permission`. For each role (and a device API key) the test
calls every operation with placeholder ids and an empty body: a role holding the
permission must get past authorisation (anything but 401/403), any other must get 403.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from civitas_ray.auth.permissions import API_KEY_PERMISSIONS, ROLE_PERMISSIONS
from tests.conftest import ROLES

pytestmark = pytest.mark.e2e

SPECIAL = {"public", "authenticated"}


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, item in schema["paths"].items():
        if not path.startswith("/api/v1"):
            continue
        for method, op in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                ops.append((method.upper(), path, op))
    return ops


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


async def test_every_operation_declares_a_known_permission(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    known = {str(p) for perms in ROLE_PERMISSIONS.values() for p in perms} | SPECIAL
    ops = _operations(schema)
    assert len(ops) >= 20
    missing = [(m, p) for m, p, op in ops if op.get("x-permission") not in known]
    assert not missing, f"operations without a valid x-permission: {missing}"


async def test_role_by_route_matrix(client: httpx.AsyncClient, make_tenant) -> None:
    t = await make_tenant()
    schema = (await client.get("/openapi.json")).json()
    principals: dict[str, tuple[dict[str, str], frozenset[str]]] = {
        role: (t.headers(role), frozenset(str(p) for p in ROLE_PERMISSIONS[role]))
        for role in ROLES
    }
    principals["api_key"] = (t.device_headers, frozenset(str(p) for p in API_KEY_PERMISSIONS))
    failures = []
    checked = 0
    for method, path, op in _operations(schema):
        perm = op["x-permission"]
        if perm == "public":
            continue
        if path.endswith("/auth/logout") or path.endswith("/auth/password"):
            # These change the caller's own session: covered in test_auth.py.
            continue
        for name, (headers, perms) in principals.items():
            url = _concrete(path)
            r = await client.request(method, url, headers=headers, json={})
            checked += 1
            if perm == "authenticated":
                allowed = name != "api_key" or method == "GET"
            else:
                allowed = perm in perms
            denied = r.status_code == 403
            if r.status_code == 401 or r.status_code >= 500 or allowed == denied:
                failures.append(f"{name:15} {method:6} {path}: {r.status_code} "
                                f"(expected {'allowed' if allowed else '403'})")
    assert checked > 100
    assert not failures, "\n".join(failures)
