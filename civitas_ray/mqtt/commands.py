"""`civitas mqtt-bridge` (the bridge without Ray, for development) and `civitas simulate`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer


def mqtt_bridge(
    processes: Annotated[int | None, typer.Option(
        "--processes", "-p", help="Bridge processes sharing the subscription (default "
        "CIVITAS_MQTT__BRIDGE__PROCESSES).")] = None,
    connections: Annotated[int | None, typer.Option(
        "--connections", "-c", help="MQTT connections per process (default "
        "CIVITAS_MQTT__BRIDGE__CONNECTIONS).")] = None,
) -> None:
    """Run the MQTT ingest bridge in the foreground, without Ray; Ctrl-C drains and stops."""
    from civitas_ray.config import get_settings
    from civitas_ray.logging import configure
    from civitas_ray.mqtt import runner

    s = get_settings()
    configure(s.log_level, json_output=s.log_json)
    n = processes if processes is not None else s.mqtt.bridge.processes
    typer.echo(f"MQTT bridge: {n} process(es) on {s.mqtt.host}:{s.mqtt.port}, "
               f"group $share/{s.mqtt.bridge.share_group}, topics "
               f"{s.mqtt.bridge.topic_prefix}/<tenant>/telemetry/<asset> and .../senml[/<asset>]")
    raise typer.Exit(runner.run(processes=n, connections=connections))


def simulate(
    tenant: Annotated[str, typer.Option(help="Tenant slug (must exist)")],
    assets: Annotated[int, typer.Option(help="Simulated assets, created once, then reused")]
    = 100,
    rate: Annotated[float, typer.Option(help="Readings a second, all assets together")] = 100.0,
    transport: Annotated[str, typer.Option(help="mqtt or http")] = "mqtt",
    data_dir: Annotated[Path | None, typer.Option(
        help="Shared data directory (or its timeseries/): replay real series; synthetic "
        "seasonal values without it")] = None,
    duration: Annotated[float | None, typer.Option(help="Seconds; until Ctrl-C without it")]
    = None,
    api_key: Annotated[str | None, typer.Option(
        help="Device API key for --transport http (one is created when absent)")] = None,
    url: Annotated[str, typer.Option(help="API base URL for --transport http")]
    = "http://127.0.0.1:8000",
    mqtt_client: Annotated[str, typer.Option(
        help="auto, mosquitto_pub (SenML on one topic, fast) or python (per-asset topics)")]
    = "auto",
) -> None:
    """Simulated devices sending readings at a set rate; prints the achieved rate."""
    from civitas_ray.cache import close_redis
    from civitas_ray.db.session import dispose_engine
    from civitas_ray.simulate import SimulationConfig
    from civitas_ray.simulate import simulate as run_simulation

    if transport not in ("mqtt", "http"):
        raise typer.BadParameter("--transport is mqtt or http")
    if mqtt_client not in ("auto", "mosquitto_pub", "python"):
        raise typer.BadParameter("--mqtt-client is auto, mosquitto_pub or python")
    cfg = SimulationConfig(tenant=tenant, assets=assets, rate=rate, transport=transport,  # type: ignore[arg-type]
                           data_dir=data_dir, duration_s=duration, api_key=api_key, url=url,
                           mqtt_client=mqtt_client)  # type: ignore[arg-type]

    async def go() -> int:
        try:
            report = await run_simulation(cfg, out=lambda line: typer.echo(line))
        finally:
            await dispose_engine()
            await close_redis()
        return 1 if report.errors else 0

    try:
        code = asyncio.run(go())
    except (LookupError, FileNotFoundError, ValueError) as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `civitas mqtt-bridge` and `civitas simulate` to the CLI."""
    app.command("mqtt-bridge")(mqtt_bridge)
    app.command("simulate")(simulate)
