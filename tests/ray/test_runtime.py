"""`civitas up` and `civitas down` for real: a local Ray head, Serve, the API through the
proxy, then nothing left listening. Ports of their own, so a developer's `civitas up`
on the default ports can keep running meanwhile."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY_PORT = 6397
HTTP_PORT = 8765
URL = f"http://127.0.0.1:{HTTP_PORT}"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _civitas(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "civitas_ray.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def env(migrated_db: str) -> dict[str, str]:
    # The replicas get the test database through the CIVITAS_* pass-through.
    return {**os.environ, "CIVITAS_DATABASE__NAME": migrated_db, "CIVITAS_ENVIRONMENT": "test"}


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[str]:
    """The platform up on its own ports; taken down afterwards whatever happened."""
    for port in (RAY_PORT, HTTP_PORT):
        if _listening(port):
            pytest.fail(f"port {port} is already taken; stop what holds it")
    try:
        up = _civitas("up", "--port", str(RAY_PORT), "--http-port", str(HTTP_PORT),
                      "--timeout", "60", env=env, timeout=120)
        assert up.returncode == 0, f"civitas up failed:\n{up.stdout}\n{up.stderr}"
        assert URL in up.stdout
        yield URL
    finally:
        _civitas("down", "--port", str(RAY_PORT), env=env, timeout=90)


def test_health_and_readiness_through_serve(stack: str) -> None:
    r = httpx.get(f"{stack}/healthz", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    r = httpx.get(f"{stack}/readyz", timeout=10)
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert {name: checks[name]["status"] for name in ("database", "redis", "mqtt")} == {
        "database": "ok", "redis": "ok", "mqtt": "ok"}
    # `civitas up` starts the MQTT bridge actors; they report connected.
    assert checks["mqtt_bridge"]["status"] == "ok" and checks["mqtt_bridge"]["connected"] >= 1


def test_api_is_served_with_its_errors(stack: str) -> None:
    spec = httpx.get(f"{stack}/openapi.json", timeout=5).json()
    assert "/api/v1/auth/token" in spec["paths"]
    r = httpx.get(f"{stack}/api/v1/users", timeout=5)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 401


def test_status_reports_the_running_stack(stack: str, env: dict[str, str]) -> None:
    r = _civitas("status", "--port", str(RAY_PORT), "--http-port", str(HTTP_PORT), env=env,
                 timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "started by civitas" in r.stdout and "civitas RUNNING" in r.stdout
    ready = r.stdout.split("/readyz ", 1)[1]
    assert ready.startswith("ready (")
    for check in ("database ok", "redis ok", "mqtt ok", "mqtt_bridge ok"):
        assert check in ready, (check, r.stdout)


def test_down_stops_serve_and_ray_and_is_idempotent(stack: str, env: dict[str, str]) -> None:
    r = _civitas("down", "--port", str(RAY_PORT), env=env, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stopped the local Ray head" in r.stdout
    assert not _listening(HTTP_PORT) and not _listening(RAY_PORT)
    again = _civitas("down", "--port", str(RAY_PORT), env=env, timeout=30)
    assert again.returncode == 0 and "nothing to stop" in again.stdout
    status = _civitas("status", "--port", str(RAY_PORT), env=env, timeout=30)
    assert status.returncode == 1 and "not running" in status.stdout
