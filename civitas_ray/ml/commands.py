"""`civitas ml train | list | promote | shadow | rollback | backtest` for ML engineers.

The same services as the API (`/api/v1/ml`), acting as the CLI's system actor (audited as
such) on a tenant given by its slug. `train` runs the job in this process and shows its
progress; the job row is the same one the API would have made.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

ml_app = typer.Typer(help="Forecasting models: train, backtest, list, promote, roll back.",
                     no_args_is_help=True)

TenantOpt = Annotated[str, typer.Option(help="Tenant slug")]
AssetOpt = Annotated[str | None, typer.Option(help="Asset UUID (a stream subject)")]
ZoneOpt = Annotated[str | None, typer.Option(help="Zone UUID (a zone subject)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]
KINDS = "traffic, energy, water, incident, demand"


def _run(coro: Any) -> Any:
    from civitas_ray.cli import _run as run

    return run(coro)


async def _tenant_id(slug: str) -> uuid.UUID:
    from sqlalchemy import text

    from civitas_ray.db.session import tenant_session

    async with tenant_session(None, system=True) as s:
        tid = await s.scalar(text("select id from tenant where slug = :s and deleted_at is null"),
                             {"s": slug})
    if tid is None:
        raise typer.BadParameter(f"no tenant {slug!r}", param_hint="--tenant")
    return uuid.UUID(str(tid))


def _uuid(value: str | None, hint: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not a UUID: {value!r}", param_hint=hint) from exc


def _print(obj: Any, as_json: bool, line: str) -> None:
    typer.echo(json.dumps(obj, default=str, indent=2) if as_json else line)


@ml_app.command("train")
def train(
    model: Annotated[str, typer.Argument(help=f"Model kind: {KINDS}")],
    tenant: TenantOpt, metric: Annotated[str, typer.Option(help="Metric (or `incidents`)")],
    asset: AssetOpt = None, zone: ZoneOpt = None,
    name: Annotated[str | None, typer.Option(help="Registry name (default: the kind)")] = None,
    horizon: Annotated[int | None, typer.Option(help="Backtest horizon in steps")] = None,
    freq: Annotated[str, typer.Option(help="Grid: 1h, 15min, 1D")] = "1h",
    holdout_start: Annotated[datetime | None, typer.Option(
        help="Backtest from here (default: the newest 20 %)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Backtest and train a model; stores a candidate version with its metrics."""
    from civitas_ray.ml.schemas import TrainIn

    try:
        body = TrainIn.model_validate({
            "model": model, "asset_id": asset, "zone_id": zone, "metric": metric, "name": name,
            "horizon": horizon, "freq": freq,
            "holdout_start": holdout_start.isoformat() + ("" if holdout_start.tzinfo else "Z")
            if holdout_start else None})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    job = _run(_train(tenant, body))
    result = job.get("result") or {}
    if job["status"] != "succeeded":
        _print(job, as_json, f"training failed: {job.get('error')}")
        raise typer.Exit(1)
    bt = result.get("backtest", {})
    line = (f"version {result['version']} stored as a candidate "
            f"({result['model_version_id']})\n"
            f"backtest MAE: model {bt['model']['mae']:.4g}, seasonal-naive "
            f"{bt['seasonal_naive']['mae']:.4g}, last-value {bt['last_value']['mae']:.4g}; "
            + ("beats seasonal-naive: promotable" if result["beats_seasonal_naive"]
               else "does NOT beat seasonal-naive: will not be promoted"))
    _print(job, as_json, line)


async def _train(slug: str, body: Any) -> dict[str, Any]:
    from civitas_ray.db.session import tenant_session
    from civitas_ray.ml import training
    from civitas_ray.ml.registry_models import MlJob

    tenant_id = await _tenant_id(slug)
    async with tenant_session(tenant_id) as s:
        job = MlJob(tenant_id=tenant_id, kind="train", status="queued", progress=0.0,
                    request=body.model_dump(mode="json"), message="queued")
        s.add(job)
        await s.flush()
        job_id = job.id
    task = asyncio.create_task(training.run_training(job_id, tenant_id))
    last = ""
    while not task.done():
        await asyncio.sleep(0.5)
        async with tenant_session(tenant_id) as s:
            row = await s.get(MlJob, job_id)
            msg = f"{row.progress:4.0%} {row.message}" if row else ""
        if msg != last:
            typer.echo(msg, err=True)
            last = msg
    await task
    async with tenant_session(tenant_id) as s:
        row = await s.get(MlJob, job_id)
        assert row is not None
        return {"id": str(row.id), "status": row.status, "error": row.error,
                "result": row.result}


@ml_app.command("list")
def list_models(tenant: TenantOpt,
                name: Annotated[str | None, typer.Option(help="Registry name")] = None,
                stage: Annotated[str | None, typer.Option(
                    help="candidate, shadow, production or archived")] = None,
                as_json: JsonOpt = False) -> None:
    """The tenant's model versions with stage and backtest MAE."""
    rows = _run(_list(tenant, name, stage))
    lines = [f"{r['id']}  {r['name']:<10} v{r['version']:<3} {r['stage']:<10} "
             f"{r['subject_key']}  mae={r['mae']}  baseline={r['baseline_mae']}" for r in rows]
    _print(rows, as_json, "\n".join(lines) or "no model versions")


async def _list(slug: str, name: str | None, stage: str | None) -> list[dict[str, Any]]:
    from civitas_ray.db.session import tenant_session
    from civitas_ray.ml import registry

    tenant_id = await _tenant_id(slug)
    async with tenant_session(tenant_id) as s:
        rows, _ = await registry.list_versions(s, tenant_id, name=name, stage=stage, limit=500)
        return [{"id": str(r.id), "name": r.name, "kind": r.kind, "version": r.version,
                 "stage": r.stage, "subject_key": r.subject_key,
                 "mae": r.metrics.get("backtest", {}).get("model", {}).get("mae"),
                 "baseline_mae": r.metrics.get("backtest", {}).get("seasonal_naive", {})
                 .get("mae")} for r in rows]


def _stage_command(action: str) -> Any:
    def command(version_id: Annotated[str, typer.Argument(help="Model version UUID")],
                tenant: TenantOpt, as_json: JsonOpt = False) -> None:
        vid = _uuid(version_id, "VERSION_ID")
        out = _run(_stage(tenant, action, vid))
        _print(out, as_json, f"{action}: {out['name']} v{out['version']} is now "
               f"{out['stage']}" + (f" (replaced v{out['replaced']})" if out.get("replaced")
                                    else ""))
    command.__doc__ = {"promote": "Put a version in production (it must beat seasonal-naive).",
                       "shadow": "Score a candidate beside production.",
                       "rollback": "Take a production version out; the previous one returns."
                       }[action]
    return command


async def _stage(slug: str, action: str, version_id: Any) -> dict[str, Any]:
    from civitas_ray.audit.service import Actor
    from civitas_ray.db.session import tenant_session
    from civitas_ray.errors import CivitasError
    from civitas_ray.ml import registry

    tenant_id = await _tenant_id(slug)
    actor = Actor(type="system", label=f"civitas ml {action}")
    try:
        async with tenant_session(tenant_id) as s:
            other = None
            if action == "promote":
                row, other = await registry.promote(s, tenant_id=tenant_id,
                                                    version_id=version_id, actor=actor)
            elif action == "shadow":
                row = await registry.shadow(s, tenant_id=tenant_id, version_id=version_id,
                                            actor=actor)
            else:
                row, other = await registry.rollback(s, tenant_id=tenant_id,
                                                     version_id=version_id, actor=actor)
            return {"id": str(row.id), "name": row.name, "version": row.version,
                    "stage": row.stage, "replaced": other.version if other else None}
    except CivitasError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from exc


@ml_app.command("backtest")
def backtest(
    model: Annotated[str, typer.Argument(help=f"Model kind: {KINDS}")],
    tenant: TenantOpt, metric: Annotated[str, typer.Option(help="Metric")],
    holdout_start: Annotated[datetime, typer.Option(help="First forecast origin (UTC)")],
    asset: AssetOpt = None, zone: ZoneOpt = None,
    horizon: Annotated[int, typer.Option(help="Steps ahead from each origin")] = 24,
    as_json: JsonOpt = False,
) -> None:
    """Hold-out forecasts from rolling origins, scored against the baselines."""
    from civitas_ray.ml.data import Subject

    subject = Subject.of(asset_id=_uuid(asset, "--asset"), zone_id=_uuid(zone, "--zone"),
                         metric=metric)
    start = holdout_start if holdout_start.tzinfo else holdout_start.replace(
        tzinfo=UTC)
    out = _run(_backtest(tenant, model, subject, start, horizon))
    m = out["metrics"]
    lines = [f"{'':<16}{'MAE':>12}{'RMSE':>12}{'sMAPE':>10}{'coverage':>10}"]
    for k in ("model", "seasonal_naive", "last_value"):
        r = m.get(k, {})
        lines.append(f"{k:<16}{r.get('mae', float('nan')):>12.4g}"
                     f"{r.get('rmse', float('nan')):>12.4g}{r.get('smape', float('nan')):>10.3g}"
                     f"{r.get('coverage', float('nan')):>10.2f}")
    lines.append(f"{len(out['points'])} hold-out points; beats seasonal-naive: "
                 f"{out['beats_seasonal_naive']}")
    _print(out, as_json, "\n".join(lines))


async def _backtest(slug: str, model: str, subject: Any, start: datetime,
                    horizon: int) -> dict[str, Any]:
    from civitas_ray.errors import CivitasError
    from civitas_ray.ml import training

    tenant_id = await _tenant_id(slug)
    try:
        return await training.backtest(tenant_id, kind=model, subject=subject,
                                       holdout_start=start, horizon=horizon)
    except CivitasError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from exc


for _action in ("promote", "shadow", "rollback"):
    ml_app.command(_action)(_stage_command(_action))


def register(app: typer.Typer) -> None:
    app.add_typer(ml_app, name="ml")
