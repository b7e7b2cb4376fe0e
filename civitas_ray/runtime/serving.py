"""Deploying serve_config.yaml on a connected cluster, reporting on it, taking it down.

The config goes to the Serve controller the way `serve deploy` sends it (validated by
Serve's own ServeDeploySchema, then `apply_config` on the controller), without needing
the Ray dashboard that `serve deploy` talks to: the dashboard costs a process and
seconds of start-up on a 2-core machine, and civitas keeps it off by default.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from dotenv import dotenv_values

from civitas_ray.config import Settings

logger = logging.getLogger(__name__)

ENV_PREFIX = "CIVITAS_"
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}  # noqa: S104 - recognised, not bound


class DeployError(RuntimeError):
    """The application did not come up; the message carries Serve's own reason."""


@dataclass(frozen=True, slots=True)
class AppState:
    name: str
    status: str
    message: str
    deployments: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """The message's last line: for a failed deploy, the exception behind Serve's
        traceback (the whole of it is in the Serve controller's log)."""
        lines = [line for line in self.message.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def settings_env(settings_cls: type[Settings] = Settings, env_file: Path = Path(".env"),
                 ) -> dict[str, str]:
    """The CIVITAS_* variables of this process (and its .env) that belong to the settings
    tree, so replicas configure themselves like the command that deployed them.

    Only settings keys travel: other CIVITAS_* variables (CIVITAS_DEMO_PASSWORD) are not
    the replicas' business. The environment wins over .env, as in Settings itself.
    """
    fields = {name.upper() for name in settings_cls.model_fields}
    merged: dict[str, str] = {}
    if env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    out = {}
    for key, value in merged.items():
        if not key.upper().startswith(ENV_PREFIX):
            continue
        head = key[len(ENV_PREFIX):].upper().split("__", 1)[0]
        if head in fields:
            out[key] = value
    return out


def load_config(path: Path, *, host: str | None = None, port: int | None = None,
                env_vars: dict[str, str] | None = None) -> Any:
    """Read serve_config.yaml, apply the command line's overrides, validate it.

    Returns Serve's ServeDeploySchema (typed Any: Ray is imported lazily so that
    `civitas db ...` never loads it).
    """
    from ray.serve.schema import ServeDeploySchema

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise DeployError(f"cannot read the Serve config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise DeployError(f"{path} is not a Serve config (a mapping with `applications`)")
    http = raw.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = port
    for app in raw.get("applications") or []:
        runtime_env = app.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **(env_vars or {})}
    try:
        return ServeDeploySchema.model_validate(raw)
    except ValueError as exc:
        raise DeployError(f"{path} is not a valid Serve config: {exc}") from exc


def http_target(config: Any) -> tuple[str, int]:
    return config.http_options.host, config.http_options.port


def base_url(host: str, port: int, *, cluster_host: str = "127.0.0.1") -> str:
    """Where a client reaches the proxy: a wildcard bind is reached on CLUSTER_HOST."""
    reach = cluster_host if host in WILDCARD_HOSTS else host
    if ":" in reach:
        reach = f"[{reach}]"
    return f"http://{reach}:{port}"


def deploy(config: Any) -> None:
    """Start Serve with the config's proxy options (if not yet running) and apply it."""
    from ray.serve._private.api import serve_start

    client = serve_start(http_options=config.http_options.model_dump(),
                         proxy_location=config.proxy_location,
                         grpc_options=config.grpc_options.model_dump(),
                         global_logging_config=config.logging_config)
    running = client.http_config
    wanted = config.http_options
    if (running.host, running.port) != (wanted.host, wanted.port):
        raise DeployError(
            f"Serve already runs on this cluster with its proxy on {running.host}:"
            f"{running.port}, not {wanted.host}:{wanted.port}: proxy options only change "
            "when Serve restarts (`civitas down`, then `civitas up`)")
    if config.logging_config:
        client.update_global_logging_config(config.logging_config)
    client.deploy_apps(config)
    logger.info("serve config applied", extra={
        "applications": [a.name for a in config.applications],
        "http": f"{wanted.host}:{wanted.port}"})


def app_states() -> dict[str, AppState]:
    """Serve's view of every application on the connected cluster ({} when Serve is off)."""
    from ray import serve

    status = serve.status()
    out = {}
    for name, app in status.applications.items():
        out[name] = AppState(
            name=name, status=str(app.status.value), message=app.message,
            deployments={d: str(s.status.value) for d, s in app.deployments.items()},
            replicas={d: {str(getattr(k, "value", k)): n for k, n in s.replica_states.items()}
                      for d, s in app.deployments.items()})
    return out


def wait_until_serving(config: Any, url: str, *, timeout_s: float) -> None:
    """Block until GET /healthz answers 200 through the proxy; fail fast when Serve
    reports the deploy failed, with its reason."""
    names = [a.name for a in config.applications]
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            states = app_states()
            failed = [s for n, s in states.items()
                      if n in names and s.status in ("DEPLOY_FAILED", "UNHEALTHY")]
            if failed:
                raise DeployError("; ".join(f"application {s.name} is {s.status}: "
                                            f"{s.reason}" for s in failed))
            try:
                r = http.get(f"{url}/healthz")
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.5)
    raise DeployError(f"{url}/healthz did not answer 200 within {timeout_s:.0f} s "
                      f"(last: {last}); `civitas status` shows Serve's view")


def delete_apps(names: list[str]) -> list[str]:
    """Delete these applications (those present), leaving Serve and any other
    applications on a shared cluster alone; returns the names deleted."""
    from ray import serve

    present = [n for n in names if n in app_states()]
    for name in present:
        serve.delete(name)
    return present


def shutdown_serve() -> bool:
    """Remove every application and Serve's own actors; False when Serve was not running."""
    from ray import serve

    status = serve.status()
    if not (status.proxies or status.applications):
        return False
    serve.shutdown()
    return True


def readiness(url: str) -> dict[str, Any]:
    """GET /readyz through the proxy: {'status': ..., 'checks': {...}}, or what went wrong."""
    try:
        r = httpx.get(f"{url}/readyz", timeout=5.0)
    except httpx.HTTPError as exc:
        return {"status": "unreachable", "error": f"{type(exc).__name__}: {exc}"}
    try:
        body: dict[str, Any] = r.json()
    except ValueError:
        return {"status": f"HTTP {r.status_code}", "error": r.text[:200]}
    return body
