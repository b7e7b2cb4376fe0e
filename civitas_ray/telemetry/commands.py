"""`civitas telemetry import`: load a CSV/Parquet history into the telemetry hypertable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

if TYPE_CHECKING:  # pandas is imported only when a command runs
    from rich.console import Console

    from civitas_ray.telemetry.importer import ImportReport, ImportSpec

telemetry_app = typer.Typer(help="Telemetry history tools.", no_args_is_help=True)


def _interval_seconds(text: str | None) -> float | None:
    """'3600', '1h', '10min', '15 minutes' -> seconds."""
    if text is None:
        return None
    import pandas as pd

    try:
        return float(text) if text.replace(".", "", 1).isdigit() \
            else pd.Timedelta(text).total_seconds()
    except ValueError as exc:
        raise typer.BadParameter(f"--interval {text!r}: give seconds or e.g. 1h, 10min") from exc


@telemetry_app.command("import")
def import_history(
    file: Annotated[Path, typer.Argument(help="CSV (plain, .gz, or a .zip holding one CSV) "
                                         "or Parquet file")],
    tenant: Annotated[str, typer.Option(help="Tenant slug")],
    time_col: Annotated[str, typer.Option(help="Timestamp column")],
    value_col: Annotated[str | None, typer.Option(help="Value column of a long file")] = None,
    metric: Annotated[str | None, typer.Option(help="Metric of every value (long file)")]
    = None,
    metric_col: Annotated[str | None, typer.Option(help="Column naming each row's metric")]
    = None,
    asset: Annotated[str | None, typer.Option(
        help="Asset of every reading: UUID, external_id or unique name")] = None,
    asset_col: Annotated[str | None, typer.Option(
        help="Column naming each row's asset (UUID, external_id or unique name)")] = None,
    column: Annotated[list[str] | None, typer.Option(
        "--column", "-c", help="Wide file: COLUMN=METRIC or COLUMN=ASSET:METRIC, repeated")]
    = None,
    time_format: Annotated[str | None, typer.Option(
        help="strptime format (e.g. '%d/%m/%Y %H:%M:%S'), 'unix' or 'unix_ms'; ISO 8601 "
        "when absent")] = None,
    tz: Annotated[str, typer.Option(help="IANA time zone of naive timestamps")] = "UTC",
    ambiguous: Annotated[str, typer.Option(
        help="Times repeated when clocks go back: infer, earliest, latest, drop, error")]
    = "infer",
    nonexistent: Annotated[str, typer.Option(
        help="Times skipped when clocks go forward: drop, shift_forward, error")] = "drop",
    interval: Annotated[str | None, typer.Option(
        help="Expected interval for the gap report (e.g. 1h, 10min); inferred per stream")]
    = None,
    sep: Annotated[str | None, typer.Option(help="CSV separator; sniffed when absent")] = None,
    encoding: Annotated[str, typer.Option(help="CSV text encoding")] = "utf-8",
    chunk_rows: Annotated[int, typer.Option(help="File rows per chunk")] = 50_000,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Check and count everything, store nothing")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")]
    = False,
    rollup: Annotated[bool, typer.Option(
        help="Roll the imported range up into hourly rollups afterwards")] = True,
) -> None:
    """Import a history file; prints what was stored, what was a duplicate, what was
    rejected and why, and the gaps of each stream."""
    from rich.console import Console

    from civitas_ray.telemetry import importer

    err = Console(stderr=True)
    try:
        spec = importer.ImportSpec(
            path=file, time_col=time_col, time_format=time_format, tz=tz,
            ambiguous=ambiguous, nonexistent=nonexistent,
            value_col=value_col, metric=metric, metric_col=metric_col, asset=asset,
            asset_col=asset_col, columns=[importer.ColumnMap.parse(c) for c in column or []],
            interval_s=_interval_seconds(interval), sep=sep, encoding=encoding,
            chunk_rows=chunk_rows, dry_run=dry_run)
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else None
        msg = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in errors) \
            if errors else str(exc)
        err.print(f"[red]invalid import: {msg}[/red]")
        raise typer.Exit(2) from exc
    try:
        report = asyncio.run(_run(spec, tenant, err, show_progress=not json_out,
                                  rollup=rollup))
    except importer.ImportFailed as exc:
        err.print(f"[red]import failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    if json_out:
        typer.echo(report.model_dump_json(indent=2))
    else:
        _print_summary(report, Console())


async def _run(spec: ImportSpec, tenant: str, err: Console,
               *, show_progress: bool, rollup: bool = True) -> ImportReport:
    import asyncpg
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from civitas_ray.config import get_settings
    from civitas_ray.telemetry import importer

    s = get_settings()
    conn = await asyncpg.connect(s.database.dsn_for(s.ingest.db_user, s.ingest.db_password),
                                 server_settings={"application_name": "civitas_import"})
    try:
        tenant_id = await importer.resolve_tenant(conn, tenant)
        min_us = int(datetime.fromisoformat(s.ingest.min_ts).timestamp() * 1_000_000)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                      TextColumn("{task.fields[rows]:,} rows"), TimeRemainingColumn(),
                      console=err, disable=not show_progress or not err.is_terminal,
                      transient=True) as bar:
            task = bar.add_task(spec.path.name, total=None, rows=0)

            def tick(p: importer.Progress) -> None:
                bar.update(task, completed=p.done, total=p.total, rows=p.rows)

            report = await importer.run_import(spec, conn=conn, tenant_id=tenant_id,
                                               min_ts_us=min_us,
                                               max_future_s=s.ingest.max_future_s,
                                               on_progress=tick)
        if rollup and not report.dry_run and report.inserted:
            await _rollup_streams(report, err, conn)
    finally:
        await conn.close()
    return report


async def _rollup_streams(report: ImportReport, err: Console, conn: Any) -> None:
    """Imported history is older than the periodic job looks: roll its range up now."""
    from civitas_ray.telemetry.rollup import rollup_range

    firsts = [r.first_ts for r in report.streams if r.first_ts]
    lasts = [r.last_ts for r in report.streams if r.last_ts]
    if not firsts or not lasts:
        return
    done = await rollup_range(min(firsts), max(lasts) + timedelta(microseconds=1), conn=conn)
    err.print(f"rolled up {done.hours:,} hours ({done.rows:,} rollup rows) "
              f"in {done.seconds:.1f} s")


@telemetry_app.command("rollup")
def rollup_command(
    since: Annotated[datetime | None, typer.Option(
        help="From this time (UTC); default: what the periodic job would do now")] = None,
    until: Annotated[datetime | None, typer.Option(help="Up to this time (UTC); default now")]
    = None,
) -> None:
    """(Re)compute hourly rollups, for every tenant: after late data, or to backfill."""
    from civitas_ray.db.session import dispose_engine
    from civitas_ray.telemetry.rollup import rollup_due, rollup_range

    def aware(t: datetime) -> datetime:
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    async def go() -> None:
        try:
            if since is None:
                done = await rollup_due()
            else:
                done = await rollup_range(aware(since), aware(until or datetime.now(UTC)))
        finally:
            await dispose_engine()
        typer.echo(f"rolled up {done.hours:,} hours ({done.rows:,} rollup rows written) in "
                   f"{done.seconds:.1f} s")

    asyncio.run(go())


def _print_summary(report: ImportReport, out: Console) -> None:
    from rich.table import Table

    head = "DRY RUN: nothing stored. " if report.dry_run else ""
    out.print(f"{head}{report.file}: {report.rows_read:,} rows, {report.readings:,} readings "
              f"in {report.elapsed_s:.1f} s ({report.rows_per_s:,.0f} rows/s, "
              f"{report.readings_per_s:,.0f} readings/s)")
    t = Table(title="import summary", show_header=False)
    t.add_row("inserted" if not report.dry_run else "would insert", f"{report.inserted:,}")
    t.add_row("already stored", f"{report.already_stored:,}")
    t.add_row("duplicates in file", f"{report.duplicates_in_file:,} "
              f"({report.duplicates_conflicting:,} with a different value; first kept)")
    for reason, n in report.rejected.items():
        t.add_row(f"rejected: {reason}", f"{n:,}")
    if report.ambiguous_times or report.nonexistent_times:
        t.add_row("DST: ambiguous / nonexistent local times",
                  f"{report.ambiguous_times:,} / {report.nonexistent_times:,}")
    out.print(t)
    if report.unknown_assets:
        out.print("unknown assets (readings): " + ", ".join(
            f"{k} ({v:,})" for k, v in report.unknown_assets.items()))
    streams = Table(title="streams")
    for col in ("asset", "metric", "readings", "first", "last", "interval", "gaps", "missing",
                "largest gap"):
        streams.add_column(col)
    for s in report.streams:
        streams.add_row(s.asset, s.metric, f"{s.readings:,}",
                        f"{s.first_ts:%Y-%m-%d %H:%M}" if s.first_ts else "",
                        f"{s.last_ts:%Y-%m-%d %H:%M}" if s.last_ts else "",
                        f"{s.interval_s:g} s" if s.interval_s else "", f"{s.gaps:,}",
                        f"{s.missing_intervals:,}",
                        f"{s.largest_gap_s / 3600:,.1f} h after {s.largest_gap_after:%Y-%m-%d}"
                        if s.largest_gap_s and s.largest_gap_after else "")
    out.print(streams)
    for ex in report.rejected_examples[:5]:
        out.print(f"  e.g. {ex}")


def register(app: typer.Typer) -> None:
    """Add `civitas telemetry ...` to the CLI (once, also when called again by tests)."""
    if not any(g.name == "telemetry" for g in app.registered_groups):
        app.add_typer(telemetry_app, name="telemetry")
