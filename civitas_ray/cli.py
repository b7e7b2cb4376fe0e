"""The `civitas` command: run the platform, migrate, bootstrap accounts, verify the audit."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer

from civitas_ray.auth.permissions import RoleName

T = TypeVar("T")

app = typer.Typer(help="civitas_ray: real-time control server for smart cities.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
admin_app = typer.Typer(help="Bootstrap tenants, users and device API keys without the API.",
                        no_args_is_help=True)
audit_app = typer.Typer(help="Audit trail tools.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(audit_app, name="audit")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    async def wrapper() -> T:
        from civitas_ray.cache import close_redis
        from civitas_ray.db.session import dispose_engine

        try:
            return await coro
        finally:
            await dispose_engine()
            await close_redis()

    return asyncio.run(wrapper())


def _fail(message: str) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database up to REVISION (head by default)."""
    from civitas_ray.db import migrate

    migrate.upgrade(revision)


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (`base` removes everything)."""
    from civitas_ray.db import migrate

    migrate.downgrade(revision)


@db_app.command("current")
def db_current() -> None:
    """Show the database's current revision."""
    from civitas_ray.db import migrate

    migrate.current()


async def _tenant_id(session: Any, slug: str) -> Any:
    from civitas_ray.tenants import service as tenants

    tenant = await tenants.get_by_slug(session=session, slug=slug)
    if tenant is None:
        _fail(f"No tenant with slug '{slug}'")
    return tenant.id  # type: ignore[union-attr]


@admin_app.command("create-tenant")
def create_tenant(slug: str, name: Annotated[str | None, typer.Option(help="Display name")] = None,
                  ) -> None:
    """Create tenant SLUG; prints its id."""
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import tenant_session
    from civitas_ray.errors import CivitasError
    from civitas_ray.tenants import service as tenants
    from civitas_ray.tenants.schemas import TenantCreate

    async def go() -> str:
        async with tenant_session(None, system=True) as session:
            t = await tenants.create(session=session, actor=SYSTEM_ACTOR,
                                     data=TenantCreate(slug=slug, name=name or slug))
            return str(t.id)

    try:
        typer.echo(f"created tenant {slug} {_run(go())}")
    except (CivitasError, ValueError) as exc:
        _fail(str(exc))


@admin_app.command("create-user")
def create_user(
    tenant: Annotated[str, typer.Option(help="Tenant slug")],
    email: Annotated[str, typer.Option()],
    password: Annotated[str, typer.Option(help="Checked against the password policy")],
    role: Annotated[RoleName, typer.Option()] = RoleName.VIEWER,
    name: Annotated[str, typer.Option(help="Full name")] = "",
) -> None:
    """Create a user in a tenant; prints its id."""
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import set_context, tenant_session
    from civitas_ray.errors import CivitasError
    from civitas_ray.users import service as users
    from civitas_ray.users.schemas import UserCreate

    async def go() -> str:
        async with tenant_session(None, system=True) as session:
            tid = await _tenant_id(session, tenant)
            await set_context(session, tenant_id=tid)
            u = await users.create(session=session, tenant_id=tid, actor=SYSTEM_ACTOR,
                                   data=UserCreate(email=email, password=password, role=role,
                                                   full_name=name))
            return str(u.id)

    try:
        typer.echo(f"created user {email} {_run(go())}")
    except (CivitasError, ValueError) as exc:
        _fail(str(exc))


@admin_app.command("create-api-key")
def create_api_key(
    tenant: Annotated[str, typer.Option(help="Tenant slug")],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. a device fleet")],
) -> None:
    """Create a device API key (ingest only); the key is the last word printed."""
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import set_context, tenant_session
    from civitas_ray.users import service as users
    from civitas_ray.users.schemas import ApiKeyCreate

    async def go() -> tuple[str, str]:
        async with tenant_session(None, system=True) as session:
            tid = await _tenant_id(session, tenant)
            await set_context(session, tenant_id=tid)
            row, key = await users.create_api_key(session=session, tenant_id=tid,
                                                  data=ApiKeyCreate(name=name),
                                                  actor=SYSTEM_ACTOR, created_by=None)
            return str(row.id), key

    key_id, key = _run(go())
    typer.echo(f"created api key {name} id={key_id} key: {key}")


@audit_app.command("verify")
def audit_verify(tenant: Annotated[str | None, typer.Option(help="Only this tenant's chain")]
                 = None) -> None:
    """Recompute every audit hash chain; exits 1 when a chain was tampered with."""
    from civitas_ray.audit import service as audit
    from civitas_ray.db.session import tenant_session

    async def go() -> list[audit.ChainReport]:
        async with tenant_session(None, system=True) as session:
            chain = str(await _tenant_id(session, tenant)) if tenant else None
            return await audit.verify(session=session, chain=chain)

    reports = _run(go())
    bad = [r for r in reports if not r.ok]
    for r in reports:
        state = "ok" if r.ok else f"TAMPERED at seq {r.first_bad_seq}: {r.reason}"
        typer.echo(f"{r.chain}: {r.rows} rows checked, {state}")
    if not reports:
        typer.echo("no audit records")
    if bad:
        raise typer.Exit(1)
    typer.echo(f"verified {len(reports)} chain(s): intact")


def main() -> None:
    from civitas_ray import runtime_cli
    from civitas_ray.ai.commands import register as register_ai
    from civitas_ray.ml.commands import register as register_ml
    from civitas_ray.mqtt.commands import register as register_mqtt
    from civitas_ray.telemetry.commands import register as register_telemetry
    from civitas_ray.transit.commands import register as register_gtfs

    runtime_cli.register(app)
    register_mqtt(app)
    register_telemetry(app)
    register_ml(app)
    register_ai(app)
    register_gtfs(app)
    app(prog_name="civitas")


if __name__ == "__main__":
    main()
    sys.exit(0)
