"""Bring the platform up, take it down, report on it: the logic behind `civitas up/down/status`.

Same code on a laptop and a cluster: without an address civitas starts (or reuses) a
local Ray head on the configured GCS port; with one it joins that cluster and never
stops it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from civitas_ray.config import Settings
from civitas_ray.runtime import cluster, serving
from civitas_ray.runtime.cluster import HeadRecord
from civitas_ray.runtime.serving import AppState

logger = logging.getLogger(__name__)

DEFAULT_APP_NAMES = ["civitas"]


@dataclass(frozen=True, slots=True)
class Target:
    """Which cluster and which proxy the command is about."""

    address: str
    joining: bool  # an explicit address: someone else's cluster, never stopped by us
    port: int  # the GCS port on the address's host
    config_path: Path
    host: str | None  # HTTP overrides; None keeps serve_config.yaml's value
    http_port: int | None

    @property
    def cluster_host(self) -> str:
        return cluster.split_address(self.address)[0] if self.joining else "127.0.0.1"


def target(settings: Settings, *, address: str | None = None, port: int | None = None,
           config_path: Path | None = None, host: str | None = None,
           http_port: int | None = None) -> Target:
    """Command-line options win over CIVITAS_* settings, which win over serve_config.yaml."""
    address = address or settings.ray.address
    explicit = settings.serve.model_fields_set
    if host is None and "host" in explicit:
        host = settings.serve.host
    if http_port is None and "port" in explicit:
        http_port = settings.serve.port
    gcs_port = cluster.split_address(address)[1] if address else port or settings.ray.port
    return Target(address=address or cluster.local_address(gcs_port), joining=bool(address),
                  port=gcs_port, config_path=config_path or settings.serve.config_path,
                  host=host, http_port=http_port)


@dataclass(frozen=True, slots=True)
class UpResult:
    url: str
    address: str
    head: HeadRecord | None  # the local head civitas runs, if any
    started_head: bool
    applications: list[str]


def up(settings: Settings, t: Target, *, num_cpus: int | None = None,
       timeout_s: float = 120.0) -> UpResult:
    """Start or join Ray, deploy serve_config.yaml, return once /healthz answers 200.

    On a failed deploy Ray is left running so that `civitas status` can show why;
    `civitas down` clears it.
    """
    cluster.configure_auth(may_create_token=not t.joining)
    # Validate the config before starting anything, so a typo costs no Ray start-up.
    config = serving.load_config(t.config_path, host=t.host, port=t.http_port,
                                 env_vars=serving.settings_env())
    head: HeadRecord | None = None
    started = False
    if not t.joining:
        head = cluster.read_record(t.port)
        if not cluster.is_listening("127.0.0.1", t.port):
            head = cluster.start_head(port=t.port, num_cpus=num_cpus or cluster.detected_cpus(),
                                      dashboard=settings.ray.dashboard,
                                      extra_env=cluster.proxy_env(settings.serve.haproxy))
            started = True
        elif head is None:
            logger.info("using the Ray already running on this machine",
                        extra={"address": t.address})
    # The driver that deploys must agree with the head on the proxy mode.
    os.environ.update(cluster.proxy_env(settings.serve.haproxy))
    cluster.connect(t.address, namespace=settings.ray.namespace)
    try:
        serving.deploy(config)
        url = serving.base_url(*serving.http_target(config), cluster_host=t.cluster_host)
        serving.wait_until_serving(config, url, timeout_s=timeout_s)
        warm_entity_hosts(settings)
        from civitas_ray.runtime import maintenance

        maintenance.start()
        from civitas_ray.ai.agents import runner as agent_runner

        agent_runner.start()
        from civitas_ray.mqtt.actor import start_bridge

        start_bridge(settings, env_vars=serving.settings_env())
        from civitas_ray.transit.poller import start_pollers

        start_pollers(env_vars=serving.settings_env())
        from civitas_ray.feeds.weather import start_weather_poller

        start_weather_poller(env_vars=serving.settings_env())
    finally:
        cluster.disconnect()
    return UpResult(url=url, address=t.address, head=head, started_head=started,
                    applications=[a.name for a in config.applications])


def warm_entity_hosts(settings: Settings) -> None:
    """Create the StreamShard and ZoneShard actors now, not on the first reading."""
    import ray

    from civitas_ray.runtime import registry

    a = settings.actors
    handles = [registry.stream_shard(i) for i in range(a.stream_shards)]
    handles += [registry.zone_shard(i) for i in range(a.zone_shards)]
    ray.get([h.info.remote() for h in handles], timeout=120)


def app_names(config_path: Path) -> list[str]:
    """The applications serve_config.yaml deploys (read leniently: `down` must work even
    when the file has since been broken or removed)."""
    try:
        raw = yaml.safe_load(config_path.read_text()) or {}
        names = [str(a["name"]) for a in raw.get("applications") or []]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return DEFAULT_APP_NAMES
    return names or DEFAULT_APP_NAMES


def down(settings: Settings, t: Target) -> list[str]:
    """Take civitas off the cluster; stop the local head if civitas started it. Idempotent.

    Returns what was done, one line each, for the command to print.
    """
    host, port = cluster.split_address(t.address)
    head = None if t.joining else cluster.read_record(t.port)
    if not cluster.is_listening(host, port):
        if head is not None:  # started by civitas but not answering: stop what is left
            cluster.stop_head(head)
            return [f"stopped a local Ray head that was not answering (pid {head.pid})"]
        return [f"Ray is not running at {t.address}: nothing to stop"]
    done: list[str] = []
    cluster.configure_auth(may_create_token=False)
    cluster.connect(t.address, namespace=settings.ray.namespace)
    try:
        from civitas_ray.mqtt.actor import stop_bridge

        # Drain the bridge first: what it received is committed and acknowledged, not
        # left for the broker to resend.
        stopped = stop_bridge(settings)
        if stopped:
            done.append(f"MQTT bridge stopped ({len(stopped)} actor(s))")
        from civitas_ray.transit.poller import stop_pollers

        pollers = stop_pollers()
        if pollers:
            done.append(f"GTFS-RT pollers stopped ({len(pollers)})")
        from civitas_ray.feeds.weather import stop_weather_poller

        if stop_weather_poller():
            done.append("weather poller stopped")
        from civitas_ray.runtime import maintenance

        if maintenance.stop():
            done.append("maintenance jobs stopped")
        from civitas_ray.ai.agents import runner as agent_runner

        if agent_runner.stop():
            done.append("agent runner stopped")
        if head is not None:
            done.append("Serve shut down" if serving.shutdown_serve()
                        else "Serve was not running")
        else:
            deleted = serving.delete_apps(app_names(t.config_path))
            done.append(f"deleted Serve application(s) {', '.join(deleted)}" if deleted
                        else "no civitas application was deployed")
    finally:
        cluster.disconnect()
    if head is not None:
        cluster.stop_head(head)
        done.append(f"stopped the local Ray head (pid {head.pid}, port {head.port})")
    else:
        done.append(f"Ray at {t.address} was not started by civitas: left running")
    return done


@dataclass(slots=True)
class StatusReport:
    address: str
    ray_running: bool = False
    ray_error: str | None = None
    head: HeadRecord | None = None
    nodes: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    applications: dict[str, AppState] = field(default_factory=dict)
    url: str | None = None
    readiness: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return (self.ray_running and bool(self.applications)
                and all(a.status == "RUNNING" for a in self.applications.values())
                and self.readiness.get("status") == "ready")


def status(settings: Settings, t: Target) -> StatusReport:
    """Ray up? Serve applications' states? /readyz through the proxy?"""
    report = StatusReport(address=t.address)
    host, port = cluster.split_address(t.address)
    report.head = None if t.joining else cluster.read_record(t.port)
    if not cluster.is_listening(host, port):
        return report
    try:
        cluster.configure_auth(may_create_token=False)
        cluster.connect(t.address, namespace=settings.ray.namespace)
    except cluster.ClusterError as exc:
        report.ray_error = str(exc)
        return report
    import ray

    try:
        report.ray_running = True
        report.nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        report.resources = dict(ray.cluster_resources())
        report.applications = serving.app_states()
    finally:
        cluster.disconnect()
    if report.applications:
        try:
            config = serving.load_config(t.config_path, host=t.host, port=t.http_port)
            report.url = serving.base_url(*serving.http_target(config),
                                          cluster_host=t.cluster_host)
        except serving.DeployError as exc:
            report.readiness = {"status": "unknown", "error": str(exc)}
            return report
        report.readiness = serving.readiness(report.url)
    return report
