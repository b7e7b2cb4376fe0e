"""`civitas gtfs import`: load a GTFS static zip as a feed's next version and activate it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from civitas_ray.transit.static_import import ImportOutcome

gtfs_app = typer.Typer(help="GTFS transit feeds.", no_args_is_help=True)


def default_feed_name(agency: str | None, path: Path) -> str:
    """The first agency's name as a feed name ('Caltrain' -> 'caltrain'), else the file's."""
    raw = agency or path.stem
    name = re.sub(r"[^a-z0-9._\-]+", "-", raw.lower()).strip("-._")
    return name[:100] or "feed"


@gtfs_app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="GTFS static zip", exists=True, dir_okay=False)],
    tenant: Annotated[str, typer.Option(help="Tenant slug")],
    feed: Annotated[str | None, typer.Option(
        help="Feed name (created when new); default: the first agency's name")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Import the zip as the feed's next version: bad rows are skipped and listed (file,
    row, field); a fatally broken feed is refused and the active version stays."""
    from civitas_ray.errors import CivitasError
    from civitas_ray.transit import static_import as gtfs

    try:
        outcome, feed_name = asyncio.run(_run(file, tenant, feed))
    except gtfs.FeedRefused as exc:
        typer.echo(f"refused: {exc.detail}", err=True)
        for e in exc.errors or []:
            typer.echo(f"  {e['file']} row {e['row']} field {e['field']}: {e['message']}",
                       err=True)
        raise typer.Exit(1) from exc
    except CivitasError as exc:
        typer.echo(f"import failed: {exc.detail}", err=True)
        raise typer.Exit(1) from exc
    if json_out:
        typer.echo(json.dumps({"feed": feed_name, "version_id": str(outcome.version_id),
                               "version": outcome.version, "status": outcome.status,
                               "counts": outcome.counts, "errors": outcome.errors}, indent=2,
                              default=str))
        return
    c = outcome.counts
    typer.echo(f"{feed_name} v{outcome.version} ({outcome.version_id}) active: "
               f"{c['rows']:,} rows in {outcome.elapsed_s:.2f} s "
               f"({c['rows'] / max(outcome.elapsed_s, 1e-9):,.0f} rows/s)")
    typer.echo("  " + ", ".join(f"{k} {c.get(k, 0):,}" for k in (
        "agency", "routes", "stops", "trips", "stop_times", "shapes", "calendar",
        "calendar_dates")) + f"; stops in zones {c.get('stops_in_zones', 0):,}")
    if c.get("errors"):
        typer.echo(f"  {c['errors']:,} rows skipped:")
        for e in outcome.errors[:20]:
            typer.echo(f"    {e['file']} row {e['row']} field {e['field']}: {e['message']}")


async def _run(file: Path, tenant: str, feed: str | None) -> tuple[ImportOutcome, str]:
    from civitas_ray.db.session import dispose_engine, tenant_session
    from civitas_ray.errors import NotFound
    from civitas_ray.tenants import service as tenants
    from civitas_ray.transit import static_import as gtfs

    try:
        async with tenant_session(None, system=True) as s:
            t = await tenants.get_by_slug(session=s, slug=tenant)
            if t is None:
                raise NotFound(f"Tenant '{tenant}' not found")
            tenant_id = t.id
        name = feed or default_feed_name(
            await asyncio.to_thread(gtfs.first_agency_name, file), file)
        async with tenant_session(tenant_id) as s:
            row = await gtfs.feed_by_name(session=s, tenant_id=tenant_id, name=name)
            feed_id = row.id if row else (await gtfs.create_feed(
                session=s, tenant_id=tenant_id, name=name)).id
        outcome = await gtfs.import_feed(tenant_id=tenant_id, feed_id=feed_id, source=file)
    finally:
        await dispose_engine()
    return outcome, name


def register(app: typer.Typer) -> None:
    """Add `civitas gtfs ...` to the CLI (once, also when called again by tests)."""
    if not any(g.name == "gtfs" for g in app.registered_groups):
        app.add_typer(gtfs_app, name="gtfs")
