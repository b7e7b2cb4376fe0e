"""/api/v1/telemetry: batch ingest (JSON or SenML) and range queries with time buckets."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response
from sqlalchemy import text

from civitas_ray.auth.deps import AuthDep, PrincipalDep, needs, needs_principal
from civitas_ray.auth.permissions import Perm
from civitas_ray.config import get_settings
from civitas_ray.errors import CivitasError, ServiceUnavailable, ValidationFailed
from civitas_ray.telemetry.ingest import get_ingestor
from civitas_ray.telemetry.parse import PayloadError, parse_json_batch, parse_senml
from civitas_ray.telemetry.schemas import Aggregate, IngestResult, TelemetryBatchIn, TelemetrySeries
from civitas_ray.telemetry.writer import Backpressure

router = APIRouter(prefix="/telemetry", tags=["telemetry"])

SENML_TYPES = ("application/senml+json",)
_BUCKET_RE = re.compile(r"^(\d{1,6})(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class PayloadTooLarge(CivitasError):
    status, title, type_slug = 413, "Payload too large", "payload-too-large"


class UnsupportedMediaType(CivitasError):
    status, title, type_slug = 415, "Unsupported media type", "unsupported-media-type"


_SENML_EXAMPLE = [{"bn": "6f1c0c3e-5b7e-4a9e-9a55-0f1e2d3c4b5a/", "bt": 1.7945e9, "bu": "Cel"},
                  {"n": "temperature", "v": 21.5}, {"n": "temperature", "t": 60, "v": 21.7}]


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=IngestResult,
    summary="Ingest a batch of readings (JSON or SenML)",
    description=(
        "Send `application/json` `{\"readings\": [{\"asset_id\", \"metric\", \"ts\", \"value\", "
        "\"unit\"?, \"quality\"?}]}` or `application/senml+json` (RFC 8428; base name, time "
        "and unit resolved; names are `<asset>/<metric>`). `asset_id` is the asset's UUID or "
        "its `external_id`. Answers 202 only after the accepted readings are committed; "
        "each rejected reading is listed with its index and reason, and the rest are kept. "
        "Readings repeating an (asset, metric, ts) already stored are accepted and stored "
        "once. When the database falls behind the answer is 503 with `Retry-After`."),
    openapi_extra={
        "x-permission": str(Perm.TELEMETRY_INGEST),
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": TelemetryBatchIn.model_json_schema(
                ref_template="#/components/schemas/{model}")},
            "application/senml+json": {"schema": {"type": "array", "items": {"type": "object"}},
                                       "example": _SENML_EXAMPLE}}},
        "responses": {"413": {"description": "Body larger than the limit"},
                      "415": {"description": "Unsupported content type"},
                      "503": {"description": "Back-pressure: retry after `Retry-After` s"}},
    },
    dependencies=needs_principal(Perm.TELEMETRY_INGEST)["dependencies"],
)
async def ingest(principal: PrincipalDep, request: Request) -> Response:
    s = get_settings().ingest
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > s.max_body_bytes:
        raise PayloadTooLarge(f"the body exceeds {s.max_body_bytes} bytes")
    body = await request.body()
    if len(body) > s.max_body_bytes:
        raise PayloadTooLarge(f"the body exceeds {s.max_body_bytes} bytes")
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    try:
        if ctype in SENML_TYPES:
            parsed = parse_senml(body, max_readings=s.max_batch_readings)
        elif ctype in ("application/json", ""):
            parsed = parse_json_batch(body, max_readings=s.max_batch_readings)
        else:
            raise UnsupportedMediaType(
                f"use application/json or application/senml+json, not {ctype}")
    except PayloadError as exc:
        raise ValidationFailed(str(exc)) from exc
    try:
        outcome = await get_ingestor().ingest(
            tenant_id=principal.tenant_id, parsed=parsed, allowed_assets=principal.asset_ids)
    except Backpressure as exc:
        raise ServiceUnavailable(str(exc), headers={
            "Retry-After": str(int(exc.retry_after_s))}) from exc
    except (OSError, ConnectionError) as exc:
        raise ServiceUnavailable("the database is unreachable; retry later",
                                 headers={"Retry-After": "2"}) from exc
    return Response(status_code=202, media_type="application/json", content=orjson.dumps({
        "accepted": outcome.accepted,
        "rejected": [{"index": i, "reason": r} for i, r in outcome.rejected]}))


def _bucket(bucket: str) -> timedelta:
    m = _BUCKET_RE.match(bucket)
    if not m or int(m.group(1)) == 0:
        raise ValidationFailed("bucket must look like 30s, 5m, 1h or 1d", errors=[
            {"loc": ["query", "bucket"], "msg": "invalid bucket", "type": "value_error"}])
    return timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


_AGG_SQL = {"avg": "avg(value)", "min": "min(value)", "max": "max(value)",
            "count": "count(*)::float8", "last": "last(value, ts)", "sum": "sum(value)"}
# The same aggregates recomposed from hourly rollup rows (count-weighted where it matters).
_ROLLUP_SQL = {"avg": "sum(avg * count) / sum(count)", "min": "min(min)", "max": "max(max)",
               "count": "sum(count)::float8", "last": "last(last, bucket)",
               "sum": "sum(avg * count)"}


class Source(StrEnum):
    auto = "auto"
    raw = "raw"
    rollup = "rollup"


@router.get("", response_model=TelemetrySeries, summary="Readings of one stream over a range",
            description="Raw readings, or aggregated per `bucket` (`30s`, `5m`, `1h`, `1d`) "
                        "with `agg` avg/min/max/count/last/sum. The range defaults to the "
                        "last 24 hours. `source`: `raw` aggregates the hypertable; `rollup` "
                        "reads the hourly rollups only (buckets of whole hours); `auto` (the "
                        "default) reads the rollups for whole-hour buckets up to the newest "
                        "rolled hour and raw rows after it, so long ranges stay fast and "
                        "survive raw-data retention. The answer says which it used.",
            **needs(Perm.TELEMETRY_READ))
async def query(
    ctx: AuthDep, asset_id: uuid.UUID,
    metric: Annotated[str, Query(max_length=64)],
    start: datetime | None = None, end: datetime | None = None,
    bucket: Annotated[str | None, Query(max_length=10)] = None,
    agg: Aggregate | None = None,
    source: Source = Source.auto,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> dict[str, Any]:
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=1)
    if start.tzinfo is None or end.tzinfo is None:
        raise ValidationFailed("start and end need a UTC offset")
    if start >= end:
        raise ValidationFailed("start must be before end")
    params: dict[str, Any] = {"a": asset_id, "m": metric, "s": start, "e": end, "n": limit}
    aggregated = bool(bucket or agg or source == Source.rollup)
    used = "raw"
    if aggregated:
        interval = _bucket(bucket or "1h")
        params["b"] = interval
        name = (agg or Aggregate.avg).value
        hourly = interval % timedelta(hours=1) == timedelta(0)
        if source == Source.rollup and not hourly:
            raise ValidationFailed("source=rollup needs a bucket of whole hours (1h, 6h, 1d)")
        raw_sql = (f"select time_bucket(:b, ts) as ts, {_AGG_SQL[name]} as value "
                   "from telemetry where asset_id = :a and metric = :m and ts >= :rs "
                   "and ts < :e group by 1")
        split: datetime | None = None
        if hourly and source != Source.raw:
            # Rollups serve whole query buckets before the one holding the newest rolled
            # hour's end; raw rows serve the rest, so no bucket mixes the two.
            split = (await ctx.session.execute(text(
                "select time_bucket(:b, max(bucket) + interval '1 hour') from telemetry_rollup "
                "where asset_id = :a and metric = :m "
                "and bucket >= cast(:s as timestamptz) - cast(:b as interval) and bucket < :e"),
                params)).scalar()
        if split is not None or source == Source.rollup:
            if source == Source.rollup:
                split = end
            params["rs"] = max(start, split) if split is not None else start
            rollup_sql = (f"select time_bucket(:b, bucket) as ts, {_ROLLUP_SQL[name]} as value "
                          "from telemetry_rollup where asset_id = :a and metric = :m "
                          "and bucket >= time_bucket(interval '1 hour', :s) "
                          "and bucket < :re group by 1")
            params["re"] = min(split or end, end)
            sql = (f"({rollup_sql}) union all ({raw_sql}) order by 1 limit :n"
                   if source != Source.rollup else f"{rollup_sql} order by 1 limit :n")
            used = "rollup" if source == Source.rollup or params["rs"] >= end else "rollup+raw"
        else:
            params["rs"] = start
            sql = f"{raw_sql} order by 1 limit :n"
    else:
        sql = ("select ts, value from telemetry where asset_id = :a and metric = :m "
               "and ts >= :s and ts < :e order by ts limit :n")
    rows = (await ctx.session.execute(text(sql), params)).all()
    return {"asset_id": asset_id, "metric": metric,
            "bucket": (bucket or "1h") if aggregated else None,
            "agg": (agg or Aggregate.avg) if aggregated else None, "source": used,
            "points": [{"ts": r[0], "value": r[1]} for r in rows]}
