"""Parse telemetry payloads (JSON batches, SenML RFC 8428) into columns, with reasons.

The result is columnar (numpy arrays) from the start, so that later stages (asset
resolution, binary COPY, actor dispatch) never build one Python object per reading.
Each rejected reading keeps its index in the request and a human-readable reason.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

MAX_METRIC_LEN = 64
_METRIC_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# SenML (RFC 8428 §4.5.3): a time below 2**28 is relative to now.
_SENML_RELATIVE_LIMIT = 2**28


class PayloadError(ValueError):
    """The payload as a whole cannot be read (bad JSON, wrong top-level shape)."""


@dataclass(slots=True)
class ParsedReadings:
    """Readings that parsed, column-wise, plus rejections by request index."""

    index: np.ndarray  # int32, position in the request
    asset_ref: list[str]  # UUID text or external id, as sent
    metric: list[str]
    ts_us: np.ndarray  # int64 epoch microseconds, UTC
    value: np.ndarray  # float64
    quality: np.ndarray  # int16
    rejected: list[tuple[int, str]] = field(default_factory=list)
    total: int = 0

    def __len__(self) -> int:
        return len(self.asset_ref)


def _ts_us(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("ts must be an ISO 8601 string or epoch seconds")
    if isinstance(raw, int | float):
        if not math.isfinite(raw):
            raise ValueError("ts is not finite")
        return round(raw * 1_000_000)
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise ValueError(f"ts {raw[:40]!r} is not ISO 8601") from exc
        if dt.tzinfo is None:
            raise ValueError("ts needs a UTC offset (e.g. 'Z' or '+02:00')")
        delta = dt - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise ValueError("ts is missing" if raw is None else "ts must be a string or a number")


def _value(raw: Any) -> float:
    if raw is None:
        raise ValueError("value is missing")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError("value must be a number")
    v = float(raw)
    if not math.isfinite(v):
        raise ValueError("value is not finite")
    return v


def _metric(raw: Any) -> str:
    if not isinstance(raw, str) or not _METRIC_RE.match(raw):
        raise ValueError("metric must be 1-64 characters of letters, digits, _ . : -")
    return raw


def _quality(raw: Any) -> int:
    if raw is None:
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 32767:
        raise ValueError("quality must be an integer 0..32767")
    return raw


class _Columns:
    __slots__ = ("asset", "index", "metric", "quality", "rejected", "ts", "value")

    def __init__(self) -> None:
        self.index: list[int] = []
        self.asset: list[str] = []
        self.metric: list[str] = []
        self.ts: list[int] = []
        self.value: list[float] = []
        self.quality: list[int] = []
        self.rejected: list[tuple[int, str]] = []

    def add(self, i: int, asset: str, metric: str, ts: int, value: float, quality: int) -> None:
        self.index.append(i)
        self.asset.append(asset)
        self.metric.append(metric)
        self.ts.append(ts)
        self.value.append(value)
        self.quality.append(quality)

    def finish(self, total: int) -> ParsedReadings:
        return ParsedReadings(
            index=np.fromiter(self.index, np.int32, len(self.index)),
            asset_ref=self.asset, metric=self.metric,
            ts_us=np.fromiter(self.ts, np.int64, len(self.ts)),
            value=np.fromiter(self.value, np.float64, len(self.value)),
            quality=np.fromiter(self.quality, np.int16, len(self.quality)),
            rejected=self.rejected, total=total)


def _load(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"the body is not valid JSON: {exc}") from exc


def _fast(items: list[Any], default_asset: str | None) -> ParsedReadings | None:
    """Column-at-a-time parse of a batch in which every reading is well formed.

    Returns None at the first irregularity, and the per-reading path then finds and
    explains each bad reading. Most batches from real devices take this path.
    """
    try:
        if default_asset is None:
            assets = [r["asset_id"] for r in items]
        else:
            assets = [r.get("asset_id", default_asset) for r in items]
        metrics = [r["metric"] for r in items]
        raw_ts = [r["ts"] for r in items]
        raw_values = [r["value"] for r in items]
        raw_quality = [r.get("quality", 0) for r in items]
    except (KeyError, TypeError, AttributeError):
        return None
    if not (all(type(a) is str and 0 < len(a) <= 128 for a in assets)
            and all(type(v) is float or type(v) is int for v in raw_values)
            and all(type(q) is int for q in raw_quality)
            and all(type(m) is str for m in metrics)
            and all(_METRIC_RE.match(m) for m in set(metrics))):
        return None
    if all(type(t) is float or type(t) is int for t in raw_ts):
        secs = np.asarray(raw_ts, dtype=np.float64)
        if not np.isfinite(secs).all():
            return None
        ts_us = np.rint(secs * 1e6).astype(np.int64)
    elif all(type(t) is str and t.endswith("Z") for t in raw_ts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # numpy: "no explicit tz"
                ts_us = np.asarray(raw_ts, dtype="datetime64[us]").astype(np.int64)
        except ValueError:
            return None
    else:
        return None
    values = np.asarray(raw_values, dtype=np.float64)
    quality = np.asarray(raw_quality, dtype=np.int64)
    if not np.isfinite(values).all() or ((quality < 0) | (quality > 32767)).any():
        return None
    n = len(items)
    return ParsedReadings(index=np.arange(n, dtype=np.int32), asset_ref=assets, metric=metrics,
                          ts_us=ts_us, value=values, quality=quality.astype(np.int16),
                          rejected=[], total=n)


def parse_readings(items: list[Any], *, max_readings: int,
                   default_asset: str | None = None) -> ParsedReadings:
    """Readings as dicts (`asset_id`, `metric`, `ts`, `value`, `quality`?)."""
    if len(items) <= max_readings:
        fast = _fast(items, default_asset)
        if fast is not None:
            return fast
    cols = _Columns()
    for i, item in enumerate(items):
        if i >= max_readings:
            cols.rejected.append((i, f"batch exceeds {max_readings} readings"))
            continue
        if not isinstance(item, dict):
            cols.rejected.append((i, "reading must be an object"))
            continue
        try:
            asset = item.get("asset_id", default_asset)
            if not isinstance(asset, str) or not asset or len(asset) > 128:
                raise ValueError("asset_id is missing")
            cols.add(i, asset, _metric(item.get("metric")), _ts_us(item.get("ts")),
                     _value(item.get("value")), _quality(item.get("quality")))
        except ValueError as exc:
            cols.rejected.append((i, str(exc)))
    return cols.finish(len(items))


def parse_json_batch(body: bytes | str, *, max_readings: int,
                     default_asset: str | None = None) -> ParsedReadings:
    """`{"readings": [...]}`; MQTT also sends one reading object or a bare list."""
    doc = _load(body)
    if isinstance(doc, dict) and "readings" in doc:
        items = doc["readings"]
    elif isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict) and default_asset is not None:
        items = [doc]
    else:
        raise PayloadError('expected {"readings": [...]}')
    if not isinstance(items, list):
        raise PayloadError('"readings" must be a list')
    return parse_readings(items, max_readings=max_readings, default_asset=default_asset)


def split_senml_name(name: str) -> tuple[str, str]:
    """`<asset>/<metric>` or `<asset>:<metric>` (also `urn:dev:...:<asset>:<metric>`)."""
    for sep in ("/", ":"):
        if sep in name:
            asset, metric = name.rsplit(sep, 1)
            asset = asset.rstrip("/:")
            for prefix in ("urn:dev:", "urn:civitas:asset:"):
                if asset.startswith(prefix):
                    asset = asset[len(prefix):]
            if asset and metric:
                return asset, metric
    raise ValueError(f"SenML name {name[:80]!r} must be '<asset>/<metric>'")


def parse_senml(body: bytes | str, *, max_readings: int, now_us: int | None = None,
                default_asset: str | None = None) -> ParsedReadings:
    """RFC 8428 JSON pack: base name/time/unit/value resolved per record."""
    doc = _load(body)
    if not isinstance(doc, list):
        raise PayloadError("a SenML pack is a JSON array of records")
    now = now_us if now_us is not None else int(datetime.now(UTC).timestamp() * 1e6)
    cols = _Columns()
    bn, bt, bv = "", 0.0, 0.0
    for i, rec in enumerate(doc):
        if i >= max_readings:
            cols.rejected.append((i, f"batch exceeds {max_readings} readings"))
            continue
        if not isinstance(rec, dict):
            cols.rejected.append((i, "SenML record must be an object"))
            continue
        try:
            # Base fields apply to this record and every later one (RFC 8428 §4.1).
            if "bn" in rec:
                if not isinstance(rec["bn"], str):
                    raise ValueError("bn must be a string")
                bn = rec["bn"]
            if "bt" in rec:
                bt = _value(rec["bt"])
            if "bv" in rec:
                bv = _value(rec["bv"])
            if "bver" in rec and rec["bver"] not in (10,):
                raise ValueError(f"unsupported SenML version {rec['bver']}")
            if any(k in rec for k in ("vs", "vb", "vd")):
                raise ValueError("only numeric values (v) are supported")
            if "v" not in rec and "s" not in rec:
                if set(rec) <= {"bn", "bt", "bu", "bv", "bver", "bs"}:
                    continue  # a record carrying base fields only
                raise ValueError("value is missing")
            n = rec.get("n", "")
            if not isinstance(n, str):
                raise ValueError("n must be a string")
            name = bn + n
            if default_asset is not None and "/" not in name and ":" not in name:
                asset, metric = default_asset, name
            else:
                asset, metric = split_senml_name(name)
            value = bv + _value(rec["v"] if "v" in rec else rec["s"])
            t = bt + (_value(rec["t"]) if "t" in rec else 0.0)
            ts = now + round(t * 1e6) if abs(t) < _SENML_RELATIVE_LIMIT else round(t * 1e6)
            cols.add(i, asset, _metric(metric), ts, value, 0)
        except ValueError as exc:
            cols.rejected.append((i, str(exc)))
    return cols.finish(len(doc))
