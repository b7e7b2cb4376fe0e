"""`civitas up | down | status | demo | serve-dev`: thin commands over civitas_ray.runtime.

Ray is imported only inside the commands (after Ray's auth mode is set), so the rest
of the CLI starts fast and never loads it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from civitas_ray.runtime.control import UpResult

AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Join this Ray cluster (host:port of its GCS) instead of a local head; "
    "civitas never stops a cluster it joined. Default: CIVITAS_RAY__ADDRESS.")]
PortOpt = Annotated[int | None, typer.Option(
    "--port", help="GCS port of the local Ray head (default CIVITAS_RAY__PORT, 6389: "
    "Redis holds 6379).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Serve config to deploy (default serve_config.yaml).")]
HttpPortOpt = Annotated[int | None, typer.Option(
    "--http-port", help="HTTP port of the Serve proxy (overrides serve_config.yaml and "
    "CIVITAS_SERVE__PORT).")]
HostOpt = Annotated[str | None, typer.Option(
    "--host", help="Interface the Serve proxy binds, e.g. 0.0.0.0 in a container "
    "(overrides serve_config.yaml and CIVITAS_SERVE__HOST).")]
NumCpusOpt = Annotated[int | None, typer.Option(
    "--num-cpus", help="CPUs the local head offers (default: those this process may use).")]
TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", help="Seconds to wait for GET /healthz to answer 200.")]


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _bring_up(address: str | None, port: int | None, config: Path | None,
              http_port: int | None, host: str | None, num_cpus: int | None,
              timeout: float) -> UpResult:
    from civitas_ray.config import get_settings
    from civitas_ray.runtime import control
    from civitas_ray.runtime.cluster import ClusterError
    from civitas_ray.runtime.serving import DeployError

    settings = get_settings()
    t = control.target(settings, address=address, port=port, config_path=config, host=host,
                       http_port=http_port)
    typer.echo(f"civitas up: Ray at {t.address} ({'joining' if t.joining else 'local head'}), "
               f"Serve config {t.config_path}")
    try:
        result = control.up(settings, t, num_cpus=num_cpus, timeout_s=timeout)
    except (ClusterError, DeployError) as exc:
        _fail(f"civitas up failed: {exc}\n(`civitas status` shows the cluster's view; "
              "`civitas down` clears it)")
    return result


def up(address: AddressOpt = None, port: PortOpt = None, config: ConfigOpt = None,
       http_port: HttpPortOpt = None, host: HostOpt = None, num_cpus: NumCpusOpt = None,
       timeout: TimeoutOpt = 120.0) -> None:
    """Start (or join) Ray, deploy serve_config.yaml, wait until /healthz answers."""
    _print_up(_bring_up(address, port, config, http_port, host, num_cpus, timeout))


def _print_up(result: UpResult) -> None:
    if result.started_head:
        typer.echo(f"Ray: started a local head at {result.address}")
    elif result.head is not None:
        typer.echo(f"Ray: reusing the local head civitas started at {result.address}")
    typer.echo(f"Serve: {', '.join(result.applications)} running")
    typer.secho(f"civitas_ray is up: {result.url}  (API docs: {result.url}/docs)",
                fg=typer.colors.GREEN)


def down(address: AddressOpt = None, port: PortOpt = None, config: ConfigOpt = None) -> None:
    """Remove civitas from Serve and stop the local Ray head civitas started (idempotent)."""
    from civitas_ray.config import get_settings
    from civitas_ray.runtime import control
    from civitas_ray.runtime.cluster import ClusterError

    settings = get_settings()
    t = control.target(settings, address=address, port=port, config_path=config)
    try:
        for line in control.down(settings, t):
            typer.echo(line)
    except ClusterError as exc:
        _fail(f"civitas down failed: {exc}")


def status(address: AddressOpt = None, port: PortOpt = None, config: ConfigOpt = None,
           http_port: HttpPortOpt = None, host: HostOpt = None) -> None:
    """Ray, Serve applications and /readyz in one view; exits 1 unless all is well."""
    from civitas_ray.config import get_settings
    from civitas_ray.runtime import control

    settings = get_settings()
    t = control.target(settings, address=address, port=port, config_path=config, host=host,
                       http_port=http_port)
    r = control.status(settings, t)
    if not r.ray_running:
        typer.echo(f"Ray:   {r.ray_error or 'not running'} ({r.address})")
        raise typer.Exit(1)
    owner = f"started by civitas, pid {r.head.pid}" if r.head else "not started by civitas"
    cpus, gpus = r.resources.get("CPU", 0), r.resources.get("GPU", 0)
    typer.echo(f"Ray:   up at {r.address} ({owner}); {r.nodes} node(s), {cpus:g} CPU, "
               f"{gpus:g} GPU")
    if not r.applications:
        typer.echo("Serve: no applications")
    for app in r.applications.values():
        typer.echo(f"Serve: {app.name} {app.status}" + (f": {app.reason}" if app.reason
                                                          and app.status != "RUNNING" else ""))
        for name, state in app.deployments.items():
            replicas = ", ".join(f"{n} {s.lower()}" for s, n in app.replicas.get(name, {}).items())
            typer.echo(f"       {name} {state} ({replicas or 'no replicas'})")
    if r.url:
        checks = r.readiness.get("checks") or {}
        summary = ", ".join(f"{k} {v.get('status')}" for k, v in checks.items())
        detail = summary or r.readiness.get("error", "")
        typer.echo(f"HTTP:  {r.url}/readyz {r.readiness.get('status')}"
                   + (f" ({detail})" if detail else ""))
    raise typer.Exit(0 if r.healthy else 1)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stop(Exception):
    """Raised in the main thread by SIGINT/SIGTERM while the demo runs."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _already_stopping(signum: int, frame: object) -> None:
    typer.echo(f"{signal.Signals(signum).name}: already shutting down, please wait")


def demo(address: AddressOpt = None, port: PortOpt = None, config: ConfigOpt = None,
         http_port: HttpPortOpt = None, host: HostOpt = None, num_cpus: NumCpusOpt = None,
         timeout: TimeoutOpt = 120.0,
         tenant: Annotated[str, typer.Option(help="Slug of the demo tenant")] = "demo",
         detach: Annotated[bool, typer.Option(
             "--detach", help="Leave it running and return (stop it with `civitas down`)")]
         = False,
         rate: Annotated[float, typer.Option(
             help="Readings a second from simulated devices over MQTT, replaying the real "
                  "series in CIVITAS_DATA_DIR (0: none)")] = 50.0,
         devices: Annotated[int, typer.Option(help="Simulated devices")] = 60) -> None:
    """Migrate, seed a demo city (NYC boroughs), bring the platform up, print how to log in."""
    from civitas_ray.config import get_settings
    from civitas_ray.db import migrate
    from civitas_ray.errors import CivitasError
    from civitas_ray.runtime import control
    from civitas_ray.runtime import demo as demo_city

    settings = get_settings()
    try:
        password = demo_city.demo_password(settings)
        typer.echo("database: migrating to head")
        migrate.upgrade("head")
        seeded = demo_city.seed_sync(settings, tenant_slug=tenant, password=password)
    except (CivitasError, demo_city.DemoError, OSError, ValueError) as exc:
        _fail(f"civitas demo failed: {exc}")
    typer.echo(seeded.summary())
    sim_cmd = _simulator_command(settings, tenant, rate, devices)
    if detach:
        _print_up(_bring_up(address, port, config, http_port, host, num_cpus, timeout))
        typer.echo(demo_city.credentials_text(seeded, password_from_env=password.from_env))
        if sim_cmd:
            typer.echo("Make it live: " + " ".join(sim_cmd[2:]).replace(
                "civitas_ray.cli", "civitas"))
        return
    # From here on Ctrl-C or SIGTERM, whenever it comes, ends in an orderly `down`
    # instead of a traceback half-way through start-up. Handlers, not a blocked signal
    # mask: child processes (the Ray head) would inherit the mask and ignore SIGTERM.
    previous = {s: signal.signal(s, _raise_stop) for s in _STOP_SIGNALS}
    simulator: subprocess.Popen[bytes] | None = None
    try:
        _print_up(_bring_up(address, port, config, http_port, host, num_cpus, timeout))
        # Connecting to Ray and disconnecting again resets SIGTERM to its default (an
        # instant exit with no `down`): take the signals back.
        for s in _STOP_SIGNALS:
            signal.signal(s, _raise_stop)
        typer.echo(demo_city.credentials_text(seeded, password_from_env=password.from_env))
        if sim_cmd:
            simulator = subprocess.Popen(sim_cmd, stdout=subprocess.DEVNULL)  # noqa: S603
            typer.echo(f"Live city: {devices} simulated devices send {rate:g} readings/s "
                       "over MQTT (replaying real series).")
        typer.echo("Running in the foreground: Ctrl-C stops it (or --detach next time).")
        while True:
            signal.pause()
    except _Stop as stop:
        typer.echo(f"\n{stop}: shutting down")
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait(10)
        for s in _STOP_SIGNALS:
            signal.signal(s, _already_stopping)
        t = control.target(settings, address=address, port=port, config_path=config)
        for line in control.down(settings, t):
            typer.echo(line)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _simulator_command(settings: Any, tenant: str, rate: float, devices: int) -> list[str]:
    """The `civitas simulate` that makes the demo city live (empty when disabled)."""
    if rate <= 0 or devices <= 0:
        return []
    cmd = [sys.executable, "-m", "civitas_ray.cli", "simulate", "--tenant", tenant,
           "--assets", str(devices), "--rate", f"{rate:g}", "--transport", "mqtt"]
    data_dir = Path(settings.data_dir)
    if (data_dir / "timeseries").is_dir():
        cmd += ["--data-dir", str(data_dir.resolve())]
    return cmd


def serve_dev(host: Annotated[str | None, typer.Option(help="Default CIVITAS_SERVE__HOST")]
              = None,
              port: Annotated[int | None, typer.Option(help="Default CIVITAS_SERVE__PORT")]
              = None,
              reload: Annotated[bool, typer.Option(help="Restart on code changes")] = False,
              ) -> None:
    """Serve create_app() with plain uvicorn: no Ray, for development and benchmarks."""
    import uvicorn

    from civitas_ray.config import get_settings

    settings = get_settings()
    uvicorn.run("civitas_ray.api.app:create_app", factory=True,
                host=host or settings.serve.host, port=port or settings.serve.port,
                reload=reload, log_level=settings.log_level.lower(), proxy_headers=False)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("demo")(demo)
    app.command("serve-dev")(serve_dev)
